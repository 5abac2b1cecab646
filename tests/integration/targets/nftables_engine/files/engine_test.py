# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The native nftables engine (planner, reconcile, backend) on real network namespaces.

Every namespace is named with this run's prefix and deleted in a ``finally``; traffic only flows
between two namespaces made here, to 198.18.0.0/15. Prints one JSON line of timings at the end.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time


def _collection_root():
    here = os.path.dirname(os.path.abspath(__file__))
    while os.path.basename(here) != "ansible_collections":
        parent = os.path.dirname(here)
        if parent == here:
            raise SystemExit("not inside an ansible_collections tree")
        here = parent
    return here


COLLECTIONS = _collection_root()
sys.path.insert(0, os.path.dirname(COLLECTIONS))

# pylint: disable=wrong-import-position
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.nftables import (  # noqa: E402
    NftablesBackend,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import (  # noqa: E402
    IPV4,
    IPV6,
    CaptureOptions,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import plan_ruleset  # noqa: E402
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_reconcile import (  # noqa: E402
    desired_state,
    live_state,
    plan_changes,
    removal_text,
    transaction_text,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ProcessRunner  # noqa: E402

GOLDENS = os.path.join(COLLECTIONS, "meshops", "sidecar", "tests", "unit", "plugins", "module_utils", "fixtures",
                       "nftables")
PREFIX = "nfe%d" % (os.getpid() % 100000)
SO_ORIGINAL_DST = 80

DEFAULTS = CaptureOptions()
VM_DNS = CaptureOptions(proxy_uids=("998",), proxy_gids=("998",), capture_dns=True,
                        exclude_inbound_ports=("22", "15090", "15021", "15020"), dns_servers=((IPV4, "127.0.0.53"),))
TPROXY_DUAL = CaptureOptions(inbound_interception_mode="TPROXY", ipv6=True)
CONFIGS = {
    "defaults": DEFAULTS,
    "vm-dns": VM_DNS,
    "tproxy-dual-stack": TPROXY_DUAL,
    "tproxy-no-inbound": CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=(), ipv6=True),
    "exclusions": CaptureOptions(
        exclude_interfaces=("eth9", "veth+"), exclude_outbound_ports=("8000:8080",),
        exclude_outbound_ip_ranges=((IPV4, "198.18.9.0/24"), (IPV6, "2001:db8:9::/48")), ipv6=True,
        outbound_ports=("7000",), drop_invalid=True),
    "v6-dns-ipv6-off": CaptureOptions(capture_dns=True, dns_servers=((IPV6, "2001:db8::53"),)),
}
GOLDEN_OPTIONS = {
    "k8s-default": DEFAULTS, "vm-dns": VM_DNS, "k8s-tproxy-dual-stack": TPROXY_DUAL,
    "tproxy-no-inbound": CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=()),
    "tproxy-no-inbound-dual-stack": CONFIGS["tproxy-no-inbound"],
}
USER_TABLE = ("add table inet filter\nadd chain inet filter input { type filter hook input priority 0 ; }\n"
              "add rule inet filter input tcp dport 22 counter accept\n")

made = []
deleted = []  # namespaces already deleted, so that names stay unique


class NamespaceRunner(ProcessRunner):
    """Commands inside one named namespace."""

    def __init__(self, ns):
        super().__init__()
        self.ns = ns
        self.writes = 0

    def run(self, argv, data=None):
        if argv[1:2] == ["-f"]:
            self.writes += 1
        return super().run(["ip", "netns", "exec", self.ns] + list(argv), data)


class NamespaceBackend(NftablesBackend):
    """The backend over a NamespaceRunner. The module enters the namespace before it uses the backend,
    so the backend's netlink requests (table names, generation) are answered there; this test stays
    in the host namespace and drives several namespaces at once, so it asks nft through the runner.
    The netlink path is tested through the module (istio_redirect_chains target, tests/native.yml)."""

    @staticmethod
    def inet_table_names():
        return None

    @staticmethod
    def generation():
        return None


def sh(*argv, data=None):
    proc = subprocess.run(argv, input=data, universal_newlines=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(argv), proc.stderr))
    return proc.stdout


