# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Netlink dumps of the current network namespace: what a run would otherwise start a process to ask.

One request on a netlink socket costs well under a millisecond where ``nft list tables`` or
``ip rule show`` cost a process each. Every caller has a fallback: a function here returns None
when the kernel does not answer as expected, and the caller then asks the tool.
"""

from __future__ import annotations

import socket
import struct

NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12
_NLMSG_HEADER = 16
_NLM_F_REQUEST = 1
_NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
_NLMSG_DONE = 3
# nf_tables over nfnetlink: NFT_MSG_GETTABLE, answered by NFT_MSG_NEWTABLE messages.
_NFT_GETTABLE = (10 << 8) | 1
_NFT_NEWTABLE = (10 << 8) | 0
_NFTA_TABLE_NAME = 1
NFPROTO_INET = 1
NFPROTO_IPV4 = 2
NFPROTO_IPV6 = 10
# Policy routing rules over rtnetlink: RTM_GETRULE with a struct fib_rule_hdr, answered by RTM_NEWRULE.
RTM_NEWRULE = 32
RTM_GETRULE = 34
_FIB_RULE_HEADER = 12  # family, dst_len, src_len, tos, table, res1, res2, action (u8 each); flags (u32)
FRA_FWMARK = 10
FRA_TABLE = 15
FR_ACT_TO_TBL = 1
# ``ip`` prints these by name (and no table for 0, as in an l3mdev rule): never a number to look up.
_UNNUMBERED_TABLES = frozenset((0, 253, 254, 255))  # unspec, default, main, local


def request(protocol, kind, header, is_dump=False):
    """The reply to one request (``kind`` with the family ``header``), every part of it for a dump;
    None when the socket fails."""
    flags = _NLM_F_REQUEST | (_NLM_F_DUMP if is_dump else 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol) as sock:
            sock.bind((0, 0))
            sock.send(struct.pack("=IHHII", _NLMSG_HEADER + len(header), kind, flags, 1, 0) + header)
            replies = []
            while True:
                data = sock.recv(65536)
                replies.append(data)
                if not is_dump or not data or _dump_done(data):
                    break
    except OSError:
        return None
    return b"".join(replies)


def dump(protocol, kind, header):
    """The replies to one dump request, or None when the socket fails."""
    return request(protocol, kind, header, is_dump=True)


def messages(data):
    """``(type, payload)`` of each netlink message in ``data``."""
    offset = 0
    while offset + _NLMSG_HEADER <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < _NLMSG_HEADER:
            return
        yield kind, data[offset + _NLMSG_HEADER:offset + length]
        offset += (length + 3) & ~3


def attributes(payload, offset):
    """``(type, value)`` of each attribute of ``payload`` from ``offset`` (after the family header)."""
    while offset + 4 <= len(payload):
        size, kind = struct.unpack_from("=HH", payload, offset)
        if size < 4:
            return
        yield kind & 0x3FFF, payload[offset + 4:offset + size]
        offset += (size + 3) & ~3


def is_error(kind, payload):
    """An NLMSG_ERROR that carries an error (one with 0 is an acknowledgement), or an NLMSG_DONE that
    carries one: a dump callback's error comes back in NLMSG_DONE."""
    if kind == _NLMSG_DONE:
        return len(payload) >= 4 and struct.unpack_from("=i", payload)[0] < 0
    return kind == NLMSG_ERROR and len(payload) >= 4 and struct.unpack_from("=i", payload)[0] != 0


def _dump_done(data):
    return any(kind in (_NLMSG_DONE, NLMSG_ERROR) for kind, dummy in messages(data))


def parse_table_names(data):
    """Table names of the NFT_MSG_NEWTABLE messages of a dump; None when the dump ended in an error."""
    names = []
    for kind, payload in messages(data):
        if is_error(kind, payload):
            return None
        if kind != _NFT_NEWTABLE:
            continue
        for attribute, value in attributes(payload, 4):  # after nfgenmsg
            if attribute == _NFTA_TABLE_NAME:
                names.append(value.split(b"\0", 1)[0].decode("utf-8", "replace"))
    return names


def nft_table_names(nfproto):
    """Names of the current namespace's nftables tables of one family (``NFPROTO_*``); None when unknown.

    ``nft list tables`` (1.0.6) loads every rule of every table first: with thousands of
    iptables-nft rules and another writer committing, that took seconds."""
    data = dump(NETLINK_NETFILTER, _NFT_GETTABLE, struct.pack("!BBH", nfproto, 0, 0))
    return None if data is None else parse_table_names(data)


def parse_fwmark_rules(data):
    """``(fwmark, table)`` of each rule of an RTM_GETRULE dump that looks a numbered table up for a fwmark.

    None when the dump ended in an error or did not end at all: a short read must not pass for
    "no Istio rule", which would add a second one."""
    rules = []
    for kind, payload in messages(data):
        if is_error(kind, payload):
            return None
        if kind == _NLMSG_DONE:
            return rules
        if kind != RTM_NEWRULE or len(payload) < _FIB_RULE_HEADER or payload[7] != FR_ACT_TO_TBL:
            continue
        found = {}
        for attribute, value in attributes(payload, _FIB_RULE_HEADER):
            if attribute in (FRA_FWMARK, FRA_TABLE) and len(value) >= 4:
                found[attribute] = struct.unpack_from("=I", value)[0]
        table = found.get(FRA_TABLE, payload[4])  # the header's u8 table, for a kernel without FRA_TABLE
        if FRA_FWMARK in found and table not in _UNNUMBERED_TABLES:
            rules.append((found[FRA_FWMARK], table))
    return None


def fwmark_rules(family):
    """``(fwmark, table)`` of the current namespace's fwmark rules of one family (``socket.AF_INET`` or
    ``AF_INET6``); None when unknown.

    Istio's TPROXY route is one such rule: a dump finds it without the ``ip rule show`` process."""
    data = dump(NETLINK_ROUTE, RTM_GETRULE, struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0, 0, 0, 0, 0))
    return None if data is None else parse_fwmark_rules(data)
