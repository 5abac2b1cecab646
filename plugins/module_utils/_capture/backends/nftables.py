# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""The ``nftables`` backend: Istio's native ``inet`` tables through the ``nft`` binary.

State is read as JSON (``nft -j``), Istio's tables only, and reduced to comparable form by
``_capture.nft_reconcile``; a change is one ``nft -f -`` transaction, all or nothing. Read and write the current network namespace: enter it first.
"""

from __future__ import annotations

import json
import re
import socket
import struct

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import FAMILY, istio_table_names
from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink

MIN_VERSION = (1, 0, 1)  # Istio's minimum: older nft lacks what its rules need
# nfnetlink: NFT_MSG_GETGEN of the nftables subsystem, answered by NFT_MSG_NEWGEN carrying NFTA_GEN_ID.
_GETGEN = (10 << 8) | 16
_NEWGEN = (10 << 8) | 15
_NFTA_GEN_ID = 1
_VERSION = re.compile(r"nftables v(\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text):
    """``(1, 0, 6)`` from ``nft --version`` output, or None."""
    match = _VERSION.search(text)
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


class NftablesBackend:
    name = "nftables"

    def __init__(self, runner):
        """``runner``: ``run(argv, data=None) -> (rc, out, err)`` and ``which(name)`` (``_system.commands``)."""
        self._runner = runner
        self._nft = None

    def _binary(self):
        if self._nft is None:
            self._nft = self._runner.which("nft")
        return self._nft

    def missing(self):
        """What the target lacks for this backend: ``[]``, ``["nft"]``, or the version found if too old."""
        nft = self._binary()
        if not nft:
            return ["nft"]
        rc, out, err = self._runner.run([nft, "--version"])
        version = parse_version(out) if rc == 0 else None
        if version is None:
            return ["nft >= %s (%s --version gave: %s)" % (_dotted(MIN_VERSION), nft, (out or err).strip())]
        if version < MIN_VERSION:
            return ["nft >= %s (found %s)" % (_dotted(MIN_VERSION), _dotted(version))]
        return []

    def present(self):
        return bool(self._binary())

    def read(self):
        """The ``nft -j`` document of Istio's tables (``inet istio-proxy-*``), reduce it with ``live_state``.

        ``list tables``, then each of Istio's tables: never the whole ruleset, where iptables-nft's
        tables may hold thousands of rules that are not ours (their JSON costs more than ours)."""
        names = self.inet_table_names()
        if names is None:  # no netlink answer: ask nft (slow while someone else keeps committing)
            names = [item["table"]["name"] for item in self._json(["list", "tables"]).get("nftables", ())
                     if item.get("table", {}).get("family") == FAMILY]
        items = []
        for name in istio_table_names(names):
            try:
                items += self._json(["list", "table", FAMILY, name]).get("nftables", ())
            except BackendError as exc:
                if "No such file or directory" not in str(exc):
                    raise  # else deleted since it was listed: not there
        return {"nftables": items}

    @staticmethod
    def inet_table_names():
        """Names of the current namespace's ``inet`` tables, from one netlink dump; None when it fails."""
        return netlink.nft_table_names(netlink.NFPROTO_INET)

    @staticmethod
    def generation():
        """The current namespace's nftables generation, or None when the kernel does not say.

        The kernel counts every committed nftables transaction in a namespace (any table, iptables-nft's
        too): equal numbers mean nothing was written in between. One netlink request, no process."""
        reply = netlink.request(netlink.NETLINK_NETFILTER, _GETGEN, struct.pack("!BBH", socket.AF_UNSPEC, 0, 0))
        return None if reply is None else parse_generation(reply)

    def _json(self, command):
        rc, out, err = self._runner.run([self._binary(), "-j"] + command)
        if rc != 0:
            raise BackendError("nft -j %s failed (rc=%d): %s" % (" ".join(command), rc, (err or out).strip()))
        try:
            return json.loads(out) if out.strip() else {"nftables": []}
        except ValueError as exc:
            raise BackendError("nft -j %s gave no JSON (%s): is nft built with JSON support?" % (" ".join(command), exc))

    def apply(self, transaction):
        """Run ``transaction`` (``nft -f`` text) as one transaction; nothing changes if nft refuses it."""
        if not transaction:
            return
        rc, out, err = self._runner.run([self._binary(), "-f", "-"], data=transaction)
        if rc != 0:
            raise BackendError("nft -f - refused the change (rc=%d), nothing was applied: %s"
                               % (rc, (err or out).strip()))

    def describe(self):
        return "nft -f - <<EOF"


def parse_generation(reply):
    """NFTA_GEN_ID of an NFT_MSG_NEWGEN netlink reply, or None for anything else (an error, a short reply)."""
    kind, payload = next(netlink.messages(reply), (None, b""))
    if kind != _NEWGEN:
        return None
    for attribute, value in netlink.attributes(payload, 4):  # after nfgenmsg
        if attribute == _NFTA_GEN_ID and len(value) >= 4:
            return struct.unpack_from("!I", value)[0]
    return None


def _dotted(version):
    return ".".join(str(part) for part in version)
