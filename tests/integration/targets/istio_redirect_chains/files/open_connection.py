# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hold one TCP connection open across a capture change, and say whether it still carries data.

    open_connection.py WORKDIR VM_NETNS PEER_NETNS VM_ADDRESS PORT

A listener in VM_NETNS (where capture is applied, as on a VM's own namespace) and a client in
PEER_NETNS (the Ansible controller) open a connection and exchange one byte each way; WORKDIR/ready
is then written. Once WORKDIR/go exists, the VM's side speaks first, as sshd does when the module's
output goes back to the controller, and the peer answers. WORKDIR/result.json says which direction
still carried data. Addresses outside 198.18.0.0/15 and 2001:db8::/32 are refused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import os
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
ALLOWED = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8::/32"))
TIMEOUT = 3.0


def setns(path):
    with open(path) as handle:
        if hasattr(os, "setns"):
            os.setns(handle.fileno(), CLONE_NEWNET)
            return
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


def socket_in(netns, family):
    """A TCP socket created in ``netns`` (a socket stays in the namespace it was made in)."""
    home = "/proc/self/ns/net"
    with open(home) as own:
        setns("/run/netns/" + netns)
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        finally:
            if hasattr(os, "setns"):
                os.setns(own.fileno(), CLONE_NEWNET)
            else:
                ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").setns(own.fileno(), CLONE_NEWNET)
    return sock


def carries(sender, receiver, byte):
    try:
        sender.sendall(byte)
        return receiver.recv(1) == byte
    except OSError:
        return False


def main(workdir, vm_netns, peer_netns, address, port):
    ip = ipaddress.ip_address(address)
    if not any(ip in net for net in ALLOWED):
        sys.exit("refusing %s: test addresses only" % address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    listener = socket_in(vm_netns, family)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, int(port)))
    listener.listen(1)
    client = socket_in(peer_netns, family)
    client.settimeout(TIMEOUT)
    client.connect((address, int(port)))
    server, dummy = listener.accept()
    server.settimeout(TIMEOUT)
    before = carries(client, server, b"1") and carries(server, client, b"1")
    with open(os.path.join(workdir, "ready"), "w") as handle:
        handle.write("ready\n")
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(workdir, "go")) and time.time() < deadline:
        time.sleep(0.05)
    vm_to_peer = carries(server, client, b"2")
    peer_to_vm = carries(client, server, b"3")
    result = dict(before=before, vm_to_peer=vm_to_peer, peer_to_vm=peer_to_vm)
    with open(os.path.join(workdir, "result.json"), "w") as handle:
        json.dump(result, handle)
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
