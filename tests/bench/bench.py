# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark of ``meshops.sidecar.istio_redirect_chains`` (``make bench``; see docs/performance.md).

Every ``ansible-playbook`` run happens under ``ip netns exec NS`` in a namespace this script made,
so all variants pay the same start-up, and the module runs without ``netns`` (it acts in the
namespace it runs in, as the builtin module does). Measured, in one run, as medians of several
repetitions, interleaved so that a change in the machine's load hits every variant alike:

* compare: an empty playbook (start-up), ``command: true`` (the least a module task costs), one
  ``istio_redirect_chains`` task (iptables, and with ``native_nftables: true``), and the same rules as
  ``ansible.builtin.iptables`` tasks; first apply on a fresh namespace and a no-op re-run. Net cost = run - the empty playbook of the same
  repetition (median). Then the module and the builtin tasks again after a warm-up task, net of the
  warm-up alone: what they cost inside a playbook that already runs tasks.
* scaling: the module with 0, 100, 1,000 and 10,000 excluded /32s from 198.18.0.0/15, first apply
  on a fresh namespace and a no-op re-run, on the nft and the legacy backend and in native nftables
  mode (``native``: ``native_nftables: true``, Istio's inet tables); net of the empty
  playbook, and net of the same playbook with the task skipped (the task's own cost, without
  Ansible's loading of the playbook and its CIDRs).
* datapath: the connect latency of a captured new outbound connection with 0 to 10,000 excluded
  CIDRs, each mode, with and without ``cidr_sets``, and the first apply of the 10,000
  (``datapath.py``; ``--datapath-only`` runs only this part).
* profile: the module's target-side code (``_capture.CaptureRun``) in-process, 10,000 CIDRs, each
  backend and native mode (``profile_module.py``).

Standard library only. Needs root; never touches the host namespace's firewall.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import datapath  # noqa: E402  pylint: disable=wrong-import-position
import plot  # noqa: E402  pylint: disable=wrong-import-position

MODULE = "meshops.sidecar.istio_redirect_chains"
# The scaling part's variants: the two iptables backends, and native nftables mode (no backend option).
BACKENDS = ("nft", "legacy", "native")
RUN_TIMEOUT = 300  # seconds; one ansible-playbook run never takes this long here
CIDR_BASE = int(ipaddress.IPv4Address("198.18.0.0"))  # RFC 2544 benchmarking range, a /15

# Istio's K8s default rule set (istio-capture.md, 2.4, first block: istio-iptables -p 15001 -z 15006
# -u 1337 -m REDIRECT -i '*' -b '*' -d 15090,15021,15020), in Istio's order, as
# ansible.builtin.iptables tasks: its 4 chains (chain_management) and its 18 rules.
BUILTIN_CHAINS = ("ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT")
BUILTIN_RULES = (
    dict(chain="ISTIO_INBOUND", protocol="tcp", destination_port="15008", jump="RETURN"),
    dict(chain="ISTIO_REDIRECT", protocol="tcp", jump="REDIRECT", to_ports="15001"),
    dict(chain="ISTIO_IN_REDIRECT", protocol="tcp", jump="REDIRECT", to_ports="15006"),
    dict(chain="PREROUTING", protocol="tcp", jump="ISTIO_INBOUND"),
    dict(chain="ISTIO_INBOUND", protocol="tcp", destination_port="15090", jump="RETURN"),
    dict(chain="ISTIO_INBOUND", protocol="tcp", destination_port="15021", jump="RETURN"),
    dict(chain="ISTIO_INBOUND", protocol="tcp", destination_port="15020", jump="RETURN"),
    dict(chain="ISTIO_INBOUND", protocol="tcp", jump="ISTIO_IN_REDIRECT"),
    dict(chain="OUTPUT", jump="ISTIO_OUTPUT"),
    dict(chain="ISTIO_OUTPUT", out_interface="lo", source="127.0.0.6/32", jump="RETURN"),
    dict(chain="ISTIO_OUTPUT", out_interface="lo", destination="!127.0.0.1/32", protocol="tcp",
         destination_port="!15008", uid_owner="1337", jump="ISTIO_IN_REDIRECT"),
    dict(chain="ISTIO_OUTPUT", out_interface="lo", uid_owner="!1337", jump="RETURN"),
    dict(chain="ISTIO_OUTPUT", uid_owner="1337", jump="RETURN"),
    dict(chain="ISTIO_OUTPUT", out_interface="lo", destination="!127.0.0.1/32", protocol="tcp",
         destination_port="!15008", gid_owner="1337", jump="ISTIO_IN_REDIRECT"),
    dict(chain="ISTIO_OUTPUT", out_interface="lo", gid_owner="!1337", jump="RETURN"),
    dict(chain="ISTIO_OUTPUT", gid_owner="1337", jump="RETURN"),
    dict(chain="ISTIO_OUTPUT", destination="127.0.0.1/32", jump="RETURN"),
    dict(chain="ISTIO_OUTPUT", jump="ISTIO_REDIRECT"),
)
BUILTIN_TASKS = len(BUILTIN_CHAINS) + len(BUILTIN_RULES)


def log(msg):
    print(msg, flush=True)


class BenchError(Exception):
    pass


# --- namespaces ---------------------------------------------------------------------------------

class Namespaces:
    """Uniquely named namespaces of this run only; ``cleanup`` removes every one still there."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.count = 0
        self.live = set()

    def create(self):
        self.count += 1
        name = "%s-%d" % (self.prefix, self.count)
        if name in existing_namespaces():
            raise BenchError("namespace %s exists already: not ours, refusing to touch it" % name)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.live.add(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def delete(self, name):
        if name in self.live:
            subprocess.run(["ip", "netns", "delete", name], check=False)
            self.live.discard(name)

    def cleanup(self):
        for name in sorted(self.live):
            self.delete(name)


def existing_namespaces():
    out = subprocess.run(["ip", "-json", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {entry["name"] for entry in json.loads(out or "[]")}


# --- playbooks ----------------------------------------------------------------------------------

def cidrs(count):
    return ["%s/32" % ipaddress.IPv4Address(CIDR_BASE + i) for i in range(count)]


def playbook(tasks):
    """A playbook (JSON is YAML) for the inventory host ``target`` without fact gathering."""
    return json.dumps([{"name": "bench", "hosts": "target", "gather_facts": False, "tasks": tasks}], indent=1)


def builtin_tasks():
    tasks = [{"name": "chain %s" % chain,
              "ansible.builtin.iptables": {"table": "nat", "chain": chain, "chain_management": True}}
             for chain in BUILTIN_CHAINS]
    for number, rule in enumerate(BUILTIN_RULES, 1):
        tasks.append({"name": "rule %d" % number, "ansible.builtin.iptables": dict(rule, table="nat")})
    return tasks


def module_task(backend=None, count=0, as_string=False, skipped=False):
    """The module task; the CIDRs as a YAML list, or as one Istio-style comma-separated string.

    ``skipped``: the same task with ``when: false``. Ansible still loads the playbook, with its
    CIDRs, and starts a worker for the task, but never templates the arguments or runs the module:
    the baseline for what the task itself costs.
    """
    args = {}
    if backend == "native":
        args["native_nftables"] = True
    elif backend:
        args["backend"] = backend
    if count:
        args["exclude_outbound_ip_ranges"] = ",".join(cidrs(count)) if as_string else cidrs(count)
    task = {"name": "capture", MODULE: args}
    if skipped:
        task["when"] = False
    return [task]


def warm_up():
    """A first task, so that what follows pays only what a task costs inside a playbook that already runs tasks."""
    return [{"name": "warm-up", "ansible.builtin.command": "true"}]


class Workdir:
    def __init__(self, path, python):
        self.path = path
        self.inventory = os.path.join(path, "inventory.json")
        with open(self.inventory, "w") as handle:
            json.dump({"all": {"hosts": {"target": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": python}}}}, handle)
        self.config = os.path.join(path, "ansible.cfg")
        with open(self.config, "w") as handle:
            handle.write("[defaults]\nretry_files_enabled = False\nlocalhost_warning = False\n"
                         "interpreter_python = %s\n" % python)
        self.books = {}

    def add(self, name, tasks):
        path = os.path.join(self.path, name + ".yml")
        with open(path, "w") as handle:
            handle.write(playbook(tasks))
        self.books[name] = path
        return path


# --- running and timing -------------------------------------------------------------------------

class Runner:
    def __init__(self, workdir, logdir):
        self.workdir = workdir
        self.logdir = logdir
        self.env = dict(os.environ, ANSIBLE_CONFIG=workdir.config, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                        ANSIBLE_DEPRECATION_WARNINGS="false")
        self.runs = 0

    def play(self, netns, book, env=None):
        """Run a playbook under ``ip netns exec``; return (wall seconds, CPU seconds, changed count)."""
        self.runs += 1
        logpath = os.path.join(self.logdir, "%04d-%s.log" % (self.runs, book))
        argv = ["ip", "netns", "exec", netns, "ansible-playbook", "-i", self.workdir.inventory,
                self.workdir.books[book]]
        with open(logpath, "w") as logf:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=dict(self.env, **(env or {})),
                                    start_new_session=True)
            timer = threading.Timer(RUN_TIMEOUT, _kill_group, (proc.pid,))
            timer.start()
            try:
                # wait4: the CPU time of the whole tree (ansible's workers, the module, iptables).
                dummy, status, usage = os.wait4(proc.pid, 0)
            finally:
                timer.cancel()
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            with open(logpath) as handle:
                tail = handle.read()[-3000:]
            raise BenchError("%s failed (rc=%d) in %s; log %s:\n%s" % (book, proc.returncode, netns, logpath, tail))
        with open(logpath) as handle:
            text = handle.read()
        match = re.search(r"^target\s+:\s+ok=(\d+)\s+changed=(\d+)", text, re.M)
        changed = int(match.group(2)) if match else 0
        return wall, usage.ru_utime + usage.ru_stime, changed, logpath


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


class Samples:
    """Wall and CPU samples per key, each tagged with its repetition.

    Net costs are paired: each sample minus the empty playbook's run(s) of the same repetition,
    which ran minutes apart at most; the median of those differences is much steadier on a
    machine whose load changes than the difference of two medians.
    """

    def __init__(self):
        self.wall = {}
        self.cpu = {}
        self.rep = {}

    def add(self, key, wall, cpu, rep):
        self.wall.setdefault(key, []).append(wall)
        self.cpu.setdefault(key, []).append(cpu)
        self.rep.setdefault(key, []).append(rep)

    def _values(self, key, cpu):
        return (self.cpu if cpu else self.wall)[key]

    def median(self, key, cpu=False):
        return statistics.median(self._values(key, cpu))

    def net(self, key, base, cpu=False, reps=None):
        """Median over repetitions of (sample - mean of the base samples of that repetition).

        ``reps``: the repetitions to take, each as often as listed (a bootstrap resample); default all."""
        per_rep = {}
        for rep, value in zip(self.rep[base], self._values(base, cpu)):
            per_rep.setdefault(rep, []).append(value)
        by_rep = {}
        for rep, value in zip(self.rep[key], self._values(key, cpu)):
            if rep in per_rep:
                by_rep.setdefault(rep, []).append(value - statistics.mean(per_rep[rep]))
        diffs = [diff for rep in (sorted(by_rep) if reps is None else reps) for diff in by_rep.get(rep, ())]
        return statistics.median(diffs)

    def ratio_interval(self, key, over, base, cpu=False, rounds=1000):
        """90 % bootstrap interval of net(key) / net(over): whole repetitions resampled with replacement,
        so a verdict the machine's noise could turn either way is seen as such."""
        reps = sorted(set(self.rep[base]))
        rng = random.Random(0)
        found = sorted(ratio(self.net(key, base, cpu, picked), self.net(over, base, cpu, picked))
                       for picked in ([rng.choice(reps) for dummy in reps] for dummy2 in range(rounds)))
        return found[int(0.05 * rounds)], found[int(0.95 * rounds) - 1]

    def spread(self, key):
        values = self.wall[key]
        return min(values), max(values)

    def as_dict(self):
        def name(key):
            return "|".join(map(str, key)) if isinstance(key, tuple) else key
        return {"wall": {name(k): v for k, v in self.wall.items()}, "cpu": {name(k): v for k, v in self.cpu.items()},
                "rep": {name(k): v for k, v in self.rep.items()}}


def expect(changed, wanted, what, logpath):
    if changed != wanted:
        raise BenchError("%s: expected changed=%d, got %d (log %s)" % (what, wanted, changed, logpath))


# --- checks -------------------------------------------------------------------------------------

def save_tool(backend):
    return "iptables-legacy-save" if backend == "legacy" else "iptables-nft-save"


def istio_lines(netns, backend):
    """The ISTIO_* chain declarations and the rules in or into ISTIO_* chains of the nat table."""
    out = subprocess.run(["ip", "netns", "exec", netns, save_tool(backend), "-t", "nat"],
                         capture_output=True, text=True, check=True).stdout
    lines = []
    for line in out.splitlines():
        if line.startswith(":ISTIO_"):
            lines.append(line.split()[0])
        elif line.startswith("-A ") and ("ISTIO_" in line.split()[1] or " -j ISTIO_" in line):
            lines.append(line)
    return lines


def native_exclusions(netns):
    """The per-CIDR return rules of Istio's inet nat table (native mode), as ``nft`` lists them."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "chain", "inet", "istio-proxy-nat",
                          "istio-output"], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines()
            if re.match(r"\s*ip daddr 198\.1[89]\.\S+ counter packets \d+ bytes \d+ return$", line)]


def native_tables(netns):
    """The names of the ``inet istio-proxy-*`` tables in ``netns``."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True,
                         check=True).stdout
    return sorted(line.split()[2] for line in out.splitlines() if line.startswith("table inet istio-proxy-"))


def iptables_flavour():
    """``nft`` or ``legacy``: what the plain ``iptables`` the builtin module uses is."""
    out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False).stdout
    return "nft" if "nf_tables" in out else "legacy"


