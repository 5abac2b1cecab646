# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The nftables generation id from a netlink NFT_MSG_NEWGEN reply (the kernel side is in the integration tests)."""

from __future__ import annotations

import struct

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.nftables import parse_generation

NEWGEN = (10 << 8) | 15


def reply(kind=NEWGEN, attributes=((1, struct.pack("!I", 1234)),), length=None):
    body = struct.pack("!BBH", 0, 0, 0)  # nfgenmsg
    for attribute, value in attributes:
        size = 4 + len(value)
        body += struct.pack("=HH", size, attribute) + value + b"\0" * ((-size) % 4)
    return struct.pack("=IHHII", length or 16 + len(body), kind, 0, 1, 0) + body


def test_the_generation_id_is_read_from_its_attribute():
    assert parse_generation(reply()) == 1234


def test_other_attributes_first_are_skipped():
    # NFTA_GEN_PROC_PID (2) and NFTA_GEN_PROC_NAME (3) may come first; a nested-flag bit on the type is ignored.
    attributes = ((2, struct.pack("!I", 99)), (3, b"nft\0"), (1 | 0x8000, struct.pack("!I", 7)))
    assert parse_generation(reply(attributes=attributes)) == 7


@pytest.mark.parametrize("data", [
    b"",
    b"\0" * 19,
    reply(kind=2),  # NLMSG_ERROR
    reply(attributes=()),
    reply(attributes=((1, b"\0\0"),)),  # too short for a u32
    reply(attributes=((2, struct.pack("!I", 1)),)),
    reply(length=12),  # a header that says the message ends before its payload
])
def test_anything_else_is_no_generation(data):
    assert parse_generation(data) is None


def test_a_zero_sized_attribute_ends_the_walk():
    data = reply(attributes=()) + struct.pack("=HH", 0, 1)
    data = struct.pack("=I", len(data)) + data[4:]
    assert parse_generation(data) is None


NEWTABLE = (10 << 8) | 0


def table_message(name, family=1):
    value = name.encode() + b"\0"
    size = 4 + len(value)
    body = struct.pack("!BBH", family, 0, 0) + struct.pack("=HH", size, 1) + value + b"\0" * ((-size) % 4)
    body += struct.pack("=HH", 8, 2) + struct.pack("!I", 0)  # NFTA_TABLE_FLAGS
    return struct.pack("=IHHII", 16 + len(body), NEWTABLE, 2, 1, 0) + body


def done_message(error=0):
    """NLMSG_DONE, or with an errno ``error`` an NLMSG_ERROR answer carrying -error."""
    if not error:
        return struct.pack("=IHHII", 20, 3, 2, 1, 0) + struct.pack("=i", 0)
    return struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", -error) + b"\0" * 16


def test_table_names_of_a_dump():
    from ansible_collections.meshops.sidecar.plugins.module_utils._system.netlink import parse_table_names

    data = table_message("istio-proxy-nat") + table_message("userfilter") + done_message()
    assert parse_table_names(data) == ["istio-proxy-nat", "userfilter"]
    assert parse_table_names(done_message()) == []
    assert parse_table_names(table_message("istio-proxy-nat") + done_message(error=1)) is None
