# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""TPROXY policy routes, the ::6 address, and the SSH guard's port logic."""

from __future__ import annotations

import json

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.ssh_guard import captures_inbound_port
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.routes import (
    PolicyRoute,
    desired_policy_routes,
    has_passthrough_v6,
    parse_policy_routes,
)

RULES = json.dumps([
    {"priority": 0, "src": "all", "table": "local"},
    {"priority": 32764, "src": "all", "fwmark": "0x539", "table": "133"},
    {"priority": 32765, "src": "all", "fwmark": "0x7/0xff", "table": "200"},  # someone else's
    {"priority": 32766, "src": "all", "table": "main"},
])
ROUTES = {133: [{"type": "local", "dst": "default", "dev": "lo", "scope": "host"}],
          200: [{"dst": "default", "gateway": "198.18.0.2", "dev": "eth0"}]}


def test_only_istio_shaped_policy_routes_are_ours():
    assert parse_policy_routes(IPV4, RULES, ROUTES.get) == {PolicyRoute(IPV4, 1337, 133)}
    assert parse_policy_routes(IPV4, "", ROUTES.get) == set()


def test_desired_policy_routes():
    tproxy = CaptureOptions(inbound_interception_mode="TPROXY", ipv6=True, tproxy_mark=7, tproxy_route_table=70)
    assert desired_policy_routes(tproxy, True) == {PolicyRoute(IPV4, 7, 70), PolicyRoute(IPV6, 7, 70)}
    assert desired_policy_routes(tproxy, False) == set()
    assert desired_policy_routes(CaptureOptions(), True) == set()
    no_inbound = CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=())
    assert desired_policy_routes(no_inbound, True) == set()  # Istio adds the route only with inbound capture


def test_policy_route_commands():
    route = PolicyRoute(IPV6, 1337, 133)
    assert route.add_commands() == [["ip", "-6", "rule", "add", "fwmark", "1337", "lookup", "133"],
                                    ["ip", "-6", "route", "replace", "local", "default", "dev", "lo", "table", "133"]]
    assert route.delete_commands()[0] == ["ip", "-6", "rule", "del", "fwmark", "1337", "lookup", "133"]


# /proc/net/if_inet6 as the kernel prints it: address, ifindex, prefix length, scope, flags (hex), device.
IF_INET6_LO = "00000000000000000000000000000001 01 80 10 80       lo\n"
IF_INET6_PASSTHROUGH = "00000000000000000000000000000006 01 80 10 80       lo\n"


@pytest.mark.parametrize("text,present", [
    ("", False),
    (IF_INET6_LO, False),
    (IF_INET6_LO + IF_INET6_PASSTHROUGH, True),
    (IF_INET6_PASSTHROUGH + "20010db8000000000000000000000006 02 40 00 00     vm0\n", True),
    ("00000000000000000000000000000006 02 80 00 80      vm0\n", False),  # ::6 elsewhere is not Envoy's
    ("00000000000000000000000000000006 01 7f 10 80       lo\n", False),  # ::6/127
    ("00000000000000000000000000000060 01 80 10 80       lo\n", False),  # ::60
    ("garbage\n", False),
])
def test_passthrough_address(text, present):
    assert has_passthrough_v6(text) is present


@pytest.mark.parametrize("opts,port,captured", [
    (CaptureOptions(), 22, True),
    (CaptureOptions(exclude_inbound_ports=("22", "15090")), 22, False),
    (CaptureOptions(exclude_inbound_ports=("20:30",)), 22, False),
    (CaptureOptions(), 15008, False),  # the tunnel port is never captured
    (CaptureOptions(inbound_ports=("8080",)), 22, False),
    (CaptureOptions(inbound_ports=("1:1024",)), 22, True),
    (CaptureOptions(inbound_ports=()), 22, False),
])
def test_ssh_port_capture(opts, port, captured):
    assert captures_inbound_port(opts, port) is captured
