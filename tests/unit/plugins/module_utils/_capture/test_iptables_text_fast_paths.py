# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The performance shortcuts of _capture.iptables_text give exactly what the general code gives."""

from __future__ import annotations

import ipaddress
import random
import shlex

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import address_text

from ansible_collections.meshops.sidecar.plugins.module_utils._capture import iptables_text
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import (
    _address,
    canonical_args,
    parse_rule,
)


def reference_address(value, family):
    """_address before the shortcut: always through ipaddress, written as inet_ntop (iptables-save) prints it."""
    network = ipaddress.ip_network(value, strict=False)
    if (network.version == 4) != (family == "ipv4"):
        raise ValueError("address %s is not %s" % (value, family))
    return "%s/%d" % (address_text(network.network_address), network.prefixlen)


@pytest.mark.parametrize("value", [
    "198.18.0.1/32", "0.0.0.0/32", "255.255.255.255/32", "127.0.0.6/32", "10.0.0.1/32", "1.2.3.4/32",
    "199.99.249.250/32", "100.64.0.1/32",
])
def test_ipv4_hosts_are_their_own_canonical_form(value):
    assert _address(value, "ipv4") == reference_address(value, "ipv4") == value


@pytest.mark.parametrize("value", [
    # Not taken by the shortcut: leading zeros, other prefixes, host bits, IPv6, non-ASCII digits.
    "198.18.0.1/24", "198.18.0.0/15", "198.018.0.1/32", "198.18.0.1/032", "0.0.0.0/0", "127.0.0.1/8",
    "2001:db8::1/128", "::ffff:1.2.3.4/128", "198.18.0.\u0661/32", "256.1.1.1/32", "1.2.3/32",
])
def test_other_addresses_as_before(value):
    for family in ("ipv4", "ipv6"):
        try:
            expected = reference_address(value, family)
        except ValueError as exc:
            with pytest.raises(ValueError) as raised:
                _address(value, family)
            assert type(raised.value) is type(exc)
        else:
            assert _address(value, family) == expected


def test_random_ipv4_hosts():
    rand = random.Random(7)
    for dummy in range(2000):
        value = "%d.%d.%d.%d/32" % tuple(rand.randrange(256) for octet in range(4))
        assert _address(value, "ipv4") == reference_address(value, "ipv4")
        assert _address(value, "ipv4") == value


@pytest.mark.parametrize("text", [
    "", " ", "-d 198.18.0.1/32 -j RETURN", "  -p tcp   -m tcp --dport 15008 -j RETURN  ",
    "-p\ttcp\r\n-j ACCEPT", "-m comment --comment \"ssh in\" -j ACCEPT", "-m comment --comment 'a b' -j ACCEPT",
    "-m comment --comment a\\ b -j ACCEPT", "-m comment --comment \u00e9t\u00e9 -j ACCEPT",
    "-j LOG --log-prefix \"x \"", "a\u00a0b", "a\x0bb", "a\x0cb", "a\u2003b", "x" + " " * 60 + "'",
    " " * 60 + "\"", "a" + "\t " * 40 + "\\",
])
def test_words_split_as_shlex_does(text):
    try:
        expected = shlex.split(text)
    except ValueError:
        with pytest.raises(ValueError):
            _split(text)
        return
    assert _split(text) == expected


def _split(text):
    """parse_rule's tokenising: the shortcut when it applies, shlex otherwise."""
    return text.split() if iptables_text._PLAIN_WORDS.fullmatch(text) else shlex.split(text)


def test_random_words_split_as_shlex_does():
    rand = random.Random(11)
    alphabet = "ab -/.:!'\"\\\t\r\n\x0b\u00a0"
    for dummy in range(3000):
        text = "".join(rand.choice(alphabet) for position in range(rand.randrange(12)))
        try:
            expected = shlex.split(text)
        except ValueError:
            continue
        assert _split(text) == expected, repr(text)


@pytest.mark.parametrize("args", [
    "-d 198.18.0.1/32 -j RETURN", "! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 "
    "-j ISTIO_IN_REDIRECT", "-p udp --dport 53 -d 198.18.0.53/32 -j REDIRECT --to-port 15053",
    "-m comment --comment \"ssh in\" -j ACCEPT",
])
def test_parse_rule_same_for_text_and_tokens(args):
    assert parse_rule(args) == parse_rule(shlex.split(args))
    assert canonical_args(args, "ipv4") == canonical_args(shlex.split(args), "ipv4")


def test_random_ipv4_networks_with_and_without_host_bits():
    """The network shortcut (dotted quads, no host bits) agrees with ipaddress for every prefix length."""
    rand = random.Random(11)
    for dummy in range(5000):
        address = ipaddress.IPv4Address(rand.getrandbits(32))
        length = rand.randrange(0, 33)
        network = ipaddress.ip_network("%s/%d" % (address, length), strict=False)
        for value in ("%s/%d" % (address, length), "%s/%d" % (network.network_address, length)):
            assert _address(value, "ipv4") == reference_address(value, "ipv4")