def new_ns(name):
    ns = "%s-%s%d" % (PREFIX, name, len(made) + len(deleted))
    sh("ip", "netns", "add", ns)
    made.append(ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    return ns


def nft(ns, *args, data=None):
    return sh("ip", "netns", "exec", ns, "nft", *args, data=data)


def ruleset(ns):
    return json.loads(nft(ns, "-j", "list", "ruleset"))


def user_table(ns):
    """The user's table as the kernel lists it, handles and counters included."""
    return [item for item in ruleset(ns)["nftables"]
            if any(isinstance(v, dict) and v.get("name", v.get("table")) == "filter" for v in item.values())]


def converge(backend, opts):
    """Read, plan, apply: what the module will do. Returns the changes."""
    tables = plan_ruleset(opts)
    changes = plan_changes(desired_state(tables), live_state(backend.read()))
    backend.apply(transaction_text(changes, tables))
    return changes


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def test_goldens_load_and_read_back():
    for name, opts in GOLDEN_OPTIONS.items():
        ns = new_ns("g")
        with open(os.path.join(GOLDENS, name + ".nft")) as handle:
            nft(ns, "-f", "-", data=handle.read())
        backend = NamespaceBackend(NamespaceRunner(ns))
        check(live_state(backend.read()) == desired_state(plan_ruleset(opts)), "golden %s: kernel differs" % name)
        check(converge(backend, opts) == [], "golden %s: a converge after Istio's apply changed something" % name)
        sh("ip", "netns", "delete", ns)
        made.remove(ns)
        deleted.append(ns)


def test_configs_converge_and_rerun_writes_nothing():
    for name, opts in CONFIGS.items():
        ns = new_ns("c")
        nft(ns, "-f", "-", data=USER_TABLE)
        before = user_table(ns)
        runner = NamespaceRunner(ns)
        backend = NamespaceBackend(runner)
        check(backend.missing() == [], "nft missing: %s" % backend.missing())
        check(converge(backend, opts), "%s: first apply planned nothing" % name)
        check(live_state(backend.read()) == desired_state(plan_ruleset(opts)), "%s: kernel differs after" % name)
        # Traffic through the output hook so that counters are non-zero, then a re-run.
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                        "import socket\ntry:\n socket.create_connection(('127.0.0.1', 9), 1)\nexcept OSError:\n pass"],
                       check=True)
        counted = ruleset(ns)
        moved = [expr["counter"]["packets"] for item in counted["nftables"] if "rule" in item
                 and item["rule"]["table"].startswith("istio-proxy-") for expr in item["rule"]["expr"]
                 if "counter" in expr and expr["counter"]["packets"]]
        check(moved, "%s: no counter moved" % name)
        writes = runner.writes
        check(converge(backend, opts) == [], "%s: re-run planned a change" % name)
        check(runner.writes == writes, "%s: re-run wrote" % name)
        check(ruleset(ns) == counted, "%s: re-run changed counters or handles" % name)
        check(user_table(ns) == before, "%s: the user's table changed" % name)
        backend.apply(removal_text(live_state(backend.read())))
        check(live_state(backend.read()) == {}, "%s: absent left Istio tables" % name)
        check(user_table(ns) == before, "%s: absent touched the user's table" % name)


def test_mode_changes_converge_to_a_fresh_apply():
    ns, fresh = new_ns("m"), new_ns("f")
    backend, fresh_backend = NamespaceBackend(NamespaceRunner(ns)), NamespaceBackend(NamespaceRunner(fresh))
    sequence = [DEFAULTS, TPROXY_DUAL, VM_DNS, CONFIGS["exclusions"], DEFAULTS]
    for opts in sequence:
        converge(backend, opts)
        fresh_backend.apply(removal_text(live_state(fresh_backend.read())))
        converge(fresh_backend, opts)
        check(live_state(backend.read()) == live_state(fresh_backend.read()), "changed config differs from fresh")
    check(set(live_state(backend.read())) == {"istio-proxy-nat"}, "back to defaults left other tables")


def _handles(ns, table, chain):
    return [item["rule"]["handle"] for item in ruleset(ns)["nftables"]
            if "rule" in item and item["rule"]["table"] == table and item["rule"]["chain"] == chain]


