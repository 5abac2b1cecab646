# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Named network namespaces: exact lookup, entering one, and a throw-away one in a child.

Named namespaces are the objects ``ip netns`` manages: a bind mount of an nsfs inode on
``/run/netns/NAME``. Both modules and the boot path enter them here, in-process with
``setns(2)``, so that every command they run afterwards (iptables, ip) and every file they
read under ``/proc/net`` and ``/proc/sys/net`` belongs to that namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from contextlib import contextmanager

from ansible_collections.meshops.sidecar.plugins.module_utils._system.child import ChildError, run_in_child
from ansible_collections.meshops.sidecar.plugins.module_utils._system.kernel_names import netns_name_error

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
name_error = netns_name_error  # callers that enter a namespace check its name here


class NetnsError(Exception):
    """A namespace could not be found, checked or entered."""


def path_of(name):
    """Path of the bind mount that holds namespace ``name``."""
    return os.path.join(NETNS_RUN_DIR, name)


def list_names():
    """Names of the named namespaces, exactly as ``ip netns list`` reads them."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _mount_points():
    points = set()
    with open("/proc/self/mountinfo", "r") as mountinfo:
        for line in mountinfo:
            fields = line.split(" ")
            # Field 5 is the mount point, with spaces and such octal-escaped.
            points.add(fields[4].encode("latin-1").decode("unicode_escape"))
    return points


def is_mounted(name):
    """True when ``/run/netns/NAME`` is a live namespace, not a file left by a failed ``ip netns add``."""
    return path_of(name) in _mount_points()


def exists(name):
    """True when a namespace of exactly this name exists (``app`` is not ``app2``)."""
    return name in list_names()


def inode_of(name=None):
    """Inode number of namespace ``name``, or of the namespace this process is in (``None``).

    Two paths with the same inode are the same namespace. ``stat`` works on nsfs files;
    reading them does not (EINVAL).
    """
    return os.stat(path_of(name) if name is not None else "/proc/self/ns/net").st_ino


def _setns(fd):
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def enter(name):
    """Move this process into namespace ``name`` for the rest of its life."""
    if not exists(name):
        raise NetnsError("no network namespace named %r (%s does not exist)" % (name, path_of(name)))
    try:
        fd = os.open(path_of(name), os.O_RDONLY)
    except OSError as exc:
        raise NetnsError("cannot open %s: %s" % (path_of(name), exc.strerror))
    try:
        _setns(fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise NetnsError(
                "%s is not a network namespace (a file left by an interrupted 'ip netns add'?)" % path_of(name)
            )
        if exc.errno == errno.EPERM:
            raise NetnsError("entering network namespace %r needs root (CAP_SYS_ADMIN)" % name)
        raise NetnsError("cannot enter network namespace %r: %s" % (name, exc.strerror))
    finally:
        os.close(fd)


@contextmanager
def entered(name):
    """Run the ``with`` body inside namespace ``name`` (``None``: stay where we are), then come back."""
    if name is None:
        yield
        return
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def _unshare_net():
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(CLONE_NEWNET)
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _in_unshared(func, args):
    try:
        _unshare_net()
        return {"result": func(*args)}
    except OSError as exc:
        return {"errno": exc.errno, "error": exc.strerror or str(exc)}
    except Exception as exc:  # pylint: disable=broad-except  # reported to the caller
        return {"errno": None, "error": "%s: %s" % (type(exc).__name__, exc)}


def in_new_namespace(func, *args):
    """Return ``func(*args)`` computed in a child process inside a new, empty, unnamed network namespace.

    The namespace disappears with the child: a place to try things (which ``net.*`` sysctls a
    namespace has, which values the kernel accepts) without touching any real namespace, in check
    mode too. ``func`` must return something ``json`` can encode.
    """
    try:
        payload = run_in_child(_in_unshared, func, args)
    except ChildError:
        raise NetnsError("the helper process in a new network namespace ended without an answer")
    if "result" not in payload:
        if payload.get("errno") == errno.EPERM:
            raise NetnsError("creating a network namespace needs root (CAP_SYS_ADMIN)")
        raise NetnsError("cannot work in a new network namespace: %s" % payload.get("error"))
    return payload["result"]
