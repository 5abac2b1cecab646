#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "sanity": every ansible-test sanity test, from a real ansible_collections/ copy, with no
# tests/sanity/ignore-*.txt (a problem is fixed, not ignored). The sanity tests' own venvs are
# kept under .cache/home/.ansible/test, so only the first run pays for creating them.
# Extra arguments go to ansible-test (e.g. --test validate-modules).
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv

shopt -s nullglob
ignores=("$MESHOPS_ROOT"/tests/sanity/ignore-*.txt)
if [ ${#ignores[@]} -gt 0 ]; then
    die "sanity ignore files are not allowed, fix the findings instead: ${ignores[*]#"$MESHOPS_ROOT/"}"
fi

sync_collection_copy sanity
ansible_test sanity --local --python "$TEST_PYTHON_VERSION" --color no "$@"
