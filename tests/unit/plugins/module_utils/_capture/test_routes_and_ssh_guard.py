# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""TPROXY policy routes, the ::6 address, and the SSH guard's port logic."""

from __future__ import annotations

import json
import socket

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import ssh_guard
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.ssh_guard import (
    SshSession,
    captures_inbound_port,
    captures_outbound_to,
    ssh_session,
    sshd_ports,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.routes import (
    PolicyRoute,
    RouteManager,
    desired_policy_routes,
    has_passthrough_v6,
    ip_rule_marks,
    policy_routes_of,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink

RULES = json.dumps([
    {"priority": 0, "src": "all", "table": "local"},
    {"priority": 32764, "src": "all", "fwmark": "0x539", "table": "133"},
    {"priority": 32765, "src": "all", "fwmark": "0x7/0xff", "table": "200"},  # someone else's
    {"priority": 32766, "src": "all", "table": "main"},
])
ROUTES = {133: [{"type": "local", "dst": "default", "dev": "lo", "scope": "host"}],
          200: [{"dst": "default", "gateway": "198.18.0.2", "dev": "eth0"}]}


def test_only_istio_shaped_policy_routes_are_ours():
    assert policy_routes_of(IPV4, ip_rule_marks(RULES), ROUTES.get) == {PolicyRoute(IPV4, 1337, 133)}
    assert policy_routes_of(IPV4, [], ROUTES.get) == set()


@pytest.mark.parametrize("rules,marks", [
    (RULES, [(1337, 133), (7, 200)]),
    ("", []),
    ("[]", []),
    (json.dumps([{"priority": 32765, "src": "all", "fwmark": "0x539/0xffffffff", "table": "133"}]), [(1337, 133)]),
    (json.dumps([{"priority": 32764, "src": "all", "fwmark": "0x7", "fwmask": "0xff", "table": "200"}]),
     [(7, 200)]),  # iproute2 6.x prints the mask apart
    (json.dumps([{"priority": 32761, "src": "all", "fwmark": "0xb", "table": "70000"}]), [(11, 70000)]),
    (json.dumps([{"priority": 32762, "src": "all", "fwmark": "0xa", "table": "main"},  # by name: not Istio's
                 {"priority": 32763, "src": "all", "fwmark": "0x9", "action": "blackhole"},  # no table
                 {"priority": 32760, "src": "10.0.0.0", "srclen": 8, "table": "300"}]), []),  # no fwmark
])
def test_fwmark_rules_of_ip_rule_show(rules, marks):
    assert ip_rule_marks(rules) == marks


def test_each_table_is_asked_once():
    asked = []

    def routes_of_table(table):
        asked.append(table)
        return ROUTES.get(table, [])
    found = policy_routes_of(IPV6, [(1337, 133), (7, 200), (1338, 133), (7, 200), (5, 99)], routes_of_table)
    assert found == {PolicyRoute(IPV6, 1337, 133), PolicyRoute(IPV6, 1338, 133)}
    assert asked == [133, 200, 99]


class IpRunner:
    """The ``run`` callable RouteManager takes: ``ip`` answers from a dict of argv -> stdout, rc 1 otherwise."""

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def __call__(self, argv, data=None):
        self.calls.append(" ".join(argv))
        out = self.answers.get(" ".join(argv))
        return (1, "", "Error: not faked") if out is None else (0, out, "")


IP_ANSWERS = {
    "ip -json rule show": RULES,
    "ip -6 -json rule show": json.dumps([{"priority": 32765, "src": "all", "fwmark": "0x539", "table": "133"}]),
    "ip -json route show table 133": json.dumps(ROUTES[133]),
    "ip -json route show table 200": json.dumps(ROUTES[200]),
    "ip -6 -json route show table 133": json.dumps(ROUTES[133]),
}
BOTH = {PolicyRoute(IPV4, 1337, 133), PolicyRoute(IPV6, 1337, 133)}


def fake_netlink(monkeypatch, answers):
    """netlink.fwmark_rules answering ``answers[family]`` (None: no answer); the families asked."""
    asked = []
    monkeypatch.setattr(netlink, "fwmark_rules", lambda family: asked.append(family) or answers[family])
    return asked


def test_policy_routes_from_netlink_start_no_ip_rule(monkeypatch):
    asked = fake_netlink(monkeypatch, {socket.AF_INET: [(1337, 133), (7, 200)], socket.AF_INET6: [(1337, 133)]})
    run = IpRunner(IP_ANSWERS)
    assert RouteManager(run, True).policy_routes() == BOTH
    assert asked == [socket.AF_INET, socket.AF_INET6]
    assert run.calls == ["ip -json route show table 133", "ip -json route show table 200",
                         "ip -6 -json route show table 133"]


def test_policy_routes_without_fwmark_rules_start_nothing(monkeypatch):
    fake_netlink(monkeypatch, {socket.AF_INET: [], socket.AF_INET6: []})
    run = IpRunner({})
    assert RouteManager(run, True).policy_routes() == set()
    assert run.calls == []


def test_policy_routes_ask_ip_for_a_family_netlink_does_not_answer(monkeypatch):
    fake_netlink(monkeypatch, {socket.AF_INET: [(1337, 133), (7, 200)], socket.AF_INET6: None})
    run = IpRunner(IP_ANSWERS)
    assert RouteManager(run, True).policy_routes() == BOTH
    assert run.calls == ["ip -json route show table 133", "ip -json route show table 200",
                         "ip -6 -json rule show", "ip -6 -json route show table 133"]


def test_policy_routes_without_netlink_ask_ip(monkeypatch):
    """The conftest leaves netlink.dump unanswered: fwmark_rules is None, and ip answers as before."""
    run = IpRunner(IP_ANSWERS)
    assert RouteManager(run, True).policy_routes() == BOTH
    assert run.calls == ["ip -json rule show", "ip -json route show table 133", "ip -json route show table 200",
                         "ip -6 -json rule show", "ip -6 -json route show table 133"]


def test_policy_routes_without_an_ipv6_kernel_ask_ipv4_only(monkeypatch):
    asked = fake_netlink(monkeypatch, {socket.AF_INET: [(1337, 133)]})
    assert RouteManager(IpRunner(IP_ANSWERS), False).policy_routes() == {PolicyRoute(IPV4, 1337, 133)}
    assert asked == [socket.AF_INET]


def test_policy_routes_say_which_ip_failed(monkeypatch):
    fake_netlink(monkeypatch, {socket.AF_INET: None, socket.AF_INET6: None})
    with pytest.raises(RuntimeError, match="ip -json rule show failed"):
        RouteManager(IpRunner({}), True).policy_routes()
    fake_netlink(monkeypatch, {socket.AF_INET: [(1337, 134)], socket.AF_INET6: None})
    with pytest.raises(RuntimeError, match="ip -json route show table 134 failed"):
        RouteManager(IpRunner({}), True).policy_routes()


def test_a_fwmark_rule_whose_table_has_no_route_is_not_ours(monkeypatch):
    """``ip route show table N`` of an empty table fails ("FIB table does not exist"): the route is missing."""
    fake_netlink(monkeypatch, {socket.AF_INET: [(1337, 133)], socket.AF_INET6: None})

    def run(argv, data=None):
        if argv[-2:] == ["table", "133"]:
            return 2, "", "Error: ipv4: FIB table does not exist.\nDump terminated\n"
        return 0, "[]", ""
    manager = RouteManager(run, False)
    assert manager.policy_routes() == set()
    assert manager.fwmark_rules == {(IPV4, 1337, 133)}  # the rule is there: only its route is missing


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
    # The rule left without its route: only the route is added back (ip rule add would make a second rule).
    assert route.add_commands(rule_present=True) == [
        ["ip", "-6", "route", "replace", "local", "default", "dev", "lo", "table", "133"]]


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


@pytest.mark.parametrize("opts,address,captured", [
    (CaptureOptions(), "198.18.0.9", True),
    (CaptureOptions(), None, True),  # the client is not known: assume the worst
    (CaptureOptions(), "127.0.0.1", False),
    (CaptureOptions(outbound_ip_ranges=()), "198.18.0.9", False),
    (CaptureOptions(exclude_outbound_ip_ranges=((IPV4, "198.18.0.0/24"),)), "198.18.0.9", False),
    (CaptureOptions(exclude_outbound_ip_ranges=((IPV4, "198.18.1.0/24"),)), "198.18.0.9", True),
    (CaptureOptions(outbound_ip_ranges=((IPV4, "10.0.0.0/8"),)), "198.18.0.9", False),
    (CaptureOptions(outbound_ip_ranges=((IPV6, "2001:db8::/32"),)), "2001:db8::9", True),
    (CaptureOptions(), "not-an-address", True),
])
def test_outbound_capture_of_the_session_client(opts, address, captured):
    assert captures_outbound_to(opts, address) is captured


class FakeProc:
    """A process tree for ssh_session(): pid -> (name, parent, environ or None when unreadable, netns inode)."""

    def __init__(self, mocker, tree):
        self.tree = tree
        mocker.patch.object(ssh_guard, "_environ", lambda pid: tree[pid][2] if pid in tree else {})
        mocker.patch.object(ssh_guard, "_status", lambda pid: tree[pid][:2] if pid in tree else ("", 0))
        mocker.patch.object(ssh_guard, "_netns_inode", lambda pid: tree[pid][3] if pid in tree else None)


SESSION_ENV = {"SSH_CONNECTION": "198.18.0.9 40000 198.18.0.1 22", "USER": "fleet"}


def test_session_found_above_sudo(mocker):
    # python (root) <- sh <- sudo <- sh (the user, with SSH_CONNECTION) <- sshd
    FakeProc(mocker, {50: ("python3", 40, {}, 7), 40: ("sh", 30, {}, 7), 30: ("sudo", 20, None, 7),
                      20: ("sh", 10, SESSION_ENV, 7), 10: ("sshd", 1, None, 7)})
    assert ssh_session(50) == SshSession((22,), 7, "198.18.0.9", True)


def test_no_session_outside_ssh(mocker):
    FakeProc(mocker, {50: ("python3", 40, {}, 7), 40: ("bash", 1, {"USER": "root"}, 7)})
    assert ssh_session(50) is None


def test_unreadable_environment_under_sshd_fails_closed(mocker):
    # No CAP_SYS_PTRACE: the user's processes and sudo cannot be read; sshd-session is above them.
    FakeProc(mocker, {50: ("python3", 40, {}, 7), 40: ("sudo", 20, None, 7), 20: ("sh", 10, None, 7),
                      10: ("sshd-session", 5, None, 7), 5: ("sshd", 1, None, 7)})
    session = ssh_session(50, configured_ports=lambda: (22, 2222))
    assert session == SshSession((22, 2222), 7, None, False)
    assert "22 or 2222" in session.describe()


def test_unreadable_environment_without_sshd_is_no_session(mocker):
    FakeProc(mocker, {50: ("python3", 40, {}, 7), 40: ("sudo", 20, None, 7), 20: ("bash", 1, None, 7)})
    assert ssh_session(50, configured_ports=lambda: (22,)) is None


def test_malformed_ssh_connection_is_no_session(mocker):
    FakeProc(mocker, {50: ("python3", 1, {"SSH_CONNECTION": "garbage"}, 7)})
    assert ssh_session(50) is None


class SshdRunner:
    """The runner interface (``_system.commands``): ``which`` finds sshd (or not), ``run`` answers ``sshd -T``."""

    def __init__(self, answer, sshd="/usr/sbin/sshd"):
        self.answer, self.sshd, self.calls = answer, sshd, []

    def which(self, name):
        return self.sshd if name == "sshd" else None

    def run(self, argv, data=None):
        self.calls.append(argv)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize("answer,ports", [
    ((0, "port 22\nport 2222\naddressfamily any\nport 22\n", ""), (22, 2222)),
    ((0, "addressfamily any\n", ""), (22,)),
    ((255, "", "no hostkeys available"), (22,)),  # sshd -T failed (no host keys, bad config)
])
def test_sshd_ports(answer, ports):
    runner = SshdRunner(answer)
    assert sshd_ports(runner) == ports
    assert runner.calls == [["/usr/sbin/sshd", "-T"]]


def test_sshd_ports_without_sshd():
    runner = SshdRunner((0, "port 2222\n", ""), sshd=None)
    assert sshd_ports(runner) == (22,)
    assert runner.calls == []


def test_sshd_ports_when_sshd_cannot_run():
    assert sshd_ports(SshdRunner(OSError(8, "exec format error"))) == (22,)


def test_namespace_of_an_unreadable_process_is_this_process_s_own(mocker):
    own = ssh_guard.os.stat("/proc/self/ns/net").st_ino
    real_stat = ssh_guard.os.stat

    def stat(path):
        if path == "/proc/4242/ns/net":
            raise PermissionError(13, "Permission denied")
        return real_stat(path)
    mocker.patch.object(ssh_guard.os, "stat", stat)
    assert ssh_guard._netns_inode(4242) == own  # pylint: disable=protected-access
