# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The performance shortcuts of the legacy backend give exactly what the general code gives."""

from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import socket
import struct

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import address_text

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy_child
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_rule
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_legacy_child import _address_tokens


def reference(flag, value):
    """_render_rule's address handling before the shortcuts: always through ipaddress."""
    negated = value.startswith("!")
    network = ipaddress.ip_network(value.lstrip("!"), strict=False)
    if network.prefixlen or negated:
        return (["!"] if negated else []) + [flag, "%s/%d" % (address_text(network.network_address), network.prefixlen)]
    return []


def ipv4_text(address, prefix):
    """What python-iptables' Rule.get_src/get_dst print: inet_ntop of the address and of the netmask."""
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return "%s/%s" % (socket.inet_ntop(socket.AF_INET, struct.pack("!I", address)),
                      socket.inet_ntop(socket.AF_INET, struct.pack("!I", mask)))


IPV4_ADDRESSES = (0, 1, 0x7F000001, 0x7F000006, 0xC6120000, 0xC6120001, 0xC613FFFF, 0x0A000000, 0xFFFFFFFF,
                  0xC0A80101, 0x01020304, 0x64400001)


@pytest.mark.parametrize("flag", ["-s", "-d"])
@pytest.mark.parametrize("negated", [False, True])
@pytest.mark.parametrize("prefix", [0, 1, 8, 15, 16, 24, 31, 32])
def test_ipv4_like_ipaddress(flag, negated, prefix):
    for address in IPV4_ADDRESSES:
        value = ("!" if negated else "") + ipv4_text(address, prefix)
        assert _address_tokens(flag, value) == reference(flag, value), value


@pytest.mark.parametrize("value", [
    "::/0", "!::/0", "::1/128", "2001:db8::/32", "2001:db8::7/64", "!2001:db8::/48", "::6/128", "fd00::/8",
    "::ffff:1.2.3.4/128", "::ffff:198.18.0.1/128", "2001:db8:0:0:0:0:0:1/128", "0.0.0.0/0.0.0.0",
    "!0.0.0.0/0.0.0.0", "198.18.0.1/255.255.255.255", "!198.18.0.1/255.255.255.255", "1.2.3.4/0.0.0.0",
    "127.0.0.1/255.0.0.0",
])
def test_edge_texts_like_ipaddress(value):
    assert _address_tokens("-d", value) == reference("-d", value)


def test_shortcuts_are_taken():
    assert _address_tokens("-s", "0.0.0.0/0.0.0.0") == []
    assert _address_tokens("-s", "::/0") == []
    assert _address_tokens("-d", "198.18.3.4/255.255.255.255") == ["-d", "198.18.3.4/32"]


# _RuleBuilder: entry buffers of address-only rules written into a template, against python-iptables.
# Only standard targets and no matches here: a jump to a chain or an extension target makes
# python-iptables open the tables of the namespace it runs in, a match asks the kernel for its
# revision. tests/bench/check_fast_paths.py covers those, in a namespace of its own.

needs_iptc = pytest.mark.skipif(importlib.util.find_spec("iptc") is None, reason="python-iptables is not installed")


def build_both_ways(family, rules):
    """In a python-iptables child: per rule, [builder's entry, a new Rule's final_check() + rule, Rule built?]."""
    builder = iptables_legacy_child._RuleBuilder(family)
    new_rule = iptables_legacy_child._build_rule
    built = []

    def counted(args, family):
        built.append(args)
        return new_rule(args, family)

    iptables_legacy_child._build_rule = counted  # in the forked child only
    out = []
    for args in rules:
        del built[:]
        entry = builder.entry(args)
        ctypes.cast(entry, ctypes.c_void_p)  # what Table.append_entry / insert_entry do with it
        rule = new_rule(args, family)
        rule.final_check()
        out.append([bytes(entry).hex(), bytes(rule.rule).hex(), bool(built)])
    return out


