# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fwmark rules of an RTM_GETRULE dump, on hand-built netlink bytes (the kernel side: tests/integration)."""

from __future__ import annotations

import socket
import struct

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink
from ansible_collections.meshops.sidecar.plugins.module_utils._system.netlink import parse_fwmark_rules

# Attributes a 6.x kernel sends beside FRA_FWMARK and FRA_TABLE: they must be stepped over.
FRA_PRIORITY, FRA_SUPPRESS_PREFIXLEN, FRA_FWMASK, FRA_PROTOCOL = 6, 14, 16, 21
FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_BLACKHOLE, FR_ACT_PROHIBIT = 2, 3, 6, 8
RT_TABLE_COMPAT = 252  # the header's table when the id does not fit a u8


def attribute(kind, value):
    size = 4 + len(value)
    return struct.pack("=HH", size, kind) + value + b"\0" * ((-size) % 4)


def u32(kind, value):
    return attribute(kind, struct.pack("=I", value))


def message(kind, body, flags=2):
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 1, 0) + body


def rule(action=1, table=133, fwmark=None, fra_table="same", family=socket.AF_INET, mask=None):
    """An RTM_NEWRULE as the kernel fills it: fib_rule_hdr, then priority, table, fwmark, fwmask, protocol.

    ``table`` is the header's u8; ``fra_table`` the FRA_TABLE attribute ("same": ``table``; None: absent)."""
    body = struct.pack("=BBBBBBBBI", family, 0, 0, 0, table, 0, 0, action, 0)
    body += u32(FRA_PRIORITY, 32765)
    if fra_table is not None:
        body += u32(netlink.FRA_TABLE, table if fra_table == "same" else fra_table)
    body += u32(FRA_SUPPRESS_PREFIXLEN, 0xFFFFFFFF)
    if fwmark is not None:
        body += u32(netlink.FRA_FWMARK, fwmark) + u32(FRA_FWMASK, 0xFFFFFFFF if mask is None else mask)
    body += attribute(FRA_PROTOCOL, b"\0")
    return message(netlink.RTM_NEWRULE, body)


def done(errno=0):
    """NLMSG_DONE; with ``errno`` the dump callback's error, which a kernel since 4.x puts there as -errno."""
    return message(3, struct.pack("=i", -errno))


def error(errno):
    """NLMSG_ERROR carrying -errno and the request's header (0: an acknowledgement)."""
    return message(netlink.NLMSG_ERROR, struct.pack("=i", -errno) + b"\0" * 16, flags=0)


# The dump of a namespace with Istio's TPROXY rule: local, the rule, main, default (as 6.18 sends it).
ISTIO = (rule(table=255) + rule(table=133, fwmark=1337) + rule(table=254) + rule(table=253)) + done()


def test_istio_s_rule():
    assert parse_fwmark_rules(ISTIO) == [(1337, 133)]


@pytest.mark.parametrize("rules,found", [
    ([rule(table=133, fwmark=1337)], [(1337, 133)]),
    ([rule(table=200, fwmark=7, mask=0xFF)], [(7, 200)]),  # a masked mark is its mark
    ([rule(table=200, fwmark=0, mask=0xFF)], [(0, 200)]),  # mark 0 under a mask is still a fwmark rule
    ([rule(table=200, fwmark=7, fra_table=None)], [(7, 200)]),  # no FRA_TABLE: the header's table
    ([rule(table=RT_TABLE_COMPAT, fwmark=11, fra_table=70000)], [(11, 70000)]),  # FRA_TABLE wins
    ([rule(table=133, fwmark=1337, family=socket.AF_INET6)], [(1337, 133)]),
    ([rule(table=133), rule(table=134, fra_table=None)], []),  # lookups without a fwmark
    ([rule(action=action, table=0, fwmark=9) for action in (FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_BLACKHOLE, FR_ACT_PROHIBIT)]
     + [rule(action=FR_ACT_BLACKHOLE, table=133, fwmark=9)], []),  # not a table lookup, whatever the table
    ([rule(table=table, fwmark=10) for table in (253, 254, 255)], []),  # default, main, local
    ([rule(table=table, fwmark=10, fra_table=None) for table in (253, 254, 255)], []),
    ([rule(table=0, fwmark=10)], []),  # no table at all (an l3mdev rule): ip prints none
    ([rule(table=133, fwmark=1337), rule(table=133, fwmark=1337, mask=0xFF), rule(table=200, fwmark=7)],
     [(1337, 133), (1337, 133), (7, 200)]),  # in dump order, duplicates kept
    ([], []),
])
def test_fwmark_rules_of_a_dump(rules, found):
    assert parse_fwmark_rules(b"".join(rules) + done()) == found


