#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Regenerate the pin sets, each from a throwaway venv and pip freeze; commit what changed.
#   main   tests/requirements-lock.txt from tests/requirements.txt alone
#   cores  every tests/requirements-core-X.Y.txt (the extra ansible-core venvs, bootstrap.sh
#          cores): the lines marked "# direct" are installed with the file's "# python: X.Y",
#          and the file is rewritten with them plus their frozen closure
# Usage: lock-requirements.sh [main|cores|all]   (default: all)
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/lib.sh"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

lock_main() {
    "${PYTHON:-python3}" -m venv "$tmp/main"
    "$tmp/main/bin/python" -m pip install --quiet -r "$MESHOPS_ROOT/tests/requirements.txt"
    {
        echo "# Full pin set for tests/requirements.txt (used as pip constraints by tests/utils/bootstrap.sh)."
        echo "# Regenerate: make lock  (a fresh venv from tests/requirements.txt, then pip freeze)."
        "$tmp/main/bin/python" -m pip freeze --exclude-editable
    } > "$MESHOPS_ROOT/tests/requirements-lock.txt"
    log "wrote tests/requirements-lock.txt"
}

lock_core() {
    local core="$1" file python_version python venv direct
    file="$(core_requirements "$core")"
    python_version="$(core_python_version "$core")"
    python="$(find_python_version "$python_version")" \
        || die "Python $python_version (for ansible-core $core) not found: install it (pyenv install $python_version)"
    venv="$tmp/core-$core"
    # The direct requirements are the lines marked "# direct", without the marker.
    direct="$tmp/direct-$core.txt"
    sed -n 's/^\([^#][^#]*[^[:space:]#]\)[[:space:]]*# direct.*/\1/p' "$file" > "$direct"
    [ -s "$direct" ] || die "${file#"$MESHOPS_ROOT/"} has no line marked '# direct'"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet -r "$direct"
    {
        # The header (every comment line before the first requirement) is kept as it is.
        sed -n '/^[^#]/q; p' "$file"
        "$venv/bin/python" -m pip freeze --exclude-editable | while read -r line; do
            if grep -qixF "$line" "$direct"; then
                printf '%s  # direct\n' "$line"
            else
                printf '%s\n' "$line"
            fi
        done
    } > "$tmp/new-$core.txt"
    # A direct pin that pip freeze does not repeat verbatim (a different spelling, a range)
    # would lose its marker: refuse instead of writing a file that cannot be regenerated.
    [ "$(grep -c '^[^#].*  # direct$' "$tmp/new-$core.txt")" = "$(wc -l < "$direct")" ] \
        || die "${file#"$MESHOPS_ROOT/"}: every '# direct' line must be an exact pin as pip freeze spells it"
    mv "$tmp/new-$core.txt" "$file"
    log "wrote ${file#"$MESHOPS_ROOT/"}"
}

what="${1:-all}"
case "$what" in
    main) lock_main ;;
    cores) for core in $(core_versions); do lock_core "$core"; done ;;
    all) lock_main; for core in $(core_versions); do lock_core "$core"; done ;;
    *) die "usage: lock-requirements.sh [main|cores|all]" ;;
esac
