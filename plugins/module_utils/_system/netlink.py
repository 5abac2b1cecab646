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
    """An NLMSG_ERROR that carries an error (an NLMSG_ERROR with 0 is an acknowledgement)."""
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
