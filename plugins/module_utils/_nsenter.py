# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Named network namespaces: exact lookup, and entering one from inside a module process.

Named namespaces are the objects ``ip netns`` manages: a bind mount of an nsfs inode on
``/run/netns/NAME``. Both modules of the collection enter them here, in-process with
``setns(2)``, so that every command they run afterwards (iptables, ip) and every file they
read under ``/proc/net`` and ``/proc/sys/net`` belongs to that namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
from contextlib import contextmanager

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
# A namespace name is a file name under /run/netns.
NAME_MAX = 255


class NetnsError(Exception):
    """A namespace could not be found, checked or entered."""


def name_error(name):
    """Return why ``name`` cannot name a network namespace, or None when it can."""
    if not isinstance(name, str) or name == "":
        return "must be a non-empty string"
    if "/" in name or "\0" in name:
        return "must not contain '/' or NUL"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if len(name.encode("utf-8")) > NAME_MAX:
        return "is longer than %d bytes, the longest file name the kernel allows" % NAME_MAX
    return None


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


def in_new_namespace(func, *args):
    """Return ``func(*args)`` computed in a child process inside a new, empty, unnamed network namespace.

    The namespace disappears with the child: a place to try things (which ``net.*`` sysctls a
    namespace has, which values the kernel accepts) without touching any real namespace, in check
    mode too. ``func`` must return something ``json`` can encode.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            try:
                _unshare_net()
                payload = {"result": func(*args)}
            except OSError as exc:
                payload = {"errno": exc.errno, "error": exc.strerror or str(exc)}
            except Exception as exc:  # pylint: disable=broad-except
                payload = {"errno": None, "error": "%s: %s" % (type(exc).__name__, exc)}
            data = json.dumps(payload).encode("utf-8")
            while data:
                data = data[os.write(write_end, data):]
        except BaseException:  # pylint: disable=broad-except
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    try:
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    try:
        payload = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        raise NetnsError("the helper process in a new network namespace ended without an answer")
    if "result" not in payload:
        if payload.get("errno") == errno.EPERM:
            raise NetnsError("creating a network namespace needs root (CAP_SYS_ADMIN)")
        raise NetnsError("cannot work in a new network namespace: %s" % payload.get("error"))
    return payload["result"]