# (rule, whether the builder builds a python-iptables Rule for it: first of its shape, or not templated)
IPV4_RULES = [
    ("-d 198.18.0.1/32 -j RETURN", True),
    ("-d 198.18.0.2/32 -j RETURN", False),
    ("-d 198.18.0.0/15 -j RETURN", False),
    ("! -d 198.18.0.0/15 -j RETURN", False),
    ("! -d 0.0.0.0/0 -j RETURN", False),
    ("-d 0.0.0.0/0 -j RETURN", False),
    ("-d 198.18.0.3/32 -j RETURN", False),
    ("! -s 127.0.0.6/32 -j ACCEPT", True),
    ("-s 127.0.0.6/32 -j ACCEPT", False),
    ("-s 10.0.0.0/8 -j ACCEPT", False),
    ("! -s 0.0.0.0/0 -j ACCEPT", False),
    ("-s 127.0.0.6/32 -d 198.18.0.0/24 -j RETURN", True),
    ("! -s 10.0.0.0/8 ! -d 198.18.0.9/32 -j RETURN", False),
    ("-s 0.0.0.0/0 ! -d 0.0.0.0/0 -j RETURN", False),
    ("! -s 192.168.0.0/16 -d 198.18.0.1/32 -j RETURN", False),
    ("-o lo -d 127.0.0.1/32 -j RETURN", True),
    ("-o lo ! -d 10.0.0.0/8 -j RETURN", False),
    ("! -o lo ! -d 127.0.0.1/32 -j RETURN", True),
    ("-p tcp -d 198.18.0.1/32 -j DROP", True),
    ("-p tcp ! -d 198.18.0.2/31 -j DROP", False),
    ("-d 198.18.0.10/32", True),  # no target: falls through
    ("-d 198.18.0.11/32", False),
    # Texts the canonical form does not produce, but python-iptables takes.
    ("-d 198.18.0.4 -j RETURN", False),  # a host
    ("-d 10.1.2.3/8 -j RETURN", False),  # host bits: python-iptables clears them
    ("-d 198.18.0.5/032 -j RETURN", False),
    ("--destination 198.18.0.6/32 -j RETURN", False),  # through parse_rule
    ("-d  198.18.0.7/32  -j RETURN", False),
    (["-d", "198.18.0.8/32", "-j", "RETURN"], False),
    ("-d 10.0.0.0/255.0.0.0 -j RETURN", True),  # a netmask: left to python-iptables
]
IPV6_RULES = [
    ("-d 2001:db8::1/128 -j RETURN", True),
    ("-d 2001:db8::2/128 -j RETURN", False),
    ("-d 2001:db8::/32 -j RETURN", False),
    ("! -d 2001:db8::/32 -j RETURN", False),
    ("! -d ::/0 -j RETURN", False),
    ("-d ::/0 -j RETURN", False),
    ("-d ::ffff:198.18.0.1/128 -j RETURN", False),
    ("! -s ::6/128 -j ACCEPT", True),
    ("-s ::6/128 -j ACCEPT", False),
    ("-s fd00::/8 -j ACCEPT", False),
    ("! -s ::/0 -j ACCEPT", False),
    ("-s ::6/128 -d 2001:db8::/64 -j RETURN", True),
    ("! -s fd00::/8 ! -d 2001:db8::9/128 -j RETURN", False),
    ("-s ::/0 ! -d ::/0 -j RETURN", False),
    ("-o lo -d ::1/128 -j RETURN", True),  # the template keeps the repaired interface mask
    ("-o lo ! -d 2001:db8::/48 -j RETURN", False),
    ("-i eth+ -d ::1/128 -j ACCEPT", True),
    ("-i eth+ -d ::3/128 -j ACCEPT", False),
    ("! -o lo ! -d ::1/128 -j RETURN", True),
    ("-p tcp -d ::1/128 -j DROP", True),
    ("-p tcp ! -d 2001:db8::/127 -j DROP", False),
    ("-d 2001:db8::a/128", True),
    ("-d 2001:db8::b/128", False),
    ("-d 2001:db8::4 -j RETURN", False),
    ("-d 2001:db8::7/64 -j RETURN", False),  # host bits: python-iptables keeps them for IPv6
    ("-d 2001:db8::5/0128 -j RETURN", False),
    ("--destination 2001:db8::6/128 -j RETURN", False),
    ("-d  2001:db8::8/128  -j RETURN", False),
    (["-d", "2001:db8::9/128", "-j", "RETURN"], False),
    ("-d 2001:db8::/ffff:ffff:: -j RETURN", True),
]


