# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""The ``nft`` backend: the iptables-nft tools.

State is read with ``iptables-nft-save``; a change is one ``iptables-nft-restore --noflush`` run
per family. Read and write the current network namespace: enter it first (``_system.namespace``).

``iptables-nft-restore`` (1.8.x) commits each ``*table ... COMMIT`` block as its own nftables
transaction, and stops at the first block it cannot parse or the kernel refuses: blocks before it
stay committed. So when a restore fails, the tables it already committed are put back to the
state the change was planned from, with a second restore of the reverse change; the error says
which tables were committed and whether they were put back. Tables are committed in
``commit_order`` (see docs/failure-safety.md).
"""

from __future__ import annotations

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_save
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import BUILTIN_CHAINS, CAPTURE_TABLES, IPV4
from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import (
    owned_state,
    plan_changes,
    restore_text,
    unmarked_rules,
)

# Tables whose rules only support the capture in nat: raw's DNS conntrack zones keep nat's DNS
# redirect apart from the proxy's own DNS; mangle's drop of INVALID packets keeps packets nat did
# not rewrite from reaching the application, and its TPROXY rules capture inbound as nat's
# REDIRECT does. In the order packets meet them.
_SUPPORT_TABLES = ("raw", "mangle")
_CAPTURE_TABLE = "nat"


def commit_order(changes):
    """The tables of ``changes`` in the order to commit them, so every state between two commits is safe.

    A support table that gains rules goes before nat (what nat's new rules rely on is there
    first); one that only loses rules goes after nat (nat's old rules keep what they rely on until
    they are gone). Between two commits traffic is thus handled as the old or the new
    configuration handles it.
    """
    def only_removes(table):
        return all(op.kind in ("delete", "delete_chain") or (op.kind == "declare" and _deleted(op.chain, changes[table]))
                   for op in changes[table])

    gaining = [table for table in _SUPPORT_TABLES if table in changes and not only_removes(table)]
    losing = [table for table in reversed(_SUPPORT_TABLES) if table in changes and only_removes(table)]
    capture = [_CAPTURE_TABLE] if _CAPTURE_TABLE in changes else []
    others = [table for table in changes if table not in _SUPPORT_TABLES + (_CAPTURE_TABLE,)]
    return gaining + capture + losing + others


def _deleted(chain, ops):
    return any(op.kind == "delete_chain" and op.chain == chain for op in ops)


def ordered_restore_text(changes, order):
    """``restore_text`` of ``changes`` with the tables in ``order``."""
    return "".join(restore_text({table: changes[table]}) for table in order)


def touched_rules(changes):
    """``(table, chain, args)`` of the built-in chain rules a change deletes or writes: ours, record or not."""
    return {(table, op.chain, op.args) for table, ops in changes.items() for op in ops
            if op.chain in BUILTIN_CHAINS and op.kind in ("delete", "append", "insert")}


def kernel_table_names(family):
    """The names of the family's nftables tables (iptables-nft's are ``ip``/``ip6`` tables), None when unknown."""
    return netlink.nft_table_names(netlink.NFPROTO_IPV4 if family == IPV4 else netlink.NFPROTO_IPV6)


def _tool(family, suffix):
    return ("iptables" if family == IPV4 else "ip6tables") + suffix


class NftBackend:
    name = "nft"

    def __init__(self, run, which):
        """``run(argv, data=None) -> (rc, out, err)``; ``which(name) -> path or None``."""
        self._run = run
        self._which = which
        self._last_read = {}  # family -> the parsed save a change is planned from (the run reads, then applies)

    def missing(self, families):
        """Names of the tools this backend needs that the target lacks."""
        return [tool for family in families for tool in (_tool(family, "-nft-save"), _tool(family, "-nft-restore"))
                if not self._which(tool)]

    def read(self, family):
        names = kernel_table_names(family)
        if names is not None and not set(names) & set(CAPTURE_TABLES):
            # No nat, mangle or raw table of the family in the kernel: nothing of ours, no process to start.
            self._last_read[family] = parse_save("")
            return self._last_read[family]
        rc, out, err = self._run([self._which(_tool(family, "-nft-save"))])
        if rc != 0:
            raise BackendError("%s failed (rc=%d): %s" % (_tool(family, "-nft-save"), rc, err.strip()))
        self._last_read[family] = parse_save(out)
        return self._last_read[family]

    def apply(self, family, changes, before=None):
        """Apply ``changes`` (``_capture.reconcile.plan_changes``); on failure put back what was committed.

        ``before``: the owned state (``{table: OwnedTable}``) the change was planned from; when not
        given, the one of this backend's last read of the family (the run plans from it), else read now.
        """
        tool = _tool(family, "-nft-restore")
        claimed = touched_rules(changes)
        if before is None:
            dumps = self._last_read[family] if family in self._last_read else self.read(family)
            before = owned_state(dumps, claimed)
        claimed = claimed | unmarked_rules(before)
        order = commit_order(changes)
        failure = self._restore(family, ordered_restore_text(changes, order))
        if failure is None:
            return
        refused = "%s --noflush refused the change (%s)" % (tool, failure)
        try:
            undo = plan_changes(owned_state(self.read(family), claimed), before)
        except BackendError as exc:
            raise BackendError("%s; the tables could not be read back, so which of %s were committed is unknown: %s"
                               % (refused, ", ".join(order), exc))
        committed = [table for table in order if table in undo]
        if not committed:
            raise BackendError("%s; no table was committed: nothing changed" % refused)
        undo_failure = self._restore(family, ordered_restore_text(undo, committed[::-1]))
        if undo_failure is None:
            raise BackendError("%s; table %s had been committed and %s been put back as it was: nothing changed"
                               % (refused, " and ".join(committed), "has" if len(committed) == 1 else "have"))
        try:
            left = plan_changes(owned_state(self.read(family), claimed), before)
        except BackendError as exc:
            raise BackendError("%s; table %s had been committed, putting it back failed (%s) and reading it back "
                               "failed too (%s): run the task again"
                               % (refused, " and ".join(committed), undo_failure, exc))
        raise BackendError("%s; table %s had been committed, putting it back failed (%s): %s; run the task again"
                           % (refused, " and ".join(committed), undo_failure, _left_how(committed, left)))

    def _restore(self, family, text):
        """None when ``iptables-nft-restore --noflush`` took ``text``, else what it said."""
        rc, out, err = self._run([self._which(_tool(family, "-nft-restore")), "--noflush"], data=text)
        if rc == 0:
            return None
        return "rc=%d: %s" % (rc, (err or out).strip())

    def describe(self, family):
        return "%s --noflush <<EOF" % _tool(family, "-nft-restore")


def _left_how(committed, left):
    changed = [table for table in committed if table in left]
    restored = [table for table in committed if table not in left]
    parts = []
    if changed:
        parts.append("%s still %s the new rules" % (" and ".join(changed), "holds" if len(changed) == 1 else "hold"))
    if restored:
        parts.append("%s %s back as it was" % (" and ".join(restored), "is" if len(restored) == 1 else "are"))
    return ", ".join(parts)
