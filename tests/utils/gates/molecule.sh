#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "molecule": every scenario in extensions/molecule/ (molecule's collection layout), a full
# `molecule test` each, in rootful podman containers (CONTAINERS_CONF=tests/utils/containers.conf:
# runc, rlimits root may set, no network by default). The images are built from Debian's
# packages by tests/utils/build-images.sh (skipped when up to date). containers.podman and
# friends come from .cache/deps (Galaxy is unreachable).
# Arguments: scenario names (default: all of them).
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv
require_root "molecule (rootful podman)"

cd "$MESHOPS_ROOT"
use_working_tree_collection
shopt -s nullglob
scenarios=()
for file in extensions/molecule/*/molecule.yml; do
    scenarios+=("$(basename "$(dirname "$file")")")
done
[ ${#scenarios[@]} -gt 0 ] || die "no molecule scenarios (extensions/molecule/<scenario>/molecule.yml)"
[ $# -eq 0 ] || scenarios=("$@")

[ -d "$DEPS_COLLECTIONS_DIR/ansible_collections/containers/podman" ] \
    || bash "$MESHOPS_ROOT/tests/utils/bootstrap.sh" collections
bash "$MESHOPS_ROOT/tests/utils/build-images.sh"

# Scenario instances have fixed names: one molecule run per machine at a time.
exec 9>/var/lock/meshops-molecule.lock
if ! flock -n 9; then
    log "waiting for another molecule run on this machine to finish"
    flock 9
fi

failed=()
for scenario in "${scenarios[@]}"; do
    start=$SECONDS
    log "molecule test -s $scenario"
    if molecule test -s "$scenario"; then
        log "molecule scenario $scenario passed in $((SECONDS - start)) s"
    else
        log "molecule scenario $scenario FAILED after $((SECONDS - start)) s"
        failed+=("$scenario")
    fi
done
[ ${#failed[@]} -eq 0 ] || die "molecule scenarios failed: ${failed[*]}"
