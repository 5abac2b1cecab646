# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Istio parity of the planner: byte-for-byte against the derived Istio rule sets."""

from __future__ import annotations

import os

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import (
    chains_in_order,
    istio_restore_input,
    plan_rules,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "istio")

K8S = CaptureOptions()
VM = CaptureOptions(
    proxy_uids=("998",),
    proxy_gids=("998",),
    exclude_inbound_ports=("22", "15090", "15021", "15020"),
    capture_dns=True,
    dns_servers=((IPV4, "127.0.0.53"),),
)
GOLDENS = {
    "k8s-default": K8S,
    "k8s-default-dual-stack": CaptureOptions(ipv6=True),
    "vm-default": VM,
    "vm-default-ipv6": VM._replace(ipv6=True),
    "vm-tproxy": VM._replace(inbound_interception_mode="TPROXY"),
    # pilot-agent istio-iptables with no flags: no inbound or outbound capture.
    "empty": CaptureOptions(inbound_ports=(), outbound_ip_ranges=()),
}


def golden(name, family):
    path = os.path.join(FIXTURES, "%s.%s.restore" % (name, family))
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return handle.read()


@pytest.mark.parametrize("name", sorted(GOLDENS))
def test_restore_input_matches_istio(name):
    rules = plan_rules(GOLDENS[name])
    for family in (IPV4, IPV6):
        expected = golden(name, family)
        if expected is None:
            assert family not in rules, "%s: no %s rules expected" % (name, family)
        else:
            assert istio_restore_input(rules[family]) == expected


def test_goldens_cover_both_families():
    assert golden("k8s-default-dual-stack", IPV6) and golden("vm-default-ipv6", IPV6)


def _lines(opts, family=IPV4):
    return [r.istio_line() for r in plan_rules(opts)[family]]


def test_ipv6_rules_only_when_enabled():
    assert set(plan_rules(CaptureOptions())) == {IPV4}
    assert set(plan_rules(CaptureOptions(ipv6=True))) == {IPV4, IPV6}


def test_excluded_cidrs_stay_in_their_family():
    opts = CaptureOptions(ipv6=True, exclude_outbound_ip_ranges=((IPV4, "198.18.0.0/15"), (IPV6, "2001:db8::/32")))
    assert "-A ISTIO_OUTPUT -d 198.18.0.0/15 -j RETURN" in _lines(opts, IPV4)
    assert "-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN" not in _lines(opts, IPV4)
    assert "-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN" in _lines(opts, IPV6)


def test_exclusions_follow_localhost_and_precede_includes():
    opts = CaptureOptions(
        exclude_outbound_ip_ranges=((IPV4, "198.18.5.0/24"),),
        outbound_ports=("8443",),
        outbound_ip_ranges=((IPV4, "198.18.0.0/16"),),
    )
    lines = _lines(opts)
    order = [
        "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 198.18.5.0/24 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 8443 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 198.18.0.0/16 -j ISTIO_REDIRECT",
    ]
    assert [lines.index(line) for line in order] == sorted(lines.index(line) for line in order)
    assert "-A ISTIO_OUTPUT -j ISTIO_REDIRECT" not in lines


def test_empty_outbound_ranges_capture_nothing_but_keep_chains():
    lines = _lines(CaptureOptions(outbound_ip_ranges=()))
    assert not any(line.endswith("-j ISTIO_REDIRECT") and "ISTIO_OUTPUT" in line for line in lines)
    assert "-A OUTPUT -j ISTIO_OUTPUT" in lines


def test_excluded_outbound_ports_are_first_and_cover_udp():
    lines = [line for line in _lines(CaptureOptions(exclude_outbound_ports=("5432",))) if "ISTIO_OUTPUT" in line]
    assert lines[1:3] == [
        "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A ISTIO_OUTPUT -p udp --dport 5432 -j RETURN",
    ]


def test_inbound_port_list_ignores_exclusions():
    lines = _lines(CaptureOptions(inbound_ports=("8080", "9090")))
    assert "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT" in lines
    assert "-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT" in lines
    assert not any("--dport 15090" in line for line in lines)


def test_no_inbound_capture_means_no_prerouting_jump():
    lines = _lines(CaptureOptions(inbound_ports=()))
    assert not any(line.startswith("-A PREROUTING") for line in lines)
    assert "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN" in lines


def test_loopback_include_drops_lo_return_rules():
    opts = CaptureOptions(outbound_ip_ranges=((IPV4, "127.0.0.0/8"),))
    assert not any("-o lo -m owner !" in line for line in _lines(opts))
    assert any("-o lo -m owner !" in line for line in _lines(CaptureOptions()))