@needs_iptc
@pytest.mark.parametrize("family, rules", [("ipv4", IPV4_RULES), ("ipv6", IPV6_RULES)])
def test_templated_entries_equal_new_rules(family, rules):
    results = iptables_legacy._in_child(build_both_ways, family, [args for args, dummy in rules])
    for (args, expect_built), (fast, full, built) in zip(rules, results):
        assert fast == full, args
        assert built == expect_built, args


def entry_errors(family, rules):
    """In a python-iptables child: the exception the builder raises for each rule, after a template exists."""
    builder = iptables_legacy_child._RuleBuilder(family)
    builder.entry(rules[0])
    errors = []
    for args in rules[1:]:
        try:
            builder.entry(args)
            errors.append(None)
        except Exception as exc:  # pylint: disable=broad-except  # compared by type
            errors.append(type(exc).__name__)
    return errors


@needs_iptc
@pytest.mark.parametrize("family, rules", [
    ("ipv4", ["-d 198.18.0.1/32 -j RETURN", "-d 198.18.0.1/33 -j RETURN", "-d 198.18.0.256/32 -j RETURN",
              "-d 2001:db8::1/128 -j RETURN", "-d !198.18.0.1/32 -j RETURN"]),
    ("ipv6", ["-d 2001:db8::1/128 -j RETURN", "-d 2001:db8::1/129 -j RETURN", "-d 2001:db8::g/128 -j RETURN",
              "-d 198.18.0.1/32 -j RETURN", "-d !2001:db8::1/128 -j RETURN"]),
])
def test_addresses_python_iptables_refuses_are_refused(family, rules):
    """The builder gives them to python-iptables, which raises ValueError; ``-d !ADDR`` it takes as negated."""
    assert iptables_legacy._in_child(entry_errors, family, rules) == ["ValueError", "ValueError", "ValueError", None]


@pytest.mark.parametrize("args", [
    "-d 198.18.0.1/32 -j RETURN", "! -d 198.18.0.0/15 -j RETURN", "-s 127.0.0.6/32 -j RETURN",
    "! -s 10.0.0.0/8 ! -d 2001:db8::/32 -j ISTIO_REDIRECT", "-d 198.18.0.1/32 -s 10.0.0.0/8 -j RETURN",
    "-d ::/0", "-j RETURN", "-d 198.18.0.1/32 -d 198.18.0.2/32 -j RETURN", "! ! -d 198.18.0.1/32 -j RETURN",
    "! -j RETURN", "-d 198.18.0.1/32 ! -j RETURN", "-d 198.18.0.1/32 -j RETURN !", "-o lo -d 127.0.0.1/32 -j RETURN",
    "-d 198.18.0.1/32 -j MARK --set-xmark 0x1/0xffffffff", "-d -j -j RETURN", "--destination 198.18.0.1/32 -j RETURN",
    "-d  198.18.0.1/32 -j RETURN", " -d 198.18.0.1/32 -j RETURN", "-d 198.18.0.1/32\t-j RETURN",
    "-d 198.18.0.1/32 -j 'RETURN'", "-d 198.18.0.1/32 -j RET\\URN", "-d\x0b198.18.0.1/32 -j RETURN",
    ["-d", "198.18.0.1/32", "-j", "RETURN"],
])
def test_plain_address_rules_read_as_parse_rule_reads_them(args):
    """The quick reading of ``[!] -s A [!] -d B -j T`` gives what parse_rule gives, or leaves the text to it."""
    quick = iptables_legacy_child._plain_address_rule(args)
    if quick is not None:
        assert quick == iptables_legacy_child._address_only_shape(parse_rule(args))


def test_quick_reading_is_taken_for_exclusions():
    for args in ("-d 198.18.0.1/32 -j RETURN", "! -d 2001:db8::/32 -j RETURN", "-s ::6/128 ! -d ::1/128 -j RETURN"):
        assert iptables_legacy_child._plain_address_rule(args) is not None, args
