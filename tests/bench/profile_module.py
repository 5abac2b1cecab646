# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Profile the target side of ``istio_redirect_chains``: ``_capture.run.CaptureRun`` run in-process.

The module's own code path, without Ansible around it: a params dict with the module's defaults,
``run`` with subprocess (as ``AnsibleModule.run_command``), ``which`` with ``shutil.which``.
Prints, for a first apply on a fresh namespace and a no-op re-run:

* wall time per phase (inclusive: reading the other backend's rules is inside "other backend check"),
  measured without a profiler, on ``--netns``;
* a cProfile of each run on ``--profile-netns`` (a second fresh namespace), and for the legacy
  backend a cProfile of the forked python-iptables children, which the parent's profiler cannot see.

Needs root and two fresh namespaces made by the caller (bench.py does that); acts only in them.
Example: ``python profile_module.py --backend legacy --cidrs 10000 --netns A --profile-netns B``;
``--backend native`` runs native nftables mode (``native_nftables: true``, Istio's inet tables).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import glob
import io
import ipaddress
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time


def _collection_root():
    for entry in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":"):
        if entry and os.path.isfile(os.path.join(entry, "ansible_collections", "meshops", "sidecar", "galaxy.yml")):
            return entry
    raise SystemExit("ANSIBLE_COLLECTIONS_PATH does not lead to meshops.sidecar (run through tests/bench/run.sh)")


sys.path.insert(0, _collection_root())

# pylint: disable=wrong-import-position
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import options as capture_options
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import run as capture_run
from ansible_collections.meshops.sidecar.plugins.module_utils._system import namespace
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import routes
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy, iptables_nft
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy_child
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import nft_plan, plan
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import nftables
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import nft_reconcile

# The module's argument_spec defaults, from the one option schema (so a new option needs nothing here).
DEFAULTS = {name: spec.get("default") for name, spec in capture_options.argument_spec().items()}
CHILD_DIR = tempfile.mkdtemp(prefix="meshops-profile-")
PHASES = {}
COMMANDS = []  # the commands one run started, each as "tool subcommand"
DIFF = False  # --diff: as a task run with ansible-playbook --diff


def _command_name(argv):
    words = [os.path.basename(argv[0])] + [word for word in argv[1:3] if not word.startswith("-")]
    return " ".join(words[:2])


def run(argv, data=None):
    """What the module's ``run`` does: AnsibleModule.run_command with C locale, text out."""
    COMMANDS.append(_command_name(argv))
    proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False,
                          env=dict(os.environ, LANGUAGE="C", LC_ALL="C"))
    return proc.returncode, proc.stdout, proc.stderr


