# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Per-rule packet and byte counters of the rules of ours: either iptables backend, or native nftables.

A counted read is a parsed ``iptables-save`` (``{table: TableDump}``, the same rule text both
backends read) plus ``{(table, chain): [(packets, bytes), ...]}`` in rule order. The rules of ours
are then picked by ``_capture.reconcile.owned_state`` (one ownership test, not a second one) and
paired back with their counters. In the ``nat`` table only a connection's first packet is
evaluated, so there a count is a number of connections.

Native nftables mode keeps each rule's counter in its ``counter`` expression: one ``nft -j list
ruleset`` document (``backends.nftables``) has every rule with its counts, and Istio's tables are
picked and their rules put in comparable form by ``_capture.nft_reconcile``, shown as text by
``_capture.nft_render``.
"""

from __future__ import annotations

import re

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy, iptables_legacy_child
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import (
    TableDump,
    parse_rule,
    parse_save,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import CAPTURE_TABLES, IPV4
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import FAMILY, table_name
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_reconcile import canonical_rule, is_istio_table
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_render import render_rule

_COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\]\s+-A\s+(\S+)")

# What the summary counts, as (table, chain, target) of the rules whose counts add up to it.
# Outbound: the proxy-port REDIRECT; inbound: the inbound-port REDIRECT, or TPROXY (mangle: every
# packet of a new connection's handshake that reaches it); DNS: the REDIRECTs to the DNS proxy.
_TOTALS = (
    ("outbound", lambda table, chain, target: table == "nat" and chain == "ISTIO_REDIRECT" and target == "REDIRECT"),
    ("inbound", lambda table, chain, target: (table == "nat" and chain == "ISTIO_IN_REDIRECT" and target == "REDIRECT")
     or (table == "mangle" and chain.startswith("ISTIO_") and target == "TPROXY")),
    ("dns", lambda table, chain, target: table == "nat" and chain == "ISTIO_OUTPUT_DNS" and target == "REDIRECT"),
)

_NAT, _MANGLE = table_name("nat"), table_name("mangle")
# The same summary in native mode, as (table, chain, expression names of the rule): the redirect in
# istio-redirect; the redirect in istio-in-redirect, or a tproxy; the redirects of istio-output-dns.
_NATIVE_TOTALS = (
    ("outbound", lambda table, chain, names: table == _NAT and chain == "istio-redirect" and "redirect" in names),
    ("inbound", lambda table, chain, names: (table == _NAT and chain == "istio-in-redirect" and "redirect" in names)
     or (table == _MANGLE and "tproxy" in names)),
    ("dns", lambda table, chain, names: table == _NAT and chain == "istio-output-dns" and "redirect" in names),
)


def parse_counted_save(text):
    """``(dumps, counts)`` of ``iptables-save -c`` output; the rule text is ``parse_save``'s."""
    dumps = parse_save(text)
    counts = {}
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:].strip()
            continue
        match = _COUNTED_RULE.match(line)
        if match:
            counts.setdefault((table, match.group(3)), []).append((int(match.group(1)), int(match.group(2))))
        elif line.startswith("-A "):
            raise ValueError("iptables-save -c line without [packets:bytes]: %r" % raw)
    return dumps, counts


def nft_counted_read(run, which, family):
    """The counted read of a family with ``iptables-nft-save -c`` (in the current network namespace)."""
    tool = ("iptables" if family == IPV4 else "ip6tables") + "-nft-save"
    path = which(tool)
    if not path:
        raise BackendError("%s is not installed" % tool)
    rc, out, err = run([path, "-c"])
    if rc != 0:
        raise BackendError("%s -c failed (rc=%d): %s" % (tool, rc, err.strip()))
    return parse_counted_save(out)


def legacy_counted_read(family):
    """The counted read of a family through python-iptables, in a forked child (see ``backends.iptables_legacy``)."""
    # The legacy backend's own guard: opening a missing table creates it.
    if not iptables_legacy.loaded_legacy_tables(family) & set(CAPTURE_TABLES):
        return {}, {}
    # pylint: disable-next=protected-access  # the legacy backend's child: python-iptables imported there only
    chains_by_table = iptables_legacy._in_child(_legacy_counted_read, family)
    dumps, counts = {}, {}
    for table, chains in chains_by_table.items():
        dump = TableDump()
        for chain, rules in chains:
            dump.chains[chain] = [args for args, dummy, dummy2 in rules]
            counts[(table, chain)] = [(packets, octets) for dummy, packets, octets in rules]
        dumps[table] = dump
    return dumps, counts


