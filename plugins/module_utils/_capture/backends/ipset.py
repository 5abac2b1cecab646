# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The ipsets of ``cidr_sets`` on the iptables backends, through the ``ipset`` tool.

Only the sets named in ``_capture.cidr_sets.SET_NAMES`` (and their temporary twins, see
``_capture.ipset_reconcile``) are ever read or written: ipsets are shared by every tool of the
namespace. ``read()`` lists the names (cheap), then saves only ours; ``apply()`` feeds one
``ipset restore`` script.
"""

from __future__ import annotations

from collections import namedtuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import (
    SET_NAMES,
    intervals_of_texts,
)

# How a set is made (``hash:net``, ``inet``/``inet6``) and what it holds, as merged intervals.
IpsetState = namedtuple("IpsetState", "type family intervals")
# How a set is made and how many entries it holds (``ipset list -terse``: no members listed).
IpsetHeader = namedtuple("IpsetHeader", "type family entries")
TEMPORARY_SUFFIX = "-new"
OWNED_NAMES = frozenset(SET_NAMES + tuple(name + TEMPORARY_SUFFIX for name in SET_NAMES))


class IpsetBackend:
    name = "ipset"

    def __init__(self, runner):
        """``runner``: ``run(argv, data=None) -> (rc, out, err)`` and ``which(name)`` (``_system.commands``)."""
        self._runner = runner
        self._ipset = None

    def _binary(self):
        if self._ipset is None:
            self._ipset = self._runner.which("ipset") or ""
        return self._ipset

    def missing(self):
        return [] if self._binary() else ["ipset"]

    def read(self):
        """``{name: IpsetState}`` of the sets of ours in the current namespace."""
        if not self._binary():
            return {}
        names = self._run(["list", "-name"]).split()
        found = {}
        for name in sorted(OWNED_NAMES.intersection(names)):
            rc, out, err = self._runner.run([self._binary(), "save", name])
            if rc != 0:
                if "does not exist" in (err or out):
                    continue  # destroyed since it was listed
                raise BackendError("ipset save %s failed (rc=%d): %s" % (name, rc, (err or out).strip()))
            found[name] = parse_save(name, out)
        return found

    def read_headers(self):
        """``{name: IpsetHeader}`` of the sets of ours: what they are and their size, not their members
        (a read-back: listing 10,000 members and merging them again costs 0.1 s)."""
        if not self._binary():
            return {}
        names = self._run(["list", "-name"]).split()
        found = {}
        for name in sorted(OWNED_NAMES.intersection(names)):
            rc, out, err = self._runner.run([self._binary(), "list", "-terse", name])
            if rc != 0:
                if "does not exist" in (err or out):
                    continue
                raise BackendError("ipset list -terse %s failed (rc=%d): %s" % (name, rc, (err or out).strip()))
            found[name] = parse_terse(out)
        return found

    def _run(self, args):
        rc, out, err = self._runner.run([self._binary()] + args)
        if rc != 0:
            raise BackendError("ipset %s failed (rc=%d): %s" % (" ".join(args), rc, (err or out).strip()))
        return out

    def apply(self, script):
        """Run an ``ipset restore`` script; each of its commands is atomic, a swap included."""
        if not script:
            return
        rc, out, err = self._runner.run([self._binary(), "restore"], data=script)
        if rc != 0:
            raise BackendError("ipset restore refused the change (rc=%d): %s" % (rc, (err or out).strip()))

    def destroy(self, names):
        """Destroy the sets ``names``; return those the kernel keeps because a rule still matches them
        (one not of this run: the other iptables backend's, or someone else's)."""
        in_use = []
        for name in names:
            rc, out, err = self._runner.run([self._binary(), "destroy", name])
            if rc != 0:
                message = (err or out).strip()
                if "in use" in message:
                    in_use.append(name)
                elif "does not exist" not in message:
                    raise BackendError("ipset destroy %s failed (rc=%d): %s" % (name, rc, message))
        return in_use

    @staticmethod
    def describe():
        return "ipset restore <<EOF"


def parse_save(name, text):
    """``IpsetState`` of one set from ``ipset save NAME``: its ``create`` line and its ``add`` lines."""
    kind, family, members = None, None, []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "create" and words[1] == name:
            kind = words[2]
            family = words[words.index("family") + 1] if "family" in words[3:] else None
        elif len(words) >= 3 and words[0] == "add" and words[1] == name:
            # An entry with options (``nomatch``, a timeout) is not a plain member: unreadable, rebuilt.
            members.append(" ".join(words[2:]))
    try:
        intervals = intervals_of_texts(members)
    except ValueError:
        intervals = ("unreadable",) + tuple(members)  # never equal to a plan: rebuilt
    return IpsetState(kind, family, intervals)


def parse_terse(text):
    """``IpsetHeader`` from ``ipset list -terse NAME``."""
    kind = family = entries = None
    for line in text.splitlines():
        key, dummy, value = line.partition(":")
        value = value.strip()
        if key == "Type":
            kind = value
        elif key == "Header":
            words = value.split()
            family = words[words.index("family") + 1] if "family" in words[:-1] else None
        elif key == "Number of entries" and value.isdigit():
            entries = int(value)
    return IpsetHeader(kind, family, entries)
