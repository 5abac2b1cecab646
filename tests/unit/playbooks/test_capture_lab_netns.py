# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""capture_lab.py for real: two throw-away namespaces, capture rules, real connections.

Needs root, ``ip`` and ``iptables``; skipped otherwise. Each test creates uniquely named
namespaces ``labXXXXXX-app`` / ``labXXXXXX-peer`` (a veth pair, addresses, rules) and servers,
and removes all of it before it ends: the servers are stopped by their pidfiles, then the
namespaces deleted. No fixture outlives a test, because ansible-test runs each test in a forked
process, where the teardown of a module-scoped fixture would never run. Traffic stays between the
two namespaces, on 198.18.0.0/15 and 2001:db8::/32. The host namespace is not touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest

SCRIPT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "capture_lab", "files", "capture_lab.py"))

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


@contextlib.contextmanager
def namespace_pair(workdir, servers):
    """Namespaces ``<tag>-app`` (198.18.0.1, 2001:db8::1) and ``<tag>-peer`` (.2, ::2) on a veth pair.

    ``servers``: ``(side, label, extra serve args)``; each is stopped by its pidfile afterwards.
    """
    tag = "lab" + uuid.uuid4().hex[:6]
    app, peer = tag + "-app", tag + "-peer"
    pidfiles = []
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
        for side, label, extra in servers:
            pidfiles.append(str(workdir / ("%s.pid" % label)))
            started = lab("serve", "--netns", app if side == "app" else peer, "--label", label,
                          "--pidfile", pidfiles[-1], "--max-seconds", "120", *extra)
            assert started.returncode == 0, started.stderr
            assert json.loads(started.stdout)["serving"] == label
        yield app, peer, pidfiles
    finally:
        for pidfile in pidfiles:
            lab("stop", "--pidfile", pidfile)
        for name in created:
            run("ip", "netns", "delete", name, check=False)


def test_one_redirect_rule(tmp_path):
    """The app namespace holds one REDIRECT rule; a stand-in proxy and a peer server answer."""
    servers = [("app", "proxy", ["--tcp", "15001,15006", "--udp", "5353"]),
               ("peer", "peer", ["--tcp", "8080", "--udp", "5353"])]
    with namespace_pair(tmp_path, servers) as (app, _peer, pidfiles):
        # The one capture rule, inside the app namespace only.
        run("ip", "netns", "exec", app, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "198.18.0.2",
            "--dport", "8080", "-m", "owner", "!", "--uid-owner", "1337", "-j", "REDIRECT", "--to-ports", "15001")

        # An application's connection lands on the stand-in proxy, which sees where it was going.
        answer = probe(app, "198.18.0.2:8080", "--uid", "1000", "--gid", "1000")
        assert answer["served_by"] == "proxy"
        assert answer["local"] == "127.0.0.1:15001"
        assert answer["original_dst"] == "198.18.0.2:8080"
        assert answer["peer_uid"] == 1000
        assert answer["probe"]["uid"] == 1000 and answer["probe"]["gid"] == 1000

        # The proxy uid's connection bypasses the rule and reaches the peer.
        answer = probe(app, "198.18.0.2:8080", "--uid", "1337", "--gid", "1337")
        assert answer["served_by"] == "peer"
        assert answer["local"] == "198.18.0.2:8080"
        assert answer["original_dst"] is None

        # IPv6 and UDP are not captured by an IPv4 TCP rule.
        assert probe(app, "[2001:db8::2]:8080", "--uid", "1000")["local"] == "[2001:db8::2]:8080"
        assert probe(app, "198.18.0.2:5353", "--udp", "--uid", "1000")["served_by"] == "peer"

        # Errors are reported, not raised.
        assert probe(app, "198.18.0.2:9999", "--uid", "1337")["error"] == "connection refused"

        # Pidfiles name the running servers.
        for pidfile in pidfiles:
            with open(pidfile) as handle:
                pid = int(handle.read())
            with open("/proc/%d/cmdline" % pid, "rb") as handle:
                assert b"serve" in handle.read().split(b"\0")
    # ... and stop removed them, with the namespaces.
    assert not any(os.path.exists(pidfile) for pidfile in pidfiles)
    assert not any(name.startswith(app[:-4]) for name in os.listdir("/run/netns"))


