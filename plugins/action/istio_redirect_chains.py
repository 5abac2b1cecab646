# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The action of M(meshops.sidecar.istio_redirect_chains): the module as Ansible's ``normal`` action runs it (see plugin_utils)."""

from __future__ import annotations

from ansible_collections.meshops.sidecar.plugins.plugin_utils._module_action import ModuleAction


class ActionModule(ModuleAction):
    """Runs ``meshops.sidecar.istio_redirect_chains``; the task's payload build makes fewer garbage-collector passes."""
