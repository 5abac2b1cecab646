# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""The ``nft`` backend: the iptables-nft tools.

State is read with ``iptables-nft-save``; a change is one ``iptables-nft-restore --noflush`` run
per family. Read and write the current network namespace: enter it first (``_system.namespace``).
"""

from __future__ import annotations

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_save
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import restore_text


def _tool(family, suffix):
    return ("iptables" if family == IPV4 else "ip6tables") + suffix


class NftBackend:
    name = "nft"

    def __init__(self, run, which):
        """``run(argv, data=None) -> (rc, out, err)``; ``which(name) -> path or None``."""
        self._run = run
        self._which = which

    def missing(self, families):
        """Names of the tools this backend needs that the target lacks."""
        return [tool for family in families for tool in (_tool(family, "-nft-save"), _tool(family, "-nft-restore"))
                if not self._which(tool)]

    def read(self, family):
        rc, out, err = self._run([self._which(_tool(family, "-nft-save"))])
        if rc != 0:
            raise BackendError("%s failed (rc=%d): %s" % (_tool(family, "-nft-save"), rc, err.strip()))
        return parse_save(out)

    def apply(self, family, changes):
        tool = _tool(family, "-nft-restore")
        rc, out, err = self._run([self._which(tool), "--noflush"], data=restore_text(changes))
        if rc != 0:
            raise BackendError("%s --noflush refused the change (rc=%d), nothing was applied: %s"
                               % (tool, rc, (err or out).strip()))

    def describe(self, family):
        return "%s --noflush <<EOF" % _tool(family, "-nft-restore")
