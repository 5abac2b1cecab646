#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Build the collection tarball into .cache/build from exactly the files a clone would have
# (plus untracked, not ignored ones), so local clutter never ships; galaxy.yml's build_ignore
# applies on top. With --install DIR, install it into DIR (a collections path, replacing an
# older install). Prints the tarball's path on stdout.
#
# Usage: build-collection.sh [--install DIR]
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/lib.sh"
require_venv

install_dir=""
case "${1:-}" in
    --install) install_dir="${2:?--install needs a directory}" ;;
    "") ;;
    *) die "usage: $0 [--install DIR]" ;;
esac

sync_collection_copy build
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
(cd "$COLLECTION_COPY" && ansible-galaxy collection build --force --output-path "$BUILD_DIR") >&2
tarballs=("$BUILD_DIR/$COLLECTION_NAMESPACE-$COLLECTION_NAME"-*.tar.gz)
tarball="${tarballs[0]}"
[ -f "$tarball" ] || die "ansible-galaxy collection build left no tarball in $BUILD_DIR"
if [ -n "$install_dir" ]; then
    # --offline: the tarball is all there is; --no-deps: galaxy.yml has none, and Galaxy is
    # unreachable anyway (third-party collections come from .cache/deps).
    ANSIBLE_COLLECTIONS_PATH="$install_dir:$ANSIBLE_COLLECTIONS_PATH" \
        ansible-galaxy collection install --offline --no-deps --force -p "$install_dir" "$tarball" >&2
fi
printf '%s\n' "$tarball"
