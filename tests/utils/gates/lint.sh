#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "lint": ansible-lint with the production profile (.ansible-lint) over the whole
# collection: roles, playbooks, molecule scenarios, integration targets, YAML (yamllint rules).
# Not --offline: that mode cannot resolve the collection's own modules. The collection is the
# working tree itself (lib.sh: use_working_tree_collection); others come from .cache/deps.
# strict (warnings fail) is set in .ansible-lint, so a bare `ansible-lint` behaves the same.
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv
cd "$MESHOPS_ROOT"
use_working_tree_collection
ansible-lint --version
exec ansible-lint