def test_drift_is_repaired_in_one_transaction():
    ns = new_ns("d")
    nft(ns, "-f", "-", data=USER_TABLE)
    before = user_table(ns)
    runner = NamespaceRunner(ns)
    backend = NamespaceBackend(runner)
    converge(backend, VM_DNS)
    want = desired_state(plan_ruleset(VM_DNS))
    nat = "istio-proxy-nat"
    drifts = {
        "added": lambda: nft(ns, "add", "rule", "inet", nat, "istio-output", "tcp", "dport", "1", "counter", "return"),
        "removed": lambda: nft(ns, "delete", "rule", "inet", nat, "istio-output", "handle",
                               str(_handles(ns, nat, "istio-output")[3])),
        "reordered": lambda: (nft(ns, "delete", "rule", "inet", nat, "istio-output", "handle",
                                  str(_handles(ns, nat, "istio-output")[0])),
                              nft(ns, "add", "rule", "inet", nat, "istio-output", "oifname", "lo", "ip", "saddr",
                                  "127.0.0.6/32", "counter", "return")),
        "stray-chain": lambda: nft(ns, "add", "chain", "inet", "istio-proxy-raw", "stray"),
        "stray-table": lambda: nft(ns, "add", "table", "inet", "istio-proxy-mangle"),
    }
    for name, drift in drifts.items():
        drift()
        check(live_state(backend.read()) != want, "drift %s not seen" % name)
        writes = runner.writes
        changes = converge(backend, VM_DNS)
        check(len(changes) == 1 and runner.writes == writes + 1, "drift %s: %r" % (name, changes))
        check(live_state(backend.read()) == want, "drift %s not repaired" % name)
        check(user_table(ns) == before, "drift %s: the user's table changed" % name)


def test_live_redirect_to_the_outbound_listener():
    work, peer = new_ns("w"), new_ns("p")
    veth_w, veth_p = PREFIX + "w", PREFIX + "p"
    sh("ip", "link", "add", veth_w, "netns", work, "type", "veth", "peer", "name", veth_p, "netns", peer)
    sh("ip", "-n", work, "addr", "add", "198.18.200.1/30", "dev", veth_w)
    sh("ip", "-n", peer, "addr", "add", "198.18.200.2/30", "dev", veth_p)
    sh("ip", "-n", work, "link", "set", veth_w, "up")
    sh("ip", "-n", peer, "link", "set", veth_p, "up")
    converge(NamespaceBackend(NamespaceRunner(work)), DEFAULTS)
    listener = subprocess.Popen(["ip", "netns", "exec", work, sys.executable, __file__, "--listen", "15001"],
                                stdout=subprocess.PIPE, universal_newlines=True)
    try:
        check(listener.stdout.readline().strip() == "ready", "listener did not start")
        sh("ip", "netns", "exec", work, sys.executable, __file__, "--connect", "198.18.200.2", "8080")
        out = listener.communicate(timeout=10)[0]
        check(out.strip() == "198.18.200.2:8080", "original destination: %r" % out)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def listen(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    server.listen(1)
    server.settimeout(10)
    print("ready", flush=True)
    conn = server.accept()[0]
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    dst_port, dst_addr = struct.unpack("!H", raw[2:4])[0], socket.inet_ntoa(raw[4:8])
    print("%s:%d" % (dst_addr, dst_port), flush=True)
    conn.close()


def connect(addr, port):
    socket.create_connection((addr, port), timeout=5).close()


def timings():
    """Read + plan + no-op converge, for the default config and for 10,000 excluded CIDRs."""
    results = {}
    many = CaptureOptions(exclude_outbound_ip_ranges=tuple((IPV4, "10.%d.%d.0/24" % (i // 256, i % 256))
                                                           for i in range(10000)))
    for name, opts in (("defaults", DEFAULTS), ("10000-cidrs", many)):
        ns = new_ns("t")
        backend = NamespaceBackend(NamespaceRunner(ns))
        start = time.perf_counter()
        converge(backend, opts)
        first = time.perf_counter() - start
        start = time.perf_counter()
        document = backend.read()
        read = time.perf_counter() - start
        start = time.perf_counter()
        changes = plan_changes(desired_state(plan_ruleset(opts)), live_state(document))
        plan = time.perf_counter() - start
        check(changes == [], "%s: no-op planned a change" % name)
        results[name] = {"first_apply_ms": round(first * 1000, 1), "read_ms": round(read * 1000, 1),
                         "plan_ms": round(plan * 1000, 1), "noop_ms": round((read + plan) * 1000, 1)}
    return results


def main():
    if sys.argv[1:2] == ["--listen"]:
        return listen(int(sys.argv[2]))
    if sys.argv[1:2] == ["--connect"]:
        return connect(sys.argv[2], int(sys.argv[3]))
    try:
        for test in (test_goldens_load_and_read_back, test_configs_converge_and_rerun_writes_nothing,
                     test_mode_changes_converge_to_a_fresh_apply, test_drift_is_repaired_in_one_transaction,
                     test_live_redirect_to_the_outbound_listener):
            test()
            print("ok", test.__name__, flush=True)
        print(json.dumps({"timings": timings()}), flush=True)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