# --- the parts ----------------------------------------------------------------------------------

class Budget:
    """Repetitions are interleaved; a part stops adding them (after ``min_reps``) when out of its time.

    A part gets ``share`` of the time left of the whole run's budget when it starts.
    """

    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def part(self, share):
        return time.monotonic() + share * max(0.0, self.deadline - time.monotonic())

    @staticmethod
    def allows(rep, min_reps, rep_seconds, part_deadline):
        return rep < min_reps or time.monotonic() + rep_seconds <= part_deadline


def part_compare(args, nss, runner, samples, budget, flavour, report):
    log("== compare: one module task against %d ansible.builtin.iptables tasks (backend %s), %s"
        % (BUILTIN_TASKS, flavour, "up to %d repetitions" % args.reps))
    idle = nss.create()
    deadline = budget.part(0.4)
    # The one-task variants are cheap and their net cost is small: two samples of each per round.
    # "warm_*": the same after a first task (warm-up), net of the warm-up alone; "native": the module
    # task with native_nftables: true.
    variants = ["empty", "noop", "noop", "module", "module"]
    if not args.one_task:
        variants += ["builtin", "warm", "warm", "warm_module", "warm_module", "warm_builtin"]
    if "native" in args.backends:
        variants += ["native", "native"]
    books = {"module": "module_default", "builtin": "builtin", "warm_module": "warm_module",
             "warm_builtin": "warm_builtin", "native": "module_native"}
    rep = 0
    while rep < args.reps:
        started = time.monotonic()
        random.Random(rep).shuffle(variants)
        for variant in variants:
            if variant in ("empty", "noop", "warm"):
                wall, cpu, changed, logpath = runner.play(idle, variant)
                samples.add(variant, wall, cpu, rep)
                continue
            netns = nss.create()
            book = books[variant]
            warm = 1 if variant.startswith("warm_") else 0  # the warm-up command reports a change
            wall, cpu, changed, logpath = runner.play(netns, book)
            expect(changed, warm + (BUILTIN_TASKS if variant.endswith("builtin") else 1), book + " apply", logpath)
            samples.add(variant + "_apply", wall, cpu, rep)
            wall, cpu, changed, logpath = runner.play(netns, book)
            expect(changed, warm, book + " re-run", logpath)
            samples.add(variant + "_rerun", wall, cpu, rep)
            if rep == 0 and variant in ("module", "builtin"):
                report.setdefault("rules", {})[variant] = istio_lines(netns, flavour)
            if rep == 0 and variant == "native" and "native_tables" not in report:
                # Native mode writes Istio's inet tables and no ISTIO_* iptables rule.
                report["native_tables"] = native_tables(netns)
                if not report["native_tables"] or istio_lines(netns, flavour):
                    raise BenchError("native_nftables: true left tables %s and iptables lines %s in %s"
                                     % (report["native_tables"], istio_lines(netns, flavour), netns))
                log("   check: native mode leaves %s and no ISTIO iptables rule: OK"
                    % ", ".join("inet " + name for name in report["native_tables"]))
            nss.delete(netns)
        wall, cpu, dummy, dummy = runner.play(idle, "empty")  # a second baseline of the repetition, for the pairing
        samples.add("empty", wall, cpu, rep)
        rep += 1
        log("   repetition %d: %.0f s" % (rep, time.monotonic() - started))
        if not budget.allows(rep, args.min_reps, time.monotonic() - started, deadline):
            log("   stopping at %d repetitions to stay within the time budget" % rep)
            break
    nss.delete(idle)
    report["compare_reps"] = rep
    if args.one_task:
        return
    module_rules, builtin_rules = report["rules"]["module"], report["rules"]["builtin"]
    report["same_rules"] = module_rules == builtin_rules
    report["rule_lines"] = len(module_rules)
    if report["same_rules"]:
        log("   check: the builtin tasks leave exactly the module's ISTIO lines in %s-save (%d lines): OK"
            % (flavour, len(module_rules)))
    else:
        log("   check FAILED: the builtin tasks and the module leave different rules:")
        for line in sorted(set(module_rules) ^ set(builtin_rules)):
            log("     %s %s" % ("module only: " if line in module_rules else "builtin only:", line))


