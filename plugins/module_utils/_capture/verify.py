# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Prove capture with a live connection, as ``istio-iptables --run-validation`` does.

As the proxy's uid, connect to ``127.0.0.6:15002`` (``[::6]`` for IPv6) from ``127.0.0.1``. The
rules send proxy traffic on ``lo`` to a non-localhost address to the inbound capture port, so a
listener there sees the connection with its original destination (``SO_ORIGINAL_DST``). Nothing
leaves the host: every address involved is a loopback one.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6
from ansible_collections.meshops.sidecar.plugins.module_utils._system.child import ChildError, run_in_child

PROBE_PORT = 15002  # Istio's iptables probe port
SO_ORIGINAL_DST = 80  # the same number for SOL_IP and SOL_IPV6 (IP6T_SO_ORIGINAL_DST)
_PROBE = {IPV4: ("127.0.0.6", "127.0.0.1"), IPV6: ("::6", "::1")}


class VerifyError(Exception):
    """Capture could not be shown to work; the message says what was seen."""


def _original_dst(conn, family):
    if family == IPV4:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, address = struct.unpack_from("!2xH4s", raw)
        return "%s:%d" % (socket.inet_ntop(socket.AF_INET, address), port)
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    port, address = struct.unpack_from("!2xH4x16s", raw)
    return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, address), port)


def _connect_from_child(uid, gid, family, timeout):
    """In the child: drop to ``uid``/``gid`` and connect; ``None`` or an errno name."""
    target, source = _PROBE[family]
    try:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        af = socket.AF_INET if family == IPV4 else socket.AF_INET6
        with socket.socket(af, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.bind((source, 0))  # not 127.0.0.6 / ::6, which the rules let through
            sock.connect((target, PROBE_PORT))
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc)) if exc.errno else "timeout"
    return None


def _connect_as(uid, gid, family, timeout):
    """Connect from a child that has dropped to ``uid``/``gid`` (this process keeps root); ``None`` or an errno name."""
    try:
        return run_in_child(_connect_from_child, uid, gid, family, timeout)
    except ChildError:
        return "probe process died"


def verify_capture(family, uid, gid, inbound_port, timeout=5.0):
    """Return a dict describing the probe; raise ``VerifyError`` when the connection was not captured."""
    target, source = _PROBE[family]
    af = socket.AF_INET if family == IPV4 else socket.AF_INET6
    probe = {"family": family, "to": "%s:%d" % (target, PROBE_PORT), "uid": uid, "gid": gid}
    listener = socket.socket(af, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((source, inbound_port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise VerifyError("cannot listen on %s port %d: %s" % (source, inbound_port, exc.strerror))
            # The proxy already listens there: a connection it accepts was captured.
            listener.close()
            outcome = _connect_as(uid, gid, family, timeout)
            if outcome is not None:
                raise VerifyError("as uid %d, %s was not captured (%s) while a process listens on the inbound "
                                  "capture port %d" % (uid, probe["to"], outcome, inbound_port))
            probe["landed_on"] = "the process already listening on port %d" % inbound_port
            return probe
        listener.listen(1)
        listener.settimeout(timeout)
        outcome = _connect_as(uid, gid, family, timeout)
        if outcome is not None:
            raise VerifyError("as uid %d, the connection to %s was not captured: %s" % (uid, probe["to"], outcome))
        conn = listener.accept()[0]
        with conn:
            probe["landed_on"] = "%s:%d" % (source, inbound_port)
            probe["original_dst"] = _original_dst(conn, family)
        expected = ("%s:%d" if family == IPV4 else "[%s]:%d") % (target, PROBE_PORT)
        if probe["original_dst"] != expected:
            raise VerifyError("the probe reached port %d but its original destination was %s, not %s"
                              % (inbound_port, probe["original_dst"], expected))
        return probe
    except socket.timeout:
        raise VerifyError("the captured probe connection never arrived on port %d" % inbound_port)
    finally:
        listener.close()