def _legacy_counted_read(family):
    """In the legacy child: ``{table: [(chain, [(args, packets, bytes)])]}``, rules rendered as the backend reads them."""
    # pylint: disable=protected-access  # the backend's reading steps, reused rather than copied
    legacy = iptables_legacy_child
    loaded = iptables_legacy.loaded_legacy_tables(family)
    result = {}
    for table in CAPTURE_TABLES:
        if table in loaded:  # opening a table that is not there would create it
            handle = legacy._table(family, table)
            handle.refresh()
            # entry.counters is what python-iptables' Rule.get_counters() returns, without building the Rule
            result[table] = [(chain.name, [(legacy._render_entry(handle, chain, entry, family),
                                            entry.counters.pcnt, entry.counters.bcnt)
                                           for entry in legacy._entries(handle, chain)])
                             for chain in handle.chains]
    return result


def owned_counters(dumps, counts, state, family):
    """``[{family, table, chain, rule, packets, bytes}]`` of the rules of ours in ``state`` (``owned_state(dumps)``).

    The rules of ours in a chain are a subsequence of its rules, and equal rule text is owned or
    not alike, so pairing them in order gives each its own counters.
    """
    out = []
    for table in CAPTURE_TABLES:
        owned = state.get(table)
        if owned is None or table not in dumps:
            continue
        for chain, ours in list(owned.builtin.items()) + list(owned.chains.items()):
            pending = list(ours)
            for args, (packets, octets) in zip(dumps[table].chains.get(chain, []), counts.get((table, chain), [])):
                if pending and args == pending[0]:
                    pending.pop(0)
                    out.append({"family": family, "table": table, "chain": chain, "rule": args,
                                "packets": packets, "bytes": octets})
    return out


def totals(rules):
    """``{outbound, inbound, dns}``: packets and bytes of the redirecting rules among ``rules`` (``owned_counters``)."""
    sums = {name: {"packets": 0, "bytes": 0} for name, dummy in _TOTALS}
    for rule in rules:
        try:
            target = parse_rule(rule["rule"]).target
        except ValueError:  # text the backend marks as damaged (see backends.iptables_legacy): redirects nothing known
            continue
        for name, counts_for in _TOTALS:
            if counts_for(rule["table"], rule["chain"], target):
                sums[name]["packets"] += rule["packets"]
                sums[name]["bytes"] += rule["bytes"]
    return sums


def native_counters(document):
    """``{"rules": [{family, table, chain, rule, packets, bytes}], "totals": {outbound, inbound, dns}}`` of
    Istio's native tables in a parsed ``nft -j list ruleset`` document, rules in the kernel's order.

    ``rule`` is the rule's canonical form as text (``nft_render``). A rule without a ``counter``
    expression (added by hand, or Istio before 1.28) has no counts: ``packets`` and ``bytes`` are None.
    """
    rules = []
    sums = {name: {"packets": 0, "bytes": 0} for name, dummy in _NATIVE_TOTALS}
    for item in document.get("nftables", ()):
        rule = item.get("rule")
        if rule is None or not is_istio_table(rule.get("family"), rule.get("table", "")):
            continue
        exprs = rule.get("expr", [])
        counts = [expr["counter"] for expr in exprs if isinstance(expr.get("counter"), dict)]
        packets = sum(count.get("packets", 0) for count in counts) if counts else None
        octets = sum(count.get("bytes", 0) for count in counts) if counts else None
        table, chain = rule["table"], rule["chain"]
        rules.append({"family": FAMILY, "table": table, "chain": chain, "rule": render_rule(canonical_rule(exprs)),
                      "packets": packets, "bytes": octets})
        if packets is None:
            continue
        names = {name for expr in exprs for name in expr}
        for name, counts_for in _NATIVE_TOTALS:
            if counts_for(table, chain, names):
                sums[name]["packets"] += packets
                sums[name]["bytes"] += octets
    return {"rules": rules, "totals": sums}
