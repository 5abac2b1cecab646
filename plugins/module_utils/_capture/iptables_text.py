# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""iptables rule text: the canonical ``iptables-save`` form, parsing it, and rule ownership. No I/O.

The kernel does not keep the text a rule was written with: ``iptables-save`` prints
``-p tcp --dport 1`` as ``-p tcp -m tcp --dport 1``, addresses with their prefix, marks in hex.
State is therefore compared in that canonical form, which both backends print identically.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import socket
import struct
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import Record, address_text

# Options that take no value, and those that take two (the set match's name and direction, the
# TCP flags examined and those that must be set); every other option takes exactly one.
_FLAG_OPTIONS = frozenset(("--save-mark", "--restore-mark"))
_TWO_VALUE_OPTIONS = frozenset(("--match-set", "--tcp-flags"))
# Options of the implicit match that ``-p tcp|udp`` loads.
_PROTOCOL_OPTIONS = frozenset(("--sport", "--dport", "--source-port", "--destination-port"))
_FIELDS = {"-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d", "-i": "-i", "--in-interface": "-i",
           "-o": "-o", "--out-interface": "-o", "-p": "-p", "--protocol": "-p"}
# iptables-save prints the address, interface and protocol fields in this order.
_FIELD_ORDER = ("-s", "-d", "-i", "-o", "-p")
_COUNTERS = re.compile(r"^\[\d+:\d+\]\s+")
# Text shlex.split() splits exactly as str.split(): no quotes, no backslashes, and only the
# whitespace shlex knows (written so that a failed match cannot backtrack badly). Rule text
# mostly is; shlex costs ~0.1 ms per rule.
_PLAIN_WORDS = re.compile(r"[ \t\r\n]*[^'\"\\\s]*(?:[ \t\r\n]+[^'\"\\\s]+)*[ \t\r\n]*")
# An IPv4 host address in canonical notation ("198.18.0.1/32"): its own canonical form.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_HOST = re.compile(r"(?:%s\.){3}%s/32" % (_OCTET, _OCTET))
_IPV4_CIDR = re.compile(r"((?:%s\.){3}%s)/(3[0-2]|[12]?[0-9])" % (_OCTET, _OCTET))
_CT_STATES = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")


class Option(Record):
    """One option of a match or target: its name, values and whether it is negated."""

    __slots__ = ("name", "values", "negated")

    def __init__(self, name, values=None, negated=False):
        self.name = name
        self.values = [] if values is None else values
        self.negated = negated

    def tokens(self):
        return (["!"] if self.negated else []) + [self.name] + self.values


class ParsedRule(Record):
    """A rule split into its parts: fields (``-s``, ``-p`` ...), matches (``-m``) and target (``-j``)."""

    __slots__ = ("fields", "matches", "target", "target_options")

    def __init__(self):
        self.fields = {}  # flag -> (negated, value)
        self.matches = []  # [(match name, [Option])]
        self.target = ""
        self.target_options = []  # [Option]


def parse_rule(args):
    """Parse rule arguments (Istio's input form or iptables-save's form) into a ``ParsedRule``."""
    if isinstance(args, str):
        tokens = args.split() if _PLAIN_WORDS.fullmatch(args) else shlex.split(args)
    else:
        tokens = list(args)
    rule = ParsedRule()
    current = None  # options of the match or target being read
    negate = False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "!":
            negate = True
            i += 1
            continue
        if token in _FIELDS:
            rule.fields[_FIELDS[token]] = (negate, tokens[i + 1])
            i += 2
        elif token in ("-m", "--match"):
            current = []
            rule.matches.append((tokens[i + 1], current))
            i += 2
        elif token in ("-j", "--jump"):
            rule.target = tokens[i + 1]
            current = rule.target_options
            i += 2
        elif token.startswith("--"):
            if token in _PROTOCOL_OPTIONS and not rule.target and not _match_takes(rule, current, token):
                current = _implicit_protocol_match(rule, token)
            if current is None:
                raise ValueError("option %s before any -m or -j in %r" % (token, " ".join(tokens)))
            count = 0 if token in _FLAG_OPTIONS else 2 if token in _TWO_VALUE_OPTIONS else 1
            values = tokens[i + 1:i + 1 + count]
            current.append(Option(token, values, negate))
            i += 1 + len(values)
        else:
            raise ValueError("unexpected %r in rule %r" % (token, " ".join(tokens)))
        negate = False
    return rule


def _match_takes(rule, current, option):
    """True when the match being read is the protocol match that owns ``option``."""
    return bool(rule.matches) and current is rule.matches[-1][1] and rule.matches[-1][0] in ("tcp", "udp")


def _implicit_protocol_match(rule, option):
    negated, proto = rule.fields.get("-p", (False, ""))
    if proto not in ("tcp", "udp") or negated:
        raise ValueError("%s needs -p tcp or -p udp" % option)
    for name, options in rule.matches:
        if name == proto:
            return options
    options = []
    rule.matches.append((proto, options))
    return options


def _address(value, family):
    if family == "ipv4":
        if _IPV4_HOST.fullmatch(value):
            return value  # what ipaddress gives, without its ~30 us (thousands of /32 exclusions)
        match = _IPV4_CIDR.fullmatch(value)
        if match:  # a network address in dotted quads, no host bits set: already canonical
            length = int(match.group(2))
            packed = struct.unpack("!I", socket.inet_aton(match.group(1)))[0]
            if not packed & ((1 << (32 - length)) - 1):
                return value
    network = ipaddress.ip_network(value, strict=False)
    if (network.version == 4) != (family == "ipv4"):
        raise ValueError("address %s is not %s" % (value, family))
    return "%s/%d" % (address_text(network.network_address), network.prefixlen)


