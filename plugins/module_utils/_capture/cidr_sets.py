# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""``cidr_sets``: the CIDR lists matched with one set lookup per family and per list. No I/O.

Istio writes one rule per CIDR, so every new outbound connection walks the whole list; with
``cidr_sets`` the list becomes one set (an nftables interval set in native mode, an ipset
``hash:net`` on the iptables backends) and one rule matching it, where Istio's rules would stand.

Set contents compare as merged intervals: nftables' auto-merge joins neighbours, ipset keeps what
was added, a user may add ``10.0.0.0/24`` and ``10.0.1.0/24`` where the plan says ``10.0.0.0/23``.
Two sets match the same destinations exactly when their merged intervals are equal.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import NamedTuple, Tuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, address_text

EXCLUDE = "exclude"  # exclude_outbound_ip_ranges: never captured
INCLUDE = "include"  # outbound_ip_ranges: the only destinations captured
_SUFFIX = {IPV4: "v4", IPV6: "v6"}
# Every set name the module may create: it owns these and nothing else (ipsets are per namespace,
# shared with every other tool there).
SET_NAMES = tuple("istio-%s-%s" % (purpose, _SUFFIX[family])
                  for purpose in (EXCLUDE, INCLUDE) for family in (IPV4, IPV6))
_BITS = {IPV4: 32, IPV6: 128}


_IPTABLES_MATCH = "--match-set istio-"  # an iptables rule's match on a set of ours (SET_NAMES)


def set_name(purpose, family):
    """``istio-exclude-v4``, ``istio-include-v6``, ..."""
    return "istio-%s-%s" % (purpose, _SUFFIX[family])


class CidrSet(NamedTuple):
    """One planned set: its name, address family, and contents as merged intervals."""

    name: str
    family: str
    intervals: Tuple[Tuple[int, int], ...]

    def cidrs(self):
        """The contents as the fewest CIDRs (what is written): ``10.0.0.0/23``, never ``/0``
        (ipset's ``hash:net`` has no ``/0``: it becomes two ``/1``)."""
        return interval_cidrs(self.intervals, self.family)


@functools.lru_cache(maxsize=4)  # both planners and the ipset reconcile ask, for the same options
def planned_sets(opts):
    """The sets ``opts`` needs, ``{(purpose, family): CidrSet}``: none without ``cidr_sets``, and none
    for a list that is empty in a family (no set, no rule: as Istio writes no rule for it)."""
    if not opts.cidr_sets:
        return {}
    lists = [(EXCLUDE, opts.exclude_outbound_ip_ranges)]
    if opts.outbound_ip_ranges != "*":
        lists.append((INCLUDE, opts.outbound_ip_ranges))
    sets = {}
    for purpose, cidrs in lists:
        for family in opts.families:
            texts = [text for fam, text in cidrs if fam == family]
            if texts:
                sets[(purpose, family)] = CidrSet(set_name(purpose, family), family, merged_intervals(
                    _interval_of_cidr(text) for text in texts))
    return sets


def iptables_rules_match_sets(tables):
    """Whether any nat rule in ``{family: {table: TableDump}}`` (a run's read, errors skipped) matches a set of ours.

    Beside the set names rather than in ``ipset_reconcile``: a run without ``cidr_sets`` asks it
    without importing the ipset code."""
    for dumps in tables.values():
        nat = dumps.get("nat") if isinstance(dumps, dict) else None
        if nat is None:
            continue
        for rules in nat.chains.values():
            if any(_IPTABLES_MATCH in args for args in rules):
                return True
    return False


def merged_intervals(intervals):
    """Sorted, overlapping and adjacent ``(first, last)`` integer intervals joined."""
    merged = []
    for first, last in sorted(intervals):
        if merged and first <= merged[-1][1] + 1:
            if last > merged[-1][1]:
                merged[-1][1] = last
        else:
            merged.append([first, last])
    return tuple((first, last) for first, last in merged)