def part_scaling(args, nss, runner, samples, budget, report):
    log("== scaling: %s excluded CIDRs, backends %s, first apply and no-op re-run"
        % (", ".join(str(n) for n in args.sizes), " and ".join(args.backends)))
    idle = nss.create()
    deadline = budget.part(0.8)
    rep = 0
    while rep < args.reps:
        started = time.monotonic()
        wall, cpu, dummy, dummy = runner.play(idle, "empty")
        samples.add("empty", wall, cpu, rep)
        # Each size's playbook with the task skipped: loading the CIDRs is the playbook's cost, not the task's.
        for count in args.sizes:
            wall, cpu, changed, logpath = runner.play(idle, "skip_%d" % count)
            expect(changed, 0, "skip_%d" % count, logpath)
            samples.add(("skip", count), wall, cpu, rep)
        if max(args.sizes):
            wall, cpu, changed, logpath = runner.play(idle, "skip_%d_string" % max(args.sizes))
            samples.add(("skip string", max(args.sizes)), wall, cpu, rep)
        backends = list(args.backends) if rep % 2 == 0 else list(reversed(args.backends))
        for backend in backends:
            # The 0-CIDR case is every ratio's denominator, and cheap: two samples per round.
            for count in [args.sizes[0]] + list(args.sizes):
                netns = nss.create()
                book = "scale_%s_%d" % (backend, count)
                wall, cpu, changed, logpath = runner.play(netns, book)
                expect(changed, 1, book + " apply", logpath)
                samples.add((backend, count, "apply"), wall, cpu, rep)
                if rep == 0 and backend == "native":
                    excluded = native_exclusions(netns)
                elif rep == 0:
                    excluded = [line for line in istio_lines(netns, backend)
                                if line.startswith("-A ISTIO_OUTPUT -d 198.1") and line.endswith("-j RETURN")]
                if rep == 0:
                    if len(excluded) != count:
                        raise BenchError("%s: %d exclusion rules in the kernel, expected %d"
                                         % (book, len(excluded), count))
                wall, cpu, changed, logpath = runner.play(netns, book)
                expect(changed, 0, book + " re-run", logpath)
                samples.add((backend, count, "rerun"), wall, cpu, rep)
                nss.delete(netns)
            if backend == "nft" and max(args.sizes):
                # The same CIDRs as one comma-separated string: what Ansible's templating of a long list costs.
                netns = nss.create()
                book = "scale_nft_%d_string" % max(args.sizes)
                for mode, wanted in (("apply", 1), ("rerun", 0)):
                    wall, cpu, changed, logpath = runner.play(netns, book)
                    expect(changed, wanted, "%s %s" % (book, mode), logpath)
                    samples.add(("nft string", max(args.sizes), mode), wall, cpu, rep)
                nss.delete(netns)
        wall, cpu, dummy, dummy = runner.play(idle, "empty")
        samples.add("empty", wall, cpu, rep)
        rep += 1
        log("   repetition %d: %.0f s" % (rep, time.monotonic() - started))
        if not budget.allows(rep, args.min_reps, time.monotonic() - started, deadline):
            log("   stopping at %d repetitions to stay within the time budget" % rep)
            break
    nss.delete(idle)
    report["scaling_reps"] = rep


