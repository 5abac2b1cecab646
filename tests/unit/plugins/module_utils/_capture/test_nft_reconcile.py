# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Native nftables reconcile: the rule-text translator against what the kernel really stores, and
the change plan.

The fixtures under fixtures/nftables/kernel/ are ``nft -j list ruleset`` outputs (nft 1.0.6) of
scratch namespaces loaded with Istio's transaction for each configuration below (``regenerate()``
rebuilds them, as root); for every one the desired state must equal the kernel's, rule for rule.
"""

from __future__ import annotations

import copy
import json
import os

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.nftables import (
    NftablesBackend,
    parse_version,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import (
    istio_transaction,
    plan_ruleset,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_reconcile import (
    RuleSyntaxError,
    TableChange,
    canonical_rule,
    desired_state,
    live_state,
    plan_changes,
    removal_text,
    rule_expressions,
    transaction_text,
)

KERNEL = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nftables", "kernel")

VM_DNS = dict(proxy_uids=("998",), proxy_gids=("998",), exclude_inbound_ports=("22", "15090", "15021", "15020"),
              capture_dns=True, dns_servers=((IPV4, "127.0.0.53"),))
KERNEL_CONFIGS = {
    "k8s-default": CaptureOptions(),
    "k8s-default-dual-stack": CaptureOptions(ipv6=True),
    "vm-dns": CaptureOptions(**VM_DNS),
    "vm-dns-all-dual-stack": CaptureOptions(**dict(VM_DNS, ipv6=True, capture_all_dns=True)),
    "k8s-tproxy-dual-stack": CaptureOptions(inbound_interception_mode="TPROXY", ipv6=True),
    "tproxy-no-inbound": CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=()),
    "tproxy-no-inbound-dual-stack": CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=(), ipv6=True),
    "empty": CaptureOptions(inbound_ports=(), outbound_ip_ranges=()),
    "kitchen-sink": CaptureOptions(
        inbound_interception_mode="TPROXY", ipv6=True, drop_invalid=True, capture_dns=True,
        dns_servers=((IPV4, "10.0.0.2"), (IPV6, "2001:db8::53")), exclude_interfaces=("eth9", "veth+"),
        reroute_virtual_interfaces=("kv0", "kv1"), exclude_outbound_ports=("8000:8080", "9000"),
        outbound_ports=("7000",), exclude_outbound_ip_ranges=((IPV4, "10.1.2.3/8"), (IPV6, "2001:db8:1::1/48")),
        outbound_ip_ranges=((IPV4, "198.18.0.0/15"), (IPV6, "2001:db8::/32")), inbound_ports=("80", "8000:8100"),
        outbound_owner_groups=("5", "6"), proxy_uids=("1337", "1338"), tproxy_mark=1400, proxy_port=15101,
        inbound_capture_port=15106, inbound_tunnel_port=15108),
    "redirect-ports-groups-loopback": CaptureOptions(
        inbound_ports=("80", "443"), exclude_outbound_owner_groups=("7",), ipv4_loopback_cidr="127.0.0.0/8",
        outbound_ip_ranges=((IPV4, "127.0.0.2/32"), (IPV4, "198.18.0.0/15")), capture_dns=True,
        capture_all_dns=True),
}
# A namespace that also holds other tables: only Istio's inet tables count.
FOREIGN = "add table inet filter\nadd chain inet filter input { type filter hook input priority 0 ; }\n" \
          "add rule inet filter input tcp dport 22 counter accept\nadd table ip istio-proxy-nat\n" \
          "add chain ip istio-proxy-nat c\nadd rule ip istio-proxy-nat c counter return\n"


def kernel_fixture(name):
    with open(os.path.join(KERNEL, name + ".json")) as handle:
        return json.load(handle)


def desired(opts):
    return desired_state(plan_ruleset(opts))


@pytest.mark.parametrize("name", sorted(KERNEL_CONFIGS))
def test_desired_equals_what_the_kernel_stores(name):
    live = live_state(kernel_fixture(name))
    want = desired(KERNEL_CONFIGS[name])
    assert live == want
    assert plan_changes(want, live) == []


def test_foreign_tables_are_ignored():
    document = kernel_fixture("foreign-and-k8s-default")
    names = {item["table"]["name"] + "/" + item["table"]["family"] for item in document["nftables"] if "table" in item}
    assert {"filter/inet", "istio-proxy-nat/ip"} <= names
    live = live_state(document)
    assert set(live) == {"istio-proxy-nat"}
    assert live == desired(CaptureOptions())


def test_counter_values_and_handles_do_not_count():
    document = copy.deepcopy(kernel_fixture("k8s-default"))
    for item in document["nftables"]:
        if "rule" in item:
            item["rule"]["handle"] += 1000
            for expr in item["rule"]["expr"]:
                if "counter" in expr:
                    expr["counter"] = {"packets": 17, "bytes": 4242}
    assert plan_changes(desired(CaptureOptions()), live_state(document)) == []


def _rules(document, table, chain):
    return [item for item in document["nftables"] if "rule" in item and item["rule"]["table"] == table
            and item["rule"]["chain"] == chain]


@pytest.mark.parametrize("drift", ["added", "removed", "reordered", "stray-chain", "policy"])
def test_drift_replaces_only_the_table_that_differs(drift):
    document = copy.deepcopy(kernel_fixture("vm-dns"))
    items = document["nftables"]
    rules = _rules(document, "istio-proxy-nat", "istio-output")
    if drift == "added":
        items.append(copy.deepcopy(rules[0]))
    elif drift == "removed":
        items.remove(rules[2])
    elif drift == "reordered":
        first, second = items.index(rules[0]), items.index(rules[1])
        items[first], items[second] = items[second], items[first]
    elif drift == "stray-chain":
        items.append({"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "stray", "handle": 99}})
    else:
        for item in items:
            if "chain" in item and item["chain"]["table"] == "istio-proxy-nat" and item["chain"]["name"] == "output":
                item["chain"]["policy"] = "drop"
    want = desired(KERNEL_CONFIGS["vm-dns"])
    assert plan_changes(want, live_state(document)) == [TableChange("istio-proxy-nat", "replace")]


def test_config_change_deletes_tables_no_longer_wanted():
    live = live_state(kernel_fixture("kitchen-sink"))
    tables = plan_ruleset(CaptureOptions())
    changes = plan_changes(desired_state(tables), live)
    assert changes == [TableChange("istio-proxy-nat", "replace"), TableChange("istio-proxy-mangle", "delete"),
                       TableChange("istio-proxy-raw", "delete")]
    text = transaction_text(changes, tables).splitlines()
    assert text[:3] == ["add table inet istio-proxy-nat", "delete table inet istio-proxy-nat",
                        "add table inet istio-proxy-nat"]
    assert text[-4:] == ["add table inet istio-proxy-mangle", "delete table inet istio-proxy-mangle",
                         "add table inet istio-proxy-raw", "delete table inet istio-proxy-raw"]
    assert not any(line.startswith("insert") or "filter" in line for line in text)


def test_transaction_builds_rules_in_kernel_order():
    tables = plan_ruleset(KERNEL_CONFIGS["k8s-tproxy-dual-stack"])
    text = transaction_text(plan_changes(desired_state(tables), {}), tables)
    inbound = [line.split("istio-inbound ", 1)[1] for line in text.splitlines()
               if line.startswith("add rule inet istio-proxy-mangle istio-inbound ")]
    assert inbound[:2] == ["meta l4proto tcp mark 1337 counter return",
                           "iifname lo meta l4proto tcp ip6 saddr ::6/128 counter return"]


def test_removal_touches_only_istio_tables():
    live = live_state(kernel_fixture("foreign-and-k8s-default"))
    assert removal_text(live) == "add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n"
    assert removal_text({}) == ""


def test_empty_ruleset_reads_as_nothing():
    assert live_state('{"nftables": [{"metainfo": {"version": "1.0.6"}}]}') == {}
    assert live_state("") == {}


def test_translator_masks_host_bits_and_prints_host_prefixes_plain():
    assert rule_expressions("ip daddr 10.1.2.3/8 counter return")[0]["match"]["right"] == {
        "prefix": {"addr": "10.0.0.0", "len": 8}}
    assert rule_expressions("ip6 saddr ::6/128 counter return")[0]["match"]["right"] == "::6"


def test_translator_refuses_unknown_syntax():
    with pytest.raises(RuleSyntaxError):
        rule_expressions("ip protocol icmp counter accept")


# --- the backend, over a fake runner (the real one is the integration target's) ------------------

class FakeRunner:
    def __init__(self, answers, nft="/usr/sbin/nft"):
        self.answers, self.calls, self.nft = answers, [], nft

    def which(self, name):
        return self.nft

    def run(self, argv, data=None):
        self.calls.append((argv, data))
        return self.answers.pop(0)


@pytest.mark.parametrize("text, version", [("nftables v1.0.6 (Lester Gooch #5)\n", (1, 0, 6)),
                                           ("nftables v0.9.8 (E.D.S.)\n", (0, 9, 8)),
                                           ("nftables v1.1 (x)", (1, 1, 0)), ("garbage", None)])
def test_parse_version(text, version):
    assert parse_version(text) == version


def test_backend_version_gate_names_the_version_found():
    assert NftablesBackend(FakeRunner([(0, "nftables v1.0.0 (x)\n", "")])).missing() == [
        "nft >= 1.0.1 (found 1.0.0)"]
    assert NftablesBackend(FakeRunner([(0, "nftables v1.0.1 (x)\n", "")])).missing() == []
    assert NftablesBackend(FakeRunner([], nft=None)).missing() == ["nft"]


def test_backend_apply_is_one_transaction_and_errors_say_nothing_changed():
    runner = FakeRunner([(0, "", ""), (1, "", "Error: Could not process rule")])
    backend = NftablesBackend(runner)
    backend.apply("add table inet istio-proxy-nat\n")
    assert runner.calls == [(["/usr/sbin/nft", "-f", "-"], "add table inet istio-proxy-nat\n")]
    backend.apply("")
    assert len(runner.calls) == 1
    with pytest.raises(BackendError, match="nothing was applied: Error: Could not process rule"):
        backend.apply("x\n")


def _table_document(document, family, name):
    """The part of a ``list ruleset`` document that ``nft -j list table FAMILY NAME`` prints."""
    def belongs(item):
        kind = next(iter(item))
        body = item[kind]
        return body.get("family") == family and (body.get("table") if kind != "table" else body.get("name")) == name
    return {"nftables": [item for item in document["nftables"] if "metainfo" not in item and belongs(item)]}


@pytest.fixture
def no_netlink(mocker):
    """The backend's netlink table list unanswered, so it asks nft (and never reads this machine's tables)."""
    mocker.patch.object(NftablesBackend, "inet_table_names", staticmethod(lambda: None))


def test_backend_read_takes_the_names_from_netlink(mocker):
    mocker.patch.object(NftablesBackend, "inet_table_names", staticmethod(lambda: ["userfilter", "istio-proxy-raw"]))
    runner = FakeRunner([(0, '{"nftables": [{"table": {"family": "inet", "name": "istio-proxy-raw", "handle": 4}}]}', "")])
    assert NftablesBackend(runner).read() == {"nftables": [{"table": {"family": "inet", "name": "istio-proxy-raw",
                                                                      "handle": 4}}]}
    assert [argv for argv, dummy in runner.calls] == [["/usr/sbin/nft", "-j", "list", "table", "inet", "istio-proxy-raw"]]


def test_a_table_deleted_between_list_and_read_is_not_there(mocker):
    mocker.patch.object(NftablesBackend, "inet_table_names", staticmethod(lambda: ["istio-proxy-nat"]))
    runner = FakeRunner([(1, "", "Error: No such file or directory\nlist table inet istio-proxy-nat")])
    assert NftablesBackend(runner).read() == {"nftables": []}
    runner = FakeRunner([(1, "", "Error: Operation not permitted")])
    with pytest.raises(BackendError, match="Operation not permitted"):
        NftablesBackend(runner).read()


def test_backend_read_lists_istio_tables_only(no_netlink):
    ruleset = kernel_fixture("foreign-and-k8s-default")
    tables = {"nftables": [item for item in ruleset["nftables"] if "table" in item]}
    istio = [item["table"]["name"] for item in tables["nftables"]
             if item["table"]["family"] == "inet" and item["table"]["name"].startswith("istio-proxy-")]
    assert istio and len(istio) < len(tables["nftables"])  # the fixture also holds foreign tables
    runner = FakeRunner([(0, json.dumps(tables), "")]
                        + [(0, json.dumps(_table_document(ruleset, "inet", name)), "") for name in istio])
    assert live_state(NftablesBackend(runner).read()) == desired(CaptureOptions())
    assert [argv for argv, dummy in runner.calls] == (
        [["/usr/sbin/nft", "-j", "list", "tables"]] + [["/usr/sbin/nft", "-j", "list", "table", "inet", name] for name in istio])


def test_backend_read_errors_say_what_failed(no_netlink):
    with pytest.raises(BackendError, match="JSON"):
        NftablesBackend(FakeRunner([(0, "not json", "")])).read()
    with pytest.raises(BackendError, match=r"nft -j list tables failed \(rc=1\): Operation not permitted"):
        NftablesBackend(FakeRunner([(1, "", "Operation not permitted")])).read()
    assert NftablesBackend(FakeRunner([(0, "", "")])).read() == {"nftables": []}


def regenerate(prefix="nfefix"):  # pragma: no cover - run by hand, as root, to refresh the fixtures
    import subprocess

    for name, opts in list(KERNEL_CONFIGS.items()) + [("foreign-and-k8s-default", None)]:
        ns = "%s-%d" % (prefix, os.getpid())
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            text = FOREIGN + istio_transaction(CaptureOptions()) if opts is None else istio_transaction(opts)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=text, text=True, check=True)
            out = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "ruleset"], text=True,
                                 check=True, stdout=subprocess.PIPE).stdout
            with open(os.path.join(KERNEL, name + ".json"), "w") as handle:
                json.dump(json.loads(out), handle, indent=1)
                handle.write("\n")
        finally:
            subprocess.run(["ip", "netns", "delete", ns], check=True)


def test_canonical_rule_keeps_every_expression_but_an_implied_l4proto():
    kept = json.loads(canonical_rule(rule_expressions("meta l4proto tcp ct state invalid counter jump istio-drop")))
    assert len(kept) == 4
    implied = json.loads(canonical_rule(rule_expressions("meta l4proto tcp tcp dport 15008 counter return")))
    assert implied == [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                                  "right": 15008}}, {"counter": None}, {"return": None}]
    assert json.loads(canonical_rule([{"counter": {"packets": 1, "bytes": 2}}, {"return": None}])) == [
        {"counter": None}, {"return": None}]


def _ct_state(right, op="=="):
    return [{"match": {"op": op, "left": {"ct": {"key": "state"}}, "right": right}}, {"counter": None}]


def test_ct_state_sets_compare_by_their_members():
    listed = canonical_rule(_ct_state(["established", "related"], op="in"))
    assert canonical_rule(_ct_state({"set": ["related", "established"]})) == listed
    assert canonical_rule(_ct_state({"set": ["new", "invalid"]})) != listed
    assert canonical_rule(_ct_state({"set": ["invalid"]})) != canonical_rule(_ct_state({"set": ["new"]}))
    assert canonical_rule(_ct_state("established")) == canonical_rule(_ct_state({"set": ["established"]}))


def test_keep_existing_rule_matches_what_the_kernel_lists():
    # nft 1.0.6 `nft -j list` of the rule the planner writes for keep_existing_connections
    # (it drops the `meta l4proto tcp` that the tcp flags match implies).
    kernel = [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "new"}},
              {"match": {"op": "!=", "left": {"&": [{"payload": {"protocol": "tcp", "field": "flags"}},
                                                    ["fin", "syn", "rst", "ack"]]}, "right": "syn"}},
              {"counter": {"packets": 3, "bytes": 180}}, {"return": None}]
    text = "meta l4proto tcp ct state new tcp flags & (fin|syn|rst|ack) != syn counter return"
    assert canonical_rule(rule_expressions(text)) == canonical_rule(kernel)
