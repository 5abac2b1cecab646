# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The capture rule planner: validated options in, Istio's rules out. No I/O.

``plan_rules()`` reproduces the construction order of ``pilot-agent istio-iptables``
(the reference's section 2.1): the same rules, in the same order, with the same argument
text, for each address family. ``istio_restore_input()`` renders them exactly as Istio feeds
them to ``iptables-restore --noflush``, which is what the parity tests compare against
Istio's own golden files.
"""

from __future__ import annotations

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import EXCLUDE, INCLUDE, planned_sets
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import (
    BUILTIN_CHAINS,
    CAPTURE_TABLES,
    DNS_PROXY_PORT,
    IPV4,
    IPV6,
    LOOPBACK_V6,
    OUTBOUND_MARK,
    PASSTHROUGH_SOURCE,
    Rule,
    has_loopback,
)


class _Builder:
    """Collects the rules of both families in Istio's order."""

    def __init__(self, families):
        self.families = families
        self.rules = {family: [] for family in families}

    def add(self, table, chain, *args, family=None, position=None):
        for fam in self.families if family is None else (family,):
            if fam in self.rules:
                self.rules[fam].append(Rule(table, chain, tuple(args), position))

    def add_versioned(self, table, chain, v4, v6, *args, position=None):
        """Add to both families, with ``{}`` in ``args`` replaced by the family's value."""
        for fam, value in ((IPV4, v4), (IPV6, v6)):
            self.add(table, chain, *[value if a == "{}" else a for a in args], family=fam, position=position)


# keep_existing_connections: the first packet conntrack sees of a connection it was not tracking
# (open before the rules, or before anything in the namespace used conntrack) is not a SYN, yet it
# is "new" and would be redirected mid-stream, cutting the connection (an SSH session among them).
# Such packets return; connections that start with a SYN are captured as Istio captures them.
# Written in iptables-save's canonical form.
KEEP_EXISTING_ARGS = ("-p", "tcp", "-m", "tcp", "!", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN",
                      "-m", "conntrack", "--ctstate", "NEW", "-j", "RETURN")


def plan_rules(opts):
    """Return ``{family: [Rule, ...]}`` in Istio's collection order (section 2.1 of the reference)."""
    b = _Builder(opts.families)
    lo4 = opts.ipv4_loopback_cidr
    uids, gids = opts.proxy_uids, opts.proxy_gids
    dns = opts.redirect_dns
    include = opts.outbound_ip_ranges
    include_cidrs = () if include == "*" else include
    tunnel = str(opts.inbound_tunnel_port)
    mark = str(opts.tproxy_mark)

    # 1-2. Interfaces that bypass capture, and virtual interfaces treated as outbound.
    for iface in opts.exclude_interfaces:
        b.add("nat", "PREROUTING", "-i", iface, "-j", "RETURN")
        b.add("nat", "OUTPUT", "-o", iface, "-j", "RETURN")
    if opts.tproxy:
        for iface in opts.exclude_interfaces:
            b.add("mangle", "PREROUTING", "-i", iface, "-j", "RETURN")
            b.add("mangle", "OUTPUT", "-o", iface, "-j", "RETURN")
    for iface in opts.reroute_virtual_interfaces:
        b.add("nat", "PREROUTING", "-i", iface, "-j", "RETURN", position=1)

    # 3. Out-of-window packets are dropped instead of reset.
    if opts.drop_invalid:
        b.add("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", "ISTIO_DROP")
        b.add("mangle", "ISTIO_DROP", "-j", "DROP")

    # 4-6. The chains every configuration has.
    b.add("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", tunnel, "-j", "RETURN")
    b.add("nat", "ISTIO_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(opts.proxy_port))
    b.add("nat", "ISTIO_IN_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", str(opts.inbound_capture_port))

    # 7. Inbound capture.
    if opts.inbound_ports != ():
        table = "mangle" if opts.tproxy else "nat"
        if opts.tproxy:
            b.add("mangle", "ISTIO_DIVERT", "-j", "MARK", "--set-mark", mark)
            b.add("mangle", "ISTIO_DIVERT", "-j", "ACCEPT")
            b.add_versioned(
                "mangle", "ISTIO_TPROXY", lo4, LOOPBACK_V6, "!", "-d", "{}", "-p", "tcp", "-j", "TPROXY",
                "--tproxy-mark", mark + "/0xffffffff", "--on-port", str(opts.inbound_capture_port),
            )
        b.add(table, "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
        if opts.keep_existing_connections:
            b.add(table, "ISTIO_INBOUND", *KEEP_EXISTING_ARGS)
        if opts.inbound_ports == "*":
            for port in opts.exclude_inbound_ports:
                b.add(table, "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "RETURN")
            if opts.tproxy:
                b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
                      "-j", "ISTIO_DIVERT")
                b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_TPROXY")
            else:
                b.add("nat", "ISTIO_INBOUND", "-p", "tcp", "-j", "ISTIO_IN_REDIRECT")
        else:
            for port in opts.inbound_ports:
                if opts.tproxy:
                    b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate",
                          "RELATED,ESTABLISHED", "-j", "ISTIO_DIVERT")
                    b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "ISTIO_TPROXY")
                else:
                    b.add("nat", "ISTIO_INBOUND", "-p", "tcp", "--dport", port, "-j", "ISTIO_IN_REDIRECT")

    # 8-9. Outbound: every protocol enters ISTIO_OUTPUT; excluded ports leave first.
    b.add("nat", "OUTPUT", "-j", "ISTIO_OUTPUT")
    if opts.keep_existing_connections:
        b.add("nat", "ISTIO_OUTPUT", *KEEP_EXISTING_ARGS)
    for port in opts.exclude_outbound_ports:
        b.add("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "RETURN")
        b.add("nat", "ISTIO_OUTPUT", "-p", "udp", "--dport", port, "-j", "RETURN")

    # 10. Envoy's inbound passthrough binds 127.0.0.6 / ::6.
    b.add_versioned("nat", "ISTIO_OUTPUT", PASSTHROUGH_SOURCE[IPV4], PASSTHROUGH_SOURCE[IPV6],
                    "-o", "lo", "-s", "{}", "-j", "RETURN")

    # 11-12. Proxy-owned traffic: to itself via inbound, otherwise never captured again.
    loopback_included = has_loopback(include_cidrs)
    for owner, ids in (("--uid-owner", uids), ("--gid-owner", gids)):
        for ident in ids:
            # Istio's asymmetry: only the uid rule skips port 53 with multiport.
            if dns and owner == "--uid-owner":
                port_match = ("-m", "multiport", "!", "--dports", "53," + tunnel)
            else:
                port_match = ("!", "--dport", tunnel)
            b.add_versioned("nat", "ISTIO_OUTPUT", lo4, LOOPBACK_V6, "-o", "lo", "!", "-d", "{}", "-p", "tcp",
                            *port_match, "-m", "owner", owner, ident, "-j", "ISTIO_IN_REDIRECT")
            if not loopback_included:
                if dns:
                    b.add("nat", "ISTIO_OUTPUT", "-o", "lo", "-p", "tcp", "!", "--dport", "53",
                          "-m", "owner", "!", owner, ident, "-j", "RETURN")
                else:
                    b.add("nat", "ISTIO_OUTPUT", "-o", "lo", "-m", "owner", "!", owner, ident, "-j", "RETURN")
            b.add("nat", "ISTIO_OUTPUT", "-m", "owner", owner, ident, "-j", "RETURN")

    # 13. Owner groups: capture only some groups, or all but some.
    if opts.outbound_owner_groups != "*":
        none_of = []
        for group in opts.outbound_owner_groups:
            none_of += ["-m", "owner", "!", "--gid-owner", group]
        b.add("nat", "ISTIO_OUTPUT", *none_of, "-j", "RETURN")
    else:
        for group in opts.exclude_outbound_owner_groups:
            b.add("nat", "ISTIO_OUTPUT", "-m", "owner", "--gid-owner", group, "-j", "RETURN")

    # 14. DNS to the agent, with conntrack zones keeping client<->agent and agent<->upstream apart.
    if dns:
        _plan_dns(b, opts)

    # 15-16. Localhost and excluded CIDRs are never captured (with cidr_sets: one ipset per family).
    sets = planned_sets(opts)
    b.add_versioned("nat", "ISTIO_OUTPUT", lo4, LOOPBACK_V6, "-d", "{}", "-j", "RETURN")
    if sets:
        for family in opts.families:
            if (EXCLUDE, family) in sets:
                b.add("nat", "ISTIO_OUTPUT", *_set_match(sets[(EXCLUDE, family)]), "-j", "RETURN", family=family)
    else:
        for family, cidr in opts.exclude_outbound_ip_ranges:
            b.add("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "RETURN", family=family)

    # 17. Ports always captured.
    for port in opts.outbound_ports:
        b.add("nat", "ISTIO_OUTPUT", "-p", "tcp", "--dport", port, "-j", "ISTIO_REDIRECT")

    # 18. Captured destinations; traffic from virtual interfaces is treated as outbound.
    for family in opts.families:
        if include == "*":
            b.add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT", family=family)
            for iface in opts.reroute_virtual_interfaces:
                b.add("nat", "PREROUTING", "-i", iface, "-j", "ISTIO_REDIRECT", family=family, position=1)
        elif (INCLUDE, family) in sets:
            match = _set_match(sets[(INCLUDE, family)])
            for iface in opts.reroute_virtual_interfaces:
                b.add("nat", "PREROUTING", "-i", iface, *match, "-j", "ISTIO_REDIRECT", family=family, position=1)
            b.add("nat", "ISTIO_OUTPUT", *match, "-j", "ISTIO_REDIRECT", family=family)
        else:
            for fam, cidr in include_cidrs:
                if fam != family:
                    continue
                for iface in opts.reroute_virtual_interfaces:
                    b.add("nat", "PREROUTING", "-i", iface, "-d", cidr, "-j", "ISTIO_REDIRECT",
                          family=family, position=1)
                b.add("nat", "ISTIO_OUTPUT", "-d", cidr, "-j", "ISTIO_REDIRECT", family=family)

    # 19. TPROXY: keep the divert mark on the connection and stop the proxy capturing itself.
    if opts.tproxy:
        b.add("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
        b.add("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
        for owner, ids in (("--uid-owner", uids), ("--gid-owner", gids)):
            for ident in ids:
                b.add_versioned("mangle", "OUTPUT", lo4, LOOPBACK_V6, "!", "-d", "{}", "-p", "tcp", "-o", "lo",
                                "-m", "owner", owner, ident, "-j", "MARK", "--set-mark", str(OUTBOUND_MARK))
        b.add("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
        b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN", position=1)
        b.add_versioned("mangle", "ISTIO_INBOUND", PASSTHROUGH_SOURCE[IPV4], PASSTHROUGH_SOURCE[IPV6],
                        "-p", "tcp", "-s", "{}", "-i", "lo", "-j", "RETURN", position=2)
        b.add("mangle", "ISTIO_INBOUND", "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", str(OUTBOUND_MARK),
              "-j", "RETURN", position=3)
    return b.rules


def _set_match(cidr_set):
    """The ipset match standing for one per-CIDR rule each: the destination is in the set."""
    return ("-m", "set", "--match-set", cidr_set.name, "dst")


def _plan_dns(b, opts):
    v4, v6 = opts.dns_servers_of(IPV4), opts.dns_servers_of(IPV6)
    host_len = {IPV4: "/32", IPV6: "/128"}
    servers = ((IPV4, v4), (IPV6, v6))
    all_dns = opts.capture_all_dns
    to_port = str(DNS_PROXY_PORT)

    b.add("raw", "OUTPUT", "-j", "ISTIO_OUTPUT_DNS")
    for family, addrs in servers:
        if all_dns or addrs:
            b.add("nat", "ISTIO_OUTPUT", "-j", "ISTIO_OUTPUT_DNS", family=family)
    # TCP for every server, then UDP (whose REDIRECT Istio spells --to-port).
    for proto, to_flag in (("tcp", "--to-ports"), ("udp", "--to-port")):
        if all_dns:
            b.add("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", "53", "-j", "REDIRECT", to_flag, to_port)
            continue
        for family, addrs in servers:
            for addr in addrs:
                b.add("nat", "ISTIO_OUTPUT_DNS", "-p", proto, "--dport", "53", "-d", addr + host_len[family],
                      "-j", "REDIRECT", to_flag, to_port, family=family)
    for owner, ids in (("--uid-owner", opts.proxy_uids), ("--gid-owner", opts.proxy_gids)):
        for ident in ids:
            b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", "53", "-m", "owner", owner, ident,
                  "-j", "CT", "--zone", "1")
            b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--sport", to_port, "-m", "owner", owner, ident,
                  "-j", "CT", "--zone", "2")
    if all_dns:
        b.add("raw", "PREROUTING", "-j", "ISTIO_INBOUND")
        b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
        b.add("raw", "ISTIO_INBOUND", "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
        return
    for family, addrs in servers:
        if addrs:
            b.add("raw", "PREROUTING", "-j", "ISTIO_INBOUND", family=family)
        for addr in addrs:
            b.add("raw", "ISTIO_OUTPUT_DNS", "-p", "udp", "--dport", "53", "-d", addr + host_len[family],
                  "-j", "CT", "--zone", "2", family=family)
            b.add("raw", "ISTIO_INBOUND", "-p", "udp", "--sport", "53", "-s", addr + host_len[family],
                  "-j", "CT", "--zone", "1", family=family)


def chains_in_order(rules, table):
    """Non-built-in chains of ``table``: first as a rule's chain, then as a jump target (Istio's -N order)."""
    ordered = []
    for rule in rules:
        if rule.table == table and rule.chain not in BUILTIN_CHAINS and rule.chain not in ordered:
            ordered.append(rule.chain)
    for rule in rules:
        target = rule.jump
        if rule.table == table and target and target.startswith("ISTIO_") and target not in ordered:
            ordered.append(target)
    return ordered


def istio_restore_input(rules):
    """Render rules exactly as Istio writes its ``iptables-restore --noflush`` input."""
    lines = []
    for table in ("filter",) + CAPTURE_TABLES:
        table_rules = [r for r in rules if r.table == table]
        if not table_rules:
            continue
        lines.append("* " + table)
        lines.extend("-N " + chain for chain in chains_in_order(rules, table))
        lines.extend(rule.istio_line() for rule in table_rules)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""
