# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""IPv6 interface masks as ip6tables writes them (python-iptables 1.2.0 writes 0x01 bytes)."""

from __future__ import annotations

import ctypes

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_legacy_child import (
    fix_ipv6_interface_masks,
    has_damaged_interface_mask,
)


class FakeIp6(ctypes.Structure):
    """The interface fields of struct ip6t_ip6."""

    _fields_ = [("iniface", ctypes.c_char * 16), ("outiface", ctypes.c_char * 16),
                ("iniface_mask", ctypes.c_char * 16), ("outiface_mask", ctypes.c_char * 16)]


def test_python_iptables_masks_are_repaired():
    ip6 = FakeIp6(outiface=b"lo", outiface_mask=b"\x01\x01\x01")  # what python-iptables 1.2.0 writes for -o lo
    assert has_damaged_interface_mask(ip6)
    fix_ipv6_interface_masks(ip6)
    assert bytes(ip6.outiface_mask) == b"\xff\xff\xff"
    assert ip6.iniface_mask == b""  # no -i: no mask
    assert not has_damaged_interface_mask(ip6)


def test_kernel_only_compares_masked_bits():
    """Why it matters: with 0x01 masks, vm0 passes for lo."""
    def matches(device, name, mask):
        device, name = device.ljust(16, b"\0"), name.ljust(16, b"\0")
        return all(((d ^ n) & m) == 0 for d, n, m in zip(device, name, mask.ljust(16, b"\0")))

    assert matches(b"vm0", b"lo", b"\x01\x01\x01")
    assert not matches(b"vm0", b"lo", b"\xff\xff\xff")
    assert matches(b"lo", b"lo", b"\xff\xff\xff")


def test_wildcard_masks_keep_their_length():
    ip6 = FakeIp6(iniface=b"veth", iniface_mask=b"\x01\x01\x01\x01")  # -i veth+
    fix_ipv6_interface_masks(ip6)
    assert ip6.iniface_mask == b"\xff" * 4  # ctypes reads up to the first zero byte