def test_other_messages_and_what_follows_the_end_are_not_rules():
    route = message(24, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 133, 0, 0, 1, 0) + u32(netlink.FRA_FWMARK, 5))
    assert parse_fwmark_rules(route + rule(table=133, fwmark=1337) + done() + rule(table=200, fwmark=7)) == [(1337, 133)]


@pytest.mark.parametrize("data", [
    rule(table=133, fwmark=1337) + error(1),  # EPERM
    error(97),  # EAFNOSUPPORT as an NLMSG_ERROR
    done(97),  # EAFNOSUPPORT in NLMSG_DONE: how 6.18 answers a family without rules
    rule(table=133, fwmark=1337) + done(16),  # the dump stopped on EBUSY half way
])
def test_a_dump_that_ends_in_an_error_is_unknown(data):
    assert parse_fwmark_rules(data) is None


@pytest.mark.parametrize("data", [
    b"",
    ISTIO[:-20],  # no NLMSG_DONE: the rest of the dump was never read
    ISTIO[:-21],  # cut inside the NLMSG_DONE's header
    ISTIO[:-30],  # cut inside the last rule
    ISTIO[:len(rule(table=255)) + 30],  # cut inside Istio's rule
    rule(table=133, fwmark=1337) + error(0),  # an acknowledgement does not end a dump
    struct.pack("=IHHII", 8, 32, 2, 1, 0) + done(),  # a header that claims less than itself stops the walk
])
def test_a_dump_that_did_not_end_is_unknown(data):
    assert parse_fwmark_rules(data) is None


def test_damaged_messages_and_attributes_are_not_rules():
    short = message(netlink.RTM_NEWRULE, struct.pack("=BBBBBBBB", 2, 0, 0, 0, 133, 0, 0, 1))  # no flags
    short_mark = message(netlink.RTM_NEWRULE, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 133, 0, 0, 1, 0)
                         + attribute(netlink.FRA_FWMARK, b"\x39\x05"))  # a u32 in 2 bytes
    cut_mark = message(netlink.RTM_NEWRULE, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 133, 0, 0, 1, 0)
                       + struct.pack("=HH", 8, netlink.FRA_FWMARK))  # the message ends after the attribute's header
    short_table = message(netlink.RTM_NEWRULE, struct.pack("=BBBBBBBBI", 2, 0, 0, 0, 133, 0, 0, 1, 0)
                          + u32(netlink.FRA_FWMARK, 7) + attribute(netlink.FRA_TABLE, b"\xff"))  # the header's table
    assert parse_fwmark_rules(short + short_mark + cut_mark + short_table + done()) == [(7, 133)]


def test_the_request(monkeypatch):
    asked = []
    monkeypatch.setattr(netlink, "dump", lambda protocol, kind, header: asked.append((protocol, kind, header)) or ISTIO)
    assert netlink.fwmark_rules(socket.AF_INET6) == [(1337, 133)]
    assert asked == [(netlink.NETLINK_ROUTE, netlink.RTM_GETRULE, bytes([socket.AF_INET6]) + b"\0" * 11)]


def test_no_answer_is_unknown(monkeypatch):
    monkeypatch.setattr(netlink, "dump", lambda protocol, kind, header: done(97))
    assert netlink.fwmark_rules(socket.AF_INET6) is None
    monkeypatch.setattr(netlink, "dump", lambda protocol, kind, header: None)  # the socket failed
    assert netlink.fwmark_rules(socket.AF_INET) is None


def test_a_table_dump_that_ends_in_an_error_names_no_table():
    """The same end-of-dump error the rule dump reports (NLMSG_DONE with an errno) makes any dump unknown."""
    assert netlink.parse_table_names(done(97)) is None
    assert netlink.parse_table_names(done()) == []
