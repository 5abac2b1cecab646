# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""The iptables backends behind one interface, and the choice between them (``auto`` as istio-iptables does).

A backend reads a family's tables (``read(family)`` -> parsed ``iptables-save``), applies a
``_capture.reconcile`` change (``apply(family, changes)``), says what it needs (``missing``) and
how a change is shown (``describe``). ``make_backends(runner)`` builds them all.
"""

from __future__ import annotations

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_legacy import LegacyBackend
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_nft import NftBackend


def make_backends(runner):
    """``{name: backend}`` of every iptables backend, over ``runner`` (``_system.commands``)."""
    return {"nft": NftBackend(runner.run, runner.which), "legacy": LegacyBackend()}


def select_backend(requested, families, nft, legacy):
    """Return ``(backend, reason)``: ``auto`` prefers legacy only when legacy already holds rules, else nft."""
    if requested in ("nft", "legacy"):
        chosen = nft if requested == "nft" else legacy
        missing = chosen.missing(families)
        if missing:
            raise BackendError("backend=%s: not usable on the target, missing %s" % (requested, ", ".join(missing)))
        return chosen, "requested"
    legacy_usable = not legacy.missing(families)
    if legacy_usable and any(legacy.holds_rules(family) for family in families):
        return legacy, "legacy tables already hold rules"
    if not nft.missing(families):
        return nft, "nft tools present and legacy tables hold no rules"
    if legacy_usable:
        return legacy, "nft tools missing (%s)" % ", ".join(nft.missing(families))
    raise BackendError("backend=auto: neither backend is usable on the target: missing %s"
                       % ", ".join(nft.missing(families) + legacy.missing(families)))
