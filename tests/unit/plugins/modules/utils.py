# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Helpers shared by the module tests, the same on every ansible-core the collection supports.

``patch_module_args(args)``: a context manager that hands ``args`` to the ``AnsibleModule``
created inside it, as Ansible does when it runs a module. ansible-core 2.19 and later have it
(``ansible.module_utils.testing``, which also sets the serialization profile those versions
need); on 2.17 and 2.18 it is the classic ``set_module_args``: the JSON Ansible would pass on
stdin, put where ``AnsibleModule`` reads it, ``basic._ANSIBLE_ARGS`` (those versions have no
profile).
"""

from __future__ import annotations

import contextlib
import json
from unittest import mock

from ansible.module_utils import basic

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19
    from ansible.module_utils.common.text.converters import to_bytes

    @contextlib.contextmanager
    def patch_module_args(args=None):
        """Expose ``args`` to the ``AnsibleModule`` instances created within this context."""
        if not isinstance(args, (dict, type(None))):
            raise TypeError("The `args` arg must be a dict or None.")
        payload = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args or {}}))
        with mock.patch.object(basic, "_ANSIBLE_ARGS", payload):
            yield


__all__ = ["patch_module_args"]