# Istio's VM default (istioctl's cluster.env: inbound '*' minus 22,15090,15021,15020, outbound '*',
# DNS capture) for proxy uid/gid 1337 and nameserver 198.18.0.2, as pilot-agent istio-iptables
# feeds it to iptables-restore / ip6tables-restore --noflush.
ISTIO_VM_DEFAULT_V4 = """\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-N ISTIO_OUTPUT_DNS
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d 198.18.0.2/32 -j REDIRECT --to-ports 15053
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 198.18.0.2/32 -j REDIRECT --to-port 15053
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
* raw
-N ISTIO_OUTPUT_DNS
-N ISTIO_INBOUND
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
-A PREROUTING -j ISTIO_INBOUND
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 198.18.0.2/32 -j CT --zone 2
-A ISTIO_INBOUND -p udp --sport 53 -s 198.18.0.2/32 -j CT --zone 1
COMMIT
"""

ISTIO_VM_DEFAULT_V6 = """\
* nat
-N ISTIO_INBOUND
-N ISTIO_REDIRECT
-N ISTIO_IN_REDIRECT
-N ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d ::1/128 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d ::1/128 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
* raw
-N ISTIO_OUTPUT_DNS
-A OUTPUT -j ISTIO_OUTPUT_DNS
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2
-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1
-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2
COMMIT
"""


def test_matrix_under_istios_vm_default_rules(tmp_path):
    """Every path of Istio's capture, proven with the matrix: inbound, outbound, DNS, bypasses."""
    servers = [
        # The stand-in proxy runs as the proxy uid/gid, as Envoy and the DNS proxy do.
        ("app", "proxy", ["--uid", "1337", "--gid", "1337", "--tcp", "15001,15006", "--udp", "15053"]),
        ("app", "app", ["--tcp", "8080,15021,15008"]),
        ("peer", "peer", ["--tcp", "8080", "--udp", "53"]),
    ]
    with namespace_pair(tmp_path, servers) as (app, peer, _pidfiles):
        run("ip", "-n", app, "addr", "add", "::6/128", "dev", "lo")
        for tool, rules in (("iptables-restore", ISTIO_VM_DEFAULT_V4), ("ip6tables-restore", ISTIO_VM_DEFAULT_V6)):
            applied = subprocess.run(["ip", "netns", "exec", app, tool, "--noflush"], input=rules,
                                     capture_output=True, text=True, timeout=30, check=False)
            assert applied.returncode == 0, applied.stderr
        user = {"uid": 1000, "gid": 1000}
        proxy = {"uid": 1337, "gid": 1337}
        rows = [
            dict(name="outbound from app", netns=app, to="198.18.0.2:8080", expect="proxy-outbound", **user),
            dict(name="outbound v6 from app", netns=app, to="[2001:db8::2]:8080", expect="proxy-outbound", **user),
            dict(name="outbound, proxy uid", netns=app, to="198.18.0.2:8080", uid=1337, gid=1000, expect="peer"),
            dict(name="outbound, proxy gid", netns=app, to="198.18.0.2:8080", uid=1000, gid=1337, expect="peer"),
            dict(name="inbound", netns=peer, to="198.18.0.1:8080", expect="proxy-inbound"),
            dict(name="inbound v6", netns=peer, to="[2001:db8::1]:8080", expect="proxy-inbound"),
            dict(name="inbound, excluded port", netns=peer, to="198.18.0.1:15021", expect="app:15021"),
            dict(name="inbound, tunnel port", netns=peer, to="198.18.0.1:15008", expect="app:15008"),
            dict(name="dns from app", netns=app, to="198.18.0.2:53", udp=True, expect="proxy-dns", **user),
            dict(name="dns from proxy", netns=app, to="198.18.0.2:53", udp=True, expect="peer", **proxy),
            dict(name="proxy to own IP", netns=app, to="198.18.0.1:8080", expect="proxy-inbound", **proxy),
            dict(name="passthrough", netns=app, to="198.18.0.1:8080", source="127.0.0.6", expect="app", **proxy),
            dict(name="passthrough v6", netns=app, to="[2001:db8::1]:8080", source="::6", expect="app", **proxy),
            dict(name="app to own IP", netns=app, to="198.18.0.1:8080", expect="app", **user),
            dict(name="app to localhost", netns=app, to="127.0.0.1:8080", expect="app", **user),
        ]
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps(rows))
        result = lab("matrix", "--spec", str(spec))
        summary = json.loads(result.stdout.splitlines()[-1])
        failed = [(row["name"], row["went_to"]) for row in summary["rows"] if not row["ok"]]
        assert (result.returncode, failed) == (0, []), result.stdout
        outbound = summary["rows"][0]["result"]
        assert outbound["original_dst"] == "198.18.0.2:8080" and outbound["peer_uid"] == 1000
        assert summary["rows"][4]["result"]["original_dst"] == "198.18.0.1:8080"
