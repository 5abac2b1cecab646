# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""Work done in a forked child process, its JSON-able answer sent back through a pipe.

Used where the work must not touch this process: python-iptables (libxtables keeps one
address family per process), a throw-away network namespace, a probe that drops to the
proxy's uid.
"""

from __future__ import annotations

import json
import os
import sys


class ChildError(Exception):
    """The child ended without an answer (it crashed, or was killed)."""


def run_in_child(func, *args):
    """Return ``func(*args)``, computed in a forked child; it must return something ``json`` encodes.

    An exception in the child ends it without an answer: ``func`` reports its own errors in what it returns.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            data = json.dumps({"result": func(*args)}).encode("utf-8")
            while data:
                data = data[os.write(write_end, data):]
        except BaseException:  # pylint: disable=broad-except  # the parent sees no answer
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
        dummy, status = os.waitpid(pid, 0)
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))["result"]
    except (ValueError, KeyError):
        raise ChildError("the child process ended without an answer (wait status %d)" % status)
