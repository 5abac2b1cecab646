# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""capture_lab.py for real: two throw-away namespaces, one REDIRECT rule, real connections.

Needs root, ``ip`` and ``iptables``; skipped otherwise. Everything it creates is uniquely named
and removed afterwards: the namespaces ``labXXXXXX-app`` / ``labXXXXXX-peer`` (with their veth
pair and rules) and the two servers, stopped by their pidfiles. Traffic stays between the two
namespaces, on 198.18.0.0/15 and 2001:db8::/32. The host namespace is not touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

SCRIPT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "playbooks", "files", "capture_lab.py"))

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("iptables"),
    reason="needs root, ip and iptables",
)


def run(*argv, check=True):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30)


def lab(*argv):
    return run(sys.executable, SCRIPT, *argv, check=False)


def probe(netns, to, *extra):
    result = lab("probe", "--netns", netns, "--to", to, "--timeout", "2", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def lab_pair(tmp_path_factory):
    """An app and a peer namespace joined by a veth pair, with a stand-in proxy and a peer server."""
    tag = "lab" + uuid.uuid4().hex[:6]
    app, peer = tag + "-app", tag + "-peer"
    workdir = tmp_path_factory.mktemp(tag)
    pidfiles = [str(workdir / "proxy.pid"), str(workdir / "peer.pid")]
    created = []
    try:
        for name in (app, peer):
            if run("ip", "netns", "add", name, check=False).returncode != 0:
                pytest.skip("cannot create network namespaces here")
            created.append(name)
        run("ip", "-n", app, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
        for name, last in ((app, "1"), (peer, "2")):
            run("ip", "-n", name, "addr", "add", "198.18.0.%s/24" % last, "dev", "eth0")
            run("ip", "-n", name, "addr", "add", "2001:db8::%s/64" % last, "dev", "eth0", "nodad")
            run("ip", "-n", name, "link", "set", "lo", "up")
            run("ip", "-n", name, "link", "set", "eth0", "up")
        for netns, label, ports, pidfile in ((app, "proxy", "15001,15006", pidfiles[0]),
                                             (peer, "peer", "8080", pidfiles[1])):
            started = lab("serve", "--netns", netns, "--label", label, "--tcp", ports, "--udp", "5353",
                          "--pidfile", pidfile, "--max-seconds", "120")
            assert started.returncode == 0, started.stderr
            assert json.loads(started.stdout)["serving"] == label
        # The one capture rule, inside the app namespace only.
        run("ip", "netns", "exec", app, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "198.18.0.2",
            "--dport", "8080", "-m", "owner", "!", "--uid-owner", "1337", "-j", "REDIRECT", "--to-ports", "15001")
        yield app, peer, pidfiles
    finally:
        for pidfile in pidfiles:
            lab("stop", "--pidfile", pidfile)
        for name in created:
            run("ip", "netns", "delete", name, check=False)


def test_app_traffic_lands_on_the_stand_in_proxy(lab_pair):
    app, _peer, _pidfiles = lab_pair
    answer = probe(app, "198.18.0.2:8080", "--uid", "1000", "--gid", "1000")
    assert answer["served_by"] == "proxy"
    assert answer["local"] == "127.0.0.1:15001"
    assert answer["original_dst"] == "198.18.0.2:8080"
    assert answer["peer_uid"] == 1000
    assert answer["probe"]["uid"] == 1000 and answer["probe"]["gid"] == 1000


def test_proxy_uid_traffic_bypasses_capture(lab_pair):
    app, _peer, _pidfiles = lab_pair
    answer = probe(app, "198.18.0.2:8080", "--uid", "1337", "--gid", "1337")
    assert answer["served_by"] == "peer"
    assert answer["local"] == "198.18.0.2:8080"
    assert answer["original_dst"] is None


def test_ipv6_and_udp_are_not_captured_by_an_ipv4_tcp_rule(lab_pair):
    app, _peer, _pidfiles = lab_pair
    assert probe(app, "[2001:db8::2]:8080", "--uid", "1000")["local"] == "[2001:db8::2]:8080"
    assert probe(app, "198.18.0.2:5353", "--udp", "--uid", "1000")["served_by"] == "peer"


def test_errors_are_reported_not_raised(lab_pair):
    app, _peer, _pidfiles = lab_pair
    assert probe(app, "198.18.0.2:9999", "--uid", "1337")["error"] == "connection refused"


def test_pidfiles_name_running_servers_and_stop_removes_them(lab_pair):
    _app, _peer, pidfiles = lab_pair
    for pidfile in pidfiles:
        with open(pidfile) as handle:
            pid = int(handle.read())
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            assert b"serve" in handle.read().split(b"\0")
