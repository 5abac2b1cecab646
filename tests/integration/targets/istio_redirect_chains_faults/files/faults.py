# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fault injection for istio_redirect_chains on real network namespaces (standard library only).

    faults.py --workdir DIR [--backend nft|legacy] [--seed S] [--kills N] [--cidrs N] [--quick]
              [--timeout-case] TEST:NETNS [TEST:NETNS ...]
    faults.py snapshot NETNS [NETNS ...]

TEST is kill, writer, records or edges (with --backend), or lock (both backends); each runs in the
namespace named after it, which must exist and be this test's alone. All tests run, in the order
given; the exit code is 1 when any failed.

Every apply is ``engine_apply.py`` (the module's engine, see there why not ``ansible -m``) started
as the leader of its own process group, so that a kill, or a timeout, ends it together with what
it started (iptables-nft-restore, the python-iptables worker). This process is a child subreaper:
whatever a killed run leaves is reaped here, and a check only starts once the whole group is gone.
Each test prints one JSON line per step and stops at its first failed check with the reason (the
kill, records and edges tests note what a kill, a kind of damage or a value left wrong and go on,
failing at their end); the next test still runs. The namespaces are made and deleted by the
calling playbook; this only works inside them.

State is read with the backend's own save tools inside the namespace (``iptables-nft-save`` and
``ip6tables-nft-save``, or the ``-legacy-save`` ones), without comment lines and with the chain
counters zeroed: "byte-identical" below compares that text. Where rules are compared rather than
bytes (a repaired run against a fresh one), a table is parsed into ``{chain: [rule, ...]}``:
chain order, which the nft backend does not keep across a rewrite, is ignored; rule order is not.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import fcntl
import ipaddress
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINE = os.path.join(HERE, "engine_apply.py")
PYTHON = sys.executable
RECORD_DIR = "/run/meshops-sidecar"
XTABLES_LOCK = "/run/xtables.lock"
XTABLES_LOCK_TIMEOUT = 30  # the legacy backend's wait for the lock (iptables_legacy.XTABLES_LOCK_TIMEOUT)
FAMILIES = ("ipv4", "ipv6")
CAPTURE_TABLES = ("mangle", "nat", "raw")
BUILTIN = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
SAVE = {("nft", "ipv4"): "iptables-nft-save", ("nft", "ipv6"): "ip6tables-nft-save",
        ("legacy", "ipv4"): "iptables-legacy-save", ("legacy", "ipv6"): "ip6tables-legacy-save"}
RUN_TIMEOUT = 120  # seconds for one engine run; a hang is a failure, never a wait forever
_COUNTERS = re.compile(r"\[\d+:\d+\]$")


class Failure(Exception):
    """A check failed: the message says which and why."""


def log(**fields):
    print(json.dumps(fields, sort_keys=True), flush=True)


def check(condition, message, **details):
    if not condition:
        raise Failure(message + ("" if not details else ": " + json.dumps(details, sort_keys=True, default=str)))


# Processes: each engine run a process group of its own, reaped here whatever happens to it.

def become_subreaper():
    """Orphans of the runs (a worker whose parent was killed) are re-parented to this process, not to init."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans(pgid):
    """Reap the processes of group ``pgid`` re-parented to this process (their parent was killed).

    By pid, never ``waitpid(-1)``: that could take another thread's child from under subprocess."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and int(fields[2]) == pgid:  # ppid, pgrp
            try:
                os.waitpid(int(name), os.WNOHANG)
            except ChildProcessError:
                pass


