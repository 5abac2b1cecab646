# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The modules' action: Ansible's normal action, with the collector's young threshold raised while it runs."""

from __future__ import annotations

import gc

import pytest

from ansible.plugins.action.normal import ActionModule as NormalAction

from ansible_collections.meshops.sidecar.plugins.action import istio_redirect_chains, istio_redirect_chains_info, netns
from ansible_collections.meshops.sidecar.plugins.plugin_utils._module_action import (
    TASK_GC_THRESHOLD, ModuleAction, fewer_gc_passes)


@pytest.fixture
def threshold():
    """Set the collector's thresholds for one test; put the process's own back after it."""
    saved = gc.get_threshold()

    def set_to(*values):
        gc.set_threshold(*values)

    yield set_to
    gc.set_threshold(*saved)


def test_raises_the_young_threshold_inside_and_restores_all_three_after(threshold):
    threshold(700, 10, 10)
    with fewer_gc_passes():
        assert gc.get_threshold() == (TASK_GC_THRESHOLD, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


def test_restores_the_thresholds_when_the_block_raises(threshold):
    threshold(500, 7, 3)
    with pytest.raises(RuntimeError, match="task failed"):
        with fewer_gc_passes():
            raise RuntimeError("task failed")
    assert gc.get_threshold() == (500, 7, 3)


@pytest.mark.parametrize("young", [TASK_GC_THRESHOLD, TASK_GC_THRESHOLD + 1, 0])
def test_never_lowers_a_higher_threshold_nor_turns_on_a_collector_set_to_zero(threshold, young):
    threshold(young, 10, 10)
    with fewer_gc_passes():
        assert gc.get_threshold() == (young, 10, 10)
    assert gc.get_threshold() == (young, 10, 10)


def test_a_collector_turned_off_stays_off(threshold):
    threshold(700, 10, 10)
    gc.disable()
    try:
        with fewer_gc_passes():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def _young_passes_while(build):
    """How many young-generation passes the collector makes while ``build()`` runs."""
    passes = []

    def count(phase, info):
        if phase == "start" and info["generation"] == 0:
            passes.append(1)

    gc.callbacks.append(count)
    try:
        build()
    finally:
        gc.callbacks.remove(count)
    return len(passes)


def _trees_with_parent_links():
    # What ansible-core's import scan leaves: node trees whose children point back at their parent.
    for dummy in range(20):
        root = {"body": []}
        for index in range(5000):
            root["body"].append({"parent": root, "index": [index]})


def test_a_build_of_cyclic_trees_makes_far_fewer_passes(threshold):
    threshold(700, 10, 10)
    default = _young_passes_while(_trees_with_parent_links)
    with fewer_gc_passes():
        raised = _young_passes_while(_trees_with_parent_links)
    assert default >= 200
    assert raised * 10 <= default


@pytest.mark.parametrize("plugin", [istio_redirect_chains, istio_redirect_chains_info, netns])
def test_each_module_has_the_normal_action_with_fewer_passes(plugin):
    assert issubclass(plugin.ActionModule, ModuleAction)
    assert issubclass(plugin.ActionModule, NormalAction)
    assert plugin.ActionModule._supports_check_mode and plugin.ActionModule._supports_async


class _Recorder:
    """Stands in for the normal action's run (a class attribute, so called unbound): records, returns or raises."""

    def __init__(self, error=None):
        self.seen = []
        self.error = error

    def __call__(self, tmp=None, task_vars=None):
        self.seen.append((gc.get_threshold()[0], tmp, task_vars))
        if self.error:
            raise self.error
        return {"changed": False}


def test_run_is_the_normal_run_under_the_raised_threshold(threshold, monkeypatch):
    threshold(700, 10, 10)
    recorder = _Recorder()
    monkeypatch.setattr(NormalAction, "run", recorder)
    action = object.__new__(istio_redirect_chains.ActionModule)
    assert action.run(None, {"inventory_hostname": "vm1"}) == {"changed": False}
    assert recorder.seen == [(TASK_GC_THRESHOLD, None, {"inventory_hostname": "vm1"})]
    assert gc.get_threshold() == (700, 10, 10)


def test_run_restores_the_threshold_when_the_module_fails(threshold, monkeypatch):
    threshold(700, 10, 10)
    monkeypatch.setattr(NormalAction, "run", _Recorder(error=ValueError("unreachable")))
    action = object.__new__(netns.ActionModule)
    with pytest.raises(ValueError, match="unreachable"):
        action.run(None, {})
    assert gc.get_threshold() == (700, 10, 10)
