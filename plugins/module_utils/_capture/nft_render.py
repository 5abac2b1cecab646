# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Native nftables rules back to text: the inverse of ``nft_reconcile.rule_expressions``. No I/O.

``render_rule()`` turns one rule's ``nft -j`` expressions (a list, or the canonical JSON string
``nft_reconcile.canonical_rule()`` gives) into rule text of the grammar the planner writes, so
``rule_expressions(render_rule(r))`` is ``r`` again (compared canonically). ``render_state()`` shows a
whole ``{table: {chain: Chain(base, rules)}}`` (``live_state``/``desired_state``) as ``nft list``
does, tables and chains in Istio's declaration order, counters left out.

An expression outside that grammar (a rule added by hand) is shown as its compact JSON, never
guessed at: every fragment of text is parsed back before it is used, so text is only ever
written where ``rule_expressions`` reads the same expression from it.
"""

from __future__ import annotations

import json
import re

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import describe_intervals
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import (
    CHAIN_ORDER,
    FAMILY,
    TABLE_PREFIX,
    TABLES,
    table_name,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_reconcile import (
    RuleSyntaxError,
    canonical_rule,
    rule_expressions,
)

_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_VERDICTS = ("return", "accept", "drop")
_STRING_KEYS = ("l4proto", "iifname", "oifname")  # meta keys with a string value; mark, skuid, skgid are numbers
_NUMBER_KEYS = ("mark", "skuid", "skgid")
_PLAIN_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")  # nft reads it unquoted (nft_plan writes names so)
_UNQUOTABLE = re.compile(r'["\\\s]')  # nft has no escape for these inside a quoted string
_TABLE_ORDER = tuple(table_name(short) for short in TABLES)


class _NoWords(Exception):
    """A value the grammar has no words for (a set where one value goes, a string where a number)."""


def render_rule(rule):
    """Rule text of one rule: ``rule`` is a list of ``nft -j`` expressions or its canonical JSON string."""
    exprs = json.loads(rule) if isinstance(rule, str) else rule
    words = [_words_of(expr) for expr in exprs]
    if None not in words:
        text = " ".join(words)
        if _reads_back(text, exprs):  # one parse for the whole rule, the common case
            return text
    return " ".join(render_expression(expr) for expr in exprs)


def render_expression(expr):
    """One expression as rule text, or as its compact JSON when the planner's grammar has no words for it."""
    text = _words_of(expr)
    if text is not None and _reads_back(text, [expr]):
        return text
    return _ENCODE(expr)


def _reads_back(text, exprs):
    """Whether ``rule_expressions`` reads ``exprs`` from ``text`` (compared canonically)."""
    try:
        return canonical_rule(rule_expressions(text)) == canonical_rule(exprs)
    except (RuleSyntaxError, ValueError, IndexError, KeyError, TypeError):
        return False


def _words_of(expr):
    """The words for ``expr``, or None. ``_reads_back`` decides whether they are used."""
    try:
        return _words(expr)
    except (_NoWords, AttributeError, KeyError, TypeError, IndexError):
        return None  # a value of another shape than the grammar's (a set where one value goes)


def _words(expr):
    if not isinstance(expr, dict) or len(expr) != 1:
        return None
    (key, value), = expr.items()
    if key == "counter":
        return "counter"  # the values are reported beside the rule, not in it
    if key in _VERDICTS:
        return key if value is None else None
    if key == "jump" and isinstance(value, dict) and set(value) == {"target"}:
        return "jump %s" % value["target"]
    if key == "redirect" and isinstance(value, dict) and set(value) == {"port"}:
        return "redirect to :%s" % _integer(value["port"])
    if key == "tproxy" and isinstance(value, dict) and set(value) == {"family", "port"}:
        return "tproxy %s to :%s" % (value["family"], _integer(value["port"]))
    if key == "mangle" and isinstance(value, dict):
        return _mangle(value.get("key"), value.get("value"))
    if key == "match" and isinstance(value, dict):
        return _match(value.get("left"), value.get("op"), value.get("right"))
    return None


def _mangle(target, value):
    """``meta mark set V`` or ``ct KEY set V``; V a number, ``mark`` (meta mark) or ``ct KEY``."""
    if value == {"meta": {"key": "mark"}}:
        source = "mark"
    elif isinstance(value, dict) and set(value) == {"ct"}:
        source = "ct %s" % value["ct"].get("key")
    else:
        source = _integer(value)
    if target == {"meta": {"key": "mark"}}:
        return "meta mark set %s" % source
    if isinstance(target, dict) and set(target) == {"ct"} and isinstance(target["ct"], dict):
        return "ct %s set %s" % (target["ct"].get("key"), source)
    return None