def part_phases(args, nss, runner, report):
    """Where the time of one task goes, from ansible's debug log: payload build, module run, the rest."""
    log("== one task, split (ANSIBLE_DEBUG timestamps, one run each)")
    split = {}
    top = max(args.sizes)
    for book in ["noop", "module_default"] + ["scale_%s_%d" % (backend, top) for backend in args.backends]:
        netns = nss.create()
        if book != "noop":  # the no-op re-run is what is split
            runner.play(netns, book)
        logpath = runner.play(netns, book, env={"ANSIBLE_DEBUG": "1"})[3]
        nss.delete(netns)
        split[book] = debug_split(logpath)
        log("   %-20s %s" % (book, ", ".join("%s %.2f s" % item for item in split[book].items())))
    report["task_split"] = split


def debug_split(logpath):
    stamps = []
    with open(logpath, errors="replace") as handle:
        for line in handle:
            match = re.match(r"\s*\d+ (\d+\.\d+): (.*)", line)
            if match:
                stamps.append((float(match.group(1)), match.group(2)))

    def first(pattern, after=0.0):
        for stamp, text in stamps:
            if stamp >= after and re.search(pattern, text):
                return stamp
        raise BenchError("no %r in %s" % (pattern, logpath))

    task = first(r"^in run\(\) - task")
    build = first(r"ANSIBALLZ: Creating module", task)
    built = first(r"ANSIBALLZ: Done creating module", build)
    run = first(r"executing: /bin/sh -c '\S*python\S* \S*AnsiballZ_", built)
    ran = first(r"done communicating", run)
    done = first(r"^_execute\(\) done", ran)
    return {"payload build": built - build, "module process": ran - run, "rest of the task": (done - task)
            - (built - build) - (ran - run)}