def _timed(name, func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - start
    return wrapper


CHILD_WORK = ("legacy_read", "legacy_apply", "legacy_holds_rules")
ORIGINAL_WORK = {attr: getattr(iptables_legacy_child, attr) for attr in CHILD_WORK}


def _in_child_wrapped(name, work, profile):
    """Wrap work that ``iptables_legacy._in_child`` runs in the forked child: time (and profile) it there.

    The child reports through files in CHILD_DIR: the parent's profiler cannot see a forked child.
    """
    @functools.wraps(work)
    def wrapper(*args):
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler:
            profiler.enable()
        try:
            return work(*args)
        finally:
            if profiler:
                profiler.disable()
            stem = os.path.join(CHILD_DIR, "%s-%d" % (name, os.getpid()))
            if profiler:
                profiler.dump_stats(stem + ".prof")
            with open(stem + ".time", "w") as handle:
                handle.write(str(time.perf_counter() - start))
    return wrapper


def wrap_children(profile):
    for attr in CHILD_WORK:
        setattr(iptables_legacy_child, attr, _in_child_wrapped(attr, ORIGINAL_WORK[attr], profile))


def instrument():
    # The planners are imported by the run where it needs them: timed in their own modules.
    plan.plan_rules = _timed("plan", plan.plan_rules)
    nft_plan.plan_ruleset = _timed("native plan", nft_plan.plan_ruleset)
    for attr, name in (("build_options", "options"), ("desired_state", "desired state"),
                       ("owned_state", "owned state"), ("plan_changes", "compare"), ("render_state", "render"),
                       ("restore_text", "render"), ("select_backend", "select backend")):
        setattr(capture_run, attr, _timed(name, getattr(capture_run, attr)))
    for attr, name in (("desired_state", "native desired state"), ("live_state", "native live state"),
                       ("plan_changes", "native compare")):
        setattr(nft_reconcile, attr, _timed(name, getattr(nft_reconcile, attr)))
    namespace.enter = _timed("enter netns", namespace.enter)
    for cls in (iptables_nft.NftBackend, iptables_legacy.LegacyBackend):
        cls.read = _timed("read rules", cls.read)
        cls.apply = _timed("apply", cls.apply)
    nftables.NftablesBackend.read = _timed("read native tables (nft -j)", nftables.NftablesBackend.read)
    nftables.NftablesBackend.apply = _timed("apply native (nft -f)", nftables.NftablesBackend.apply)
    capture_run.CaptureRun._warn_about_other_backend = _timed(  # pylint: disable=protected-access
        "other backend check", capture_run.CaptureRun._warn_about_other_backend)  # pylint: disable=protected-access
    routes.RouteManager.policy_routes = _timed("routes", routes.RouteManager.policy_routes)
    routes.RouteManager.has_passthrough_v6 = _timed("routes", routes.RouteManager.has_passthrough_v6)
    iptables_legacy._in_child = _timed("legacy children (whole)", iptables_legacy._in_child)  # pylint: disable=protected-access
    wrap_children(profile=False)


class _Runner:
    """The ``_system.commands`` runner interface over this file's ``run`` and ``shutil.which``."""

    run = staticmethod(lambda argv, data=None: run(argv, data))
    which = staticmethod(shutil.which)


def execute(netns, backend, count):
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    params = dict(DEFAULTS, netns=netns, exclude_outbound_ip_ranges=[
        "%s/32" % ipaddress.IPv4Address(base + i) for i in range(count)])
    if backend == "native":
        params["native_nftables"] = True
    else:
        params["backend"] = backend
    warnings = []
    # As the bench's tasks run: not in check mode, and without --diff (the before/after text is then not built).
    runner = capture_run.CaptureRun(params, False, _Runner(), warnings.append, diff_mode=DIFF)
    result = runner.execute()
    return result, warnings


def child_times():
    total = 0.0
    for path in glob.glob(os.path.join(CHILD_DIR, "*.time")):
        with open(path) as handle:
            total += float(handle.read())
    return total


def _cpu():
    """CPU seconds of this process and of its children (python-iptables workers, iptables, ip) so far."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(netns, backend, count):
    PHASES.clear()
    del COMMANDS[:]
    for path in glob.glob(os.path.join(CHILD_DIR, "*")):
        os.unlink(path)
    start, cpu_start = time.perf_counter(), _cpu()
    result, warnings = execute(netns, backend, count)
    total, cpu = time.perf_counter() - start, _cpu() - cpu_start
    phases = dict(PHASES)
    if "legacy children (whole)" in phases:
        work = child_times()
        if work:
            phases["legacy children: python-iptables work"] = work
            phases["legacy children: fork, import iptc, IPC"] = phases["legacy children (whole)"] - work
    return {"total": total, "cpu": cpu, "changed": result["changed"], "backend": result["backend"], "phases": phases,
            "warnings": warnings, "commands": list(COMMANDS)}


def print_profile(title, stats_source, limit):
    out = io.StringIO()
    sources = stats_source if isinstance(stats_source, list) else [stats_source]
    stats = pstats.Stats(*sources, stream=out)
    stats.strip_dirs()
    print("---- %s: top %d by own time" % (title, limit))
    stats.sort_stats("tottime").print_stats(limit)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip() and "Ordered by" not in line
                    and "List reduced" not in line))
    out.seek(0)
    out.truncate()
    print("---- %s: top %d by cumulative time" % (title, limit))
    stats.sort_stats("cumulative").print_stats(limit)
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip() and "Ordered by" not in line
                    and "List reduced" not in line and "function calls" not in line))


def profiled(netns, backend, count, label, limit):
    for path in glob.glob(os.path.join(CHILD_DIR, "*")):
        os.unlink(path)
    profile = cProfile.Profile()
    profile.enable()
    execute(netns, backend, count)
    profile.disable()
    print_profile("%s, %s, parent process" % (label, backend), profile, limit)
    children = sorted(glob.glob(os.path.join(CHILD_DIR, "*.prof")))
    if children:
        print_profile("%s, %s, python-iptables children (%s)" % (
            label, backend, ", ".join(os.path.basename(c).rsplit("-", 1)[0] for c in children)),
            children, limit)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--backend", choices=("nft", "legacy", "native"), required=True,
                        help="an iptables backend, or native nftables mode")
    parser.add_argument("--cidrs", type=int, default=10000)
    parser.add_argument("--netns", required=True, help="fresh namespace for the timed runs")
    parser.add_argument("--profile-netns", help="fresh namespace for the profiled runs (none: no cProfile)")
    parser.add_argument("--limit", type=int, default=18, help="functions listed per profile")
    parser.add_argument("--json", help="write the timed summary here")
    parser.add_argument("--diff", action="store_true", help="as with ansible-playbook --diff (builds the before/after text)")
    args = parser.parse_args()
    global DIFF  # pylint: disable=global-statement
    DIFF = args.diff
    for name in (args.netns, args.profile_netns):
        if name is not None and not namespace.exists(name):
            raise SystemExit("no namespace %r" % name)
    instrument()
    summary = {}
    for label in ("apply", "noop"):
        summary[label] = measure(args.netns, args.backend, args.cidrs)
        expected = label == "apply"
        if summary[label]["changed"] != expected:
            raise SystemExit("%s: changed=%s, expected %s" % (label, summary[label]["changed"], expected))
        print("%s %s, %d CIDRs: %.3f s (CPU %.3f s); phases (inclusive): %s" % (
            args.backend, "first apply" if expected else "no-op re-run", args.cidrs, summary[label]["total"],
            summary[label]["cpu"],
            ", ".join("%s %.3f" % kv for kv in sorted(summary[label]["phases"].items(), key=lambda kv: -kv[1]))))
        print("    %d commands: %s" % (len(summary[label]["commands"]), ", ".join(summary[label]["commands"])))
    if args.profile_netns:
        wrap_children(profile=True)
        for label in ("first apply", "no-op re-run"):
            profiled(args.profile_netns, args.backend, args.cidrs, label, args.limit)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=1)
    shutil.rmtree(CHILD_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(CHILD_DIR, ignore_errors=True)
