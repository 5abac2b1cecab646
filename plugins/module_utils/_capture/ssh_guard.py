# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Do not cut the branch Ansible sits on: find the SSH session the module runs under.

``become`` (sudo) drops ``SSH_CONNECTION`` from the environment, so the process tree is walked
up to the process that still carries it (root may read any ``/proc/PID/environ``).
"""

from __future__ import annotations

import os


def _environ(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:
        return {}
    return dict(entry.decode("utf-8", "replace").split("=", 1) for entry in entries if b"=" in entry)


def _parent(pid):
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("PPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def ssh_session(pid=None):
    """``(server_port, netns_inode)`` of the SSH session above this process, or None outside SSH."""
    pid = pid or os.getpid()
    while pid > 1:
        value = _environ(pid).get("SSH_CONNECTION")
        if value:
            fields = value.split()
            if len(fields) == 4 and fields[3].isdigit():
                try:
                    inode = os.stat("/proc/%d/ns/net" % pid).st_ino
                except OSError:
                    return None
                return int(fields[3]), inode
            return None
        pid = _parent(pid)
    return None


def _port_in(port, specs):
    for spec in specs:
        low, dummy, high = spec.partition(":")
        if int(low) <= port <= int(high or low):
            return True
    return False


def captures_inbound_port(opts, port):
    """True when the rules would send new connections to ``port`` to the proxy."""
    if opts.inbound_ports == ():
        return False
    if opts.inbound_ports == "*":
        return port != opts.inbound_tunnel_port and not _port_in(port, opts.exclude_inbound_ports)
    return _port_in(port, opts.inbound_ports)
