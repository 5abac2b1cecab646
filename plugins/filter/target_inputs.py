# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters that check, on the controller, values that become objects on the target.

* ``netns_options``: options of ``meshops.sidecar.netns``, checked by that module's own validation.
* ``user_name``: a user or group name as useradd and groupadd create it.

A role calls them before its first change, so that bad input fails with nothing created.
Documentation of each filter is in the ``.yml`` file of the same name next to this one.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import user_name_error
from ansible_collections.meshops.sidecar.plugins.module_utils._netns.state import ValidationError, validate


def netns_options(options):
    if not isinstance(options, dict):
        raise AnsibleFilterError("netns_options: expected a dict of meshops.sidecar.netns options, got %s"
                                 % type(options).__name__)
    given = {key: value for key, value in options.items() if value is not None}
    try:
        validate(dict(given, state=given.get("state", "present")))
    except ValidationError as exc:
        raise AnsibleFilterError("netns_options: %s" % exc)
    return options


def user_name(name, option="user name"):
    problem = user_name_error(name)
    if problem:
        raise AnsibleFilterError("%s=%r %s" % (option, name, problem))
    return name


class FilterModule:
    """meshops.sidecar filters for values that become objects on the target."""

    def filters(self):
        return {
            "netns_options": netns_options,
            "user_name": user_name,
        }
