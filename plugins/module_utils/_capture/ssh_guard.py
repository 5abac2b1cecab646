# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Do not cut the branch Ansible sits on: find the SSH session the module runs under.

``become`` (sudo) drops ``SSH_CONNECTION`` from the environment, so the process tree is walked
up to the process that still carries it (root may read any ``/proc/PID/environ``). Root without
CAP_SYS_PTRACE (a container, a hardened host) may not read the session user's environment: when
the walk meets an ``sshd`` process that way, the session's port is not known, and the ports
sshd is configured with (``sshd -T``) stand for it, so that the guard fails closed.
"""

from __future__ import annotations

import ipaddress
import os
from typing import NamedTuple, Optional, Tuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import intervals_of_texts
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ProcessRunner

# OpenSSH 9.8 runs each session in sshd-session (and, since 10.0, sshd-auth) instead of sshd.
_SSHD_NAMES = frozenset(("sshd", "sshd-session", "sshd-auth"))
DEFAULT_SSH_PORT = 22


class SshSession(NamedTuple):
    """The SSH session a task runs over: the server's port(s), its network namespace, the client."""

    ports: Tuple[int, ...]
    netns_inode: int
    client: Optional[str] = None  # the client's address; None when unknown
    known: bool = True  # False: environ unreadable, ``ports`` are sshd's configured ones

    def describe(self):
        if self.known:
            return "port %d" % self.ports[0]
        return "port %s (sshd's configured ports: the session's own could not be read)" % (
            " or ".join(str(port) for port in self.ports))


def _environ(pid):
    """The process's environment; None when it may not be read (another user's, without CAP_SYS_PTRACE)."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            entries = handle.read().split(b"\0")
    except PermissionError:
        return None
    except OSError:
        return {}
    return dict(entry.decode("utf-8", "replace").split("=", 1) for entry in entries if b"=" in entry)


def _status(pid):
    """``(name, parent pid)`` from /proc/PID/status (readable by anyone)."""
    name, parent = "", 0
    try:
        with open("/proc/%d/status" % pid) as handle:
            for line in handle:
                if line.startswith("Name:"):
                    name = line.split(None, 1)[1].strip() if len(line.split()) > 1 else ""
                elif line.startswith("PPid:"):
                    parent = int(line.split()[1])
                    break
    except OSError:
        pass
    return name, parent


def _netns_inode(pid):
    """The network namespace of ``pid``; this process's own when that one may not be looked at (another
    user's process, without CAP_SYS_PTRACE): sudo and the shells between the session and the module do
    not change namespaces."""
    for path in ("/proc/%d/ns/net" % pid, "/proc/self/ns/net"):
        try:
            return os.stat(path).st_ino
        except OSError:
            continue
    return None


def sshd_ports(runner=None):
    """The ports sshd is configured to listen on (``sshd -T``), else ``(22,)``."""
    runner = runner or ProcessRunner()
    sshd = runner.which("sshd")
    ports = []
    if sshd:
        try:
            rc, out, dummy = runner.run([sshd, "-T"])
        except OSError:
            rc, out = 1, ""
        for line in out.splitlines() if rc == 0 else ():
            key, dummy, value = line.partition(" ")
            if key == "port" and value.strip().isdigit() and int(value) not in ports:
                ports.append(int(value))
    return tuple(ports) or (DEFAULT_SSH_PORT,)


def ssh_session(pid=None, configured_ports=sshd_ports):
    """The ``SshSession`` above this process, or None outside SSH."""
    pid = pid or os.getpid()
    unreadable_under_sshd = None  # the pid of an sshd met after an environment that could not be read
    unreadable = False
    while pid > 1:
        env = _environ(pid)
        if env is None:
            unreadable = True
        else:
            value = env.get("SSH_CONNECTION")
            if value:
                fields = value.split()
                if len(fields) == 4 and fields[3].isdigit():
                    inode = _netns_inode(pid)
                    return None if inode is None else SshSession((int(fields[3]),), inode, fields[0])
                return None
        name, parent = _status(pid)
        if unreadable and name in _SSHD_NAMES and unreadable_under_sshd is None:
            unreadable_under_sshd = pid
        pid = parent
    if unreadable_under_sshd is not None:
        inode = _netns_inode(unreadable_under_sshd)
        if inode is not None:
            return SshSession(configured_ports(), inode, None, known=False)
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


def captures_outbound_to(opts, address):
    """True when the rules would redirect a new connection of an ordinary user to ``address``
    (None: any address); what conntrack takes for new when it picks up an open connection."""
    if opts.outbound_ip_ranges == ():
        return False
    if address is None:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    if ip.is_loopback:
        return False

    family = IPV4 if ip.version == 4 else IPV6

    def within(cidrs):
        value = int(ip)
        return any(first <= value <= last
                   for first, last in intervals_of_texts([cidr for fam, cidr in cidrs if fam == family]))

    if within(opts.exclude_outbound_ip_ranges):
        return False
    return opts.outbound_ip_ranges == "*" or within(opts.outbound_ip_ranges)