def part_check(nss, report, outdir):
    """The legacy backend's fast paths against python-iptables' own objects (check_fast_paths.py)."""
    log("== check: legacy fast paths against python-iptables (check_fast_paths.py)")
    netns = nss.create()
    proc = subprocess.run([sys.executable, os.path.join(HERE, "check_fast_paths.py"), "--netns", netns],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
    nss.delete(netns)
    with open(os.path.join(outdir, "check-fast-paths.txt"), "w") as handle:
        handle.write(proc.stdout + proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("check:")]
    for line in lines:
        log("   " + line)
    report["fast_path_checks"] = lines
    if proc.returncode != 0:
        raise BenchError("check_fast_paths.py found differences or failed:\n%s" % (proc.stdout + proc.stderr)[-3000:])


def part_profile(args, nss, report, outdir):
    log("== profile: CaptureRun in-process, %d CIDRs (profile_module.py)" % args.profile_cidrs)
    report["profile"] = {}
    for backend in args.backends:
        first, second = nss.create(), nss.create()
        out = os.path.join(outdir, "profile-%s.txt" % backend)
        proc = subprocess.run([sys.executable, os.path.join(HERE, "profile_module.py"), "--backend", backend,
                               "--cidrs", str(args.profile_cidrs), "--netns", first, "--profile-netns", second,
                               "--json", out + ".json"],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)
        with open(out, "w") as handle:
            handle.write(proc.stdout + proc.stderr)
        nss.delete(first)
        nss.delete(second)
        if proc.returncode != 0:
            raise BenchError("profile_module.py failed for %s:\n%s" % (backend, (proc.stdout + proc.stderr)[-3000:]))
        with open(out + ".json") as handle:
            report["profile"][backend] = json.load(handle)
        summary = report["profile"][backend]
        log("   %-6s first apply %.2f s, no-op %.2f s (details: %s)"
            % (backend, summary["apply"]["total"], summary["noop"]["total"], os.path.relpath(out)))


# --- report -------------------------------------------------------------------------------------

def machine():
    model = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ansible = subprocess.run(["ansible-playbook", "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[0]
    tools = {tool: subprocess.run([tool, "--version"], capture_output=True, text=True, check=False).stdout.strip()
             for tool in ("iptables-nft", "iptables-legacy")}
    try:
        import iptc  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
        from importlib.metadata import version  # pylint: disable=import-outside-toplevel
        pyiptables = version("python-iptables")
    except Exception:  # pylint: disable=broad-except
        pyiptables = "not importable"
    return {"cpus": os.cpu_count(), "model": model, "kernel": platform.release(),
            "python": platform.python_version(), "ansible": ansible, "iptables": tools,
            "python-iptables": pyiptables, "loadavg": os.getloadavg()}


def fmt(value):
    return "%.2f" % value


def verdict(wall_ok, cpu_ok):
    if wall_ok and cpu_ok:
        return "met"
    if wall_ok or cpu_ok:
        return "met in %s time only" % ("wall" if wall_ok else "CPU")
    return "NOT met"


def interval_verdict(intervals, line):
    """Met or not when both 90 % intervals (wall, CPU) lie on one side of ``line``; else within the noise."""
    if all(high <= line for low, high in intervals):
        return "met beyond the noise"
    if all(low > line for low, high in intervals):
        return "missed beyond the noise"
    return "within the noise"


def ratio(a, b):
    return a / b if b > 0 else float("inf")


def write_report(args, compare, scaling, report, outdir, flavour):
    """results.md: the machine, the tables and the targets (compare and scaling each have their own baseline)."""
    mach = report["machine"]
    lines = ["Machine: %d CPUs, %s, kernel %s, Python %s, %s; %s; python-iptables %s."
             % (mach["cpus"], mach["model"], mach["kernel"], mach["python"], mach["ansible"],
                mach["iptables"]["iptables-nft"], mach["python-iptables"]),
             "Load average at start %s, at end %s; the run took %.0f s."
             % ("/".join("%.2f" % x for x in mach["loadavg"]),
                "/".join("%.2f" % x for x in report["loadavg_end"]), report["elapsed"]), ""]
    if "compare_reps" in report:
        lines += compare_table(compare, report, flavour)
    if "scaling_reps" in report:
        lines += scaling_table(args, scaling, report)
    if "task_split" in report:
        lines.append("One task split by ansible's debug timestamps (one no-op re-run each, seconds):")
        lines.append("")
        lines.append("| playbook | payload build (controller) | module process (target) | rest of the task |")
        lines.append("|---|---:|---:|---:|")
        for book, split in report["task_split"].items():
            cells = (book, fmt(split["payload build"]), fmt(split["module process"]), fmt(split["rest of the task"]))
            lines.append("| %s | %s | %s | %s |" % cells)
        lines.append("")
    if "fast_path_checks" in report:
        lines += ["Fast-path checks (check_fast_paths.py):", ""] + ["- " + line for line in report["fast_path_checks"]]
        lines.append("")
    if "datapath" in report and "cells" in report["datapath"]:
        lines += datapath.datapath_lines(report["datapath"])
    if "profile" in report:
        lines.append("Target side in-process (CaptureRun, %d CIDRs, seconds; profile_module.py):" % args.profile_cidrs)
        lines.append("")
        lines.append("| backend | first apply | no-op | no-op CPU | commands (apply / no-op) | biggest phases of the no-op "
                     "(inclusive) |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for backend, prof in report["profile"].items():
            top = sorted(prof["noop"]["phases"].items(), key=lambda kv: -kv[1])[:4]
            phases = ", ".join("%s %s" % (k, fmt(v)) for k, v in top)
            lines.append("| %s | %s | %s | %s | %d / %d | %s |" % (
                backend, fmt(prof["apply"]["total"]), fmt(prof["noop"]["total"]), fmt(prof["noop"]["cpu"]),
                len(prof["apply"]["commands"]), len(prof["noop"]["commands"]), phases))
        lines.append("")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, "results.md"), "w") as handle:
        handle.write(text)
    return text


def cost_lines(samples, rows, base):
    """A markdown table of ``(title, key, tasks)`` rows: medians, spread, and the net cost over ``base``."""
    lines = ["| variant | tasks | median | min-max | net | CPU median | net CPU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for title, key, tasks in rows:
        low, high = samples.spread(key)
        lines.append("| %s | %d | %s | %s-%s | %s | %s | %s |" % (
            title, tasks, fmt(samples.median(key)), fmt(low), fmt(high),
            fmt(samples.net(key, base)) if key != base else "", fmt(samples.median(key, cpu=True)),
            fmt(samples.net(key, base, cpu=True)) if key != base else ""))
    return lines + [""]


def compare_table(samples, report, flavour):
    lines = ["Compare (backend %s, Istio's K8s defaults, %d repetitions; seconds; net = median over repetitions "
             "of (run - the empty playbook's run of the same repetition)):" % (flavour, report["compare_reps"]), ""]
    rows = (("empty playbook (start-up)", "empty", 0), ("`command: true`", "noop", 1),
            ("module, first apply", "module_apply", 1), ("module, no-op re-run", "module_rerun", 1))
    builtin = "builtin_apply" in samples.wall  # not with --one-task
    if builtin:
        rows += (("builtin iptables, first apply", "builtin_apply", BUILTIN_TASKS),
                 ("builtin iptables, no-op re-run", "builtin_rerun", BUILTIN_TASKS))
    native = "native_apply" in samples.wall
    if native:
        rows += (("module native_nftables, first apply", "native_apply", 1),
                 ("module native_nftables, no-op re-run", "native_rerun", 1))
    lines += cost_lines(samples, rows, "empty")
    warm = "warm_module_apply" in samples.wall
    if warm:
        lines.append("The same after a first task (a `command: true` warm-up), net of a playbook with only the warm-up: "
                     "what a task costs inside a playbook that already runs tasks:")
        lines.append("")
        lines += cost_lines(samples, (("warm-up only", "warm", 1), ("+ module, first apply", "warm_module_apply", 2),
                                      ("+ module, no-op re-run", "warm_module_rerun", 2),
                                      ("+ builtin iptables, first apply", "warm_builtin_apply", 1 + BUILTIN_TASKS),
                                      ("+ builtin iptables, no-op re-run", "warm_builtin_rerun", 1 + BUILTIN_TASKS)),
                            "warm")
    targets = report.setdefault("targets", {})
    for cpu in (False, True):
        net = {row[1]: samples.net(row[1], "empty", cpu=cpu) for row in rows[1:]}
        tag = "cpu" if cpu else "wall"
        targets[tag + " module apply/noop"] = ratio(net["module_apply"], net["noop"])
        targets[tag + " module re-run/noop"] = ratio(net["module_rerun"], net["noop"])
        if native:
            targets[tag + " native apply/noop"] = ratio(net["native_apply"], net["noop"])
            targets[tag + " native re-run/noop"] = ratio(net["native_rerun"], net["noop"])
        if builtin:
            targets[tag + " builtin/module apply"] = ratio(net["builtin_apply"], net["module_apply"])
            targets[tag + " builtin/module re-run"] = ratio(net["builtin_rerun"], net["module_rerun"])
            # The best builtin/module ratio a module task could reach if it cost what `command: true` costs.
            targets[tag + " builtin/noop apply (ceiling)"] = ratio(net["builtin_apply"], net["noop"])
            targets[tag + " builtin/noop re-run (ceiling)"] = ratio(net["builtin_rerun"], net["noop"])
        if warm:
            marginal = {key: samples.net(key, "warm", cpu=cpu) for key in
                        ("warm_module_apply", "warm_module_rerun", "warm_builtin_apply", "warm_builtin_rerun")}
            targets[tag + " after a first task: builtin/module apply"] = ratio(
                marginal["warm_builtin_apply"], marginal["warm_module_apply"])
            targets[tag + " after a first task: builtin/module re-run"] = ratio(
                marginal["warm_builtin_rerun"], marginal["warm_module_rerun"])
    intervals = {}
    for name, key in (("module apply/noop", "module_apply"), ("module re-run/noop", "module_rerun"),
                      ("native apply/noop", "native_apply"), ("native re-run/noop", "native_rerun")):
        if key in samples.wall:
            intervals[name] = (samples.ratio_interval(key, "noop", "empty"),
                               samples.ratio_interval(key, "noop", "empty", cpu=True))
    report["ratio_intervals"] = intervals
    lines.append("| ratio (of net costs) | wall | CPU | 90 % interval, wall / CPU | target |")
    lines.append("|---|---:|---:|---|---|")
    goals = [("builtin/module apply", ">= 15"), ("builtin/module re-run", ">= 15"),
             ("builtin/noop apply (ceiling)", None), ("builtin/noop re-run (ceiling)", None)] if builtin else []
    goals += [("module apply/noop", "<= 1.5"), ("module re-run/noop", "<= 1.5")]
    if native:
        goals += [("native apply/noop", "<= 1.5"), ("native re-run/noop", "<= 1.5")]
    if warm:
        goals += [("after a first task: builtin/module apply", ">= 15"),
                  ("after a first task: builtin/module re-run", ">= 15")]
    for name, goal in goals:
        wall, cpu = targets["wall " + name], targets["cpu " + name]
        if goal is None:
            met = "the most any module task can reach, for reference"
        elif goal.startswith(">"):
            met = "%s: %s" % (goal, verdict(wall >= 15, cpu >= 15))
        else:
            met = "%s: %s" % (goal, verdict(wall <= 1.5, cpu <= 1.5))
            if name in intervals:
                met += "; %s" % interval_verdict(intervals[name], 1.5)
        spans = " / ".join("%s-%s" % (fmt(low), fmt(high)) for low, high in intervals[name]) if name in intervals else ""
        lines.append("| %s | %s | %s | %s | %s |" % (name, fmt(wall), fmt(cpu), spans, met))
    lines.append("")
    if builtin:
        lines.append("Rules check: %s" % ("the %d builtin tasks leave exactly the module's %d ISTIO lines in "
                                          "%s-save" % (BUILTIN_TASKS, report["rule_lines"], flavour)
                                          if report["same_rules"] else "DIFFERENT (see the log)"))
        lines.append("")
    return lines


SCALING_HEADER = ["| backend | CIDRs | apply | ratio | no-op re-run | ratio | apply CPU | ratio | re-run CPU | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def scaling_rows(args, samples, baseline):
    """``[(title, key, row)]`` of the scaling variants, each net of ``baseline(count, as_string)``.

    ``row`` holds the net cost of the first apply and the re-run, wall and CPU, and each as a ratio
    to the same backend's cost with 0 CIDRs (nft's for the comma-separated string).
    """
    top = max(args.sizes)
    variants = [(backend, (backend, count), baseline(count, False), backend)
                for backend in args.backends for count in args.sizes]
    if ("nft string", top, "apply") in samples.wall:
        variants.append(("nft, as one comma-separated string", ("nft string", top), baseline(top, True), "nft"))
    rows = []
    for title, key, base, zero_backend in variants:
        row = {}
        for mode in ("apply", "rerun"):
            for cpu, suffix in ((False, ""), (True, " cpu")):
                net = samples.net(key + (mode,), base, cpu=cpu)
                row[mode + suffix] = net
                row[mode + suffix + " ratio"] = ratio(net, samples.net((zero_backend, 0, mode), baseline(0, False),
                                                                       cpu=cpu))
        rows.append((title, key, row))
    return rows


def scaling_lines(rows, table):
    """The markdown rows of ``scaling_rows``; each row is also kept in ``table`` under "BACKEND COUNT"."""
    lines = list(SCALING_HEADER)
    for title, key, row in rows:
        table["%s %d" % key] = row
        lines.append("| %s | %d | %s |" % (title, key[1], " | ".join(
            fmt(row[name]) for name in ("apply", "apply ratio", "rerun", "rerun ratio", "apply cpu",
                                        "apply cpu ratio", "rerun cpu", "rerun cpu ratio"))))
    return lines + [""]


def scaling_table(args, samples, report):
    lines = ["Scaling (%d repetitions; seconds net of the empty playbook (median %s s), paired by repetition; "
             "ratio = net / net with 0 CIDRs):" % (report["scaling_reps"], fmt(samples.median("empty"))), ""]
    table = report.setdefault("scaling", {})
    lines += scaling_lines(scaling_rows(args, samples, lambda count, as_string: "empty"), table)
    task = report.setdefault("scaling_task", {})
    if ("skip", 0) in samples.wall:
        lines.append("The task's own cost: net of the same playbook with the task skipped (`when: false`), which still "
                     "loads the playbook and its CIDRs (median of the skipped playbooks, seconds: %s):"
                     % ", ".join("%d CIDRs %s" % (count, fmt(samples.median(("skip", count)))) for count in args.sizes))
        lines.append("")

        def skipped(count, as_string):
            return ("skip string" if as_string else "skip", count)

        lines += scaling_lines(scaling_rows(args, samples, skipped), task)
    top = max(args.sizes)
    for backend in args.backends:
        for mode in ("apply", "rerun"):
            for title, rows in (("playbook net of start-up", table), ("the task's own cost", task)):
                if "%s %d" % (backend, top) not in rows:
                    continue
                value = rows["%s %d" % (backend, top)][mode + " ratio"]
                cpu = rows["%s %d" % (backend, top)][mode + " cpu ratio"]
                lines.append("- %s, %s, %d CIDRs, %s: %s x the 0-CIDR cost in wall time, %s x in CPU time "
                             "(target <= 2: %s)" % (backend, "first apply" if mode == "apply" else "no-op re-run",
                                                    top, title, fmt(value), fmt(cpu), verdict(value <= 2, cpu <= 2)))
    lines.append("")
    return lines


# --- main ---------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measurement (median); default 5")
    parser.add_argument("--min-reps", type=int, default=3, help="never fewer, even over the time budget")
    parser.add_argument("--sizes", default="0,100,1000,10000", help="excluded CIDR counts, comma-separated")
    parser.add_argument("--backends", default="nft,legacy,native",
                        help="backends of the scaling part: nft, legacy, native (native_nftables: true; also "
                             "measured in the compare part)")
    parser.add_argument("--one-task", action="store_true",
                        help="compare part: only the one-task variants (command: true, the module, native mode), "
                             "without the 22 builtin tasks and the warm-up variants: about four times the rounds "
                             "in the same time, for the 1.5x targets on a machine whose speed varies")
    parser.add_argument("--profile-cidrs", type=int, default=10000)
    parser.add_argument("--budget", type=int, default=1000, help="seconds the whole run aims to stay within")
    parser.add_argument("--parts", default="compare,scaling,datapath,split,check,profile",
                        help="which parts to run (comma-separated): compare, scaling, datapath, split, check, profile")
    parser.add_argument("--out", default=os.path.join(".cache", "bench"), help="results directory")
    datapath.add_arguments(parser)
    args = parser.parse_args(argv)
    args.sizes = sorted({int(n) for n in args.sizes.split(",")} | {0})
    args.parts = {"datapath"} if args.datapath_only else set(args.parts.split(","))
    unknown = set(args.backends.split(",")) - set(BACKENDS)
    if unknown:
        parser.error("--backends: unknown %s (choose from %s)" % (", ".join(sorted(unknown)), ", ".join(BACKENDS)))
    args.backends = [b for b in BACKENDS if b in args.backends.split(",")]
    args.min_reps = min(args.min_reps, args.reps)
    return args


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("bench.py needs root (network namespaces)")
    for tool in ("ip", "ansible-playbook", "iptables", "iptables-nft-save", "iptables-legacy-save") + (
            ("nft",) if "native" in args.backends else ()):
        if not shutil.which(tool):
            raise SystemExit("bench.py: %s not found on PATH" % tool)
    prefix = os.environ.get("BENCH_NS_PREFIX") or "msbench-%d-%d" % (os.getpid(), random.randrange(10000))
    nss = Namespaces(prefix)
    outdir = os.path.abspath(args.out)
    os.makedirs(os.path.join(outdir, "logs"), exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="meshops-bench-")
    # SIGTERM ends the run through the finally below, which removes the namespaces.
    signal.signal(signal.SIGTERM, lambda *args: sys.exit(143))
    started = time.monotonic()
    report = {"machine": machine(), "args": {k: sorted(v) if isinstance(v, set) else v
                                             for k, v in vars(args).items()}}
    flavour = iptables_flavour()
    log("meshops.sidecar bench: %(cpus)d CPUs, %(model)s, kernel %(kernel)s, Python %(python)s, %(ansible)s"
        % report["machine"])
    log("namespaces: %s-N; results: %s" % (prefix, os.path.relpath(outdir)))
    try:
        work = Workdir(scratch, sys.executable)
        work.add("empty", [])
        work.add("noop", [{"name": "no-op", "ansible.builtin.command": "true"}])
        work.add("module_default", module_task())
        work.add("module_native", module_task("native"))
        work.add("builtin", builtin_tasks())
        work.add("warm", warm_up())
        work.add("warm_module", warm_up() + module_task())
        work.add("warm_builtin", warm_up() + builtin_tasks())
        for backend in args.backends:
            for count in args.sizes:
                work.add("scale_%s_%d" % (backend, count), module_task(backend, count))
            work.add("scale_%s_%d_string" % (backend, max(args.sizes)), module_task(backend, max(args.sizes), True))
        for count in args.sizes:
            work.add("skip_%d" % count, module_task("nft", count, skipped=True))
        work.add("skip_%d_string" % max(args.sizes), module_task("nft", max(args.sizes), True, skipped=True))
        runner = Runner(work, os.path.join(outdir, "logs"))
        budget = Budget(args.budget)
        compare, scaling = Samples(), Samples()
        if "compare" in args.parts:
            part_compare(args, nss, runner, compare, budget, flavour, report)
        if "scaling" in args.parts:
            part_scaling(args, nss, runner, scaling, budget, report)
        if "datapath" in args.parts:
            datapath.part_datapath(args, nss, report, log)
        if "split" in args.parts:
            part_phases(args, nss, runner, report)
        if "check" in args.parts:
            part_check(nss, report, outdir)
        if "profile" in args.parts:
            part_profile(args, nss, report, outdir)
        report["elapsed"] = time.monotonic() - started
        report["loadavg_end"] = os.getloadavg()
        report["samples"] = {"compare": compare.as_dict(), "scaling": scaling.as_dict()}
        text = write_report(args, compare, scaling, report, outdir, flavour)
        if "scaling_reps" in report:
            plot.write_svg(os.path.join(outdir, "scaling.svg"), args.sizes, report["scaling"], args.backends)
            if report.get("scaling_task"):
                plot.write_svg(os.path.join(outdir, "scaling-task.svg"), args.sizes, report["scaling_task"],
                               args.backends, measure="The task's own cost (net of it skipped)")
        if "datapath" in report:
            plot.write_datapath_svg(os.path.join(outdir, "datapath.svg"), report["datapath"])
        with open(os.path.join(outdir, "results.json"), "w") as handle:
            json.dump(report, handle, indent=1, default=str)
        log("")
        log(text)
        log("results: %s (results.md, results.json, scaling*.svg, datapath.svg, profile-*.txt, logs/)" % os.path.relpath(outdir))
    finally:
        nss.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
