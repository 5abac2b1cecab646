# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Native nftables reconcile: kernel state and desired tables in one comparable form, and the one
``nft -f -`` transaction that turns the first into the second. No I/O.

Both sides become ``{table: {chain: Chain(base, rules)}}`` where a rule is the canonical JSON of its
expressions (``nft -j`` form, counter values and handles dropped). The kernel side comes from
``nft -j list ruleset``; the desired side from the planner's rule text, through a small translator
of the rule grammar the planner writes (``rule_expressions``), proven equal to what nft 1.0.6 stores
by the real-kernel fixtures of the unit tests. ``nft list`` text is never parsed.

Only ``inet`` tables named ``istio-proxy-*`` are ever read or written; a table that differs is
deleted and recreated in the transaction (its chains, base chain specs and counters start afresh),
an equal one is not mentioned (counters kept).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import namedtuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import intervals_of_nft_elements
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import address_text
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import (
    FAMILY,
    SET_FLAGS,
    SET_TYPE,
    TABLE_PREFIX,
    add_chain_line,
    add_set_lines,
)

# ``base`` is None for a regular chain, else ``(type, hook, priority, policy)``.
Chain = namedtuple("Chain", "base rules")
# A named set: its type, flags and contents as merged intervals (``_capture.cidr_sets``).
SetState = namedtuple("SetState", "type flags intervals")
# action: "replace" (the table built afresh), "refill" (only the elements of the sets named in
# ``sets``: rules and counters kept), or "delete".
TableChange = namedtuple("TableChange", "table action sets", defaults=((),))

_COUNTER = {"counter": None}
_VERDICTS = ("return", "accept", "drop")
_META_KEYS = ("l4proto", "mark", "skuid", "skgid", "iifname", "oifname")
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # one encoder for 10,000s of rules


class RuleSyntaxError(ValueError):
    """The planner wrote a rule this translator does not know: a bug, never a user error."""


def is_istio_table(family, name):
    return family == FAMILY and name.startswith(TABLE_PREFIX)


# --- the kernel side -----------------------------------------------------------------------------

def live_state(document):
    """Istio's tables from ``nft -j list ruleset`` output (text or parsed) in comparable form."""
    if isinstance(document, str):
        document = json.loads(document) if document.strip() else {"nftables": []}
    state = {}
    for item in document.get("nftables", ()):
        if "table" in item:
            table = item["table"]
            if is_istio_table(table.get("family"), table.get("name", "")):
                state.setdefault(table["name"], {})
        elif "chain" in item:
            chain = item["chain"]
            if is_istio_table(chain.get("family"), chain.get("table", "")):
                base = None
                if "hook" in chain:
                    base = (chain.get("type"), chain["hook"], chain.get("prio"), chain.get("policy", "accept"))
                state.setdefault(chain["table"], {})[chain["name"]] = Chain(base, [])
        elif "rule" in item:
            rule = item["rule"]
            if is_istio_table(rule.get("family"), rule.get("table", "")):
                chains = state.setdefault(rule["table"], {})
                chains.setdefault(rule["chain"], Chain(None, [])).rules.append(canonical_rule(rule.get("expr", [])))
    return {table: {name: Chain(c.base, tuple(c.rules)) for name, c in chains.items()}
            for table, chains in state.items()}


def live_sets(document):
    """The named sets of Istio's tables in ``nft -j`` output: ``{table: {set: SetState}}``.

    nft 1.0.6 does not show ``auto-merge`` in JSON: it is written, never compared."""
    if isinstance(document, str):
        document = json.loads(document) if document.strip() else {"nftables": []}
    sets = {}
    for item in document.get("nftables", ()):
        found = item.get("set")
        if found and is_istio_table(found.get("family"), found.get("table", "")):
            try:
                intervals = intervals_of_nft_elements(found.get("elem", ()))
            except (ValueError, TypeError, KeyError):
                intervals = ("unreadable", _ENCODE(found.get("elem")))  # never equal to a plan: rebuilt
            flags = found.get("flags", ())
            sets.setdefault(found["table"], {})[found["name"]] = SetState(
                found.get("type"), tuple(sorted([flags] if isinstance(flags, str) else flags)), intervals)
    return sets


