# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The role's copies of the capture options follow the one schema in ``_capture.options``."""

from __future__ import annotations

import os
import re

import yaml

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import (
    CAPTURE_OPTION_SPECS,
    argument_spec,
)

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "interception")
# What the role passes besides the capture options: verify (interception_capture.verify), and where
# and how (netns, state, backend come from the role's own variables).
ROLE_CAPTURE_OPTIONS = dict(CAPTURE_OPTION_SPECS, verify=argument_spec()["verify"])


def _load(*path):
    with open(os.path.join(ROLE, *path)) as handle:
        return yaml.safe_load(handle)


def _shape(spec):
    """What both sides must agree on; a missing key is None."""
    return {key: spec.get(key) for key in ("type", "elements", "choices")}


def test_interception_capture_options_are_the_schema():
    options = _load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]["interception_capture"]["options"]
    assert list(options) == list(ROLE_CAPTURE_OPTIONS)  # same names, in the module's order
    for name, spec in ROLE_CAPTURE_OPTIONS.items():
        assert _shape(options[name]) == _shape(spec), name
        # No defaults: only what the user gives is passed on, the module applies its own defaults.
        assert "default" not in options[name], name
        assert options[name].get("description"), name


def _apply_task():
    for task in _load("tasks", "present.yml"):
        if "meshops.sidecar.istio_redirect_chains" in task:
            return task["meshops.sidecar.istio_redirect_chains"]
    raise AssertionError("present.yml has no istio_redirect_chains task")


def test_the_apply_task_passes_exactly_the_modules_options():
    args = _apply_task()
    assert set(args) == set(argument_spec())
    for name in ROLE_CAPTURE_OPTIONS:
        assert re.fullmatch(r"\{\{ _interception_final\.%s \| default\(omit\) \}\}" % name, args[name]), name
    assert args["state"] == "present"
    assert "_interception_backend" in args["backend"] and "interception_netns" in args["netns"]
