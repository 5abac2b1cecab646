# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One istio_redirect_chains run without Ansible: ``engine_apply.py PARAMS.json`` -> one JSON line.

PARAMS.json holds module parameters (``netns``, ``backend``, capture options); the defaults of the
module's argument spec are filled in as the boot path does (``_boot.apply.capture_params``). The
run is ``CaptureRun(...).execute()`` with ``ProcessRunner``: the module's ``main()`` is that same
call with ``ModuleRunner``, so this is the module's engine, only without Ansible's start-up.

Why not ``ansible -m``: an ad hoc run spends about a second in Ansible before the module's first
command, so most random kill moments would land where nothing is written; here nearly the whole
lifetime of the process is the engine's own work (read, plan, the restores or libiptc commits,
the read back, the ownership record), which is what the kill test has to hit.

Output: ``{"changed", "backend", "warnings", "seconds"}``, or ``{"failed": true, "msg", "warnings"}``
with exit code 1 for a ``CaptureError`` (the module's ``fail_json``). Anything else is a crash:
the traceback goes to stderr, exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback


def add_collection_to_path():
    """Make ``ansible_collections.meshops.sidecar`` importable: the tree above this file, then the config."""
    here = os.path.dirname(os.path.abspath(__file__))
    while True:
        if os.path.isdir(os.path.join(here, "ansible_collections", "meshops", "sidecar", "plugins")):
            sys.path.insert(0, here)
            break
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for root in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep):
        if root and root not in sys.path:
            sys.path.append(root)


def main():
    add_collection_to_path()
    # pylint: disable=import-outside-toplevel  # importable only once the path is set
    from ansible_collections.meshops.sidecar.plugins.module_utils._boot.apply import capture_params
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.run import CaptureError, CaptureRun
    from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ProcessRunner

    with open(sys.argv[1]) as handle:
        params = capture_params(json.load(handle))
    warnings = []
    started = time.monotonic()
    try:
        result = CaptureRun(params, False, ProcessRunner(), warnings.append, diff_mode=False).execute()
    except CaptureError as exc:
        print(json.dumps({"failed": True, "msg": str(exc), "warnings": warnings}))
        return 1
    except Exception:  # pylint: disable=broad-except  # a crash: the test says so, with the traceback
        traceback.print_exc()
        return 2
    print(json.dumps({"changed": result["changed"], "backend": result["backend"], "warnings": warnings,
                      "seconds": round(time.monotonic() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
