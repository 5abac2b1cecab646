#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "integration": ansible-test integration targets, on this machine, as root, destructive
# (they create their own network namespaces and netfilter rules inside them, never in the host
# namespace). Every module must have a target: tests/integration/targets/<module>[_*].
# Extra arguments go to ansible-test (e.g. a target name).
#
# Interpreter: ansible-test writes the inventory itself (testhost, local connection) with
# ansible_python_interpreter set to --python-interpreter, here the venv's python. The venv has
# python-iptables (the legacy backend's library) and ansible-core, so the modules see the same
# libraries as the controller; no tests/integration/inventory is needed.
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv
require_root "ansible-test integration"

targets_dir="$MESHOPS_ROOT/tests/integration/targets"
missing=()
shopt -s nullglob
for module in "$MESHOPS_ROOT"/plugins/modules/*.py; do
    module="$(basename "$module" .py)"
    [ "$module" = __init__ ] && continue
    found=("$targets_dir/$module" "$targets_dir/$module"_*)
    [ -d "${found[0]}" ] || [ ${#found[@]} -gt 1 ] || missing+=("$module")
done
targets=("$targets_dir"/*/)
[ ${#targets[@]} -gt 0 ] || die "no integration targets in tests/integration/targets"

sync_collection_copy integration
rc=0
ansible_test integration --local --python-interpreter "$VENV_DIR/bin/python" \
    --allow-destructive --continue-on-error --color no "$@" || rc=$?
# Missing targets fail the whole-suite run too, after the existing targets have run.
[ $# -gt 0 ] || [ ${#missing[@]} -eq 0 ] || die "modules without an integration target: ${missing[*]}"
exit $rc
