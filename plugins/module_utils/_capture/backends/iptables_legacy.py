# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The ``legacy`` backend: python-iptables (libiptc), under the xtables lock.

libiptc commits a table at a time (each commit replaces the whole table at once), so a family's
tables are all prepared before any is committed, in ``commit_order`` (see docs/failure-safety.md),
and tables already committed are put back if a later one fails. It reads and writes the current
network namespace: enter it first (``_system.namespace``).

libxtables registers an extension for one address family per process: python-iptables cannot
load, say, TPROXY for IPv4 and then for IPv6 ("target already registered"). So the legacy
backend does each family's work in a forked child that imports python-iptables afresh, and
this process never imports it. What the children run is in ``iptables_legacy_child``, imported
only by a run that forks one: a run that never touches legacy tables does not compile it.
"""

from __future__ import annotations

import importlib.util

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_nft import commit_order
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import TableDump
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import CAPTURE_TABLES, IPV4
from ansible_collections.meshops.sidecar.plugins.module_utils._system.child import ChildError, run_in_child


def loaded_legacy_tables(family):
    """Legacy tables that exist in this namespace. Opening one with libiptc would create it."""
    path = "/proc/net/ip_tables_names" if family == IPV4 else "/proc/net/ip6_tables_names"
    try:
        with open(path) as names:
            return set(names.read().split())
    except OSError:
        return set()


def _in_child(work, *args):
    """Run ``work(*args)`` in a forked child and return its JSON-able result (see the module docstring)."""
    try:
        result = run_in_child(child_code().with_iptc, work, *args)
    except ChildError as exc:
        raise BackendError("the python-iptables worker process died (a crash in libiptc?): %s" % exc)
    if "error" in result:
        raise BackendError(result["error"])
    return result["ok"]


def child_code():
    """The module of what the legacy children run (python-iptables work), imported when first needed."""
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy_child
    return iptables_legacy_child


class LegacyBackend:
    name = "legacy"

    def missing(self, families):
        if importlib.util.find_spec("iptc") is None:
            return ["python-iptables (the python3-iptables package, or pip install python-iptables)"]
        return []

    def read(self, family):
        if not loaded_legacy_tables(family) & set(CAPTURE_TABLES):
            # The child would find nothing to read: save its fork and python-iptables import
            # (0.3 s or more; every run reads IPv6, which is mostly not there).
            return {}
        chains_by_table = _in_child(child_code().legacy_read, family)
        dumps = {}
        for table, chains in chains_by_table.items():
            dump = TableDump()
            for chain, rules in chains:
                dump.chains[chain] = rules
            dumps[table] = dump
        return dumps

    def holds_rules(self, family):
        """True when a legacy table here has a rule or a chain of its own (Istio's reason to stay on legacy)."""
        if not loaded_legacy_tables(family):
            return False
        try:
            return _in_child(child_code().legacy_holds_rules, family)
        except BackendError:
            return False

    def apply(self, family, changes, before=None):  # pylint: disable=unused-argument
        """Apply ``changes`` under the xtables lock; ``before`` is not needed: the child reads the tables it changes."""
        _in_child(child_code().legacy_apply, family,
                  [(table, [op._asdict() for op in changes[table]]) for table in commit_order(changes)])

    def describe(self, family):
        return "python-iptables (libiptc), %s, under the xtables lock:" % ("IPv4" if family == IPV4 else "IPv6")
