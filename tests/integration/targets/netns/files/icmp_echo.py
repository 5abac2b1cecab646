# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Send ICMP echo requests to one address and wait for the replies: a ping without iputils.

Usage: icmp_echo.py ADDRESS [COUNT]. Exits 0 when every request got its reply within 2 seconds,
1 otherwise. Needs root (raw sockets). Run it in a namespace with ``ip netns exec NAME``.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo(address, sequence, timeout=2.0):
    version = ipaddress.ip_address(address).version
    if version == 4:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        request_type, reply_type = 8, 0
    else:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        request_type, reply_type = 128, 129  # the kernel fills in the ICMPv6 checksum
    ident = os.getpid() & 0xFFFF
    payload = b"meshops.sidecar netns test"
    header = struct.pack("!BBHHH", request_type, 0, 0, ident, sequence)
    if version == 4:
        header = struct.pack("!BBHHH", request_type, 0, checksum(header + payload), ident, sequence)
    with sock:
        started = time.monotonic()
        sock.sendto(header + payload, (address, 0))
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                return None
            packet, source = sock.recvfrom(65535)
            if version == 4:
                packet = packet[(packet[0] & 0x0F) * 4:]  # IPv4 raw sockets include the IP header
            if len(packet) < 8 or ipaddress.ip_address(source[0].split("%")[0]) != ipaddress.ip_address(address):
                continue
            kind, _code, _sum, reply_ident, reply_sequence = struct.unpack("!BBHHH", packet[:8])
            if kind == reply_type and reply_ident == ident and reply_sequence == sequence:
                return (time.monotonic() - started) * 1000.0


def main():
    address = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    lost = 0
    for sequence in range(1, count + 1):
        took = echo(address, sequence)
        if took is None:
            lost += 1
            print("no reply from %s (seq %d)" % (address, sequence))
        else:
            print("reply from %s: seq=%d time=%.3f ms" % (address, sequence, took))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