def test_interfaces_excluded_first_and_virtual_interfaces_inserted():
    opts = CaptureOptions(exclude_interfaces=("eth9",), reroute_virtual_interfaces=("docker0", "br1"))
    lines = _lines(opts)
    assert lines[:2] == ["-A PREROUTING -i eth9 -j RETURN", "-A OUTPUT -o eth9 -j RETURN"]
    assert "-I PREROUTING 1 -i docker0 -j RETURN" in lines
    assert "-I PREROUTING 1 -i br1 -j ISTIO_REDIRECT" in lines


def test_virtual_interfaces_with_cidr_list():
    opts = CaptureOptions(reroute_virtual_interfaces=("docker0",), outbound_ip_ranges=((IPV4, "198.18.0.0/16"),))
    assert "-I PREROUTING 1 -i docker0 -d 198.18.0.0/16 -j ISTIO_REDIRECT" in _lines(opts)


def test_tproxy_excluded_interfaces_also_in_mangle():
    opts = CaptureOptions(inbound_interception_mode="TPROXY", exclude_interfaces=("eth9",))
    rules = plan_rules(opts)[IPV4]
    assert [(r.table, r.istio_line()) for r in rules[:4]] == [
        ("nat", "-A PREROUTING -i eth9 -j RETURN"),
        ("nat", "-A OUTPUT -o eth9 -j RETURN"),
        ("mangle", "-A PREROUTING -i eth9 -j RETURN"),
        ("mangle", "-A OUTPUT -o eth9 -j RETURN"),
    ]


def test_tproxy_inbound_port_list():
    opts = CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=("8080",))
    lines = _lines(opts)
    assert "-A ISTIO_INBOUND -p tcp --dport 8080 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT" in lines
    assert "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_TPROXY" in lines


def test_tproxy_rules_exist_without_inbound_ports():
    rules = plan_rules(CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=()))[IPV4]
    assert not any(r.chain in ("ISTIO_DIVERT", "ISTIO_TPROXY") for r in rules)
    assert any(r.table == "mangle" and r.chain == "ISTIO_INBOUND" and r.position == 1 for r in rules)


def test_tproxy_marks_and_ipv6_passthrough():
    opts = CaptureOptions(inbound_interception_mode="TPROXY", tproxy_mark=7, ipv6=True)
    v6 = _lines(opts, IPV6)
    assert "-A ISTIO_DIVERT -j MARK --set-mark 7" in v6
    assert "-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --tproxy-mark 7/0xffffffff --on-port 15006" in v6
    assert "-I ISTIO_INBOUND 2 -p tcp -s ::6/128 -i lo -j RETURN" in v6
    assert "-A OUTPUT -p tcp -m connmark --mark 7 -j CONNMARK --restore-mark" in v6


def test_drop_invalid():
    rules = plan_rules(CaptureOptions(drop_invalid=True))[IPV4]
    assert [(r.table, r.istio_line()) for r in rules[:2]] == [
        ("mangle", "-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP"),
        ("mangle", "-A ISTIO_DROP -j DROP"),
    ]


def test_owner_group_include_is_one_rule():
    lines = _lines(CaptureOptions(outbound_owner_groups=("100", "200")))
    assert "-A ISTIO_OUTPUT -m owner ! --gid-owner 100 -m owner ! --gid-owner 200 -j RETURN" in lines


def test_owner_group_exclude_is_one_rule_each():
    lines = _lines(CaptureOptions(exclude_outbound_owner_groups=("100", "200")))
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 100 -j RETURN" in lines
    assert "-A ISTIO_OUTPUT -m owner --gid-owner 200 -j RETURN" in lines


def test_several_ids_three_rules_each_uids_first():
    lines = _lines(CaptureOptions(proxy_uids=("1337", "0"), proxy_gids=("1337",)))
    assert len([line for line in lines if "--uid-owner" in line]) == 6
    assert len([line for line in lines if "--gid-owner" in line]) == 3
    assert lines.index("-A ISTIO_OUTPUT -m owner --uid-owner 0 -j RETURN") < lines.index(
        "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"
    )


def test_dns_without_servers_is_disabled():
    opts = CaptureOptions(capture_dns=True)
    assert not opts.redirect_dns
    assert not any("ISTIO_OUTPUT_DNS" in line for line in _lines(opts))


def test_capture_all_dns():
    opts = CaptureOptions(capture_dns=True, capture_all_dns=True, ipv6=True)
    rules = plan_rules(opts)
    for family in (IPV4, IPV6):
        text = istio_restore_input(rules[family])
        assert "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053" in text
        assert "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053" in text
        assert "-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1" in text
        assert "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS" in text