def canonical_rule(exprs):
    """One rule's expressions as a comparable string: counter values dropped, and the
    ``meta l4proto tcp`` that a later ``tcp`` match implies dropped (nft versions differ in keeping it)."""
    out = []
    for expr in exprs:
        if "counter" in expr:
            out.append(_COUNTER)
            continue
        match = expr.get("match")
        if match and match["left"] == {"ct": {"key": "state"}}:
            right = match["right"]
            if isinstance(right, dict):  # a braced set, { established, related }
                right = right.get("set", [right])
            expr = {"match": {"op": "in" if match["op"] in ("==", "in") else match["op"], "left": match["left"],
                              "right": sorted([right] if isinstance(right, str) else right, key=str)}}
        out.append(expr)
    protocols = {_payload_protocol(expr) for expr in out} - {None}
    out = [expr for expr in out if _l4proto_of(expr) not in protocols]
    return _ENCODE(out)


def _payload_protocol(expr):
    match = expr.get("match")
    left = match["left"] if match else None
    if isinstance(left, dict) and "&" in left:  # tcp flags & (...): the payload is the first operand
        left = left["&"][0]
    if isinstance(left, dict) and "payload" in left:
        return left["payload"].get("protocol")
    return None


def _l4proto_of(expr):
    """``tcp`` for a ``meta l4proto == tcp`` match, else None."""
    match = expr.get("match")
    if match and match["op"] == "==" and match["left"] == {"meta": {"key": "l4proto"}}:
        return match["right"] if isinstance(match["right"], str) else None
    return None


# --- the desired side ----------------------------------------------------------------------------

def planned_state(tables):
    """The planner's ``plan_ruleset()`` in the form of ``live_state()``, rules still the planner's text
    (to show them: ``nft_render.render_state(state, str)``)."""
    return {table.name: {chain.name: Chain(None if chain.base is None else tuple(chain.base) + ("accept",),
                                           tuple(chain.rules))
                         for chain in table.chains}
            for table in tables}


def desired_state(tables):
    """The planner's ``plan_ruleset()`` in the form of ``live_state()``."""
    cache = {}
    return {table: {name: Chain(chain.base, tuple(_desired_rule(text, cache) for text in chain.rules))
                    for name, chain in chains.items()}
            for table, chains in planned_state(tables).items()}


def desired_sets(tables):
    """The sets of the planner's tables in the form of ``live_sets()`` (tables without sets left out)."""
    return {table.name: {cidr_set.name: SetState(SET_TYPE[cidr_set.family], SET_FLAGS, cidr_set.intervals)
                         for cidr_set in table.sets}
            for table in tables if table.sets}


def plan_digest(tables):
    """A digest of everything ``tables`` puts in the kernel: equal digests, equal tables."""
    changes = [TableChange(table.name, "replace") for table in tables]
    digest = hashlib.sha256(transaction_text(changes, tables, elements=False).encode())
    for table in tables:  # the set contents as intervals: cheaper than their text, as exact
        for cidr_set in table.sets:
            digest.update(repr((table.name, cidr_set.name, cidr_set.intervals)).encode())
    return digest.hexdigest()


def _desired_rule(text, cache):
    """``canonical_rule(rule_expressions(text))``, translated once per rule shape: rules that differ
    only in their one address (thousands of excluded CIDRs) share the translation of a stand-in."""
    words = text.split(" ")
    at = [i for i, word in enumerate(words) if "/" in word]  # only CIDRs hold a "/"
    if len(at) != 1:
        return canonical_rule(rule_expressions(text))
    address = words[at[0]]
    stand_in, stand_in_json = ("::/128", '"::"') if ":" in address else ("0.0.0.0/32", '"0.0.0.0"')
    words[at[0]] = stand_in
    shape = " ".join(words)
    canonical = cache.get(shape)
    if canonical is None:
        canonical = cache[shape] = canonical_rule(rule_expressions(shape))
    return canonical.replace(stand_in_json, _ENCODE(_address(address)), 1)


