#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Regenerate tests/requirements-lock.txt: a throwaway venv from tests/requirements.txt alone,
# then pip freeze. Run after changing a pin in tests/requirements.txt, commit both files.
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/lib.sh"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet -r "$MESHOPS_ROOT/tests/requirements.txt"
{
    echo "# Full pin set for tests/requirements.txt (used as pip constraints by tests/utils/bootstrap.sh)."
    echo "# Regenerate: make lock  (a fresh venv from tests/requirements.txt, then pip freeze)."
    "$tmp/venv/bin/python" -m pip freeze --exclude-editable
} > "$MESHOPS_ROOT/tests/requirements-lock.txt"
log "wrote tests/requirements-lock.txt"