def test_dns_servers_tcp_block_then_udp_block_per_family():
    opts = CaptureOptions(
        capture_dns=True, ipv6=True,
        dns_servers=((IPV4, "198.18.0.53"), (IPV4, "198.18.0.54"), (IPV6, "2001:db8::53")),
    )
    rules = plan_rules(opts)
    v4 = [r.istio_line() for r in rules[IPV4] if r.table == "nat" and r.chain == "ISTIO_OUTPUT_DNS"]
    assert v4 == [
        "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 198.18.0.53/32 -j REDIRECT --to-ports 15053",
        "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 198.18.0.54/32 -j REDIRECT --to-ports 15053",
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 198.18.0.53/32 -j REDIRECT --to-port 15053",
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 198.18.0.54/32 -j REDIRECT --to-port 15053",
    ]
    v6 = [r.istio_line() for r in rules[IPV6] if r.table == "raw"]
    assert "-A ISTIO_INBOUND -p udp --sport 53 -s 2001:db8::53/128 -j CT --zone 1" in v6


def test_v6_only_nameserver_leaves_v4_nat_without_dns_jump():
    opts = CaptureOptions(capture_dns=True, ipv6=True, dns_servers=((IPV6, "2001:db8::53"),))
    rules = plan_rules(opts)
    assert "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS" not in [r.istio_line() for r in rules[IPV4]]
    assert "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS" in [r.istio_line() for r in rules[IPV6]]
    # raw OUTPUT jumps in both families, as Istio does.
    assert any(r.table == "raw" and r.chain == "OUTPUT" for r in rules[IPV4])


def test_custom_ports_and_loopback_cidr():
    opts = CaptureOptions(proxy_port=16001, inbound_capture_port=16006, inbound_tunnel_port=16008,
                          ipv4_loopback_cidr="127.0.0.0/8")
    lines = _lines(opts)
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001" in lines
    assert "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006" in lines
    assert "-A ISTIO_INBOUND -p tcp --dport 16008 -j RETURN" in lines
    assert "-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN" in lines
    assert any("! -d 127.0.0.0/8 -p tcp ! --dport 16008" in line for line in lines)


def test_chain_declaration_order_counts_jump_targets():
    rules = plan_rules(CaptureOptions(drop_invalid=True))[IPV4]
    assert chains_in_order(rules, "mangle") == ["ISTIO_DROP"]
    assert chains_in_order(rules, "nat")[:4] == ["ISTIO_INBOUND", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT"]


# --- keep_existing_connections: not Istio's; one RETURN at the head of each capturing chain ---

KEEP = ("-p", "tcp", "-m", "tcp", "!", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-m", "conntrack", "--ctstate", "NEW",
        "-j", "RETURN")


def _chain(rules, table, chain):
    return [rule.args for rule in rules if rule.table == table and rule.chain == chain]


@pytest.mark.parametrize("family", [IPV4, IPV6])
def test_keep_existing_connections_redirect_mode(family):
    rules = plan_rules(CaptureOptions(ipv6=True, keep_existing_connections=True))[family]
    assert _chain(rules, "nat", "ISTIO_OUTPUT")[0] == KEEP
    inbound = _chain(rules, "nat", "ISTIO_INBOUND")
    assert inbound[:2] == [("-p", "tcp", "--dport", "15008", "-j", "RETURN"), KEEP]
    assert sum(1 for rule in rules if rule.args == KEEP) == 2


def test_keep_existing_connections_tproxy_mode_returns_before_the_tproxy_jump():
    rules = plan_rules(CaptureOptions(inbound_interception_mode="TPROXY", keep_existing_connections=True))[IPV4]
    inbound = _chain(rules, "mangle", "ISTIO_INBOUND")
    assert KEEP in inbound
    divert = ("-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ISTIO_DIVERT")
    assert inbound.index(KEEP) < inbound.index(divert)
    assert KEEP not in _chain(rules, "nat", "ISTIO_INBOUND")  # nat's ISTIO_INBOUND only holds the tunnel RETURN
    assert _chain(rules, "nat", "ISTIO_OUTPUT")[0] == KEEP


def test_keep_existing_connections_without_inbound_capture():
    rules = plan_rules(CaptureOptions(inbound_ports=(), keep_existing_connections=True))[IPV4]
    assert KEEP not in _chain(rules, "nat", "ISTIO_INBOUND")
    assert _chain(rules, "nat", "ISTIO_OUTPUT")[0] == KEEP


def test_keep_existing_connections_off_is_istio():
    plain = plan_rules(CaptureOptions(ipv6=True))
    kept = plan_rules(CaptureOptions(ipv6=True, keep_existing_connections=True))
    for family in (IPV4, IPV6):
        assert [rule for rule in kept[family] if rule.args != KEEP] == plain[family]
