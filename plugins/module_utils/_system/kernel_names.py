# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""Names the kernel defines: network interfaces and named network namespaces. No I/O.

Both modules, the role's filters and the boot path check names here, so a name one accepts
the others accept too.
"""

from __future__ import annotations

IFNAME_MAX = 15  # IFNAMSIZ - 1: the longest interface name the kernel takes
NETNS_NAME_MAX = 255  # a namespace name is a file name under /run/netns


def ifname_error(name):
    """Why ``name`` cannot be a network interface name (the kernel's dev_valid_name()), or None."""
    if not isinstance(name, str) or name == "":
        return "must be a non-empty string"
    if len(name) > IFNAME_MAX:
        return "is longer than %d characters" % IFNAME_MAX
    if len(name.encode("utf-8")) > IFNAME_MAX:
        return "is longer than %d bytes" % IFNAME_MAX
    if name in (".", ".."):
        return "must not be '.' or '..'"
    for char in name:
        if char in "/:%\0" or char.isspace():
            # '%' is not forbidden by the kernel, but 'veth%d' is a template it fills in with a number.
            return "must not contain '/', ':', '%', NUL or white space"
    return None


def netns_name_error(name):
    """Why ``name`` cannot name a network namespace, or None when it can."""
    if not isinstance(name, str) or name == "":
        return "must be a non-empty string"
    if "/" in name or "\0" in name:
        return "must not contain '/' or NUL"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if len(name.encode("utf-8")) > NETNS_NAME_MAX:
        return "is longer than %d bytes, the longest file name the kernel allows" % NETNS_NAME_MAX
    return None
