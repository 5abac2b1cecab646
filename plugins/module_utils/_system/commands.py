# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.


"""Running commands: one interface for a module (``AnsibleModule.run_command``) and for the boot path.

The engines take a runner and never import Ansible, so the boot path runs them with the
target's Python alone. ``run(argv, data=None) -> (rc, stdout, stderr)``; ``which(name) -> path or None``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

_C_LOCALE = {"LANGUAGE": "C", "LC_ALL": "C"}  # the tools' messages are parsed and shown as they are
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/local/bin", "/usr/bin", "/bin")


class ModuleRunner:
    """Commands through an ``AnsibleModule``."""

    def __init__(self, module):
        self._module = module
        module.run_command_environ_update = dict(_C_LOCALE)

    def run(self, argv, data=None):
        return self._module.run_command(argv, data=data, binary_data=data is not None)

    def which(self, name):
        return self._module.get_bin_path(name)


class ProcessRunner:
    """Commands through ``subprocess``, for code that runs without Ansible (the boot path)."""

    def __init__(self):
        self._env = dict(os.environ, **_C_LOCALE)
        self._path = os.pathsep.join([self._env.get("PATH", "")] + list(_SBIN))

    def run(self, argv, data=None):
        proc = subprocess.run(argv, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                              universal_newlines=True, env=self._env)
        return proc.returncode, proc.stdout, proc.stderr

    def which(self, name):
        return shutil.which(name, path=self._path)
