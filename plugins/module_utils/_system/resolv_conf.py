# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""resolv.conf: the nameservers it lists. No I/O."""

from __future__ import annotations


def parse_resolv_conf(text):
    """Nameserver addresses of a resolv.conf text, in file order (what Istio captures DNS to)."""
    servers = []
    for line in (text or "").splitlines():
        fields = line.split("#")[0].split(";")[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
    return servers