def _words(text):
    """Split rule text into words; ``{ a, b }`` becomes one word ``{a,b}``, quotes are removed."""
    words, depth, current = [], 0, []
    for word in text.split(" "):
        if word == "{":
            depth, current = 1, []
        elif depth and word == "}":
            words.append("{" + "".join(current) + "}")
            depth = 0
        elif depth:
            current.append(word)
        else:
            words.append(word[1:-1] if len(word) > 1 and word[0] == word[-1] == '"' else word)
    return words


def _number(word):
    if word.startswith("{"):
        return {"set": [_number(part) for part in word[1:-1].split(",") if part]}
    if "-" in word:
        low, high = word.split("-", 1)
        return {"range": [int(low), int(high)]}
    return int(word)


def _address(word):
    if word.startswith("@"):
        return word  # a named set: ``ip daddr @istio-exclude-v4``
    network = ipaddress.ip_network(word, strict=False)
    if network.prefixlen == network.max_prefixlen:
        return address_text(network.network_address)
    return {"prefix": {"addr": address_text(network.network_address), "len": network.prefixlen}}


def _match(left, words, i, value):
    """A match at ``words[i]`` (after its left side): optional ``!=``, then the value."""
    op = "=="
    if words[i] == "!=":
        op, i = "!=", i + 1
    return {"match": {"op": op, "left": left, "right": value(words[i])}}, i + 1


def rule_expressions(text):
    """The ``nft -j`` expressions of one rule the planner writes (its grammar only)."""
    words = _words(text)
    exprs, i = [], 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        if word == "counter":
            exprs.append(_COUNTER)
            i += 1
        elif word in _VERDICTS:
            exprs.append({word: None})
            i += 1
        elif word == "jump":
            exprs.append({"jump": {"target": nxt}})
            i += 2
        elif word == "redirect" and nxt == "to":
            exprs.append({"redirect": {"port": int(words[i + 2].lstrip(":"))}})
            i += 3
        elif word == "tproxy":
            exprs.append({"tproxy": {"family": nxt, "port": int(words[i + 3].lstrip(":"))}})
            i += 4
        elif word == "meta" and nxt == "mark" and words[i + 2] == "set":
            exprs.append(_mangle({"meta": {"key": "mark"}}, words[i + 3:i + 5]))
            i += 5 if words[i + 3] == "ct" else 4
        elif word == "ct" and words[i + 2:i + 3] == ["set"]:
            exprs.append(_mangle({"ct": {"key": nxt}}, words[i + 3:i + 5]))
            i += 4
        elif word == "ct" and nxt == "state":
            expr, i = _match({"ct": {"key": "state"}}, words, i + 2, lambda w: w.split(","))
            expr["match"]["op"] = "in" if expr["match"]["op"] == "==" else expr["match"]["op"]
            exprs.append(expr)
        elif word == "ct" and nxt == "mark":
            expr, i = _match({"ct": {"key": "mark"}}, words, i + 2, int)
            exprs.append(expr)
        elif word == "meta" and nxt in _META_KEYS:
            i += 1  # "meta KEY" is the long form of "KEY" for the keys below
        elif word in _META_KEYS:
            value = str if word in ("l4proto", "iifname", "oifname") else int
            expr, i = _match({"meta": {"key": word}}, words, i + 1, value)
            exprs.append(expr)
        elif word in ("ip", "ip6") and nxt in ("saddr", "daddr"):
            expr, i = _match({"payload": {"protocol": word, "field": nxt}}, words, i + 2, _address)
            exprs.append(expr)
        elif word == "tcp" and nxt == "flags" and words[i + 2] == "&":  # tcp flags & (fin|syn) != syn
            mask = words[i + 3].strip("()").split("|")
            expr, i = _match({"&": [{"payload": {"protocol": "tcp", "field": "flags"}}, mask]}, words, i + 4, str)
            exprs.append(expr)
        elif word in ("tcp", "udp") and nxt in ("sport", "dport"):
            expr, i = _match({"payload": {"protocol": word, "field": nxt}}, words, i + 2, _number)
            exprs.append(expr)
        else:
            raise RuleSyntaxError("unknown rule syntax at %r in %r" % (word, text))
    return exprs


