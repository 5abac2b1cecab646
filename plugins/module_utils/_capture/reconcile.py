# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Reconciliation: what the kernel holds of ours, what the plan wants, and the change between them. No I/O.

Ownership does not depend on the options, so ``state: absent`` removes what any earlier options
created: every ``ISTIO_*`` chain, every rule in a built-in chain that jumps into one, the Istio-only
rule shapes (``_capture.iptables_text.is_owned_rule``), and the other built-in chain rules the module
placed, as its ``_capture.ownership`` lists them. Foreign rules are never part of a change, and
rules of ours are only rewritten where they differ.
"""

from __future__ import annotations

from typing import NamedTuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import BUILTIN_CHAINS, CAPTURE_TABLES, Record
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import (
    canonical_args,
    is_owned_chain,
    is_owned_rule,
)

# The order iptables-save prints built-in chains in.
_BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


class OwnedTable(Record):
    """The rules of ours in one table: whole ``ISTIO_*`` chains, and our rules in built-in chains."""

    __slots__ = ("chains", "builtin", "heads")

    def __init__(self, chains=None, builtin=None, heads=None):
        self.chains = {} if chains is None else chains  # ISTIO_* chain -> [args]
        self.builtin = {} if builtin is None else builtin  # built-in chain -> [args], kernel order
        self.heads = {} if heads is None else heads  # built-in chain -> how many of its rules go on top

    def is_empty(self):
        return not self.chains and not any(self.builtin.values())


def owned_state(dumps, claimed=frozenset()):
    """``{table: OwnedTable}`` of the rules of ours in parsed ``iptables-save`` output.

    ``claimed``: ``(table, chain, args)`` of built-in chain rules that are ours though nothing in them says so.
    """
    state = {}
    for table in CAPTURE_TABLES:
        dump = dumps.get(table)
        owned = OwnedTable()
        if dump is not None:
            for chain, rules in dump.chains.items():
                if is_owned_chain(chain):
                    owned.chains[chain] = list(rules)
                elif chain in BUILTIN_CHAINS:
                    ours = [args for args in rules if is_owned_rule(table, chain, args, claimed)]
                    if ours:
                        owned.builtin[chain] = ours
        state[table] = owned
    return state


def desired_state(rules, family):
    """``{table: OwnedTable}`` the kernel holds after applying ``rules`` (inserts placed as iptables places them)."""
    state = {table: OwnedTable() for table in CAPTURE_TABLES}
    for rule in rules:
        owned = state[rule.table]
        args = canonical_args(rule.args, family)
        if rule.chain in BUILTIN_CHAINS:
            chain_rules = owned.builtin.setdefault(rule.chain, [])
            if rule.position is None:
                chain_rules.append(args)
            elif rule.position == 1:
                chain_rules.insert(0, args)
                owned.heads[rule.chain] = owned.heads.get(rule.chain, 0) + 1
            else:
                raise ValueError("inserts into built-in chains are only planned at position 1")
        else:
            chain_rules = owned.chains.setdefault(rule.chain, [])
            if rule.position is None:
                chain_rules.append(args)
            else:
                chain_rules.insert(rule.position - 1, args)
        if rule.jump and is_owned_chain(rule.jump):
            owned.chains.setdefault(rule.jump, [])
    return state


def unmarked_rules(state):
    """``(table, chain, args)`` of the built-in chain rules in ``state`` that only a record can say are ours."""
    return {(table, chain, args) for table, owned in state.items() for chain, rules in owned.builtin.items()
            for args in rules if not is_owned_rule(table, chain, args)}


class Op(NamedTuple):
    """One step of a change, in ``iptables-restore`` terms."""

    kind: str  # "declare" (create or flush), "delete", "delete_chain", "append", "insert"
    chain: str
    args: str = ""
    position: int = 0

    def restore_line(self):
        if self.kind == "declare":
            return ":%s - [0:0]" % self.chain
        if self.kind == "delete_chain":
            return "-X %s" % self.chain
        if self.kind == "insert":
            return "-I %s %d %s" % (self.chain, self.position, self.args)
        return "%s %s %s" % ("-D" if self.kind == "delete" else "-A", self.chain, self.args)


def plan_changes(current, desired):
    """``{table: [Op]}`` that turns ``current`` into ``desired``; tables already right are left out."""
    changes = {}
    for table in CAPTURE_TABLES:
        have, want = current[table], desired[table]
        rewrite = [c for c in sorted(want.chains) if have.chains.get(c) != want.chains[c]]
        stale = [c for c in sorted(have.chains) if c not in want.chains]
        builtins = [c for c in _BUILTIN_ORDER if have.builtin.get(c, []) != want.builtin.get(c, [])]
        ops = [Op("declare", c) for c in rewrite + stale]
        for chain in builtins:
            ops += [Op("delete", chain, args) for args in have.builtin.get(chain, [])]
        ops += [Op("delete_chain", c) for c in stale]
        for chain in rewrite:
            ops += [Op("append", chain, args) for args in want.chains[chain]]
        for chain in builtins:
            wanted = want.builtin.get(chain, [])
            heads = want.heads.get(chain, 0)
            ops += [Op("insert", chain, args, n + 1) for n, args in enumerate(wanted[:heads])]
            ops += [Op("append", chain, args) for args in wanted[heads:]]
        if ops:
            changes[table] = ops
    return changes


def restore_text(changes):
    """The change as ``iptables-restore --noflush`` input: one transaction for the family."""
    lines = []
    for table in CAPTURE_TABLES:
        if table in changes:
            lines.append("*" + table)
            lines.extend(op.restore_line() for op in changes[table])
            lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""


def render_state(state):
    """The rules of ours as ``iptables-save`` prints them (tables, then chains, in its order)."""
    lines = []
    for table in CAPTURE_TABLES:
        owned = state[table]
        if owned.is_empty():
            continue
        lines.append("*" + table)
        lines.extend(":%s - [0:0]" % chain for chain in sorted(owned.chains))
        for chain in _BUILTIN_ORDER:
            lines.extend("-A %s %s" % (chain, args) for args in owned.builtin.get(chain, []))
        for chain in sorted(owned.chains):
            lines.extend("-A %s %s" % (chain, args) for args in owned.chains[chain])
        lines.append("COMMIT")
    return "\n".join(lines) + "\n" if lines else ""