def _match(left, op, right):
    if not isinstance(left, dict) or op not in ("==", "!=", "in"):
        return None
    negation = "!= " if op == "!=" else ""
    if "ct" in left:
        key = left["ct"].get("key")
        if key == "state":
            states = [right] if isinstance(right, str) else right
            if not isinstance(states, list) or not all(isinstance(state, str) for state in states):
                return None
            return "ct state %s%s" % (negation, ",".join(states))
        if key == "mark" and op != "in":
            return "ct mark %s%s" % (negation, _integer(right))
        return None
    if op == "in":
        return None
    if "meta" in left:
        key = left["meta"].get("key")
        if key in _STRING_KEYS and isinstance(right, str) and not _UNQUOTABLE.search(right):
            word = right if _PLAIN_WORD.match(right) else '"%s"' % right
            return "%s%s %s%s" % ("meta " if key == "l4proto" else "", key, negation, word)
        if key in _NUMBER_KEYS:
            return "%s %s%s" % (key, negation, _integer(right))
        return None
    if "payload" in left:
        protocol, field = left["payload"].get("protocol"), left["payload"].get("field")
        if protocol in ("ip", "ip6") and field in ("saddr", "daddr"):
            return "%s %s %s%s" % (protocol, field, negation, _address(right))
        if protocol in ("tcp", "udp") and field in ("sport", "dport"):
            return "%s %s %s%s" % (protocol, field, negation, _ports(right))
    return None


def _integer(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _NoWords()
    return str(value)


def _address(value):
    if isinstance(value, dict) and set(value) == {"prefix"}:
        return "%s/%s" % (value["prefix"]["addr"], _integer(value["prefix"]["len"]))
    if isinstance(value, str):
        return value
    raise _NoWords()


def _port(value):
    if isinstance(value, dict) and set(value) == {"range"} and len(value["range"]) == 2:
        return "%s-%s" % (_integer(value["range"][0]), _integer(value["range"][1]))
    return _integer(value)


def _ports(value):
    if isinstance(value, dict) and set(value) == {"set"}:
        return "{ %s }" % ", ".join(_port(element) for element in value["set"])
    return _port(value)


def render_set(name, found):
    """One named set (``SetState``) as ``nft list`` shows it; its elements merged, as auto-merge keeps them."""
    family = IPV6 if found.type == "ipv6_addr" else IPV4
    if found.intervals and found.intervals[0] == "unreadable":
        elements = found.intervals[1]
    else:
        elements = ", ".join(describe_intervals(found.intervals, family))
    lines = ["\tset %s {\n" % name, "\t\ttype %s\n" % found.type]
    if found.flags:
        lines.append("\t\tflags %s\n" % ",".join(found.flags))
    if elements:
        lines.append("\t\telements = { %s }\n" % elements)
    lines.append("\t}\n")
    return "".join(lines)


def render_base(base):
    """``type nat hook prerouting priority -100; policy accept;`` of a base chain (``Chain.base``), or None."""
    if base is None:
        return None
    kind, hook, priority = base[0], base[1], base[2]
    policy = base[3] if len(base) > 3 else "accept"
    return "type %s hook %s priority %s; policy %s;" % (kind, hook, priority, policy)


def table_order(names):
    """Table names in a stable order: Istio's (nat, mangle, raw), then any other by name."""
    known = [name for name in _TABLE_ORDER if name in names]
    return known + sorted(name for name in names if name not in _TABLE_ORDER)


def chain_order(table, names):
    """Chain names of ``table`` in a stable order: Istio's declaration order, then any other by name."""
    short = table[len(TABLE_PREFIX):] if table.startswith(TABLE_PREFIX) else None
    declared = CHAIN_ORDER.get(short, ())
    known = [name for name in declared if name in names]
    return known + sorted(name for name in names if name not in declared)


def render_state(state, rule_text=None, sets=None):
    """``{table: {chain: Chain(base, rules)}}`` as ``nft list ruleset`` shows it (no counters, no handles),
    with the named sets of ``sets`` (``nft_reconcile.live_sets`` form) first in their table.

    ``rule_text(rule)`` gives a rule's text (default ``render_rule``); ``str`` shows rules already in
    text, as the planner writes them (thousands of rules in the time of a string join)."""
    rule_text = rule_text or render_rule
    out = []
    for table in table_order(state):
        chains = state[table]
        out.append("table %s %s {\n" % (FAMILY, table))
        blocks = [render_set(name, found) for name, found in sorted((sets or {}).get(table, {}).items())]
        for name in chain_order(table, chains):
            chain = chains[name]
            lines = ["\tchain %s {\n" % name]
            base = render_base(chain.base)
            if base is not None:
                lines.append("\t\t%s\n" % base)
            lines += ["\t\t%s\n" % rule_text(rule) for rule in chain.rules]
            lines.append("\t}\n")
            blocks.append("".join(lines))
        out.append("\n".join(blocks))
        out.append("}\n")
    return "".join(out)
