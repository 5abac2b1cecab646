# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data-path part of ``make bench``: what excluded CIDRs cost every new outbound connection.

Istio writes one ``RETURN`` rule per excluded CIDR, so the first packet of every new outbound
connection walks the whole list before it reaches the jump to ``ISTIO_REDIRECT``. This part measures
the connect latency of a captured new connection with 0, 100, 1,000 and 10,000 excluded CIDRs, on
``backend: nft`` (iptables-nft), ``backend: legacy`` and ``native_nftables: true``, with and without
``cidr_sets``, and the time of the module's first apply of the 10,000 (set and rules).

One *cell* per (mode, cidr_sets, CIDR count), each in its own namespace made by bench.py:

* ``lo`` up, a veth pair ``dp0``/``dp1`` with both ends in the namespace, 198.18.0.1/15 on ``dp0`` (the
  destination's route; nothing should reach it: every connection is redirected before it leaves,
  and whatever did would stay in the namespace);
* the module's rules, applied in-process (``_capture.run.CaptureRun``, as profile_module.py does, in a
  child process that enters the namespace itself) with ``exclude_outbound_ip_ranges`` = N
  non-adjacent /30s of 10.0.0.0/8 (rule text only: nothing is ever sent to them), IPv4 only; the
  apply is timed in-process, wall and CPU: the *load* figures;
