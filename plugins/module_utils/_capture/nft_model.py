# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The vocabulary of Istio's native nftables tables: names, base chains, the planned tables' types
and the ``nft -f`` lines that declare them. No I/O, no planning.

Shared by the planner (``nft_plan``), the reconciler (``nft_reconcile``), the renderer
(``nft_render``) and the backend (``backends.nftables``), so that a run in iptables mode, which
only looks for Istio's tables to remove them, does not import the planner.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6

FAMILY = "inet"
TABLE_PREFIX = "istio-proxy-"
# Istio renders its tables in this order.
TABLES = ("nat", "mangle", "raw")
# Base chains of each table: (type, hook, priority).
BASE_CHAINS = {
    "nat": {"prerouting": ("nat", "prerouting", -100), "output": ("nat", "output", -100)},
    "mangle": {"prerouting": ("filter", "prerouting", -150), "output": ("route", "output", -150)},
    "raw": {"prerouting": ("filter", "prerouting", -300), "output": ("filter", "output", -300)},
}
# Declaration order: the base chains, then the regular chains.
CHAIN_ORDER = {
    "nat": ("prerouting", "output", "istio-inbound", "istio-redirect", "istio-in-redirect", "istio-output",
            "istio-output-dns"),
    "mangle": ("prerouting", "output", "istio-divert", "istio-tproxy", "istio-inbound", "istio-drop"),
    "raw": ("prerouting", "output", "istio-inbound", "istio-output-dns"),
}


def istio_table_names(names):
    """Istio's tables (``istio-proxy-*``) among the ``inet`` table ``names``, sorted."""
    return sorted(name for name in names if name.startswith(TABLE_PREFIX))


def table_name(short):
    """``nat`` -> ``istio-proxy-nat``."""
    return TABLE_PREFIX + short


class NftChain(NamedTuple):
    """A chain the kernel holds: ``base`` is ``(type, hook, priority)`` for base chains, else None."""

    name: str
    base: Optional[Tuple[str, str, int]]
    rules: Tuple[str, ...]


class NftTable(NamedTuple):
    """An Istio table (full name), its chains in declaration order, and its sets (``cidr_sets``)."""

    name: str
    chains: Tuple[NftChain, ...]
    sets: Tuple[object, ...] = ()  # _capture.cidr_sets.CidrSet, in the nat table only


# The declaration of a CIDR set: intervals, neighbours merged (what a user adds by hand merges too).
SET_TYPE = {IPV4: "ipv4_addr", IPV6: "ipv6_addr"}
SET_FLAGS = ("interval",)


def add_set_lines(table, cidr_set):
    """``add set`` and ``add element`` for one CIDR set of ``table`` (full name)."""
    head = "add set inet %s %s { type %s ; flags %s ; auto-merge ; }" % (
        table, cidr_set.name, SET_TYPE[cidr_set.family], ", ".join(SET_FLAGS))
    return [head, "add element inet %s %s { %s }" % (table, cidr_set.name, ", ".join(cidr_set.cidrs()))]


def add_chain_line(table, chain, base):
    """``add chain`` for a regular chain, or a base chain with its numeric priority."""
    if base is None:
        return "add chain inet %s %s" % (table, chain)
    return "add chain inet %s %s { type %s hook %s priority %d ; }" % ((table, chain) + tuple(base))