def _hex_mark(value):
    """``1337`` or ``1337/0xffffffff`` as iptables-save prints marks."""
    parts = [int(part, 0) for part in value.split("/")]
    return "/".join("0x%x" % part for part in parts)


def _canonical_match(name, options):
    by_name = {o.name: o for o in options}
    if name in ("tcp", "udp"):
        ordered = [by_name[o] for o in ("--sport", "--dport", "--tcp-flags") if o in by_name]
        return [Option(o.name, o.values, o.negated) for o in ordered]
    if name in ("mark", "connmark"):
        return [Option(o.name, [_hex_mark(o.values[0])], o.negated) for o in options]
    if name == "conntrack":
        return [Option(o.name, [",".join(s for s in _CT_STATES if s in o.values[0].split(","))], o.negated)
                for o in options]
    return options


def _canonical_target(target, options, family):
    by_name = {o.name: o for o in options}
    if target == "REDIRECT":
        port = (by_name.get("--to-ports") or by_name.get("--to-port")).values
        return [Option("--to-ports", port)]
    if target == "MARK" and "--set-mark" in by_name:
        mark = by_name["--set-mark"].values[0]
        return [Option("--set-xmark", [_hex_mark(mark if "/" in mark else mark + "/0xffffffff")])]
    if target == "TPROXY":
        on_ip = by_name.get("--on-ip", Option("--on-ip", ["0.0.0.0" if family == "ipv4" else "::"]))
        mark = by_name["--tproxy-mark"].values[0]
        return [by_name["--on-port"], on_ip,
                Option("--tproxy-mark", [_hex_mark(mark if "/" in mark else mark + "/0xffffffff")])]
    if target == "CONNMARK" and ("--save-mark" in by_name or "--restore-mark" in by_name):
        action = by_name.get("--save-mark") or by_name.get("--restore-mark")
        return [Option(action.name), by_name.get("--nfmask", Option("--nfmask", ["0xffffffff"])),
                by_name.get("--ctmask", Option("--ctmask", ["0xffffffff"]))]
    return options


def canonical_args(args, family):
    """The argument text ``iptables-save`` prints for a rule written as ``args``."""
    rule = parse_rule(args)
    out = []
    for flag in _FIELD_ORDER:
        if flag in rule.fields:
            negated, value = rule.fields[flag]
            if flag in ("-s", "-d"):
                value = _address(value, family)
                if value.endswith("/0") and not negated:
                    continue  # matches every address: iptables-save prints nothing for it
            out += (["!"] if negated else []) + [flag, value]
    for name, options in rule.matches:
        out += ["-m", name]
        for option in _canonical_match(name, options):
            out += option.tokens()
    if rule.target:
        out += ["-j", rule.target]
        for option in _canonical_target(rule.target, rule.target_options, family):
            out += option.tokens()
    return " ".join(out)


class TableDump(Record):
    """One table of ``iptables-save`` output: chains in printed order, and each chain's rules."""

    __slots__ = ("chains", "policies")

    def __init__(self, chains=None, policies=None):
        self.chains = {} if chains is None else chains  # chain -> [args text]
        self.policies = {} if policies is None else policies  # chain -> policy ('-' for user chains)


def parse_save(text):
    """Parse ``iptables-save`` output into ``{table: TableDump}``; comments and counters are dropped."""
    tables = {}
    dump = None
    for raw in text.splitlines():
        line = _COUNTERS.sub("", raw.strip())  # iptables-save -c prefixes rules with [packets:bytes]
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            dump = tables.setdefault(line[1:].strip(), TableDump())
        elif line == "COMMIT":
            dump = None
        elif line.startswith(":") and dump is not None:
            name, policy = line[1:].split()[:2]
            dump.policies[name] = policy
            dump.chains.setdefault(name, [])
        elif line.startswith("-A ") and dump is not None:
            chain, rest = (line[3:] + " ").split(" ", 1)
            dump.chains.setdefault(chain, []).append(rest.strip())
        else:
            raise ValueError("cannot parse iptables-save line %r" % raw)
    return tables


def is_owned_chain(chain):
    return chain.startswith("ISTIO_")


# Rules in built-in chains that only Istio's capture writes, whatever options were used: its
# constant outbound mark 1338 (0x53a) on proxy traffic to the workload, and the DNS conntrack
# zone of Istio before 1.25. Written in iptables-save's canonical form. Other rules Istio puts in
# built-in chains (interface RETURNs, TPROXY's connmark rules) are rules anyone may write: those
# are ours only when _capture.ownership records them.
_OWNED_BUILTIN_SHAPES = {
    ("mangle", "OUTPUT"): [
        r"! -d \S+ -o lo -p tcp -m owner --(uid|gid)-owner \d+ -j MARK --set-xmark 0x53a/0xffffffff",
    ],
    ("raw", "PREROUTING"): [r"(-s \S+ )?-p udp -m udp --sport 53 -j CT --zone 1"],
}
_OWNED_BUILTIN_RE = {key: re.compile("^(?:%s)$" % "|".join(shapes)) for key, shapes in _OWNED_BUILTIN_SHAPES.items()}
_JUMP_RE = re.compile(r"(^|\s)-(j|g) ISTIO_\S+(\s|$)")


def is_owned_rule(table, chain, args, claimed=frozenset()):
    """True for a rule this collection manages: in an ``ISTIO_*`` chain, a jump into one, an Istio-only shape,
    or one of the ``(table, chain, args)`` in ``claimed`` (see ``_capture.ownership``)."""
    if is_owned_chain(chain) or _JUMP_RE.search(args) or (table, chain, args) in claimed:
        return True
    shape = _OWNED_BUILTIN_RE.get((table, chain))
    return bool(shape and shape.match(args))
