# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the pure parts of roles/capture_lab/files/capture_lab.py (no network, no root)."""

from __future__ import annotations

import errno
import importlib.util
import ipaddress
import json
import os
import socket
import struct

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "capture_lab", "files", "capture_lab.py")


def _load():
    spec = importlib.util.spec_from_file_location("capture_lab", os.path.abspath(SCRIPT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = _load()


@pytest.fixture
def no_probes(monkeypatch):
    """Fail the test if anything tries to send a probe."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a probe was attempted: %r %r" % (args, kwargs))
    monkeypatch.setattr(lab, "run_probe", forbidden)


# --- ports and endpoints ---------------------------------------------------------------------


def test_parse_ports_keeps_order_and_drops_empty_items_and_repeats():
    assert lab.parse_ports("8080, 15001,,8080,") == [8080, 15001]
    assert lab.parse_ports("") == []
    assert lab.parse_ports(None) == []


@pytest.mark.parametrize("text", ["0", "65536", "8o", "-1", "+80", "1.5", "\u00b2", "80-90"])
def test_parse_port_rejects(text):
    with pytest.raises(lab.UsageError):
        lab.parse_port(text)


@pytest.mark.parametrize("text, address, port", [
    ("198.18.0.2:8080", "198.18.0.2", 8080),
    (" 127.0.0.6:15002 ", "127.0.0.6", 15002),
    ("[2001:db8::2]:80", "2001:db8::2", 80),
    ("[::1]:15001", "::1", 15001),
])
def test_parse_endpoint(text, address, port):
    assert lab.parse_endpoint(text) == (ipaddress.ip_address(address), port)


@pytest.mark.parametrize("text", [
    "198.18.0.2",  # no port
    ":80",
    "2001:db8::2:80",  # IPv6 without brackets
    "[2001:db8::2]80",
    "[198.18.0.2]:80",  # brackets around IPv4
    "localhost:80",  # names are never resolved
    "198.18.0.256:80",
    "198.18.0.2:0",
    "198.18.0.2:http",
])
def test_parse_endpoint_rejects(text):
    with pytest.raises(lab.UsageError):
        lab.parse_endpoint(text)


def test_format_endpoint_round_trips():
    assert lab.format_endpoint("198.18.0.2", 80) == "198.18.0.2:80"
    assert lab.format_endpoint(ipaddress.ip_address("2001:db8::2"), 80) == "[2001:db8::2]:80"
    for text in ("198.18.0.2:80", "[2001:db8::2]:80"):
        assert lab.format_endpoint(*lab.parse_endpoint(text)) == text


# --- the safety check --------------------------------------------------------------------------


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.0.0.6", "127.255.255.254", "::1", "::6",
    "198.18.0.0", "198.18.0.2", "198.19.255.255", "2001:db8::", "2001:db8:ffff:ffff::1",
])
def test_check_allowed_accepts_lab_ranges(address):
    assert lab.check_allowed(ipaddress.ip_address(address)) == ipaddress.ip_address(address)


@pytest.mark.parametrize("address", [
    "10.0.0.1", "8.8.8.8", "0.0.0.0", "169.254.169.254", "192.168.1.1", "198.17.255.255", "198.20.0.0",
    "255.255.255.255", "::", "::2", "::ffff:198.18.0.2", "::ffff:127.0.0.1", "2001:db9::1", "2001:db7:ffff::1",
    "fe80::1", "fd00::1", "ff02::1",
])
def test_check_allowed_refuses_everything_else(address):
    with pytest.raises(lab.UsageError, match="refusing to send traffic"):
        lab.check_allowed(ipaddress.ip_address(address))


@pytest.mark.parametrize("to", ["8.8.8.8:53", "[2001:db9::1]:53", "10.1.2.3:80", "[::ffff:198.18.0.2]:80"])
def test_probe_refuses_with_status_2_before_sending(to, no_probes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        lab.main(["probe", "--netns", "", "--to", to])
    assert exit_info.value.code == 2
    assert "refusing to send traffic" in capsys.readouterr().err


def test_matrix_refuses_the_whole_spec_if_one_row_is_unsafe(tmp_path, no_probes, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([
        {"name": "fine", "netns": "a", "to": "198.18.0.2:80", "expect": "peer"},
        {"name": "not fine", "netns": "a", "to": "192.0.2.1:80", "expect": "peer"},
    ]))
    assert lab.main(["matrix", "--spec", str(spec)]) == 2
    assert "spec probe 2: refusing to send traffic to 192.0.2.1" in capsys.readouterr().err


# --- socket addresses --------------------------------------------------------------------------


def sockaddr_in(host, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, host) + b"\0" * 8


def sockaddr_in6(host, port):
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0))


def test_decode_sockaddr():
    assert len(sockaddr_in("198.18.0.2", 8080)) == lab.SOCKADDR_IN_SIZE
    assert len(sockaddr_in6("::1", 1)) == lab.SOCKADDR_IN6_SIZE
    assert lab.decode_sockaddr(sockaddr_in("198.18.0.2", 8080)) == ("198.18.0.2", 8080)
    assert lab.decode_sockaddr(sockaddr_in6("2001:db8::2", 15002)) == ("2001:db8::2", 15002)


@pytest.mark.parametrize("raw", [b"", b"\x02", struct.pack("=H", socket.AF_INET) + b"\0\x50",
                                 struct.pack("=H", socket.AF_UNIX) + b"\0" * 14])
def test_decode_sockaddr_rejects(raw):
    with pytest.raises(ValueError):
        lab.decode_sockaddr(raw)


class FakeConn:
    """Just enough of a connected socket for original_destination()."""

    def __init__(self, family, local, original=None, error=None):
        self.family = family
        self.local = local
        self.original = original
        self.error = error
        self.asked = None

    def getsockname(self):
        return self.local

    def getsockopt(self, level, option, size):
        self.asked = (level, option, size)
        if self.error:
            raise OSError(self.error, os.strerror(self.error))
        return self.original


def test_original_destination_ipv4_redirected():
    conn = FakeConn(socket.AF_INET, ("127.0.0.1", 15001), sockaddr_in("198.18.0.2", 8080))
    assert lab.original_destination(conn) == "198.18.0.2:8080"
    assert conn.asked == (lab.SOL_IP, 80, 16)


def test_original_destination_ipv6_redirected():
    conn = FakeConn(socket.AF_INET6, ("::1", 15001, 0, 0), sockaddr_in6("2001:db8::2", 8080))
    assert lab.original_destination(conn) == "[2001:db8::2]:8080"
    assert conn.asked == (lab.SOL_IPV6, 80, 28)


def test_original_destination_null_when_not_natted():
    same = FakeConn(socket.AF_INET, ("198.18.0.2", 8080), sockaddr_in("198.18.0.2", 8080))
    assert lab.original_destination(same) is None
    untracked = FakeConn(socket.AF_INET, ("198.18.0.2", 8080), error=errno.ENOENT)
    assert lab.original_destination(untracked) is None


# --- /proc/net/tcp ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, byteorder, expected", [
    ("0100007F:1F90", "little", ("127.0.0.1", 8080)),
    ("7F000001:1F90", "big", ("127.0.0.1", 8080)),
    ("010012C6:3A99", "little", ("198.18.0.1", 15001)),
    ("00000000000000000000000001000000:0050", "little", ("::1", 80)),
    ("B80D0120000000000000000001000000:0050", "little", ("2001:db8::1", 80)),
    ("20010DB8000000000000000000000001:0050", "big", ("2001:db8::1", 80)),
])
def test_decode_proc_net_address(text, byteorder, expected):
    assert lab.decode_proc_net_address(text, byteorder) == expected


@pytest.mark.parametrize("text", ["0100007F", "01007F:0050", "zz00007F:0050"])
def test_decode_proc_net_address_rejects(text):
    with pytest.raises(ValueError):
        lab.decode_proc_net_address(text, "little")


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 010012C6:BA9C 020012C6:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:3A99 010012C6:BA9C 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   3: 010012C6:BA9D 020012C6:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
"""


def test_find_socket_uid():
    assert lab.find_socket_uid(PROC_NET_TCP, "198.18.0.1", 0xBA9C) == 1000
    assert lab.find_socket_uid(PROC_NET_TCP, "127.0.0.1", 15001) == 0
    assert lab.find_socket_uid(PROC_NET_TCP, "198.18.0.1", 0xBA9D) is None  # TIME_WAIT: no owner any more
    assert lab.find_socket_uid(PROC_NET_TCP, "0.0.0.0", 15001) is None  # listening, not established
    assert lab.find_socket_uid("header only\n", "198.18.0.1", 1) is None


# --- processes and pidfiles ------------------------------------------------------------------


@pytest.mark.parametrize("cmdline, expected", [
    (["/usr/bin/python3", "/tmp/x/capture_lab.py", "serve", "--netns", "a"], True),
    (["python3", "-u", "capture_lab.py", "serve"], True),
    (["/tmp/capture_lab", "serve"], True),
    (["python3", "capture_lab.py", "probe", "serve"], False),
    (["python3", "other.py", "serve"], False),
    (["sleep", "60"], False),
    ([], False),
    (None, False),
])
def test_is_lab_server(cmdline, expected):
    assert lab.is_lab_server(cmdline) is expected


def test_process_gone():
    assert lab.process_gone(os.getpid()) is False
    assert lab.process_gone(2 ** 31 - 1) is True


def test_read_pidfile(tmp_path):
    assert lab.read_pidfile(str(tmp_path / "missing.pid")) is None
    good = tmp_path / "good.pid"
    good.write_text("4242\n")
    assert lab.read_pidfile(str(good)) == 4242
    for text in ("", "hello", "-5", "1", "12 13"):
        bad = tmp_path / "bad.pid"
        bad.write_text(text)
        with pytest.raises(lab.LabError):
            lab.read_pidfile(str(bad))


def test_stop_never_signals_a_process_that_is_not_a_lab_server(tmp_path, monkeypatch, capsys):
    killed = []
    monkeypatch.setattr(lab.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    pidfile = tmp_path / "stale.pid"
    pidfile.write_text("%d\n" % os.getpid())  # the test runner: alive, but not a capture_lab server
    assert lab.main(["stop", "--pidfile", str(pidfile)]) == 0
    assert killed == []
    assert not pidfile.exists()
    assert "not a running capture_lab server" in capsys.readouterr().out


def test_stop_without_pidfile_is_a_no_op(tmp_path, capsys):
    assert lab.main(["stop", "--pidfile", str(tmp_path / "none.pid")]) == 0
    assert "nothing to stop" in capsys.readouterr().out


# --- serve pieces -----------------------------------------------------------------------------


def test_ipv6_is_skipped_silently_when_the_kernel_has_none(monkeypatch):
    def no_ipv6(family, kind):
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
    monkeypatch.setattr(lab.socket, "socket", no_ipv6)
    assert lab.open_server_socket(socket.AF_INET6, socket.SOCK_STREAM, 15001) is None
    with pytest.raises(OSError):
        lab.open_server_socket(socket.AF_INET, socket.SOCK_STREAM, 15001)


def test_make_reply_has_the_documented_keys():
    reply = lab.make_reply("proxy", "tcp", "127.0.0.1:15001", "198.18.0.2:8080", "198.18.0.1:40000", 1000)
    assert list(reply) == ["served_by", "proto", "local", "original_dst", "peer", "peer_uid"]


def test_serve_needs_a_port(tmp_path, capsys):
    assert lab.main(["serve", "--netns", "", "--label", "x", "--pidfile", str(tmp_path / "p")]) == 2
    assert "at least one --tcp or --udp port" in capsys.readouterr().err


def test_serve_defaults():
    args = lab.build_parser().parse_args(["serve", "--netns", "a", "--label", "x", "--tcp", "1", "--pidfile", "p"])
    assert args.max_seconds == 3600
    assert args.logfile is None


# --- probe error texts -------------------------------------------------------------------------


@pytest.mark.parametrize("exc, text", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
    (socket.timeout("timed out"), "timeout"),
    (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), "timeout"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "connection reset"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "host unreachable"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
    (OSError(errno.EPERM, "Operation not permitted"), "operation not permitted"),
    (OSError(errno.EMSGSIZE, "Message too long"), "Message too long"),
])
def test_describe_error(exc, text):
    assert lab.describe_error(exc) == text


# --- matrix ------------------------------------------------------------------------------------


def test_load_spec_list_form():
    probes, label, ports = lab.load_spec([
        {"name": "outbound from app", "netns": "app", "to": "198.18.0.2:8080", "uid": 1000, "expect": "proxy-outbound"},
        {"netns": "app", "to": "[2001:db8::2]:53", "udp": True, "gid": 1337, "source": "2001:db8::1",
         "timeout": 1, "expect": "peer"},
    ])
    assert label == "proxy"
    assert ports == {15001: "proxy-outbound", 15006: "proxy-inbound", 15053: "proxy-dns"}
    assert probes[0]["name"] == "outbound from app"
    assert probes[0]["uid"] == 1000 and probes[0]["gid"] is None and probes[0]["udp"] is False
    assert probes[1]["name"] == "[2001:db8::2]:53"
    assert probes[1]["address"] == ipaddress.ip_address("2001:db8::2") and probes[1]["port"] == 53
    assert probes[1]["source"] == "2001:db8::1" and probes[1]["timeout"] == 1.0


def test_load_spec_object_form_overrides_capture_ports():
    _probes, label, ports = lab.load_spec({
        "proxy_label": "envoy",
        "capture_ports": {"proxy-outbound": 16001},
        "probes": [{"netns": "app", "to": "198.18.0.2:80", "expect": "proxy-outbound"}],
    })
    assert label == "envoy"
    assert ports[16001] == "proxy-outbound" and ports[15006] == "proxy-inbound"


@pytest.mark.parametrize("spec, message", [
    ([], "non-empty list"),
    ({"probes": []}, "non-empty list"),
    ({"rows": []}, "unknown keys rows"),
    (["x"], "expected an object"),
    ([{"to": "198.18.0.2:80", "expect": "peer"}], "netns is required"),
    ([{"netns": "a", "expect": "peer"}], "to is required"),
    ([{"netns": "a", "to": "198.18.0.2:80"}], "expect is required"),
    ([{"netns": "a", "to": "198.18.0.2:80", "expect": "peer", "uid": -1}], "uid must be"),
    ([{"netns": "a", "to": "198.18.0.2:80", "expect": "peer", "gid": True}], "gid must be"),
    ([{"netns": "a", "to": "198.18.0.2:80", "expect": "peer", "udp": "yes"}], "udp must be"),
    ([{"netns": "a", "to": "198.18.0.2:80", "expect": "peer", "timeout": 0}], "timeout must be"),
    ([{"netns": "a", "to": "198.18.0.2:80", "expect": "peer", "colour": "red"}], "unknown keys colour"),
    ([{"netns": "a", "to": "198.18.0.2:80", "expect": "peer", "source": "::1"}], "same address family"),
    ([{"netns": "a", "to": "peer:80", "expect": "peer"}], "spec probe 1: 'peer' is not an IP address"),
])
def test_load_spec_rejects(spec, message):
    with pytest.raises(lab.UsageError, match=message):
        lab.load_spec(spec)


CAPTURE_PORTS = {15001: "proxy-outbound", 15006: "proxy-inbound", 15053: "proxy-dns"}


def reply(label, local, original=None):
    return {"served_by": label, "proto": "tcp", "local": local, "original_dst": original, "peer": "198.18.0.1:1",
            "peer_uid": None}


@pytest.mark.parametrize("result, expected", [
    (reply("proxy", "127.0.0.1:15001", "198.18.0.2:8080"), "proxy-outbound"),
    (reply("proxy", "198.18.0.1:15006", "198.18.0.1:8080"), "proxy-inbound"),
    (reply("proxy", "[::1]:15053"), "proxy-dns"),
    (reply("proxy", "127.0.0.1:9999"), "proxy"),
    (reply("peer", "198.18.0.2:15001"), "peer"),  # only the stand-in proxy's ports mean capture
    (reply("peer", "198.18.0.2:8080"), "peer"),
    ({"error": "connection refused"}, "refused"),
    ({"error": "timeout"}, "timeout"),
])
def test_went_to(result, expected):
    assert lab.went_to(result, "proxy", CAPTURE_PORTS) == expected


def test_as_expected():
    peer = reply("peer", "198.18.0.2:8080")
    assert lab.as_expected("peer", peer, "peer")
    assert lab.as_expected("peer:8080", peer, "peer")
    assert not lab.as_expected("peer:9090", peer, "peer")
    assert not lab.as_expected("proxy-outbound", peer, "peer")
    refused = {"error": "connection refused"}
    assert lab.as_expected("refused", refused, "refused")
    assert not lab.as_expected("peer", refused, "refused")


def test_render_table():
    rows = [
        {"name": "outbound from app", "from": "app uid 1000", "to": "198.18.0.2:8080", "expected": "proxy-outbound",
         "went_to": "proxy-outbound", "ok": True},
        {"name": "dns", "from": "app uid 1337", "to": "198.18.0.2:53/udp", "expected": "peer",
         "went_to": "timeout", "ok": False},
    ]
    assert lab.render_table(rows) == "\n".join([
        "traffic            from          to                 expected        went to         ok",
        "-----------------  ------------  -----------------  --------------  --------------  ---",
        "outbound from app  app uid 1000  198.18.0.2:8080    proxy-outbound  proxy-outbound  yes",
        "dns                app uid 1337  198.18.0.2:53/udp  peer            timeout         NO",
    ])


def test_matrix_table_summary_and_status(tmp_path, monkeypatch, capsys):
    answers = {
        "198.18.0.2:8080": reply("proxy", "127.0.0.1:15001", "198.18.0.2:8080"),
        "198.18.0.2:9090": {"error": "connection refused"},
    }

    def fake_probe(netns, address, port, udp=False, uid=None, gid=None, source=None, timeout=3.0):
        to = lab.format_endpoint(address, port)
        return dict(answers[to], probe={"netns": netns, "to": to, "uid": uid, "gid": gid})

    monkeypatch.setattr(lab, "run_probe", fake_probe)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([
        {"name": "outbound from app", "netns": "app", "to": "198.18.0.2:8080", "uid": 1000, "expect": "proxy-outbound"},
        {"name": "closed", "netns": "app", "to": "198.18.0.2:9090", "uid": 1337, "expect": "peer"},
    ]))
    assert lab.main(["matrix", "--spec", str(spec)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["traffic", "from", "to", "expected", "went", "to", "ok"]
    assert lines[2].split()[-2:] == ["proxy-outbound", "yes"]
    assert lines[3].split()[-2:] == ["refused", "NO"]
    summary = json.loads(lines[-1])
    assert summary["matrix"] == {"total": 2, "passed": 1, "failed": 1}
    assert summary["rows"][0]["result"]["original_dst"] == "198.18.0.2:8080"
