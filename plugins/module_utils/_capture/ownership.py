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
import tempfile
import time

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import FAMILIES

RECORD_DIR = "/run/meshops-sidecar"


def record_path(netns, inode, root=None):
    name = "netns-%s-%d.json" % (netns, inode) if netns else "ns-%d.json" % inode
    return os.path.join(root or RECORD_DIR, name)


def load(path, warn=None):
    """``{family: {(table, chain, args), ...}}`` from the record, or an empty dict when there is none.

    A record that cannot be read or is not of the shape ``dump`` writes claims nothing (the rules
    it would name are then left as foreign, never removed); ``warn(text)``, when given, is told why.
    """
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        return _unusable(path, warn, "cannot be read (%s)" % exc)
    try:
        data = json.loads(text)
    except ValueError as exc:
        return _unusable(path, warn, "is not JSON (%s)" % exc)
    problem = shape_error(data)
    if problem:
        return _unusable(path, warn, problem)
    return {family: {tuple(rule) for rule in rules} for family, rules in data["rules"].items()}


def shape_error(data):
    """Why ``data`` is not a record as ``dump`` writes it, or None."""
    if not isinstance(data, dict) or not isinstance(data.get("rules"), dict):
        return 'is not an object with a "rules" object'
    for family, rules in data["rules"].items():
        if family not in FAMILIES:
            return "names an unknown address family %r" % (family,)
        if not isinstance(rules, list) or not all(
                isinstance(rule, list) and len(rule) == 3 and all(isinstance(part, str) for part in rule)
                for rule in rules):
            return "does not list %s rules as [table, chain, arguments] strings" % family
    return None


def _unusable(path, warn, problem):
    if warn is not None:
        warn("the ownership record %s %s: it is ignored, so rules in built-in chains that only a record can "
             "say are ours are left in place as someone else's" % (path, problem))
    return {}


def load_stamp(path):
    """The native tables' stamp the record keeps, ``{"generation": int, "digest": str}``, or None.

    It says: at that nftables generation of the namespace, Istio's tables were exactly the plan with
    that digest (see ``_capture.run``). Anything else, or no record, is no stamp (a full read)."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    stamp = data.get("nftables") if isinstance(data, dict) else None
    if (isinstance(stamp, dict) and isinstance(stamp.get("generation"), int)
            and not isinstance(stamp.get("generation"), bool) and isinstance(stamp.get("digest"), str)):
        return {"generation": stamp["generation"], "digest": stamp["digest"]}
    return None


def dump(claims, stamp=None):
    data = {"rules": {family: sorted(list(rule) for rule in rules) for family, rules in sorted(claims.items()) if rules}}
    if stamp:
        data["nftables"] = dict(stamp)
    return data


def save(path, claims, stamp=None):
    """Write the record atomically and durably; remove it when nothing is claimed and there is no stamp.

    A temporary file in the same directory, flushed to disk, then renamed over the record and the
    directory flushed: a reader, or the next run after a crash, sees the old record or the new one.
    """
    data = dump(claims, stamp)
    if not data["rules"] and not stamp:
        remove(path)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=directory, prefix=".%s." % os.path.basename(path),
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        if os.path.isdir(path):
            os.rmdir(path)  # an empty directory in our place (damage): the record goes there; a full one fails
        os.replace(handle.name, path)
    except BaseException:
        try:
            os.unlink(handle.name)
        except OSError:
            pass
        raise
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


STALE_TEMPORARY_SECONDS = 600  # far longer than any save takes: a file this old was left by a killed run


def _remove_stale_temporary(path, now):
    """A temporary record a killed ``save`` left behind (another run may be writing a fresh one)."""
    try:
        if now - os.stat(path).st_mtime > STALE_TEMPORARY_SECONDS:
            os.unlink(path)
    except OSError:
        pass


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
    now = time.time()
    for name in names:
        if name.startswith(".") and name.endswith(".tmp"):
            _remove_stale_temporary(os.path.join(root, name), now)
            continue
        if not (name.startswith("netns-") and name.endswith(".json")):
            continue
        netns, _sep, inode = name[len("netns-"):-len(".json")].rpartition("-")
        if netns and inode.isdigit() and inode_of_netns(netns) != int(inode):
            remove(os.path.join(root, name))