def _interval_of_cidr(text):
    if len(text.split()) != 1:  # inet_aton stops at white space: "198.18.4.2 nomatch" would read as the address
        raise ValueError("not a CIDR: %r" % text)
    address, length = text.split("/", 1) if "/" in text else (text, "")
    if "." in address and ":" not in address:  # IPv4, the common case of long lists: no ipaddress object
        try:
            first = struct.unpack("!I", socket.inet_aton(address))[0]
        except OSError:
            raise ValueError("not an IPv4 address: %r" % text)
        bits = 32 - int(length or 32)
        if not 0 <= bits <= 32 or address.count(".") != 3:
            raise ValueError("not an IPv4 CIDR: %r" % text)
        first &= ~((1 << bits) - 1) & 0xFFFFFFFF
        return first, first | ((1 << bits) - 1)
    network = ipaddress.ip_network(text, strict=False)
    return int(network.network_address), int(network.broadcast_address)


@functools.lru_cache(maxsize=16)  # the transaction, the digest and the result each write the same sets
def interval_cidrs(intervals, family):
    """The fewest CIDRs covering exactly ``intervals``, ``/0`` split in two halves."""
    bits = _BITS[family]
    out = []  # a list: callers must not change it (it is cached)
    for first, last in intervals:
        length = _prefix_length(first, last, bits)
        if length is not None and length > 0:
            out.append("%s/%d" % (_text_of(first, family), length))
            continue
        make = ipaddress.IPv4Address if family == IPV4 else ipaddress.IPv6Address
        for network in ipaddress.summarize_address_range(make(first), make(last)):
            halves = network.subnets() if network.prefixlen == 0 else (network,)
            out.extend("%s/%d" % (address_text(half.network_address), half.prefixlen) for half in halves)
    return out


def _prefix_length(first, last, bits):
    """N when ``first``-``last`` is exactly one CIDR ``/N``, else None."""
    size = last - first + 1
    if size & (size - 1) or first % size:
        return None
    return bits - size.bit_length() + 1


def _text_of(value, family):
    """An address as inet_ntop prints it (``model.address_text``), from its integer, without ``ipaddress``."""
    if family == IPV4:
        return socket.inet_ntoa(struct.pack("!I", value))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def intervals_of_texts(texts):
    """Merged intervals of address texts as a kernel lists them: ``A``, ``A/N``, or ``A-B``."""
    out = []
    for text in texts:
        if "-" in text:
            low, high = text.split("-", 1)
            out.append((int(ipaddress.ip_address(low)), int(ipaddress.ip_address(high))))
        else:
            out.append(_interval_of_cidr(text))
    return merged_intervals(out)


def intervals_of_nft_elements(elements):
    """Merged intervals of an nft JSON set's ``elem`` list: ``"A"``, ``{"prefix": ...}``, ``{"range": [A, B]}``
    (each maybe wrapped in ``{"elem": {"val": ...}}``)."""
    out = []
    for element in elements:
        if isinstance(element, dict) and "elem" in element:
            element = element["elem"].get("val")
        if isinstance(element, str):
            out.append(_interval_of_cidr(element))
        elif isinstance(element, dict) and "prefix" in element:
            prefix = element["prefix"]
            out.append(_interval_of_cidr("%s/%d" % (prefix["addr"], prefix["len"])))
        elif isinstance(element, dict) and "range" in element:
            low, high = element["range"]
            out.append((int(ipaddress.ip_address(low)), int(ipaddress.ip_address(high))))
        else:
            raise ValueError("unknown set element %r" % (element,))
    return merged_intervals(out)


@functools.lru_cache(maxsize=16)  # the result's rules and the diff show the same sets
def describe_intervals(intervals, family):
    """Intervals as short text for a diff: ``10.0.0.0/23``, or ``A-B`` where no CIDR fits."""
    out = []
    for first, last in intervals:
        length = _prefix_length(first, last, _BITS[family])
        if length is None:
            out.append("%s-%s" % (_text_of(first, family), _text_of(last, family)))
        else:
            out.append("%s/%d" % (_text_of(first, family), length))
    return out
