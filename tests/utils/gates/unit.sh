#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "unit": ansible-test units (pytest, with ansible's collection loader and the
# ansible_collections.NS.NAME import layout) from the real collection copy. The venv provides
# pytest, pytest-mock and pytest-xdist, so --requirements (a PyPI install) is not needed.
# Extra arguments go to ansible-test (e.g. tests/unit/plugins/modules/test_netns.py).
#
# For a quicker loop without the copy: make pytest (plain pytest, same import layout).
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv

if [ -z "$(find "$MESHOPS_ROOT/tests/unit" -name 'test_*.py' -print -quit 2>/dev/null)" ]; then
    die "no unit tests (tests/unit/**/test_*.py)"
fi
sync_collection_copy unit
ansible_test units --local --python "$TEST_PYTHON_VERSION" --color no "$@"
