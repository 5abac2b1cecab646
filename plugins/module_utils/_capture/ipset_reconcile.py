# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""ipset reconcile for ``cidr_sets`` on the iptables backends: the sets wanted, as they are, and the
``ipset restore`` scripts between. No I/O.

The change has two halves around the iptables transaction: ``fill`` (before it) creates the sets
the new rules match and refills the ones whose contents differ, ``destroy`` (after it) removes the
sets no rule matches any more; a set in use cannot be destroyed. A set that exists is refilled
through a temporary twin and ``ipset swap``, so a connection sees the old contents or the new,
never a half-filled set.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.ipset import (
    OWNED_NAMES,
    TEMPORARY_SUFFIX,
    IpsetHeader,
    IpsetState,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import interval_cidrs, planned_sets
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6

SET_TYPE = "hash:net"
_FAMILY = {IPV4: "inet", IPV6: "inet6"}
_FAMILY_OF = {"inet": IPV4, "inet6": IPV6}
MIN_MAXELEM = 65536  # ipset's default
_HOST_SUFFIX = re.compile(r"/(32|128)$")


class IpsetConflict(ValueError):
    """A set of ours by name that no swap can refill (another type or family): nothing is changed."""


class IpsetChanges(NamedTuple):
    fill: str = ""  # ipset restore script, run before the iptables transaction
    destroy: tuple = ()  # names of the sets to destroy after it
    filled: tuple = ()  # names of the sets the script creates or refills

    def __bool__(self):
        return bool(self.fill or self.destroy)

    def destroy_commands(self):
        return ["ipset destroy %s" % name for name in self.destroy]


def wanted_ipsets(opts):
    """``{name: IpsetState}`` the options need on the iptables backends (none without ``cidr_sets``)."""
    if opts is None or opts.native_nftables:
        return {}
    return {cidr_set.name: IpsetState(SET_TYPE, _FAMILY[cidr_set.family], cidr_set.intervals)
            for cidr_set in planned_sets(opts).values()}


def plan_changes(wanted, live):
    """``IpsetChanges`` turning the sets of ours ``live`` (``IpsetBackend.read()``) into ``wanted``."""
    fill, destroyed, filled = [], set(), []
    for name in sorted(wanted):
        want, have = wanted[name], live.get(name)
        if have == want:
            continue
        filled.append(name)
        if have is not None and (have.type, have.family) != (want.type, want.family):
            raise IpsetConflict(
                "cidr_sets=true: the ipset %s exists as %s family %s, not %s family %s, so its contents cannot "
                "be swapped: it may not be this module's. Destroy it (ipset destroy %s) or set cidr_sets=false"
                % (name, have.type, have.family, want.type, want.family, name))
        target = name if have is None else name + TEMPORARY_SUFFIX
        if target != name and target in live:
            fill.append("destroy %s" % target)  # left by a run that was killed
        fill += create_lines(target, want)
        if target != name:
            fill += ["swap %s %s" % (target, name), "destroy %s" % target]
            destroyed.add(target)
    destroy = tuple(name for name in sorted(live) if name in OWNED_NAMES and name not in wanted and name not in destroyed)
    return IpsetChanges(_script(fill), destroy, tuple(filled))


def expected_headers(wanted, filled):
    """``{name: IpsetHeader}`` of the sets ``wanted`` after a run: those it ``filled`` hold what
    ``create_lines`` wrote; the others were already the plan, written in any way (entries None: not counted)."""
    return {name: IpsetHeader(state.type, state.family,
                              len(interval_cidrs(state.intervals, _FAMILY_OF[state.family])) if name in filled else None)
            for name, state in wanted.items()}


def headers_match(now, expected):
    """``read_headers()`` against ``expected_headers()``: same sets, same make, counted entries equal."""
    return set(now) == set(expected) and all(
        (now[name].type, now[name].family) == (want.type, want.family)
        and (want.entries is None or now[name].entries == want.entries)
        for name, want in expected.items())


def create_lines(name, state):
    """``create`` and ``add`` lines of one set, sized for its contents."""
    cidrs = interval_cidrs(state.intervals, _FAMILY_OF[state.family])
    hashsize = 1024
    while hashsize < len(cidrs):
        hashsize *= 2
    lines = ["create %s %s family %s hashsize %d maxelem %d"
             % (name, state.type, state.family, hashsize, max(MIN_MAXELEM, len(cidrs)))]
    lines += ["add %s %s" % (name, cidr) for cidr in cidrs]
    return lines


def _script(lines):
    return "".join(line + "\n" for line in lines)


def render_ipsets(sets):
    """Sets ``{name: IpsetState}`` as short ``ipset save``-like text: ``create`` then the members."""
    lines = []
    for name in sorted(sets):
        found = sets[name]
        lines.append("create %s %s family %s" % (name, found.type, found.family))
        if found.intervals and found.intervals[0] == "unreadable":
            lines += ["add %s %s" % (name, member) for member in found.intervals[1:]]
        else:
            # As ipset save prints them: a host without its /32 or /128.
            lines += ["add %s %s" % (name, _HOST_SUFFIX.sub("", text))
                      for text in interval_cidrs(found.intervals, _FAMILY_OF.get(found.family, IPV4))]
    return "".join(line + "\n" for line in lines)


def describe_headers(headers):
    """``{name: IpsetHeader}`` in one line: ``istio-exclude-v4 (hash:net inet, 10000 entries)``."""
    return ", ".join("%s (%s %s, %s entries)" % (name, found.type, found.family,
                                                 "any number of" if found.entries is None else found.entries)
                     for name, found in sorted(headers.items())) or "none"