def group_gone(pgid, timeout=15.0):
    """Wait until no process of group ``pgid`` is left (reaping the orphans); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        reap_orphans(pgid)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            raise Failure("process group %d still has processes %.0f s after SIGKILL" % (pgid, timeout))
        time.sleep(0.01)


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    group_gone(proc.pid)


class Engine:
    """Starts engine_apply.py runs; the one running is killed, with its group, if this process is told to stop."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.count = 0
        self.running = None

    def start(self, params):
        self.count += 1
        path = os.path.join(self.workdir, "params-%d-%d.json" % (os.getpid(), self.count))
        with open(path, "w") as handle:
            json.dump(params, handle)
        self.running = subprocess.Popen([PYTHON, ENGINE, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True)
        return self.running

    def finish(self, proc, timeout=RUN_TIMEOUT):
        """The result of a started run: its JSON line; a crash or a hang is a Failure."""
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise Failure("an engine run did not end within %d s (killed)" % timeout)
        finally:
            self.running = None
        group_gone(proc.pid)
        if proc.returncode not in (0, 1):
            raise Failure("the engine crashed (rc=%d): %s" % (proc.returncode, err.strip()[-3000:]))
        try:
            return json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise Failure("the engine printed no result (rc=%d): %r %r" % (proc.returncode, out[-500:], err[-2000:]))

    def run(self, params, timeout=RUN_TIMEOUT):
        started = time.monotonic()
        result = self.finish(self.start(params), timeout)
        result["wall"] = round(time.monotonic() - started, 3)
        return result

    def ok(self, params, what):
        result = self.run(params)
        check(not result.get("failed"), "%s failed" % what, result=result)
        return result

    def stop(self):
        if self.running is not None and self.running.poll() is None:
            kill_group(self.running)


def stop_on_sigterm(engine):
    """``timeout`` (the playbook's bound) sends SIGTERM: end the running apply's group before exiting."""
    def handler(signum, frame):  # pylint: disable=unused-argument
        engine.stop()
        raise SystemExit("stopped by signal %d" % signum)
    signal.signal(signal.SIGTERM, handler)


# Reading a namespace.

def command(argv, data=None, timeout=60):
    try:
        proc = subprocess.run(argv, input=data, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Failure("%s did not end within %d s" % (" ".join(argv), timeout))
    if proc.returncode != 0:
        raise Failure("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def save_text(netns, backend, family):
    """The save tool's output without comments and with chain counters zeroed: the byte-compared form."""
    lines = []
    for line in command(["ip", "netns", "exec", netns, SAVE[backend, family]]).splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = _COUNTERS.sub("[0:0]", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def parse_tables(text):
    """``{table: {chain: [rule]}}``; built-in chains without rules and tables with nothing left out."""
    tables, table = {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            dummy, chain, rule = (line.split(" ", 2) + [""])[:3]
            table.setdefault(chain, []).append(rule)
        elif line.strip() and line != "COMMIT":
            raise Failure("unexpected save line %r" % line)
    return {name: kept for name, kept in (
        (name, {chain: rules for chain, rules in chains.items() if rules or chain not in BUILTIN})
        for name, chains in tables.items()) if kept}


def record_path(netns):
    return os.path.join(RECORD_DIR, "netns-%s-%d.json" % (netns, os.stat("/run/netns/" + netns).st_ino))


def read_record(netns):
    try:
        with open(record_path(netns), "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return b"(a directory)"


def record_problem(data):
    """Why ``data`` (bytes, None for no record) is not a record as the module writes it, or None."""
    if data is None:
        return None
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return "not JSON: %s" % exc
    # "nftables" is the native mode's stamp, which a record may carry too.
    if not isinstance(parsed, dict) or not {"rules"} <= set(parsed) <= {"rules", "nftables"} \
            or not isinstance(parsed["rules"], dict):
        return "not an object with a rules object"
    for family, rules in parsed["rules"].items():
        if family not in FAMILIES or not isinstance(rules, list) or not all(
                isinstance(rule, list) and len(rule) == 3 and all(isinstance(part, str) for part in rule)
                for rule in rules):
            return "family %r is not a list of [table, chain, arguments]" % family
    return None


def stale_temp_records(netns):
    """Temporary record files of this namespace left behind (ownership.save writes ``.NAME.XXXX.tmp``)."""
    try:
        names = os.listdir(RECORD_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.startswith(".netns-%s-" % netns) and name.endswith(".tmp"))


class State:
    """One backend's rules of a namespace (both families), its routes and its ownership record."""

    def __init__(self, netns, backend):
        self.texts = {family: save_text(netns, backend, family) for family in FAMILIES}
        self.tables = {family: parse_tables(text) for family, text in self.texts.items()}
        self.routing = "".join(command(["ip", "-n", netns] + argv) for argv in (
            ["-4", "rule", "show"], ["-6", "rule", "show"], ["-4", "route", "show", "table", "all"],
            ["-6", "route", "show", "table", "all"], ["-6", "addr", "show", "dev", "lo"]))
        self.record = read_record(netns)

    def same_rules(self, other):
        return self.tables == other.tables and self.routing == other.routing and self.record == other.record

    def differences(self, other):
        out = []
        for family in FAMILIES:
            mine, theirs = self.tables[family], other.tables[family]
            for table in sorted(set(mine) | set(theirs)):
                chains_a, chains_b = mine.get(table, {}), theirs.get(table, {})
                for chain in sorted(set(chains_a) | set(chains_b)):
                    if chains_a.get(chain) != chains_b.get(chain):
                        a, b = chains_a.get(chain), chains_b.get(chain)
                        first = None if a is None or b is None else next(
                            ((x, y) for x, y in zip(a + [None] * len(b), b + [None] * len(a)) if x != y), None)
                        out.append("%s %s %s: %s rules vs %s, first difference %r" % (
                            family, table, chain, "no" if a is None else len(a), "none" if b is None else len(b),
                            first))
        if self.routing != other.routing:
            out.append("routes differ")
        if self.record != other.record:
            out.append("ownership records differ: %r vs %r" % ((self.record or b"")[:300], (other.record or b"")[:300]))
        return out


def restore(netns, backend, state):
    """Put a saved state back: the whole tables with the backend's restore tool, and the record's bytes.

    Routes are left as they are: only used between states whose routes are the same."""
    for family in FAMILIES:
        tool = SAVE[backend, family].replace("-save", "-restore")
        if state.texts[family].strip():
            command(["ip", "netns", "exec", netns, tool], data=state.texts[family])
    path = record_path(netns)
    if state.record is None:
        if os.path.exists(path):
            os.unlink(path)
    else:
        os.makedirs(RECORD_DIR, mode=0o700, exist_ok=True)
        with open(path + ".test", "wb") as handle:
            handle.write(state.record)
        os.replace(path + ".test", path)


def exclusions(count):
    """``count`` IPv4 host CIDRs from 198.18.64.0 on (198.18.0.0/15, benchmarking addresses)."""
    first = int(ipaddress.IPv4Address("198.18.64.0"))
    return ["%s/32" % ipaddress.IPv4Address(first + n) for n in range(count)]


# The kill test.

def kill_configs(netns, backend, cidrs):
    """A smaller configuration using all three tables, and a large one changing every table of both families."""
    small = dict(netns=netns, backend=backend, ipv6=True, inbound_interception_mode="TPROXY", capture_dns=True,
                 dns_servers=["198.18.0.2", "2001:db8::2"])
    big = dict(small, dns_servers=["198.18.0.3", "2001:db8::3"], drop_invalid=True, exclude_interfaces=["fik0"],
               exclude_outbound_ip_ranges=exclusions(cidrs) + ["2001:db8:ff::%x/128" % n for n in range(1, 17)])
    return small, big


def table_labels(now, old, new):
    """Per family and table: "old" or "new" when the table is wholly one of them; "TORN" otherwise."""
    labels = {}
    for family in FAMILIES:
        for table in sorted(set(now.tables[family]) | set(old.tables[family]) | set(new.tables[family])):
            have = now.tables[family].get(table, {})
            if have == old.tables[family].get(table, {}):
                label = "old"
            elif have == new.tables[family].get(table, {}):
                label = "new"
            else:
                label = "TORN"
            labels["%s/%s" % (family, table)] = label
    return labels


# The small tables watched while a calibration run writes: IPv4 raw is committed first whichever
# way the run goes, and the last commit is in IPv6 (nat, or mangle when it only loses rules).
# IPv4 nat, with its 10,000 rules, is too slow to poll and never the first or the last.
WATCHED = [(family, table) for family in FAMILIES for table in CAPTURE_TABLES if (family, table) != ("ipv4", "nat")]


def save_table(netns, backend, family, table):
    return parse_tables(command(["ip", "netns", "exec", netns, SAVE[backend, family], "-t", table]))


def calibrate(engine, netns, backend, params, source):
    """Run ``params`` uninterrupted, watching the small tables: ``(result, run time, (first, last) change)``.

    The moments are seconds since the run was started, as the kill moments are.
    """
    seen, errors = {}, []
    stop = threading.Event()

    def watch():
        try:
            while not stop.is_set():
                for family, table in WATCHED:
                    before = {table: source.tables[family][table]} if table in source.tables[family] else {}
                    if (family, table) not in seen and save_table(netns, backend, family, table) != before:
                        seen[family, table] = time.monotonic()
        except Failure as exc:
            errors.append(str(exc))

    started = time.monotonic()
    proc = engine.start(params)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass  # finish() kills it and says so
    run_time = time.monotonic() - started
    stop.set()
    watcher.join(30)
    result = engine.finish(proc)
    check(not result.get("failed"), "the uninterrupted run failed", result=result)
    check(not errors, "the watcher failed", errors=errors)
    check(len(seen) == len(WATCHED), "the watcher did not see every small table change", seen=sorted(seen))
    return result, run_time, (min(seen.values()) - started, max(seen.values()) - started)


def kill_moments(rng, count, run_time, window):
    """Half the kills in the commit window seen in calibration (widened a little), half anywhere in the run.

    Each half is stratified: kill k lands at a random moment of the k-th slice of its span, so
    the span is covered whatever the seed. Under load a run takes longer than it did when
    calibrated, so the window is only where commits are likely, not where they must be.
    """
    first, last = window
    margin = 0.15 * (last - first) + 0.05
    spans = [(max(0.0, first - margin), last + margin), (0.02 * run_time, 0.98 * run_time)]
    moments = []
    for n in range(count):
        low, high = spans[n % 2]
        share = (count + 1 - n % 2) // 2  # kills in this half
        moments.append(low + (high - low) * (n // 2 + rng.random()) / share)
    rng.shuffle(moments)
    return moments


def test_kill(args):
    """SIGKILL an apply at random moments; no table may be torn; the next run repairs, the one after is a no-op.

    Torn, precisely: the rules of ours in a table are its ISTIO_* chains with their rules and the
    rules of ours in its built-in chains. This namespace holds no other rules, so the whole table,
    parsed as {chain: [rule]}, is the owned part, and it must equal that table after an uninterrupted
    run of the old configuration or that table after an uninterrupted run of the new one. Both
    configurations differ in every capture table of both families (checked first), so a kill
    between two table commits shows as some tables old and others new, each whole.
    """
    rng = random.Random(args.seed)
    log(test="kill", backend=args.backend, seed=args.seed, kills=args.kills, cidrs=args.cidrs)
    engine = Engine(args.workdir)
    stop_on_sigterm(engine)
    small, big = kill_configs(args.netns, args.backend, args.cidrs)
    absent = dict(netns=args.netns, backend=args.backend, state="absent")
    engine.ok(absent, "the first state=absent")
    engine.ok(small, "the smaller configuration")
    check(not engine.ok(small, "the smaller configuration again")["changed"], "a second run of it changed something")
    old = State(args.netns, args.backend)
    dummy, forward_time, forward_window = calibrate(engine, args.netns, args.backend, big, old)
    new = State(args.netns, args.backend)
    check(not engine.ok(big, "the large apply again")["changed"], "a second large apply changed something")
    dummy, backward_time, backward_window = calibrate(engine, args.netns, args.backend, small, new)
    back = State(args.netns, args.backend)
    check(back.same_rules(old), "the way back did not give the smaller configuration's rules",
          differences=back.differences(old))
    for family in FAMILIES:
        for table in CAPTURE_TABLES:
            check(old.tables[family].get(table) != new.tables[family].get(table),
                  "the two configurations do not differ in %s %s: a torn table there could not be seen" % (family, table))
    check(old.record is not None and new.record is not None and old.record != new.record,
          "the two configurations should have different ownership records", old=old.record, new=new.record)
    # Mostly the large apply over the smaller one; every fourth kill the way back (10,000 rules go).
    plan = ["backward" if n % 4 == 3 else "forward" for n in range(args.kills)]
    moments = {"forward": kill_moments(rng, plan.count("forward"), forward_time, forward_window),
               "backward": kill_moments(rng, plan.count("backward"), backward_time, backward_window)}
    log(step="calibrated", run_seconds={"forward": round(forward_time, 3), "backward": round(backward_time, 3)},
        commit_window={"forward": [round(t, 3) for t in forward_window],
                       "backward": [round(t, 3) for t in backward_window]},
        rules={family: sum(len(rules) for chains in new.tables[family].values() for rules in chains.values())
               for family in FAMILIES})
    where = "old"  # which configuration the namespace holds now
    outcomes, findings = [], []
    for number, direction in enumerate(plan):
        source, target, goal = (old, new, big) if direction == "forward" else (new, old, small)
        if where != ("old" if direction == "forward" else "new"):
            # Back to the start state, from the texts saved after uninterrupted runs (quicker than a run).
            restore(args.netns, args.backend, source)
            check(State(args.netns, args.backend).same_rules(source), "the namespace is not in the start state for "
                  "kill %d" % number, differences=State(args.netns, args.backend).differences(source))
        moment = moments[direction].pop()
        for dummy in range(5):
            proc = engine.start(goal)
            time.sleep(moment)
            if proc.poll() is None:
                kill_group(proc)
                engine.running = None
                proc.communicate()
                break
            engine.finish(proc)  # it was quicker than the moment chosen: put things back, try earlier
            restore(args.netns, args.backend, source)
            moment *= 0.7
        else:
            raise Failure("kill %d: the run always ended before the kill" % number)
        now = State(args.netns, args.backend)
        labels = table_labels(now, source, target)
        torn = sorted(name for name, label in labels.items() if label == "TORN")
        check(not torn, "kill %d (%s at %.3f s): torn tables %s" % (number, direction, moment, torn),
              differences=[line for line in now.differences(source)
                           if "/".join(line.split(" ")[:2]) in torn][:20])
        check(now.routing == source.routing, "kill %d: the routes changed" % number)
        check(now.record in (source.record, target.record), "kill %d: the ownership record is neither the old nor "
              "the new one" % number, record=now.record, problem=record_problem(now.record))
        stale = stale_temp_records(args.netns)
        if stale:
            # Not a torn state, but litter that nothing removes (ownership.prune only knows records):
            # noted, taken away so the next kills are judged on their own, and failed at the end.
            findings.append("kill %d (%s at %.3f s) left temporary record files %s" % (number, direction, moment, stale))
            for name in stale:
                os.unlink(os.path.join(RECORD_DIR, name))
        repair = engine.ok(goal, "the run after kill %d" % number)
        repaired = State(args.netns, args.backend)
        check(repaired.same_rules(target), "kill %d: the next run did not give a fresh run's rules" % number,
              differences=repaired.differences(target))
        # The record is written after the rules: a kill in between leaves the rules new and the record
        # old, which the next run rewrites without a change to report.
        rules_done = now.tables == target.tables and now.routing == target.routing
        check(repair["changed"] == (not rules_done), "kill %d: the next run's changed=%s is wrong"
              % (number, repair["changed"]), before=now.differences(target))
        again = engine.ok(goal, "the second run after kill %d" % number)
        check(not again["changed"], "kill %d: the run after the repair changed something" % number)
        where = "new" if direction == "forward" else "old"
        outcome = "mixed" if len(set(labels.values())) > 1 else next(iter(set(labels.values()))) + " only"
        outcomes.append(outcome)
        log(kill=number, direction=direction, at=round(moment, 3), tables=labels, repair_changed=repair["changed"],
            record="new" if now.record == target.record else "old")
    log(test="kill", backend=args.backend, kills=len(outcomes),
        outcomes={name: outcomes.count(name) for name in sorted(set(outcomes))})
    check(not findings, "%d kills left something behind" % len(findings), findings=findings)


# The concurrent foreign writer.

FOREIGN_CHAINS = [(table, chain) for table in CAPTURE_TABLES for chain in ("PREROUTING", "OUTPUT", "FW_" + table)]
FOREIGN_MARK = "--comment fw-"


class ForeignWriter(threading.Thread):
    """A user's own rules in nat, mangle and raw, added (appended or put on top) and removed in a loop.

    ``model`` is what this writer believes each chain holds of its rules, in order; at the end the
    kernel must hold exactly that: nothing of the user's lost, reordered or added.
    """

    def __init__(self, netns, backend, rng):
        super().__init__(daemon=True)
        self.netns, self.backend, self.rng = netns, backend, rng
        self.model = {(family, table, chain): [] for family in FAMILIES for table, chain in FOREIGN_CHAINS}
        self.stop_event = threading.Event()
        self.error = None
        self.ops = []  # monotonic time of each change the writer made
        self.serial = 0

    def iptables(self, family, table, *argv):
        tool = ("iptables-" if family == "ipv4" else "ip6tables-") + self.backend
        # -w: a legacy writer waits for the xtables lock as every iptables user does (iptables-nft ignores it).
        command(["ip", "netns", "exec", self.netns, tool, "-w", "20", "-t", table] + list(argv), timeout=40)

    def setup(self):
        for family in FAMILIES:
            for table in CAPTURE_TABLES:
                self.iptables(family, table, "-N", "FW_" + table)

    def step(self):
        present = [(key, rule) for key, rules in self.model.items() for rule in rules]
        if present and (len(present) > 60 or self.rng.random() < 0.4):
            (family, table, chain), rule = self.rng.choice(present)
            self.iptables(family, table, "-D", chain, *rule.split(" "))
            self.model[family, table, chain].remove(rule)
        else:
            family, (table, chain) = self.rng.choice(FAMILIES), self.rng.choice(FOREIGN_CHAINS)
            self.serial += 1
            rule = "-p tcp -m tcp --dport %d -m comment %s%d -j ACCEPT" % (
                self.rng.randrange(1, 65536), FOREIGN_MARK, self.serial)
            if self.rng.random() < 0.5:
                self.iptables(family, table, "-I", chain, "1", *rule.split(" "))
                self.model[family, table, chain].insert(0, rule)
            else:
                self.iptables(family, table, "-A", chain, *rule.split(" "))
                self.model[family, table, chain].append(rule)
        self.ops.append(time.monotonic())

    def run(self):
        try:
            while not self.stop_event.wait(0.01):  # a busy user, not a flood: ~30-60 changes a second
                self.step()
        except Failure as exc:
            self.error = "the foreign writer's own command failed: %s" % exc

    def split(self, state):
        """``(ours, foreign)``: the tables without the writer's rules and chains, and the writer's rules by chain."""
        ours, foreign = {}, {}
        for family in FAMILIES:
            ours[family] = {}
            for table, chains in state.tables[family].items():
                kept = {}
                for chain, rules in chains.items():
                    mine = [rule for rule in rules if FOREIGN_MARK in rule]
                    if (table, chain) in FOREIGN_CHAINS:
                        foreign[family, table, chain] = mine
                    if not chain.startswith("FW_"):
                        rest = [rule for rule in rules if FOREIGN_MARK not in rule]
                        if rest or chain not in BUILTIN:
                            kept[chain] = rest
                if kept:
                    ours[family][table] = kept
        return ours, foreign


def test_writer(args):
    """Applies while another writer changes the user's own rules in the same tables: no failure, nothing lost."""
    seed = args.seed
    log(test="writer", backend=args.backend, seed=seed)
    engine = Engine(args.workdir)
    stop_on_sigterm(engine)
    base = dict(netns=args.netns, backend=args.backend, ipv6=True, capture_dns=True)
    # Enough rules that a run lasts while the writer commits many times (the legacy backend is slower).
    size = 2000 if args.backend == "nft" else 500
    first = dict(base, dns_servers=["198.18.0.2", "2001:db8::2"], drop_invalid=True,
                 exclude_outbound_ip_ranges=exclusions(size))
    second = dict(base, dns_servers=["198.18.0.3"], inbound_interception_mode="TPROXY", exclude_interfaces=["fiw0"],
                  exclude_outbound_ip_ranges=exclusions(2 * size))
    absent = dict(netns=args.netns, backend=args.backend, state="absent")
    engine.ok(absent, "the first state=absent")
    quiet_seconds = {"second": engine.ok(second, "the quiet apply")["wall"]}
    quiet = State(args.netns, args.backend)
    quiet_seconds["absent"] = engine.ok(absent, "state=absent after the quiet apply")["wall"]
    quiet_seconds["first"] = engine.ok(first, "a quiet apply of the first configuration")["wall"]
    engine.ok(absent, "state=absent again")
    writer = ForeignWriter(args.netns, args.backend, random.Random(seed))
    writer.setup()
    writer.start()
    spans = []
    try:
        deadline = time.monotonic() + 20
        while len(writer.ops) < 30 and writer.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, params in (("first", first), ("second", second), ("absent", absent), ("first", first),
                             ("second", second)):
            # A writer must not hold a run up for long: ten times a quiet run, and 5 s for the machine's
            # load. A run that takes longer is killed (the next ones repair) and failed at the end.
            bound = 10 * quiet_seconds[name] + 5
            started = time.monotonic()
            try:
                result = engine.run(params, timeout=bound)
            except Failure as exc:
                result = {"failed": True, "msg": str(exc), "warnings": [], "killed": True}
            spans.append((name, started, time.monotonic(), result))
            check(not result.get("failed") or result.get("killed"), "the %s apply under the foreign writer failed"
                  % name, result=result)
            check(writer.error is None, writer.error or "")
    finally:
        writer.stop_event.set()
        writer.join(60)
    check(not writer.is_alive(), "the foreign writer did not stop")
    check(writer.error is None, writer.error or "")
    during = [sum(1 for moment in writer.ops if start <= moment <= end) for dummy, start, end, dummy in spans]
    log(step="applies under the writer", writer_changes=len(writer.ops), changes_during_each_apply=during,
        warnings=[result["warnings"] for dummy, dummy, dummy, result in spans])
    check(min(during) >= 2, "the writer made fewer than 2 changes during an apply: the test did not overlap them",
          during=during)
    log(step="run times", quiet=quiet_seconds, under_writer=[round(end - start, 2) for dummy, start, end, dummy in spans])
    killed = [n for n, (dummy, dummy, dummy, result) in enumerate(spans) if result.get("killed")]
    again = engine.ok(second, "the apply after the writer stopped")
    # After a killed apply this one repairs; else the last apply under the writer must have converged.
    check(killed or not again["changed"], "the apply after the writer stopped changed something: the last one "
          "did not converge")
    now = State(args.netns, args.backend)
    ours, foreign = writer.split(now)
    quiet_ours, dummy = writer.split(quiet)
    check(ours == quiet_ours, "the rules of ours differ from a quiet apply's",
          differences=list(_table_diff(ours, quiet_ours))[:20])
    check(now.routing == quiet.routing, "the routes differ from a quiet apply's")
    check(now.record == quiet.record, "the ownership record differs from a quiet apply's", now=now.record,
          quiet=quiet.record)
    lost = {"%s %s %s" % key: {"kernel": foreign.get(key, []), "writer": rules}
            for key, rules in writer.model.items() if foreign.get(key, []) != rules}
    check(not lost, "the foreign rules are not what the writer left", chains=lost)
    log(test="writer", backend=args.backend, foreign_rules_kept=sum(len(rules) for rules in writer.model.values()))
    slow = {"%s (%d)" % (spans[n][0], n): round(spans[n][2] - spans[n][1], 1) for n in killed}
    check(not slow, "applies under the writer took more than ten times a quiet one and 5 s, and were killed "
          "(seconds)", slow=slow, quiet=quiet_seconds)


def _table_diff(mine, theirs):
    for family in FAMILIES:
        for table in sorted(set(mine[family]) | set(theirs[family])):
            a, b = mine[family].get(table, {}), theirs[family].get(table, {})
            for chain in sorted(set(a) | set(b)):
                if a.get(chain) != b.get(chain):
                    yield "%s %s %s: %s vs %s" % (family, table, chain, a.get(chain), b.get(chain))


# The damaged ownership record.

def _truncated(good):
    return good[:len(good) // 2]


DAMAGES = [
    ("emptied", b""),
    ("truncated", _truncated),
    ("garbage bytes", b"\x00\xff\xfe\x80 not a record \xc3"),
    ("not JSON", b'{"rules": {"ipv4": [["nat", '),
    ("a JSON list", b"[]"),
    ("wrong keys", b'{"v4": 5}'),
    ("rules not an object", b'{"rules": []}'),
    ("numbers for strings", b'{"rules": {"ipv4": [[1, 2, 3]]}}'),
    ("an unknown family", b'{"rules": {"ipv9": []}}'),
    # Well-formed for IPv4 and naming the user's own rule, broken for IPv6: nothing of it may be trusted.
    ("partly valid, naming a foreign rule",
     b'{"rules": {"ipv4": [["nat", "PREROUTING", "-i fiu0 -j RETURN"]], "ipv6": [["nat"]]}}'),
    ("a directory", "directory"),
    ("deleted", None),
]
QUICK_DAMAGES = ("truncated", "partly valid, naming a foreign rule", "deleted")


def damage(netns, how, good):
    path = record_path(netns)
    if os.path.isdir(path):
        os.rmdir(path)
    elif os.path.exists(path):
        os.unlink(path)
    if how is None:
        return
    if how == "directory":
        os.makedirs(path)
        return
    with open(path, "wb") as handle:
        handle.write(how(good) if callable(how) else how)


def undamage(netns):
    path = record_path(netns)
    if os.path.isdir(path):
        os.rmdir(path)


def test_records(args):
    """A damaged or missing record: a warning at most, never a crash, never a rule of someone else's removed."""
    log(test="records", backend=args.backend)
    undamage(args.netns)
    engine = Engine(args.workdir)
    stop_on_sigterm(engine)
    config = dict(netns=args.netns, backend=args.backend, ipv6=True, inbound_interception_mode="TPROXY",
                  exclude_interfaces=["fir0"])
    absent = dict(netns=args.netns, backend=args.backend, state="absent")
    engine.ok(absent, "the first state=absent")
    # The user's own rule, of the very shape the module writes for an excluded interface.
    for tool in ("iptables-", "ip6tables-"):
        command(["ip", "netns", "exec", args.netns, tool + args.backend, "-w", "20", "-t", "nat", "-A", "PREROUTING",
                 "-i", "fiu0", "-j", "RETURN"])
    clean = State(args.netns, args.backend)
    engine.ok(config, "the configuration")
    applied = State(args.netns, args.backend)
    good = applied.record
    check(good is not None and record_problem(good) is None, "the module wrote no valid record", record=good)
    recorded = json.loads(good.decode("utf-8"))["rules"]
    check(all(recorded.get(family) for family in FAMILIES), "the record claims no rule in a family", record=recorded)
    # Control: with the record intact, state=absent removes the rules only it claims (the test can fail).
    engine.ok(absent, "state=absent with an intact record")
    check(State(args.netns, args.backend).same_rules(clean), "state=absent with an intact record did not remove "
          "exactly the module's rules", differences=State(args.netns, args.backend).differences(clean))
    problems = []
    for name, how in DAMAGES:
        if args.quick and name not in QUICK_DAMAGES:
            continue
        try:
            _one_damage(args, engine, name, how, (clean, applied, good, recorded))
        except Failure as exc:  # the other kinds of damage are still tried
            problems.append(str(exc))
            log(damage=name, result="FAILED", error=str(exc))
            undamage(args.netns)
            restore(args.netns, args.backend, clean)
        finally:
            undamage(args.netns)
    check(not problems, "%d kinds of damage mishandled (listed above)" % len(problems))


def _one_damage(args, engine, name, how, states):
    """One kind of damage: the same configuration over it, then state=absent over it."""
    clean, applied, good, recorded = states
    config = dict(netns=args.netns, backend=args.backend, ipv6=True, inbound_interception_mode="TPROXY",
                  exclude_interfaces=["fir0"])
    absent = dict(netns=args.netns, backend=args.backend, state="absent")
    path = record_path(args.netns)
    warned = how is not None  # a deleted record is no record: nothing to warn about
    # From the user's rules alone (the last damage's leftovers taken away) to the configuration's.
    restore(args.netns, args.backend, clean)
    engine.ok(config, "the configuration before damage %r" % name)
    check(State(args.netns, args.backend).same_rules(applied), "damage %r: the configuration did not give the rules "
          "and the record of its first run" % name)
    # The same configuration over a damaged record: no change at all, a warning, the record rewritten.
    damage(args.netns, how, good)
    same = engine.run(config)
    check(not same.get("failed"), "damage %r: the same configuration failed" % name, result=same)
    check(not same["changed"], "damage %r: the same configuration changed rules" % name, result=same)
    named = [text for text in same["warnings"] if path in text]
    check(bool(named) == warned and len(same["warnings"]) == len(named),
          "damage %r: %s" % (name, "no warning naming the record" if warned else "unexpected warnings"),
          warnings=same["warnings"])
    after = State(args.netns, args.backend)
    check(after.texts == applied.texts, "damage %r: the rules changed" % name)
    check(after.record == good, "damage %r: the record was not written again" % name, record=after.record)
    # state=absent over a damaged record: the rules only the record claimed stay, as someone else's.
    damage(args.netns, how, good)
    gone = engine.run(absent)
    check(not gone.get("failed"), "damage %r: state=absent failed" % name, result=gone)
    check(bool([text for text in gone["warnings"] if path in text]) == warned,
          "damage %r: state=absent warned wrongly" % name, warnings=gone["warnings"])
    left = State(args.netns, args.backend)
    undamage(args.netns)
    for family in FAMILIES:
        for table, chains in left.tables[family].items():
            check(not any(chain.startswith("ISTIO_") for chain in chains), "damage %r: %s %s still has ISTIO "
                  "chains" % (name, family, table))
        # The user's rules, then the ones only the record claimed (the module appended them last).
        expected = {table: {chain: list(rules) for chain, rules in chains.items()}
                    for table, chains in clean.tables[family].items()}
        for table, chain, rule in recorded[family]:
            expected.setdefault(table, {}).setdefault(chain, []).append(rule)
        have = {table: {chain: sorted(rules) for chain, rules in chains.items()}
                for table, chains in left.tables[family].items()}
        want = {table: {chain: sorted(rules) for chain, rules in chains.items()} for table, chains in expected.items()}
        check(have == want, "damage %r: after state=absent the %s rules are not the user's plus the ones only the "
              "record claimed" % (name, family), have=have, want=want)
    log(damage=name, warnings=len(same["warnings"]), left_as_foreign=sum(len(recorded[f]) for f in FAMILIES))


# Values the kernel takes that a rule may not carry as they are.

EDGE_VALUES = [
    ("exclude_interfaces", ["!fie0"]),  # python-iptables reads a leading "!" as "not"
    ("reroute_virtual_interfaces", ["!fie1"]),
    ("exclude_interfaces", ['fi"e2']),  # iptables-restore's quoting
    ("exclude_interfaces", ["fi'e3"]),
    ("exclude_interfaces", ["fi\\e4"]),
    ("exclude_interfaces", ["fie5+"]),  # iptables' own wildcard: must work
    ("dns_servers", ["::ffff:198.18.0.9"]),  # an IPv4-mapped address: how do both sides print it?
    ("exclude_outbound_ip_ranges", ["::ffff:198.18.0.9/128"]),
    ("exclude_outbound_ip_ranges", ["198.18.9.0/255.255.255.0"]),  # a netmask: must work
]


def test_edges(args):
    """Each value: either refused before anything is written (option named, rules byte-identical), or applied
    exactly (the run succeeds and the next one changes nothing). A run that fails having changed rules is a bug."""
    log(test="edges", backend=args.backend)
    engine = Engine(args.workdir)
    stop_on_sigterm(engine)
    base = dict(netns=args.netns, backend=args.backend, ipv6=True, capture_dns=True, dns_servers=["198.18.0.2"],
                inbound_interception_mode="TPROXY")
    engine.ok(dict(base, state="absent"), "the first state=absent")
    engine.ok(base, "the base configuration")
    before = State(args.netns, args.backend)
    bad = []
    for option, value in EDGE_VALUES:
        params = dict(base, **{option: value})
        result = engine.run(params)
        after = State(args.netns, args.backend)
        problems = []
        if result.get("failed"):
            outcome = "refused"
            if after.texts != before.texts:
                problems.append("it failed after changing the rules")
            elif option not in result["msg"]:
                problems.append("it failed, changing nothing, but without naming the option")
        else:
            outcome = "applied"
            again = engine.run(params)
            if again.get("failed") or again["changed"]:
                problems.append("the next run %s" % ("failed: " + again["msg"][:200] if again.get("failed")
                                                     else "changed the rules again"))
        if not after.same_rules(before):
            # What the module wrote must be its own: the base configuration's run takes it away again.
            back = engine.run(base)
            if back.get("failed") or not State(args.netns, args.backend).same_rules(before):
                problems.append("the module could not put the base configuration back (%s)" % (
                    back.get("msg", "")[:200] or "; ".join(State(args.netns, args.backend).differences(before)[:3])))
                restore(args.netns, args.backend, before)
        if problems:
            bad.append("%s=%r: %s; the run said: %s" % (option, value, "; ".join(problems),
                                                        result.get("msg", "changed=%s" % result.get("changed"))[:300]))
        log(option=option, value=value, outcome=outcome, problems=problems, message=result.get("msg", "")[:200])
    for problem in bad:
        log(test="edges", backend=args.backend, problem=problem)
    check(not bad, "%d values mishandled (listed above)" % len(bad))
    log(test="edges", backend=args.backend, result="passed")


# The xtables lock.

def test_lock(args):
    """The held-lock cases in a mount namespace of their own, so the host's lock is never held."""
    lockfile = os.path.join(args.workdir, "xtables.lock")
    with open(lockfile, "w"):
        pass
    argv = ["unshare", "--mount", "--propagation", "private", "--", PYTHON, os.path.abspath(__file__),
            "--workdir", args.workdir, "--lockfile", lockfile, "--seed", str(args.seed)]
    argv += ["--timeout-case"] if args.timeout_case else []
    argv.append("lock-inner:" + args.netns)
    engine = Engine(args.workdir)
    stop_on_sigterm(engine)
    proc = engine.running = subprocess.Popen(argv, start_new_session=True)
    try:
        rc = proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        raise Failure("the lock test did not end within 150 s")
    finally:
        engine.stop()
        engine.running = None
    group_gone(proc.pid)
    check(rc == 0, "the lock test failed (rc=%d)" % rc)


class HeldLock:
    """``/run/xtables.lock`` held as iptables holds it (flock), from this process."""

    def __init__(self):
        self.fd = os.open(XTABLES_LOCK, os.O_RDWR)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.released = None

    def release(self):
        if self.released is None:
            os.close(self.fd)
            self.released = time.monotonic()


def all_texts(netns):
    """Both backends' rules of both families, and the whole nftables ruleset (native mode's tables too)."""
    texts = {SAVE[backend, family]: save_text(netns, backend, family) for backend in ("nft", "legacy")
             for family in FAMILIES}
    texts["nft list ruleset"] = command(["ip", "netns", "exec", netns, "nft", "-s", "list", "ruleset"])
    return texts


def test_lock_inner(args):
    engine = Engine(args.workdir)
    stop_on_sigterm(engine)
    command(["mount", "--bind", args.lockfile, XTABLES_LOCK])
    check(os.stat(XTABLES_LOCK).st_ino == os.stat(args.lockfile).st_ino, "the private lock file is not in place")
    log(test="lock", lock="a private %s in this mount namespace only" % XTABLES_LOCK)
    results = {}
    for backend in ("nft", "legacy"):
        base = dict(netns=args.netns, backend=backend, ipv6=True)
        change = dict(base, drop_invalid=True, exclude_outbound_ports=["1234"])
        engine.ok(dict(base, state="absent"), "state=absent (%s)" % backend)
        # How long the change takes with the lock free: the lock is then held far longer than that.
        quiet = engine.ok(change, "the change with the lock free (%s)" % backend)["wall"]
        engine.ok(base, "the base configuration (%s)" % backend)
        hold = 3 * quiet + 3
        before = all_texts(args.netns)
        lock = HeldLock()
        try:
            started = time.monotonic()
            proc = engine.start(change)
            # An nft apply must end with the lock still held; a legacy one must still be waiting.
            deadline = started + hold
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            waiting = proc.poll() is None
            during = all_texts(args.netns)
            lock.release()
            result = engine.finish(proc)
            ended = time.monotonic()
        finally:
            lock.release()
        check(not result.get("failed"), "%s: the apply under the held lock failed" % backend, result=result)
        check(result["changed"], "%s: the apply under the held lock changed nothing" % backend)
        check(not engine.ok(change, "the same apply again (%s)" % backend)["changed"],
              "%s: the apply after the lock did not converge" % backend)
        if backend == "nft":
            # iptables-nft takes no xtables lock: the change is made at once, with the lock still held.
            check(not waiting and during != before, "nft: the apply waited for the xtables lock", seconds=ended - started)
        else:
            # The legacy backend takes the lock (python-iptables does not): nothing is written while another
            # holds it, and the change is made once it is free.
            check(waiting and during == before and ended >= lock.released,
                  "legacy: the apply did not wait for the xtables lock", waiting=waiting, seconds=ended - started,
                  unchanged_while_held=during == before)
        results[backend] = {"waited": waiting, "seconds": round(ended - started, 2), "held": round(hold, 2),
                            "lock_free_seconds": quiet}
        log(lock_held=backend, outcome="waited, then applied" if waiting else "applied with the lock held",
            **results[backend])
    if args.timeout_case:
        base = dict(netns=args.netns, backend="legacy", ipv6=True)
        change = dict(base, drop_invalid=True, exclude_outbound_ports=["4321"])
        before = all_texts(args.netns)
        lock = HeldLock()
        try:
            started = time.monotonic()
            result = engine.run(change, timeout=XTABLES_LOCK_TIMEOUT + 60)
            seconds = time.monotonic() - started
            after = all_texts(args.netns)
        finally:
            lock.release()
        check(result.get("failed") and "xtables lock" in result["msg"], "legacy: an apply while the lock stays held did "
              "not fail on the lock", result=result)
        check(seconds >= XTABLES_LOCK_TIMEOUT - 1, "legacy: it gave up on the lock before %d s" % XTABLES_LOCK_TIMEOUT,
              seconds=seconds)
        check(after == before, "legacy: the failed apply changed rules")
        log(lock_held="legacy, for longer than its wait", outcome="failed, nothing changed", seconds=round(seconds, 2),
            message=result["msg"])
    log(test="lock", result="passed", cases=results)


TESTS = {"kill": test_kill, "writer": test_writer, "records": test_records, "edges": test_edges,
         "lock": test_lock, "lock-inner": test_lock_inner}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["snapshot"]:
        print(json.dumps({netns: all_texts(netns) for netns in argv[1:]}, sort_keys=True))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--backend", choices=("nft", "legacy"))
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--cidrs", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="records: only three kinds of damage")
    parser.add_argument("--timeout-case", action="store_true", help="lock: also hold it past the legacy wait")
    parser.add_argument("--lockfile", help=argparse.SUPPRESS)
    parser.add_argument("tests", nargs="+", metavar="TEST:NETNS")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1 << 31)
    become_subreaper()
    failed = []
    for item in args.tests:
        name, dummy, netns = item.partition(":")
        if name not in TESTS or not netns:
            parser.error("%r is not TEST:NETNS with TEST one of %s" % (item, ", ".join(sorted(TESTS))))
        if name not in ("lock", "lock-inner") and args.backend is None:
            parser.error("%s needs --backend" % name)
        args.netns = netns
        started = time.monotonic()
        try:
            TESTS[name](args)
        except Exception as exc:  # pylint: disable=broad-except  # reported; the next tests still run
            failed.append(name)
            error = str(exc) if isinstance(exc, Failure) else traceback.format_exc()
            log(test=name, backend=args.backend, netns=netns, result="FAILED", error=error,
                seconds=round(time.monotonic() - started, 1))
        else:
            log(test=name, backend=args.backend, netns=netns, result="passed", seconds=round(time.monotonic() - started, 1))
    log(summary="failed" if failed else "passed", failed=failed, seed=args.seed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
