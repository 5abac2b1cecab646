# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""``meshops-interception-apply [--check] INSTANCE_DIR``: the boot path of the interception role.

The role's boot unit runs this (from the zipapp ``lookup('meshops.sidecar.boot_engine')`` builds)
with the target's own Python, no Ansible. ``INSTANCE_DIR/apply.json`` holds the parameters the
role gave the ``netns`` and ``istio_redirect_chains`` modules; this runs the very same engines
with them, so the rules, the ownership record and what is never touched are the module's own.
Exit 0: done, or (``--check``) nothing to change; 1: ``--check`` and something would change; 2: error.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import argument_spec
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.run import CaptureError, CaptureRun
from ansible_collections.meshops.sidecar.plugins.module_utils._netns.state import StateError, ValidationError
from ansible_collections.meshops.sidecar.plugins.module_utils._netns.system import ApplyError, CommandError, run_netns
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ProcessRunner
from ansible_collections.meshops.sidecar.plugins.module_utils._system.namespace import NetnsError

PROG = "meshops-interception-apply"
FORMAT = 2

# What AnsibleModule fills in for the netns module (its argument spec's defaults).
_NETNS_DEFAULTS = {"state": "present", "loopback": True, "uplink": None, "nameservers": None, "sysctls": {}}
_UPLINK_DEFAULTS = {"interface": "eth0", "host_addresses": [], "addresses": [], "default_route": True,
                    "peer_netns": None}


class ApplyJsonError(Exception):
    """apply.json is missing or does not say what to do."""


def _with_defaults(params, spec):
    """``params`` with every option ``spec`` knows and ``params`` lacks set to its default (as AnsibleModule does)."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ApplyJsonError("unknown option(s) %s" % ", ".join(unknown))
    filled = {name: copy.deepcopy(option.get("default")) for name, option in spec.items()}
    filled.update((name, value) for name, value in params.items() if value is not None)
    for name, option in spec.items():  # list elements as strings, as the module receives them
        if option.get("type") == "list" and option.get("elements") == "str" and filled[name] is not None:
            filled[name] = [str(item) for item in filled[name]]
    return filled


def capture_params(raw):
    """The istio_redirect_chains parameters from apply.json's ``capture_params``, defaults filled in."""
    if not isinstance(raw, dict):
        raise ApplyJsonError("capture_params must be a dict of istio_redirect_chains options")
    params = _with_defaults(raw, argument_spec())
    # The live probe is a deploy-time check: at boot nothing may be listening yet.
    params["verify"] = False
    return params


def netns_params(raw):
    """The netns module's parameters from apply.json's ``netns_params``, defaults filled in (None: host namespace)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw.get("name"):
        raise ApplyJsonError("netns_params must be null or a dict with the namespace's name")
    params = dict(_NETNS_DEFAULTS, **{key: value for key, value in raw.items() if value is not None})
    if params["uplink"] is not None:
        given = {key: value for key, value in params["uplink"].items() if value is not None}
        params["uplink"] = dict(_UPLINK_DEFAULTS, **given)
    return params


def read_apply_json(instance_dir):
    path = os.path.join(instance_dir, "apply.json")
    try:
        with open(path) as handle:
            data = json.load(handle)
    except OSError as exc:
        raise ApplyJsonError("cannot read %s: %s" % (path, exc.strerror or exc))
    except ValueError as exc:
        raise ApplyJsonError("%s is not JSON: %s" % (path, exc))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ApplyJsonError("%s has format %r, this engine reads format %d: run the interception role again"
                             % (path, found, FORMAT))
    try:
        return netns_params(data.get("netns_params")), capture_params(data.get("capture_params"))
    except ApplyJsonError as exc:
        raise ApplyJsonError("%s: %s" % (path, exc))


def _warn(text):
    sys.stderr.write("%s: warning: %s\n" % (PROG, text))


def main(argv=None, runner=None, netns_engine=run_netns, capture_engine=CaptureRun):
    parser = argparse.ArgumentParser(prog=PROG, description="Re-apply the capture the meshops.sidecar.interception "
                                     "role applied, with the collection's own engine.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when something would change")
    parser.add_argument("instance_dir", metavar="INSTANCE_DIR", help="the instance's directory (holds apply.json)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    runner = runner or ProcessRunner()
    done = []  # what changed (or would), for the journal
    try:
        netns, capture = read_apply_json(args.instance_dir)
        if netns is not None:
            result, warnings = netns_engine(netns, args.check, False, runner)
            for warning in warnings:
                _warn(warning)
            if result["changed"]:
                done.append("network namespace %s: %d steps" % (netns["name"], len(result["commands"])))
            if args.check and not result["exists"]:
                return _report(args.check, done + ["its capture rules are read once it exists"])
        result = capture_engine(capture, args.check, runner, _warn, diff_mode=False).execute()
    except (ApplyJsonError, ValidationError, StateError, NetnsError, CommandError, ApplyError, CaptureError) as exc:
        sys.stderr.write("%s: %s: %s\n" % (PROG, args.instance_dir, exc))
        return 2
    if result["changed"]:
        done.append("%s rules: %d commands" % (result["backend"], len(result["commands"])))
    return _report(args.check, done)


def _report(check, done):
    """One line for the journal; the exit code (1: --check and something would change)."""
    if check:
        verb = "would change" if done else "in place"
    else:
        verb = "changed" if done else "nothing to do"
    sys.stdout.write("%s: %s%s\n" % (PROG, verb, ": " + "; ".join(done) if done else ""))
    return 1 if check and done else 0
