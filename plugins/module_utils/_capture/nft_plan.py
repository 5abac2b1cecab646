# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The native nftables planner: validated options in, Istio's three ``inet`` tables out. No I/O.

``generate_rules()`` reproduces the construction order of ``pilot-agent istio-iptables
--native-nftables`` (section 3 of the nftables reference), ``istio_transaction()`` renders it
exactly as Istio feeds it to ``nft -f -`` (the parity tests compare it byte for byte), and
``plan_ruleset()`` gives the tables, chains and rules the kernel holds afterwards, rules in
kernel order (Istio's inserts already placed).

Better than Istio: iptables-style values are translated (``8000:8080`` -> ``8000-8080``,
``veth+`` -> ``"veth*"``), TPROXY with no inbound ports works (the fix of Istio #58135), and
DNS jumps are only written when their chain gets rules (IPv6-only nameservers with IPv6 off).
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import EXCLUDE, INCLUDE, planned_sets
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import (
    DNS_PROXY_PORT,
    IPV4,
    IPV6,
    LOOPBACK_V6,
    OUTBOUND_MARK,
    PASSTHROUGH_SOURCE,
    has_loopback,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import (
    BASE_CHAINS,
    CHAIN_ORDER,
    TABLES,
    NftChain,
    NftTable,
    add_chain_line,
    table_name,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import OptionError

_HOST_LEN = {IPV4: "/32", IPV6: "/128"}
_IP = {IPV4: "ip", IPV6: "ip6"}
# A word nft reads as a plain string (no quotes needed), as Istio writes interface names.
_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class NftRule(NamedTuple):
    """One rule as Istio generates it; ``index`` is Istio's insert position (0-based), else appended."""

    table: str
    chain: str
    text: str
    index: Optional[int] = None


def nft_port(port):
    """A port or an iptables-style range ``N:M`` as nft writes it (``N-M``)."""
    return str(port).replace(":", "-")


def nft_ifname(option, name):
    """An interface name as nft takes it: iptables' trailing ``+`` wildcard becomes nft's ``"name*"``."""
    if '"' in name or "*" in name or "\\" in name:
        raise OptionError(option, name, "nftables cannot match this interface name")
    if name.endswith("+"):
        return '"%s*"' % name[:-1]
    return name if _PLAIN_WORD.match(name) else '"%s"' % name


# keep_existing_connections (see _capture.plan.KEEP_EXISTING_ARGS): a connection conntrack picks up
# mid-stream is "new" without a SYN; it returns instead of being redirected.
KEEP_EXISTING_RULE = "meta l4proto tcp ct state new tcp flags & (fin|syn|rst|ack) != syn counter return"


class _Builder:
    def __init__(self):
        self.rules = []

    def add(self, table, chain, text, index=None):
        self.rules.append(NftRule(table, chain, text, index))


def generate_rules(opts):
    """Istio's rules in generation order (reference section 3), as ``NftRule``s."""
    b = _Builder()
    v6 = opts.ipv6
    lo4 = opts.ipv4_loopback_cidr
    lo6 = LOOPBACK_V6
    tunnel = str(opts.inbound_tunnel_port)
    cap = str(opts.inbound_capture_port)
    mark = str(opts.tproxy_mark)
    dns = opts.redirect_dns
    uids, gids = opts.proxy_uids, opts.proxy_gids
    exclude_ifs = [nft_ifname("exclude_interfaces", i) for i in opts.exclude_interfaces]
    virt_ifs = [nft_ifname("reroute_virtual_interfaces", i) for i in opts.reroute_virtual_interfaces]

    # 1-2. Interfaces that bypass capture; virtual interfaces whose traffic is treated as outbound.
    for iface in exclude_ifs:
        b.add("nat", "prerouting", "iifname %s counter return" % iface)
        b.add("nat", "output", "oifname %s counter return" % iface)
    if opts.tproxy:
        for iface in exclude_ifs:
            b.add("mangle", "prerouting", "iifname %s counter return" % iface)
            b.add("mangle", "output", "oifname %s counter return" % iface)
    for iface in virt_ifs:
        b.add("nat", "prerouting", "iifname %s counter return" % iface, index=0)

    # 3. Out-of-window TCP is dropped instead of reset.
    if opts.drop_invalid:
        b.add("mangle", "prerouting", "meta l4proto tcp ct state invalid counter jump istio-drop")
        b.add("mangle", "istio-drop", "counter drop")

    # 4-6. The chains every configuration has.
    b.add("nat", "istio-inbound", "meta l4proto tcp tcp dport %s counter return" % tunnel)
    b.add("nat", "istio-redirect", "meta l4proto tcp counter redirect to :%d" % opts.proxy_port)
    b.add("nat", "istio-in-redirect", "meta l4proto tcp counter redirect to :%s" % cap)

    # 7. Inbound capture.
    if opts.inbound_ports != ():
        _inbound(b, opts, lo4, cap, mark)

    # 8-9. Outbound: everything enters istio-output; excluded ports leave first.
    b.add("nat", "output", "counter jump istio-output")
    if opts.keep_existing_connections:
        b.add("nat", "istio-output", KEEP_EXISTING_RULE)
    for port in opts.exclude_outbound_ports:
        port = nft_port(port)
        b.add("nat", "istio-output", "tcp dport %s counter return" % port)
        b.add("nat", "istio-output", "udp dport %s counter return" % port)

    # 10. Envoy's inbound passthrough binds 127.0.0.6 / ::6.
    b.add("nat", "istio-output", "oifname lo ip saddr %s counter return" % PASSTHROUGH_SOURCE[IPV4])
    if v6:
        b.add("nat", "istio-output", "oifname lo ip6 saddr %s counter return" % PASSTHROUGH_SOURCE[IPV6])

    # 11-12. Proxy-owned traffic: to itself via inbound, otherwise never captured again.
    include = opts.outbound_ip_ranges
    loopback_included = include != "*" and has_loopback(include)
    for owner, ids in (("skuid", uids), ("skgid", gids)):
        # Istio's asymmetry: only the uid rule skips port 53 with a set.
        ports = "{ 53, %s }" % tunnel if dns and owner == "skuid" else tunnel
        for ident in ids:
            for family, lo in ((IPV4, lo4), (IPV6, lo6)):
                if family == IPV4 or v6:
                    b.add("nat", "istio-output", "oifname lo meta l4proto tcp %s daddr != %s tcp dport != %s "
                          "%s %s counter jump istio-in-redirect" % (_IP[family], lo, ports, owner, ident))
            if not loopback_included:
                if dns:
                    b.add("nat", "istio-output", "oifname lo meta l4proto tcp tcp dport != 53 %s != %s counter return"
                          % (owner, ident))
                else:
                    b.add("nat", "istio-output", "oifname lo %s != %s counter return" % (owner, ident))
            b.add("nat", "istio-output", "%s %s counter return" % (owner, ident))

    # 13. Owner groups: capture only some groups, or all but some.
    if opts.outbound_owner_groups != "*":
        words = ["skgid != %s" % group for group in opts.outbound_owner_groups] + ["counter return"]
        b.add("nat", "istio-output", " ".join(words))
    else:
        for group in opts.exclude_outbound_owner_groups:
            b.add("nat", "istio-output", "skgid %s counter return" % group)

    # 14. DNS to the agent, conntrack zones keeping client<->agent and agent<->upstream apart.
    if dns:
        _dns(b, opts)

    # 15-16. Localhost and excluded CIDRs are never captured.
    b.add("nat", "istio-output", "ip daddr %s counter return" % lo4)
    if v6:
        b.add("nat", "istio-output", "ip6 daddr %s counter return" % lo6)
    sets = planned_sets(opts)
    if sets:
        for family in opts.families:
            if (EXCLUDE, family) in sets:
                b.add("nat", "istio-output", "%s daddr @%s counter return" % (_IP[family], sets[(EXCLUDE, family)].name))
    else:
        for family, cidr in opts.exclude_outbound_ip_ranges:
            if family == IPV4 or v6:
                b.add("nat", "istio-output", "%s daddr %s counter return" % (_IP[family], cidr))

    # 17. Ports always captured.
    for port in opts.outbound_ports:
        b.add("nat", "istio-output", "tcp dport %s counter jump istio-redirect" % nft_port(port))

    # 18. Captured destinations; traffic from virtual interfaces is treated as outbound.
    if include == "*":
        b.add("nat", "istio-output", "counter jump istio-redirect")
        for iface in virt_ifs:
            b.add("nat", "prerouting", "iifname %s counter jump istio-redirect" % iface, index=0)
    elif sets:
        for family in opts.families:
            if (INCLUDE, family) not in sets:
                continue
            match = "%s daddr @%s" % (_IP[family], sets[(INCLUDE, family)].name)
            for iface in virt_ifs:
                b.add("nat", "prerouting", "iifname %s %s counter jump istio-redirect" % (iface, match), index=0)
            b.add("nat", "istio-output", "%s counter jump istio-redirect" % match)
    else:
        for family in opts.families:
            for fam, cidr in include:
                if fam != family:
                    continue
                for iface in virt_ifs:
                    b.add("nat", "prerouting", "iifname %s %s daddr %s counter jump istio-redirect"
                          % (iface, _IP[family], cidr), index=0)
                b.add("nat", "istio-output", "%s daddr %s counter jump istio-redirect" % (_IP[family], cidr))

    # 19. TPROXY (also with no inbound ports): keep the divert mark on the connection, and keep the
    # proxy from capturing itself.
    if opts.tproxy:
        b.add("mangle", "prerouting", "meta l4proto tcp mark %s counter ct mark set mark" % mark)
        b.add("mangle", "output", "oifname lo meta l4proto tcp mark %s counter return" % mark)
        for owner, ids in (("skuid", uids), ("skgid", gids)):
            for ident in ids:
                for family, lo in ((IPV4, lo4), (IPV6, lo6)):
                    if family == IPV4 or v6:
                        b.add("mangle", "output", "oifname lo meta l4proto tcp %s daddr != %s %s %s counter "
                              "meta mark set %d" % (_IP[family], lo, owner, ident, OUTBOUND_MARK))
        b.add("mangle", "output", "meta l4proto tcp ct mark %s counter meta mark set ct mark" % mark)
        b.add("mangle", "istio-inbound", "meta l4proto tcp mark %s counter return" % mark, index=0)
        b.add("mangle", "istio-inbound", "iifname lo meta l4proto tcp ip saddr %s counter return"
              % PASSTHROUGH_SOURCE[IPV4], index=1)
        if v6:
            b.add("mangle", "istio-inbound", "iifname lo meta l4proto tcp ip6 saddr %s counter return"
                  % PASSTHROUGH_SOURCE[IPV6], index=1)
        b.add("mangle", "istio-inbound", "iifname lo meta l4proto tcp mark != %d counter return" % OUTBOUND_MARK,
              index=2)
    return b.rules


def _inbound(b, opts, lo4, cap, mark):
    """Step 7: inbound capture, TPROXY in mangle or REDIRECT in nat."""
    ports = opts.inbound_ports
    excluded = [nft_port(p) for p in opts.exclude_inbound_ports]
    if opts.tproxy:
        b.add("mangle", "istio-divert", "counter meta mark set %s" % mark)
        b.add("mangle", "istio-divert", "counter accept")
        b.add("mangle", "istio-tproxy", "meta l4proto tcp ip daddr != %s tproxy ip to :%s meta mark set %s "
              "counter accept" % (lo4, cap, mark))
        if opts.ipv6:
            b.add("mangle", "istio-tproxy", "meta l4proto tcp ip6 daddr != %s tproxy ip6 to :%s meta mark set %s "
                  "counter accept" % (LOOPBACK_V6, cap, mark))
        b.add("mangle", "prerouting", "meta l4proto tcp counter jump istio-inbound")
        if opts.keep_existing_connections:
            b.add("mangle", "istio-inbound", KEEP_EXISTING_RULE)
        if ports == "*":
            for port in excluded:
                b.add("mangle", "istio-inbound", "meta l4proto tcp tcp dport %s counter return" % port)
            b.add("mangle", "istio-inbound", "meta l4proto tcp ct state related,established counter jump istio-divert")
            b.add("mangle", "istio-inbound", "meta l4proto tcp counter jump istio-tproxy")
        else:
            for port in ports:
                port = nft_port(port)
                b.add("mangle", "istio-inbound", "meta l4proto tcp ct state related,established tcp dport %s "
                      "counter jump istio-divert" % port)
                b.add("mangle", "istio-inbound", "meta l4proto tcp tcp dport %s counter jump istio-tproxy" % port)
        return
    b.add("nat", "prerouting", "meta l4proto tcp counter jump istio-inbound")
    if opts.keep_existing_connections:
        b.add("nat", "istio-inbound", KEEP_EXISTING_RULE)
    if ports == "*":
        for port in excluded:
            b.add("nat", "istio-inbound", "meta l4proto tcp tcp dport %s counter return" % port)
        b.add("nat", "istio-inbound", "meta l4proto tcp counter jump istio-in-redirect")
    else:
        for port in ports:
            b.add("nat", "istio-inbound", "meta l4proto tcp tcp dport %s counter jump istio-in-redirect"
                  % nft_port(port))


def _dns(b, opts):
    """Step 14. The two jumps are written only when their chain gets rules: Istio also writes them
    with IPv6-only nameservers and IPv6 off, and the transaction fails on the missing chains."""
    servers = [(family, addr) for family, addr in opts.dns_servers if family == IPV4 or opts.ipv6]
    servers.sort(key=lambda server: server[0] != IPV4)  # every v4 server, then every v6 one
    all_dns = opts.capture_all_dns
    to = ":%d" % DNS_PROXY_PORT
    capturing = all_dns or bool(servers)

    b.add("raw", "output", "counter jump istio-output-dns")
    if capturing:
        b.add("nat", "istio-output", "counter jump istio-output-dns")
    for proto in ("tcp", "udp"):
        if all_dns:
            match = "meta l4proto tcp tcp dport 53" if proto == "tcp" else "udp dport 53"
            b.add("nat", "istio-output-dns", "%s counter redirect to %s" % (match, to))
            continue
        for family, addr in servers:
            b.add("nat", "istio-output-dns", "%s daddr %s%s %s dport 53 counter redirect to %s"
                  % (_IP[family], addr, _HOST_LEN[family], proto, to))
    for owner, ids in (("skuid", opts.proxy_uids), ("skgid", opts.proxy_gids)):
        for ident in ids:
            b.add("raw", "istio-output-dns", "udp dport 53 meta %s %s counter ct zone set 1" % (owner, ident))
            b.add("raw", "istio-output-dns", "udp sport %d meta %s %s counter ct zone set 2"
                  % (DNS_PROXY_PORT, owner, ident))
    if capturing:
        b.add("raw", "prerouting", "counter jump istio-inbound")
    if all_dns:
        b.add("raw", "istio-output-dns", "udp dport 53 counter ct zone set 2")
        b.add("raw", "istio-inbound", "udp sport 53 counter ct zone set 1")
        return
    for family, addr in servers:
        host = addr + _HOST_LEN[family]
        b.add("raw", "istio-output-dns", "udp dport 53 %s daddr %s counter ct zone set 2" % (_IP[family], host))
        b.add("raw", "istio-inbound", "udp sport 53 %s saddr %s counter ct zone set 1" % (_IP[family], host))


def _placed(rules):
    """Yield ``(rule, index)``: Istio's index conversion (the #58135 fix), index None meaning append.

    An insert at N becomes an append when its chain has no rules yet in this transaction or N is at
    or past the chain's end; otherwise nft places it before the rule now at position N.
    """
    written = {}
    for rule in rules:
        key = (rule.table, rule.chain)
        count = written.get(key, 0)
        index = rule.index
        if index is not None and (count == 0 or index >= count):
            index = None
        written[key] = count + 1
        yield rule, index


def _chains_of(rules, short):
    used = {rule.chain for rule in rules if rule.table == short}
    return [chain for chain in CHAIN_ORDER[short] if chain in used]


def istio_transaction(opts):
    """The exact ``nft -f -`` text Istio writes for ``opts`` (reference section 1 steps 2-4)."""
    rules = generate_rules(opts)
    lines = []
    for short in TABLES:
        table_rules = [rule for rule in rules if rule.table == short]
        if not table_rules:
            continue
        name = table_name(short)
        lines += ["add table inet " + name, "flush table inet " + name]
        lines += [add_chain_line(name, chain, BASE_CHAINS[short].get(chain)) for chain in _chains_of(rules, short)]
        for rule, index in _placed(table_rules):
            if index is None:
                lines.append("add rule inet %s %s %s" % (name, rule.chain, rule.text))
            else:
                lines.append("insert rule inet %s %s index %d %s" % (name, rule.chain, index, rule.text))
    return "".join(line + "\n" for line in lines)


def plan_ruleset(opts):
    """The Istio tables the kernel holds after applying ``opts``: ``(NftTable, ...)`` in Istio's order,
    each chain's rules in kernel order. Tables and chains without rules do not exist."""
    rules = generate_rules(opts)
    cidr_sets = planned_sets(opts)
    tables = []
    for short in TABLES:
        table_rules = [rule for rule in rules if rule.table == short]
        if not table_rules:
            continue
        order = {chain: [] for chain in _chains_of(rules, short)}
        for rule, index in _placed(table_rules):
            if index is None:
                order[rule.chain].append(rule.text)
            else:
                order[rule.chain].insert(index, rule.text)
        chains = tuple(NftChain(chain, BASE_CHAINS[short].get(chain), tuple(texts)) for chain, texts in order.items())
        table_sets = tuple(cidr_sets[key] for key in sorted(cidr_sets)) if short == "nat" else ()
        tables.append(NftTable(table_name(short), chains, table_sets))
    return tuple(tables)