* a worker process that stays in the namespace (``ip netns exec``), listens on 0.0.0.0:15001 (the
  stand-in proxy), drops to the app uid/gid (1000 by default, never the proxy's 1337), and on request
  connects to 198.19.255.254:80 (outside every excluded CIDR, so the first packet walks the whole
  list) ``connects`` times in a tight loop: connect (timed), accept, close both (the client with
  ``SO_LINGER`` 0, so no TIME_WAIT piles up). Each sample checks with ``SO_ORIGINAL_DST`` that the
  connection really was redirected from 198.19.255.254:80. A sample's value is the median of its
  connects' times.

All cells are measured in rounds, each cell once per round, in a shuffled order, so that a change
in the machine's load falls on every cell alike. A cell's latency is the median of its samples; its
ratio is that over the 0-CIDR cell of the same mode and the same ``cidr_sets``. The two 0-CIDR
cells of a mode (with and without ``cidr_sets``: the same rules) give the noise floor.

Traffic: only inside each namespace, from a socket to 198.19.255.254 redirected to 127.0.0.1.
Standard library only (and the collection's own module_utils in the apply child).

Internal subcommands (run by the part itself): ``worker`` and ``apply``.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import random
import re
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
MODES = ("nft", "legacy", "native")
MODE_TITLES = {"nft": "iptables-nft (`backend: nft`)", "legacy": "legacy (`backend: legacy`)",
               "native": "native nftables (`native_nftables: true`)"}
DEVICE, PEER = "dp0", "dp1"  # a veth pair with both ends in the cell's namespace (no dummy driver here)
LOCAL_ADDRESS = "198.18.0.1/15"  # on dp0: the destination is on-link, so connect has a route
DESTINATION = ("198.19.255.254", 80)  # in 198.18.0.0/15, outside every excluded CIDR
PROXY_PORT = 15001
EXCLUDE_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
TARGET_RATIO = 1.05  # with cidr_sets, 10,000 CIDRs at most this times the latency with none
TARGET_LOAD = 0.3  # seconds: the first apply of the 10,000 with cidr_sets
WORKER_TIMEOUT = 120  # seconds one sample may take at most


def exclusions(count):
    """``count`` non-adjacent /30s of 10.0.0.0/8 (every other /29's first half): no merge, N set entries."""
    return ["%s/30" % ipaddress.IPv4Address(EXCLUDE_BASE + 8 * i) for i in range(count)]


# --- the worker: inside one namespace, as the app uid ------------------------------------------

def worker_main(args):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", PROXY_PORT))
    listener.listen(4096)
    listener.settimeout(5)
    os.setgroups([])
    os.setgid(args.uid)
    os.setuid(args.uid)
    if os.getuid() != args.uid or os.geteuid() != args.uid or args.uid == 1337:
        raise SystemExit("worker: could not drop to app uid %d" % args.uid)
    linger = struct.pack("ii", 1, 0)
    clock = time.perf_counter_ns
    print(json.dumps({"ready": True, "uid": os.getuid(), "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        count = int(words[1])
        times = [0] * count
        original = None
        gc.disable()
        started = clock()
        for i in range(count):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            client.settimeout(5)
            begin = clock()
            client.connect(DESTINATION)
            times[i] = clock() - begin
            accepted, dummy = listener.accept()
            if i == 0:
                raw = accepted.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                original = "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])
            client.close()
            accepted.close()
        elapsed = clock() - started
        gc.enable()
        times.sort()
        print(json.dumps({"median": times[count // 2] / 1000.0, "mean": sum(times) / count / 1000.0,
                          "p10": times[count // 10] / 1000.0, "p90": times[count * 9 // 10] / 1000.0,
                          "loop": elapsed / count / 1000.0, "original": original}), flush=True)
    return 0


# --- the apply child: the module's engine in-process --------------------------------------------

def _collection_root():
    for entry in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":"):
        if entry and os.path.isfile(os.path.join(entry, "ansible_collections", "meshops", "sidecar", "galaxy.yml")):
            return entry
    raise SystemExit("ANSIBLE_COLLECTIONS_PATH does not lead to meshops.sidecar (run through tests/bench/run.sh)")


def _cpu():
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def apply_main(args):
    """One first apply (and, with ``--rerun``, the no-op re-run) in ``--netns``; JSON on stdout."""
    sys.path.insert(0, _collection_root())
    # pylint: disable=import-outside-toplevel
    import shutil
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture import options as capture_options
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture import run as capture_run

    spec = capture_options.argument_spec()
    if args.sets and "cidr_sets" not in spec:
        print(json.dumps({"error": "unsupported parameter: cidr_sets (not in this checkout's argument spec)"}))
        return 3

    class Runner:
        """The ``_system.commands`` runner interface, as profile_module.py's: run_command with C locale."""

        @staticmethod
        def run(argv, data=None):
            proc = subprocess.run(argv, input=data, capture_output=True, text=True, check=False,
                                  env=dict(os.environ, LANGUAGE="C", LC_ALL="C"))
            return proc.returncode, proc.stdout, proc.stderr

        which = staticmethod(shutil.which)

    params = {name: value.get("default") for name, value in spec.items()}
    params.update(netns=args.netns, ipv6=False, exclude_outbound_ip_ranges=exclusions(args.count))
    if args.sets:
        params["cidr_sets"] = True
    if args.mode == "native":
        params["native_nftables"] = True
    else:
        params["backend"] = args.mode
    out = {}
    for label in ("apply", "rerun") if args.rerun else ("apply",):
        warnings = []
        start, cpu = time.perf_counter(), _cpu()
        try:
            result = capture_run.CaptureRun(dict(params), False, Runner(), warnings.append, diff_mode=False).execute()
        except Exception as exc:  # pylint: disable=broad-except
            out["error"] = "%s: %s: %s" % (label, type(exc).__name__, exc)
            break
        out[label] = {"wall": time.perf_counter() - start, "cpu": _cpu() - cpu, "changed": bool(result.get("changed")),
                      "failed": bool(result.get("failed")), "msg": result.get("msg"), "backend": result.get("backend"),
                      "warnings": warnings}
        if result.get("failed"):
            out["error"] = "%s: %s" % (label, result.get("msg"))
            break
    print(json.dumps(out))
    return 0 if "error" not in out else 1


# --- the part, run by bench.py ------------------------------------------------------------------

class DatapathError(Exception):
    pass


class Cell:
    def __init__(self, mode, sets, count):
        self.mode, self.sets, self.count = mode, sets, count
        self.netns = None
        self.proc = None
        self.samples = []  # (round, sample dict)
        self.apply = None  # the set-up's first apply and re-run (apply_main's JSON)
        self.kernel = None  # what check_cell found

    @property
    def key(self):
        return "%s %s %d" % (self.mode, "sets" if self.sets else "rules", self.count)

    def start_worker(self, uid):
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, sys.executable, HERE, "worker", "--uid",
                                      str(uid)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        hello = self._reply()
        if not hello.get("ready"):
            raise DatapathError("%s: worker did not start: %s" % (self.key, hello))

    def _reply(self):
        ready, dummy, dummy = select.select([self.proc.stdout], [], [], WORKER_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise DatapathError("%s: no answer from the worker in %s (exit status %s)"
                                % (self.key, self.netns, self.proc.poll()))
        return json.loads(line)

    def sample(self, connects):
        self.proc.stdin.write("run %d\n" % connects)
        self.proc.stdin.flush()
        result = self._reply()
        if result["original"] != "%s:%d" % DESTINATION:
            raise DatapathError("%s: the connection's original destination was %s, not %s:%d: not redirected?"
                                % ((self.key, result["original"]) + DESTINATION))
        return result

    def stop(self):
        if self.proc is None:
            return
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.proc.kill()  # our own child, by its Popen handle
            self.proc.wait()
        self.proc = None


def _netns_run(netns, argv):
    return subprocess.run(["ip", "netns", "exec", netns] + argv, capture_output=True, text=True, check=True).stdout


def prepare(netns):
    """The destination's route: 198.18.0.0/15 on ``dp0``, a veth whose peer ``dp1`` (no address) is in the
    same namespace, so even a packet that escaped capture would stay in it."""
    for argv in (["link", "add", DEVICE, "type", "veth", "peer", "name", PEER],
                 ["addr", "add", LOCAL_ADDRESS, "dev", DEVICE], ["link", "set", PEER, "up"],
                 ["link", "set", DEVICE, "up"]):
        subprocess.run(["ip", "-n", netns] + argv, check=True)


def apply(netns, mode, sets, count, rerun=False):
    argv = ["ip", "netns", "exec", netns, sys.executable, HERE, "apply", "--netns", netns, "--mode", mode,
            "--count", str(count)] + (["--sets"] if sets else []) + (["--rerun"] if rerun else [])
    # Under ip netns exec, and with ``netns`` (the module enters it itself, as a task does): were
    # that ever to fail, the rules would still land in the bench's namespace, never in the host's.
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        result = {"error": "apply child failed (rc %d): %s" % (proc.returncode, (proc.stdout + proc.stderr)[-2000:])}
    return result


def kernel_entries(netns, mode, sets):
    """How the kernel matches the excluded CIDRs: (per-CIDR rules, set elements, set-match rules)."""
    if mode == "native":
        ruleset = json.loads(_netns_run(netns, ["nft", "-j", "list", "table", "inet", "istio-proxy-nat"]))
        rules = elements = matches = 0
        for item in ruleset["nftables"]:
            if "set" in item:
                elements += len(item["set"].get("elem", []))
            elif "rule" in item and item["rule"].get("chain") == "istio-output":
                text = json.dumps(item["rule"]["expr"])
                if '"daddr"' in text and '"10.' in text:
                    rules += 1
                elif '"daddr"' in text and '"@' in text:
                    matches += 1
        return rules, elements, matches
    save = _netns_run(netns, ["iptables-legacy-save" if mode == "legacy" else "iptables-nft-save", "-t", "nat"])
    rules = sum(1 for line in save.splitlines() if re.match(r"-A ISTIO_OUTPUT -d 10\.\S+ -j RETURN$", line))
    matches = sum(1 for line in save.splitlines()
                  if line.startswith("-A ISTIO_OUTPUT") and "--match-set istio-exclude-v4 dst" in line)
    elements = 0
    if sets:
        elements = sum(1 for line in _netns_run(netns, ["ipset", "save"]).splitlines()
                       if line.startswith("add istio-exclude-v4 "))
    return rules, elements, matches


def check_cell(cell):
    rules, elements, matches = kernel_entries(cell.netns, cell.mode, cell.sets)
    if cell.sets and cell.count:
        ok = rules == 0 and elements == cell.count and matches == 1
    else:
        ok = rules == cell.count and elements == 0 and matches == 0
    if not ok:
        raise DatapathError("%s: the kernel holds %d per-CIDR rules, %d set elements and %d set matches; expected %s"
                            % (cell.key, rules, elements, matches,
                               "0, %d, 1" % cell.count if cell.sets and cell.count else "%d, 0, 0" % cell.count))
    return {"rules": rules, "elements": elements, "matches": matches}


def probe_sets(nss, modes, log):
    """Whether ``cidr_sets: true`` works in this checkout, per mode (2 CIDRs, a throw-away namespace)."""
    works = {}
    for mode in modes:
        netns = nss.create()
        try:
            result = apply(netns, mode, True, 2)
            if "error" in result:
                works[mode] = result["error"]
            else:
                try:
                    rules, elements, matches = kernel_entries(netns, mode, True)
                    works[mode] = True if (rules, elements, matches) == (0, 2, 1) else (
                        "no set in the kernel (%d rules, %d elements, %d set matches)" % (rules, elements, matches))
                except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
                    works[mode] = "cannot read the rules: %s" % exc
        finally:
            nss.delete(netns)
        log("   cidr_sets probe, %s: %s" % (mode, "works" if works[mode] is True else works[mode]))
    return works


def part_datapath(args, nss, report, log):
    """Measure; fill ``report["datapath"]``; return the results.md lines."""
    started = time.monotonic()
    modes = [mode for mode in MODES if mode in args.backends]
    sizes = list(args.sizes)
    top = max(sizes)
    data = report.setdefault("datapath", {})
    data["load_start"] = os.getloadavg()
    log("== data path: connect latency of a captured new connection, %s excluded CIDRs, modes %s"
        % (", ".join(str(n) for n in sizes), ", ".join(modes)))
    if args.cidr_sets == "false":
        sets_modes = {}
    else:
        probe = probe_sets(nss, modes, log)
        data["cidr_sets_probe"] = {mode: (True if value is True else str(value)) for mode, value in probe.items()}
        sets_modes = {mode for mode, value in probe.items() if value is True}
        if args.cidr_sets == "true" and len(sets_modes) < len(modes):
            raise DatapathError("--cidr-sets true, but cidr_sets does not work here: %s" % data["cidr_sets_probe"])
    cells = [Cell(mode, sets, count) for mode in modes for sets in (False, True)
             if not sets or mode in sets_modes for count in sizes]
    load = {}  # "mode sets|rules" -> [apply result]
    try:
        # Set-up: every cell's namespace, rules (timed: a first apply on a fresh namespace) and worker.
        setup_order = list(cells)
        random.Random(1).shuffle(setup_order)
        for cell in setup_order:
            cell.netns = nss.create()
            prepare(cell.netns)
            result = apply(cell.netns, cell.mode, cell.sets, cell.count, rerun=True)
            if "error" in result:
                raise DatapathError("%s: apply failed: %s" % (cell.key, result["error"]))
            if not result["apply"]["changed"] or result["rerun"]["changed"]:
                raise DatapathError("%s: first apply changed=%s, re-run changed=%s (expected true, false)"
                                    % (cell.key, result["apply"]["changed"], result["rerun"]["changed"]))
            cell.apply = result
            cell.kernel = check_cell(cell)
            if cell.count in (0, top):
                load.setdefault("%s %s %d" % (cell.mode, "sets" if cell.sets else "rules", cell.count),
                                []).append(result["apply"])
            cell.start_worker(args.app_uid)
        log("   set-up: %d cells (namespace, rules checked in the kernel, worker as uid %d) in %.0f s"
            % (len(cells), args.app_uid, time.monotonic() - started))
        # More first applies of the largest list and of none, for the load figures, in fresh namespaces.
        extra = [(cell.mode, cell.sets, cell.count) for cell in cells if cell.count in (0, top)] * args.load_reps
        random.Random(2).shuffle(extra)
        load_started = time.monotonic()
        for mode, sets, count in extra:
            netns = nss.create()
            try:
                result = apply(netns, mode, sets, count)
            finally:
                nss.delete(netns)
            if "error" in result or not result["apply"]["changed"]:
                raise DatapathError("load %s %s %d: %s" % (mode, sets, count, result.get("error") or "not changed"))
            load.setdefault("%s %s %d" % (mode, "sets" if sets else "rules", count), []).append(result["apply"])
        log("   load: %d more first applies of %d and 0 CIDRs in %.0f s"
            % (len(extra), top, time.monotonic() - load_started))
        # The rounds.
        rounds_started = time.monotonic()
        loads = []
        rnd = 0
        while rnd < args.dp_rounds:
            round_started = time.monotonic()
            order = list(cells)
            random.Random(1000 + rnd).shuffle(order)
            for cell in order:
                cell.samples.append((rnd, cell.sample(args.connects)))
            loads.append(os.getloadavg()[0])
            rnd += 1
            spent = time.monotonic() - round_started
            if rnd % 50 == 0 or rnd == 1:
                log("   round %d: %.1f s, load %.2f" % (rnd, spent, loads[-1]))
            if rnd >= args.dp_min_rounds and time.monotonic() - rounds_started + spent > args.dp_budget:
                log("   stopping at %d rounds to stay within --datapath-budget %d s" % (rnd, args.dp_budget))
                break
        data["rounds"] = rnd
        data["rounds_seconds"] = time.monotonic() - rounds_started
        data["round_loads"] = loads
    finally:
        for cell in cells:
            cell.stop()
            if cell.netns:
                nss.delete(cell.netns)
    data["elapsed"] = time.monotonic() - started
    data["load_end"] = os.getloadavg()
    data["connects"] = args.connects
    data["app_uid"] = args.app_uid
    data["modes"] = modes
    data["sizes"] = sizes
    data["sets_modes"] = sorted(sets_modes)
    data["cells"] = summarise(cells)
    data["load"] = {key: {"wall": [r["wall"] for r in runs], "cpu": [r["cpu"] for r in runs]}
                    for key, runs in load.items()}
    data["load_reps"] = args.load_reps
    log("   data path: %d rounds of %d cells x %d connects; the part took %.0f s"
        % (data["rounds"], len(cells), args.connects, data["elapsed"]))
    return datapath_lines(data)


def summarise(cells):
    """Per cell: the median of its samples, and its ratio to the same mode with 0 CIDRs.

    The 0-CIDR base of a mode pools its 0-CIDR cells (with and without ``cidr_sets``: the same rules,
    as check_cell proved): per round the mean of their samples, overall the median of those means.
    Two cells halve what one cell's own placement (its namespace, its process) adds to every ratio.
    """
    zeros = {}
    for cell in cells:
        if cell.count == 0:
            zeros.setdefault(cell.mode, []).append(cell)
    bases = {}
    for mode, group in zeros.items():
        per_round = {}
        for cell in group:
            for rnd, sample in cell.samples:
                per_round.setdefault(rnd, []).append(sample["median"])
        by_round = {rnd: statistics.mean(values) for rnd, values in per_round.items() if len(values) == len(group)}
        bases[mode] = (statistics.median(by_round.values()), by_round)
    out = {}
    for cell in cells:
        medians = [sample["median"] for dummy, sample in cell.samples]
        base, base_by_round = bases[cell.mode]
        paired = [sample["median"] / base_by_round[rnd] for rnd, sample in cell.samples if rnd in base_by_round]
        row = {"mode": cell.mode, "sets": cell.sets, "count": cell.count, "median_us": statistics.median(medians),
               "mean_us": statistics.median(sample["mean"] for dummy, sample in cell.samples),
               "loop_us": statistics.median(sample["loop"] for dummy, sample in cell.samples),
               "samples": medians, "kernel": cell.kernel, "base_us": base, "base_cells": len(zeros[cell.mode]),
               "ratio": statistics.median(medians) / base,
               "paired_ratio": statistics.median(paired),
               "paired_ratio_quartiles": _quartiles(paired),
               "paired_ratio_ci95": _bootstrap_ci(paired),
               "apply": cell.apply["apply"], "rerun": cell.apply["rerun"]}
        row["extra_us"] = row["median_us"] - base
        rules_zero = [zero for zero in zeros[cell.mode] if not zero.sets]
        if rules_zero:
            zero_by_round = dict((rnd, sample["median"]) for rnd, sample in rules_zero[0].samples)
            null = [sample["median"] / zero_by_round[rnd] for rnd, sample in cell.samples if rnd in zero_by_round]
            row["vs_rules_zero"] = row["median_us"] / statistics.median(zero_by_round.values())
            row["vs_rules_zero_paired"] = statistics.median(null)
            row["vs_rules_zero_ci95"] = _bootstrap_ci(null)
        out[cell.key] = row
    return out


def _bootstrap_ci(values, resamples=2000):
    """A 95 % bootstrap interval of the median of ``values`` (the rounds resampled with replacement)."""
    rng = random.Random(7)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for dummy in range(resamples))
    return [medians[int(resamples * 0.025)], medians[int(resamples * 0.975) - 1]]


def _quartiles(values):
    if len(values) < 4:
        return [min(values), max(values)]
    q = statistics.quantiles(values, n=4)
    return [q[0], q[2]]


def fmt(value, digits=2):
    return ("%%.%df" % digits) % value


def datapath_lines(data):
    """The data-path tables of results.md and their verdicts; verdicts also go into ``data["targets"]``."""
    cells, sizes, top = data["cells"], data["sizes"], max(data["sizes"])
    lines = ["Data path (%d rounds, each of the %d cells once per round in a shuffled order; a sample = the median "
             "connect time of %d captured new connections from uid %d; a cell = the median of its samples; ratio = "
             "over the same mode with 0 CIDRs (both of its 0-CIDR cells, with and without `cidr_sets`, which hold the "
             "same rules, pooled: per round their mean); paired = the median of the per-round ratios, with its "
             "quartiles and a 95 %% bootstrap interval; the 0-CIDR rows' own ratios show how far one cell strays). "
             "Load average at the start of the part %s, at its end %s, during the rounds %s-%s; the part took %.0f s:"
             % (data["rounds"], len(cells), data["connects"], data["app_uid"],
                "/".join("%.2f" % x for x in data["load_start"]), "/".join("%.2f" % x for x in data["load_end"]),
                fmt(min(data["round_loads"])), fmt(max(data["round_loads"])), data["elapsed"]), ""]
    if data.get("cidr_sets_probe") and len(data["sets_modes"]) < len(data["modes"]):
        lines += ["**cidr_sets not measured in %s**: %s" % (
            ", ".join(m for m in data["modes"] if m not in data["sets_modes"]),
            "; ".join("%s: %s" % kv for kv in data["cidr_sets_probe"].items() if kv[1] is not True)), ""]
    elif not data.get("cidr_sets_probe"):
        lines += ["cidr_sets not measured (`--cidr-sets false`).", ""]
    lines += ["| mode | cidr_sets | CIDRs | connect, median us | + us over 0 | ratio | paired ratio (quartiles) "
              "| paired, 95 % interval |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for mode in data["modes"]:
        for sets in (False, True):
            for count in sizes:
                row = cells.get("%s %s %d" % (mode, "sets" if sets else "rules", count))
                if row is None:
                    continue
                q, ci = row["paired_ratio_quartiles"], row["paired_ratio_ci95"]
                lines.append("| %s | %s | %s | %s | %s | %s | %s (%s-%s) | %s-%s |" % (
                    mode, "true" if sets else "false", "{:,}".format(count), fmt(row["median_us"], 1),
                    fmt(row["extra_us"], 1), fmt(row["ratio"], 3), fmt(row["paired_ratio"], 3), fmt(q[0]), fmt(q[1]),
                    fmt(ci[0], 3), fmt(ci[1], 3)))
    lines.append("")
    targets = data.setdefault("targets", {})
    lines.append("Noise floor: the 0-CIDR cell with `cidr_sets: true` over the one without (the same rules): %s." % (
        ", ".join("%s %s (paired %s)" % (mode, fmt(cells["%s sets 0" % mode]["vs_rules_zero"], 3),
                                         fmt(cells["%s sets 0" % mode]["vs_rules_zero_paired"], 3))
                  for mode in data["sets_modes"]) or "not measured"))
    lines.append("")
    lines.append("The module's first apply on a fresh namespace, in-process (`CaptureRun`, as a task runs it on the "
                 "target, without Ansible around it): seconds, median of %d runs each (the cells' own and "
                 "`--load-reps` more), wall (min-max) and CPU:" % (1 + data.get("load_reps", 0)))
    lines.append("")
    lines.append("| mode | cidr_sets | 0 CIDRs, wall | CPU | %s CIDRs, wall | min-max | CPU | the %s's own, wall | CPU |"
                 % ("{:,}".format(top), "{:,}".format(top)))
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode in data["modes"]:
        for kind in ("rules", "sets"):
            full, empty = data["load"].get("%s %s %d" % (mode, kind, top)), data["load"].get("%s %s 0" % (mode, kind))
            if not full or not empty:
                continue
            wall, cpu = statistics.median(full["wall"]), statistics.median(full["cpu"])
            wall0, cpu0 = statistics.median(empty["wall"]), statistics.median(empty["cpu"])
            lines.append("| %s | %s | %s | %s | %s | %s-%s | %s | %s | %s |" % (
                mode, "true" if kind == "sets" else "false", fmt(wall0, 3), fmt(cpu0, 3), fmt(wall, 3),
                fmt(min(full["wall"]), 3), fmt(max(full["wall"]), 3), fmt(cpu, 3), fmt(wall - wall0, 3),
                fmt(cpu - cpu0, 3)))
    lines.append("")
    for mode in data["modes"]:
        if mode in data["sets_modes"]:
            row = cells["%s sets %d" % (mode, top)]
            # The verdict is the paired ratio's: a sample is either quiet or slowed by the machine's other work,
            # and only the pairing within a round cancels that; the ratio of medians is shown beside it.
            ok = row["paired_ratio"] <= TARGET_RATIO
            low, high = row["paired_ratio_ci95"]
            targets["%s latency ratio" % mode] = row["ratio"]
            targets["%s latency paired ratio" % mode] = row["paired_ratio"]
            targets["%s latency paired ratio ci95" % mode] = row["paired_ratio_ci95"]
            verdict = "met" if ok else "NOT met"
            if ok and high > TARGET_RATIO or not ok and low <= TARGET_RATIO:
                verdict += ", but the 95 % interval crosses the line"
            lines.append("- %s, `cidr_sets: true`, %s CIDRs: %s x the latency with none, paired (95 %% interval %s-%s; "
                         "ratio of medians %s); +%s us per connection; target <= %s: %s"
                         % (mode, "{:,}".format(top), fmt(row["paired_ratio"], 3), fmt(low, 3), fmt(high, 3),
                            fmt(row["ratio"], 3), fmt((row["paired_ratio"] - 1) * row["base_us"], 2), TARGET_RATIO,
                            verdict))
            runs = data["load"]["%s sets %d" % (mode, top)]
            wall = statistics.median(runs["wall"])
            targets["%s load seconds" % mode] = wall
            empty = data["load"]["%s sets 0" % mode]
            own = wall - statistics.median(empty["wall"])
            lines.append("- %s, `cidr_sets: true`, the first apply with the %s (set and rules): %s s wall (fastest %s), "
                         "%s s CPU; target <= %s s: %s; the %s's own part (over the first apply with none): %s s"
                         % (mode, "{:,}".format(top), fmt(wall, 3), fmt(min(runs["wall"]), 3),
                            fmt(statistics.median(runs["cpu"]), 3), TARGET_LOAD, "met" if wall <= TARGET_LOAD else (
                                "met in CPU time only" if statistics.median(runs["cpu"]) <= TARGET_LOAD else "NOT met"),
                            "{:,}".format(top), fmt(own, 3)))
        else:
            lines.append("- %s, `cidr_sets: true`: not measured (the option does not work in this checkout)" % mode)
        row = cells["%s rules %d" % (mode, top)]
        lines.append("- %s, one rule per CIDR (Istio's), %s CIDRs: %s x paired (ratio of medians %s), +%s us per "
                     "connection" % (mode, "{:,}".format(top), fmt(row["paired_ratio"]), fmt(row["ratio"]),
                                     fmt(row["extra_us"], 1)))
    lines.append("")
    return lines


def add_arguments(parser):
    """bench.py's options of this part."""
    group = parser.add_argument_group("data path (the datapath part)")
    group.add_argument("--datapath-only", action="store_true",
                       help="run only the data-path part (same as --parts datapath)")
    group.add_argument("--cidr-sets", choices=("auto", "true", "false"), default="auto",
                       help="measure with cidr_sets true as well: auto = where a probe shows it works (default)")
    group.add_argument("--connects", type=int, default=500, help="connects per sample (default 500)")
    group.add_argument("--datapath-rounds", dest="dp_rounds", type=int, default=1000,
                       help="rounds at most (default 1000: --datapath-budget decides)")
    group.add_argument("--datapath-min-rounds", dest="dp_min_rounds", type=int, default=5,
                       help="never fewer rounds, even over the budget (default 5)")
    group.add_argument("--datapath-budget", dest="dp_budget", type=int, default=160,
                       help="seconds the rounds may take (default 160; set-up and load runs come on top)")
    group.add_argument("--load-reps", type=int, default=4,
                       help="first applies of the largest list and of none per mode and cidr_sets, beyond the "
                            "cells' own (default 4)")
    group.add_argument("--app-uid", type=int, default=1000, help="the app's uid and gid (not 1337; default 1000)")


def main(argv):
    parser = argparse.ArgumentParser(description="internal subcommands of the data-path part")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--uid", type=int, required=True)
    applier = sub.add_parser("apply")
    applier.add_argument("--netns", required=True)
    applier.add_argument("--mode", choices=MODES, required=True)
    applier.add_argument("--count", type=int, required=True)
    applier.add_argument("--sets", action="store_true")
    applier.add_argument("--rerun", action="store_true")
    args = parser.parse_args(argv)
    return worker_main(args) if args.command == "worker" else apply_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
