# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The performance shortcuts of _xtables give exactly what the general code gives."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._xtables import _address_tokens


def reference(flag, value):
    """_render_rule's address handling before the shortcuts: always through ipaddress."""
    negated = value.startswith("!")
    network = ipaddress.ip_network(value.lstrip("!"), strict=False)
    if network.prefixlen or negated:
        return (["!"] if negated else []) + [flag, "%s/%d" % (network.network_address.compressed, network.prefixlen)]
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
