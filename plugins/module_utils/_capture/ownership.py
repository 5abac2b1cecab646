# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""A record of the rules the module placed in built-in chains that do not say whose they are.

Most of what the module writes is self-evidently its own: ``ISTIO_*`` chains and the jumps into
them. A few rules in built-in chains are not (``-i eth9 -j RETURN`` for an excluded interface,
TPROXY's connmark rules): a user or another tool may write the very same rule. So those are
claimed only when this record lists them. It lives in ``/run`` (tmpfs), like the rules it
describes, and is keyed by the namespace's inode, so a namespace with the same name made later
is not confused with this one.
"""

from __future__ import annotations

import json
import os

RECORD_DIR = "/run/meshops-sidecar"


def record_path(netns, inode, root=None):
    name = "netns-%s-%d.json" % (netns, inode) if netns else "ns-%d.json" % inode
    return os.path.join(root or RECORD_DIR, name)


def load(path):
    """``{family: {(table, chain, args), ...}}`` from the record, or an empty dict when there is none."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {family: {tuple(rule) for rule in rules} for family, rules in data.get("rules", {}).items()}


def dump(claims):
    return {"rules": {family: sorted(list(rule) for rule in rules) for family, rules in sorted(claims.items()) if rules}}


def save(path, claims):
    """Write the record atomically; remove it when nothing is claimed."""
    data = dump(claims)
    if not data["rules"]:
        remove(path)
        return
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(temporary, path)


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.rmdir(os.path.dirname(path))  # the last record gone: leave nothing behind
    except OSError:
        pass


def prune(inode_of_netns, root=None):
    """Remove the records of named namespaces that are gone (or were made again: another inode).

    ``inode_of_netns(name)`` gives the inode of ``/run/netns/NAME``, or None when there is no such namespace.
    """
    root = root or RECORD_DIR
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        if not (name.startswith("netns-") and name.endswith(".json")):
            continue
        netns, _sep, inode = name[len("netns-"):-len(".json")].rpartition("-")
        if netns and inode.isdigit() and inode_of_netns(netns) != int(inode):
            remove(os.path.join(root, name))
