# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Istio parity of the native nftables planner: the reference's worked examples byte for byte,
and one test per construction step (section 3) with the rule text the reference gives."""

from __future__ import annotations

import os

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import (
    istio_transaction,
    nft_ifname,
    plan_ruleset,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import OptionError

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nftables")

K8S = CaptureOptions()
VM_DNS = CaptureOptions(
    proxy_uids=("998",),
    proxy_gids=("998",),
    exclude_inbound_ports=("22", "15090", "15021", "15020"),
    capture_dns=True,
    dns_servers=((IPV4, "127.0.0.53"),),
)
TPROXY_DUAL = CaptureOptions(inbound_interception_mode="TPROXY", ipv6=True)
# Reference section 9 A, B, C (copied verbatim into the fixtures) and TPROXY with no inbound ports
# (section 3's note: Istio's fixed #58135 behaviour, the first inserts becoming appends).
GOLDENS = {
    "k8s-default": K8S,
    "vm-dns": VM_DNS,
    "k8s-tproxy-dual-stack": TPROXY_DUAL,
    "tproxy-no-inbound": CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=()),
    "tproxy-no-inbound-dual-stack": CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=(), ipv6=True),
}


def fixture(name):
    with open(os.path.join(FIXTURES, name + ".nft")) as handle:
        return handle.read()


def lines(opts):
    return istio_transaction(opts).splitlines()


def chains(opts):
    """``{(table, chain): rules in kernel order}``."""
    return {(t.name[len("istio-proxy-"):], c.name): list(c.rules) for t in plan_ruleset(opts) for c in t.chains}


def rules_of(opts, table, chain):
    return chains(opts).get((table, chain), [])


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_transaction_matches_istio(name):
    assert istio_transaction(GOLDENS[name]) == fixture(name)


def test_tproxy_inbound_order_with_ipv6():
    # Section 3: both families share one chain, so the ::6 insert lands before 127.0.0.6.
    assert rules_of(TPROXY_DUAL, "mangle", "istio-inbound")[:4] == [
        "meta l4proto tcp mark 1337 counter return",
        "iifname lo meta l4proto tcp ip6 saddr ::6/128 counter return",
        "iifname lo meta l4proto tcp mark != 1338 counter return",
        "iifname lo meta l4proto tcp ip saddr 127.0.0.6/32 counter return",
    ]


@pytest.mark.parametrize("ipv6", [False, True])
def test_tproxy_empty_inbound_ports_is_valid(ipv6):
    # Istio #58135: inserts past the end of the chain become appends; nothing jumps to istio-inbound.
    opts = CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=(), ipv6=ipv6)
    got = chains(opts)
    expected = ["meta l4proto tcp mark 1337 counter return"]
    if ipv6:
        expected.append("iifname lo meta l4proto tcp ip6 saddr ::6/128 counter return")
    expected += ["iifname lo meta l4proto tcp mark != 1338 counter return"]
    if not ipv6:
        expected.insert(1, "iifname lo meta l4proto tcp ip saddr 127.0.0.6/32 counter return")
    else:
        expected.append("iifname lo meta l4proto tcp ip saddr 127.0.0.6/32 counter return")
    assert got[("mangle", "istio-inbound")] == expected
    assert ("mangle", "istio-divert") not in got and ("mangle", "istio-tproxy") not in got
    assert not any("jump istio-inbound" in r for r in got[("mangle", "prerouting")])
    if not ipv6:
        assert "insert" not in istio_transaction(opts)


def test_cleanup_fixture_is_every_table():
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_reconcile import removal_text

    live = {"istio-proxy-nat": {}, "istio-proxy-mangle": {}, "istio-proxy-raw": {}}
    expected = fixture("cleanup").splitlines()
    got = removal_text(live).splitlines()
    assert sorted(got) == sorted(expected)


# --- one test per construction step (reference section 3) ---------------------------------------

def test_step01_exclude_interfaces():
    opts = CaptureOptions(exclude_interfaces=("eth1", "eth2"))
    assert rules_of(opts, "nat", "prerouting")[:2] == ["iifname eth1 counter return", "iifname eth2 counter return"]
    assert rules_of(opts, "nat", "output")[:2] == ["oifname eth1 counter return", "oifname eth2 counter return"]
    assert ("mangle", "prerouting") not in chains(opts)
    tproxy = CaptureOptions(exclude_interfaces=("eth1",), inbound_interception_mode="TPROXY")
    assert rules_of(tproxy, "mangle", "prerouting")[0] == "iifname eth1 counter return"
    assert rules_of(tproxy, "mangle", "output")[0] == "oifname eth1 counter return"


def test_step02_and_18_kube_virt_interfaces_reverse_like_iptables():
    opts = CaptureOptions(reroute_virtual_interfaces=("eth1", "eth2"))
    assert rules_of(opts, "nat", "prerouting")[:4] == [
        "iifname eth2 counter jump istio-redirect",
        "iifname eth1 counter jump istio-redirect",
        "iifname eth2 counter return",
        "iifname eth1 counter return",
    ]
    listed = CaptureOptions(reroute_virtual_interfaces=("kv0",), outbound_ip_ranges=((IPV4, "10.0.0.0/8"),))
    assert rules_of(listed, "nat", "prerouting")[0] == "iifname kv0 ip daddr 10.0.0.0/8 counter jump istio-redirect"


def test_step03_drop_invalid():
    opts = CaptureOptions(drop_invalid=True)
    assert rules_of(opts, "mangle", "prerouting") == ["meta l4proto tcp ct state invalid counter jump istio-drop"]
    assert rules_of(opts, "mangle", "istio-drop") == ["counter drop"]


def test_steps04_to_06_fixed_chains_even_without_capture():
    opts = CaptureOptions(inbound_ports=(), outbound_ip_ranges=())
    got = chains(opts)
    assert got[("nat", "istio-inbound")] == ["meta l4proto tcp tcp dport 15008 counter return"]
    assert got[("nat", "istio-redirect")] == ["meta l4proto tcp counter redirect to :15001"]
    assert got[("nat", "istio-in-redirect")] == ["meta l4proto tcp counter redirect to :15006"]
    assert ("nat", "prerouting") not in got
    assert [t.name for t in plan_ruleset(opts)] == ["istio-proxy-nat"]


def test_step07_redirect_port_list_ignores_exclusions():
    opts = CaptureOptions(inbound_ports=("80", "8000:8100"))
    assert rules_of(opts, "nat", "istio-inbound")[1:] == [
        "meta l4proto tcp tcp dport 80 counter jump istio-in-redirect",
        "meta l4proto tcp tcp dport 8000-8100 counter jump istio-in-redirect",
    ]
    assert rules_of(opts, "nat", "prerouting") == ["meta l4proto tcp counter jump istio-inbound"]


def test_step07_tproxy_port_list():
    opts = CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=("80",))
    assert rules_of(opts, "mangle", "istio-inbound")[3:] == [
        "meta l4proto tcp ct state related,established tcp dport 80 counter jump istio-divert",
        "meta l4proto tcp tcp dport 80 counter jump istio-tproxy",
    ]
    assert rules_of(opts, "mangle", "istio-divert") == ["counter meta mark set 1337", "counter accept"]
    assert rules_of(opts, "mangle", "istio-tproxy") == [
        "meta l4proto tcp ip daddr != 127.0.0.1/32 tproxy ip to :15006 meta mark set 1337 counter accept"]


def test_step08_and_09_outbound_entry_and_excluded_ports():
    opts = CaptureOptions(exclude_outbound_ports=("9000", "8000:8080"))
    assert rules_of(opts, "nat", "output") == ["counter jump istio-output"]
    assert rules_of(opts, "nat", "istio-output")[:4] == [
        "tcp dport 9000 counter return", "udp dport 9000 counter return",
        "tcp dport 8000-8080 counter return", "udp dport 8000-8080 counter return",
    ]


def test_step10_passthrough_sources():
    assert rules_of(K8S, "nat", "istio-output")[0] == "oifname lo ip saddr 127.0.0.6/32 counter return"
    assert rules_of(CaptureOptions(ipv6=True), "nat", "istio-output")[1] == (
        "oifname lo ip6 saddr ::6/128 counter return")


def test_step11_and_12_loopback_include_drops_the_not_owner_returns():
    opts = CaptureOptions(outbound_ip_ranges=((IPV4, "127.0.0.2/32"),))
    out = rules_of(opts, "nat", "istio-output")
    assert not any("skuid != " in r or "skgid != " in r for r in out)
    assert "skuid 1337 counter return" in out and "skgid 1337 counter return" in out


def test_step11_and_12_several_ids_and_dns_asymmetry():
    opts = CaptureOptions(proxy_uids=("1", "2"), proxy_gids=("3",), capture_dns=True, capture_all_dns=True)
    out = rules_of(opts, "nat", "istio-output")
    assert out[1:10] == [
        "oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } skuid 1 counter jump "
        "istio-in-redirect",
        "oifname lo meta l4proto tcp tcp dport != 53 skuid != 1 counter return",
        "skuid 1 counter return",
        "oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != { 53, 15008 } skuid 2 counter jump "
        "istio-in-redirect",
        "oifname lo meta l4proto tcp tcp dport != 53 skuid != 2 counter return",
        "skuid 2 counter return",
        "oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != 15008 skgid 3 counter jump "
        "istio-in-redirect",
        "oifname lo meta l4proto tcp tcp dport != 53 skgid != 3 counter return",
        "skgid 3 counter return",
    ]


@pytest.mark.parametrize("include, exclude, expected", [
    (("5", "6"), (), ["skgid != 5 skgid != 6 counter return"]),
    ((), (), ["counter return"]),
    ("*", ("7", "8"), ["skgid 7 counter return", "skgid 8 counter return"]),
])
def test_step13_owner_groups(include, exclude, expected):
    opts = CaptureOptions(outbound_owner_groups=include, exclude_outbound_owner_groups=exclude)
    out = rules_of(opts, "nat", "istio-output")
    start = out.index("skgid 1337 counter return") + 1
    assert out[start:start + len(expected)] == expected


def test_step14_dns_capture_all():
    opts = CaptureOptions(capture_dns=True, capture_all_dns=True, ipv6=True)
    got = chains(opts)
    assert got[("nat", "istio-output-dns")] == [
        "meta l4proto tcp tcp dport 53 counter redirect to :15053", "udp dport 53 counter redirect to :15053"]
    assert got[("raw", "prerouting")] == ["counter jump istio-inbound"]
    assert got[("raw", "output")] == ["counter jump istio-output-dns"]
    assert got[("raw", "istio-output-dns")][-1] == "udp dport 53 counter ct zone set 2"
    assert got[("raw", "istio-inbound")] == ["udp sport 53 counter ct zone set 1"]


def test_step14_dns_servers_v4_then_v6_tcp_then_udp():
    opts = CaptureOptions(capture_dns=True, ipv6=True, dns_servers=((IPV6, "2001:db8::53"), (IPV4, "10.0.0.2")))
    got = chains(opts)
    assert got[("nat", "istio-output-dns")] == [
        "ip daddr 10.0.0.2/32 tcp dport 53 counter redirect to :15053",
        "ip6 daddr 2001:db8::53/128 tcp dport 53 counter redirect to :15053",
        "ip daddr 10.0.0.2/32 udp dport 53 counter redirect to :15053",
        "ip6 daddr 2001:db8::53/128 udp dport 53 counter redirect to :15053",
    ]
    assert got[("raw", "istio-inbound")] == [
        "udp sport 53 ip saddr 10.0.0.2/32 counter ct zone set 1",
        "udp sport 53 ip6 saddr 2001:db8::53/128 counter ct zone set 1",
    ]
    assert got[("raw", "istio-output-dns")] == [
        "udp dport 53 meta skuid 1337 counter ct zone set 1",
        "udp sport 15053 meta skuid 1337 counter ct zone set 2",
        "udp dport 53 meta skgid 1337 counter ct zone set 1",
        "udp sport 15053 meta skgid 1337 counter ct zone set 2",
        "udp dport 53 ip daddr 10.0.0.2/32 counter ct zone set 2",
        "udp dport 53 ip6 daddr 2001:db8::53/128 counter ct zone set 2",
    ]


def test_step14_ipv6_only_nameservers_with_ipv6_off_jump_nowhere_missing():
    # Istio writes both jumps and nft fails on the missing chains; every jump here has its chain.
    opts = CaptureOptions(capture_dns=True, dns_servers=((IPV6, "2001:db8::53"),))
    got = chains(opts)
    targets = {r.split("jump ")[1].split()[0] for rules in got.values() for r in rules if "jump " in r}
    for table in ("nat", "raw"):
        table_chains = {chain for (t, chain) in got if t == table}
        table_targets = {r.split("jump ")[1] for key, rules in got.items() if key[0] == table
                         for r in rules if "jump " in r}
        assert table_targets <= table_chains, (table, table_targets - table_chains)
    assert "istio-output-dns" in targets  # raw output still zones the proxy's own DNS
    assert ("nat", "istio-output-dns") not in got and ("raw", "istio-inbound") not in got


def test_step14_dns_without_servers_is_off():
    assert ("raw", "output") not in chains(CaptureOptions(capture_dns=True))


def test_step15_and_16_loopback_and_excluded_cidrs():
    opts = CaptureOptions(ipv6=True, exclude_outbound_ip_ranges=((IPV4, "10.0.0.1/8"), (IPV6, "2001:db8::/32")))
    out = rules_of(opts, "nat", "istio-output")
    assert out[-5:-1] == [
        "ip daddr 127.0.0.1/32 counter return", "ip6 daddr ::1/128 counter return",
        "ip daddr 10.0.0.1/8 counter return", "ip6 daddr 2001:db8::/32 counter return",
    ]
    v4only = CaptureOptions(exclude_outbound_ip_ranges=((IPV6, "2001:db8::/32"),))
    assert not any("ip6" in r for r in rules_of(v4only, "nat", "istio-output"))


def test_step17_included_ports():
    opts = CaptureOptions(outbound_ports=("7000", "7100:7200"))
    assert rules_of(opts, "nat", "istio-output")[-3:-1] == [
        "tcp dport 7000 counter jump istio-redirect", "tcp dport 7100-7200 counter jump istio-redirect"]


def test_step18_include_all_is_one_family_less_jump():
    out = rules_of(CaptureOptions(ipv6=True), "nat", "istio-output")
    assert out[-1] == "counter jump istio-redirect" and out.count("counter jump istio-redirect") == 1


def test_step18_include_list_per_family():
    opts = CaptureOptions(ipv6=True, outbound_ip_ranges=((IPV6, "2001:db8::/32"), (IPV4, "198.18.0.0/15")))
    assert rules_of(opts, "nat", "istio-output")[-2:] == [
        "ip daddr 198.18.0.0/15 counter jump istio-redirect", "ip6 daddr 2001:db8::/32 counter jump istio-redirect"]
    nothing_included = rules_of(CaptureOptions(outbound_ip_ranges=()), "nat", "istio-output")
    assert not any("jump istio-redirect" in r for r in nothing_included)


def test_step19_tproxy_marks():
    got = chains(CaptureOptions(inbound_interception_mode="TPROXY", proxy_gids=("5",)))
    assert got[("mangle", "prerouting")][-1] == "meta l4proto tcp mark 1337 counter ct mark set mark"
    assert got[("mangle", "output")] == [
        "oifname lo meta l4proto tcp mark 1337 counter return",
        "oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 skuid 1337 counter meta mark set 1338",
        "oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 skgid 5 counter meta mark set 1338",
        "meta l4proto tcp ct mark 1337 counter meta mark set ct mark",
    ]


def test_tables_and_chains_in_declaration_order():
    tables = plan_ruleset(CaptureOptions(inbound_interception_mode="TPROXY", drop_invalid=True, capture_dns=True,
                                         capture_all_dns=True))
    assert [t.name for t in tables] == ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"]
    assert [c.name for c in tables[1].chains] == [
        "prerouting", "output", "istio-divert", "istio-tproxy", "istio-inbound", "istio-drop"]
    assert tables[1].chains[1].base == ("route", "output", -150)
    assert tables[2].chains[0].base == ("filter", "prerouting", -300)


@pytest.mark.parametrize("name, expected", [("eth0", "eth0"), ("veth+", '"veth*"'), ("1abc", '"1abc"'),
                                            ("br-x.1", "br-x.1")])
def test_interface_names(name, expected):
    assert nft_ifname("exclude_interfaces", name) == expected


@pytest.mark.parametrize("name", ['a"b', "a*b", "a\\b"])
def test_interface_names_nft_cannot_match(name):
    with pytest.raises(OptionError, match="exclude_interfaces"):
        nft_ifname("exclude_interfaces", name)


# --- keep_existing_connections: not Istio's; one return at the head of each capturing chain ---

KEEP = "meta l4proto tcp ct state new tcp flags & (fin|syn|rst|ack) != syn counter return"


def _chain_rules(opts, table, chain):
    for planned in plan_ruleset(opts):
        if planned.name == "istio-proxy-" + table:
            for planned_chain in planned.chains:
                if planned_chain.name == chain:
                    return list(planned_chain.rules)
    return []


def test_keep_existing_connections_native_redirect():
    opts = CaptureOptions(ipv6=True, keep_existing_connections=True)
    assert _chain_rules(opts, "nat", "istio-output")[0] == KEEP
    assert _chain_rules(opts, "nat", "istio-inbound")[1] == KEEP
    plain = CaptureOptions(ipv6=True)
    assert [r for r in _chain_rules(opts, "nat", "istio-output") if r != KEEP] == _chain_rules(plain, "nat", "istio-output")


def test_keep_existing_connections_native_tproxy():
    opts = CaptureOptions(inbound_interception_mode="TPROXY", keep_existing_connections=True)
    inbound = _chain_rules(opts, "mangle", "istio-inbound")
    assert inbound.index(KEEP) < inbound.index("meta l4proto tcp ct state related,established counter jump istio-divert")
    assert KEEP not in _chain_rules(opts, "nat", "istio-inbound")