def _mangle(key, words):
    """``... set VALUE``: a number, ``mark`` (meta mark) or ``ct mark``."""
    if words[0] == "ct":
        value = {"ct": {"key": words[1]}}
    elif words[0] == "mark":
        value = {"meta": {"key": "mark"}}
    else:
        value = int(words[0])
    return {"mangle": {"key": key, "value": value}}


# --- the change ----------------------------------------------------------------------------------

def plan_changes(desired, live, wanted_sets=None, live_sets_=None):
    """``[TableChange]``: tables to replace (missing or different), to refill (only set elements differ:
    rules and counters are kept) and to delete (not wanted). Empty when the kernel already holds
    exactly the desired tables; ``wanted_sets``/``live_sets_`` are ``desired_sets``/``live_sets``."""
    wanted_sets, live_sets_ = wanted_sets or {}, live_sets_ or {}
    changes = []
    for name in desired:
        want, have = wanted_sets.get(name, {}), live_sets_.get(name, {})
        if live.get(name) != desired[name] or _declarations(want) != _declarations(have):
            changes.append(TableChange(name, "replace"))
        elif want != have:
            changes.append(TableChange(name, "refill", tuple(sorted(n for n in want if want[n] != have[n]))))
    changes += [TableChange(name, "delete") for name in sorted(live) if name not in desired]
    return changes


def _declarations(sets):
    return {name: (found.type, found.flags) for name, found in sets.items()}


def fresh_changes(names, live):
    """``plan_changes`` when none of the tables ``names`` exists in ``live``: each is built whole, so
    no comparison (and no canonical form of thousands of desired rules) is needed."""
    if set(names) & set(live):
        raise ValueError("fresh_changes() is only for tables the kernel does not hold")
    return [TableChange(name, "replace") for name in names] + [
        TableChange(name, "delete") for name in sorted(live) if name not in names]


def transaction_text(changes, tables, elements=True):
    """The ``nft -f -`` text of ``changes`` (one transaction), with ``tables`` from ``plan_ruleset()``.

    Every touched table is first made to exist and then deleted, so the text applies whatever the
    kernel holds by then; a replaced table is then built afresh with its rules in kernel order.
    ``elements=False`` leaves out the sets' elements (``plan_digest`` hashes their intervals instead).
    """
    by_name = {table.name: table for table in tables}
    lines = []
    for change in changes:
        qualified = "%s %s" % (FAMILY, change.table)
        if change.action == "refill":  # the sets emptied and filled again, in the same transaction
            for cidr_set in by_name[change.table].sets:
                if cidr_set.name not in change.sets:
                    continue
                lines.append("flush set %s %s" % (qualified, cidr_set.name))
                lines.append(add_set_lines(change.table, cidr_set)[1])
            continue
        lines += ["add table " + qualified, "delete table " + qualified]
        if change.action != "replace":
            continue
        table = by_name[change.table]
        lines.append("add table " + qualified)
        for cidr_set in table.sets:  # before the rules that match them
            lines += add_set_lines(table.name, cidr_set)[:None if elements else 1]
        lines += [add_chain_line(table.name, chain.name, chain.base) for chain in table.chains]
        for chain in table.chains:
            prefix = "add rule %s %s " % (qualified, chain.name)
            lines += [prefix + text for text in chain.rules]
    return "".join(line + "\n" for line in lines)


def removal_text(live):
    """The transaction that removes every Istio table ``live`` holds (``state: absent``)."""
    return transaction_text(plan_changes({}, live), ())
