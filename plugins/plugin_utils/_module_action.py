# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller side of this collection's modules: Ansible's ``normal`` action with fewer GC passes.

Before a module runs, the worker process that runs the task builds the module's AnsiballZ payload: ansible-core
parses every file it ships into an AST and links each import to its parent node, which makes every tree a
reference cycle. At the default young-generation threshold (a pass every 700 new container objects) the
collector walks the trees still being built over and over: for a payload with this collection's engine in it
(about 35 files) those passes cost more CPU than the parse itself. With a higher threshold while the task runs
the collector still frees the trees, in a few passes instead of hundreds, and the garbage waiting for it stays
bounded. Measured: about 0.12 s less per task (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import gc
import typing as t

from ansible.plugins.action.normal import ActionModule as NormalAction

# Young objects allowed before a collection while a task runs: high enough that a payload build triggers a few
# passes rather than hundreds, low enough that the garbage it waits for stays within about 10 MB.
TASK_GC_THRESHOLD = 20000


@contextlib.contextmanager
def fewer_gc_passes(threshold: int = TASK_GC_THRESHOLD) -> t.Iterator[None]:
    """Raise the cyclic collector's young-generation threshold for the block; restore what was there after.

    Only ever raises it: a threshold already higher, or a collector that is off (0), is left as it is.
    """
    young, middle, old = gc.get_threshold()
    if young == 0 or young >= threshold:
        yield
        return
    gc.set_threshold(threshold, middle, old)
    try:
        yield
    finally:
        gc.set_threshold(young, middle, old)


class ModuleAction(NormalAction):
    """Run the module exactly as ``ansible.builtin``'s ``normal`` action does, with ``fewer_gc_passes``.

    Check mode, async, ``module_defaults`` and the result are the ``normal`` action's own.
    """

    def run(self, tmp=None, task_vars=None):
        with fewer_gc_passes():
            return super().run(tmp, task_vars)
