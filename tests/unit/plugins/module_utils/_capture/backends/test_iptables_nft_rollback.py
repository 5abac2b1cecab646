# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The nft backend's commit order and its put-back of tables committed before a failing one."""

from __future__ import annotations

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_nft import (
    NftBackend,
    commit_order,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_save
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import owned_state, plan_changes

OLD = """*nat
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -j RETURN
COMMIT
"""
# What the kernel holds when mangle was committed and nat refused: mangle new, nat old.
TORN = """*mangle
:ISTIO_DROP - [0:0]
-A PREROUTING -j ISTIO_DROP
-A ISTIO_DROP -m conntrack --ctstate INVALID -j DROP
COMMIT
""" + OLD
NEW = """*mangle
:ISTIO_DROP - [0:0]
-A PREROUTING -j ISTIO_DROP
-A ISTIO_DROP -m conntrack --ctstate INVALID -j DROP
COMMIT
*nat
:ISTIO_OUTPUT - [0:0]
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
COMMIT
"""


def state(text):
    return owned_state(parse_save(text))


class FakeTools:
    """iptables-nft-save prints ``saves`` in turn; iptables-nft-restore answers ``restores`` in turn."""

    def __init__(self, saves, restores):
        self.saves, self.restores, self.inputs = list(saves), list(restores), []

    def run(self, argv, data=None):
        if argv[0].endswith("-save"):
            return 0, self.saves.pop(0), ""
        self.inputs.append(data)
        rc = self.restores.pop(0)
        return rc, "", "" if rc == 0 else "Error occurred at line: 9"


def backend_over(tools):
    return NftBackend(tools.run, lambda name: name)


def change():
    return plan_changes(state(OLD), state(NEW))


def test_support_tables_gaining_rules_go_before_nat_and_losing_ones_after():
    assert commit_order(plan_changes(state(OLD), state(NEW))) == ["mangle", "nat"]
    assert commit_order(plan_changes(state(NEW), state(OLD))) == ["nat", "mangle"]
    assert commit_order(plan_changes(state(NEW), state(""))) == ["nat", "mangle"]


def test_the_tables_are_written_in_commit_order():
    tools = FakeTools([OLD], [0])
    backend = backend_over(tools)
    backend.read("ipv4")
    backend.apply("ipv4", change())
    text = tools.inputs[0]
    assert text.index("*mangle") < text.index("*nat")


def test_a_table_committed_before_the_failure_is_put_back_and_the_message_says_so():
    tools = FakeTools([OLD, TORN], [2, 0])
    backend = backend_over(tools)
    backend.read("ipv4")
    with pytest.raises(BackendError) as caught:
        backend.apply("ipv4", change())
    assert "table mangle had been committed and has been put back as it was: nothing changed" in str(caught.value)
    assert "Error occurred at line: 9" in str(caught.value)
    undo = tools.inputs[1]
    assert "*nat" not in undo and "-X ISTIO_DROP" in undo and "-D PREROUTING -j ISTIO_DROP" in undo


def test_when_nothing_was_committed_there_is_nothing_to_put_back():
    tools = FakeTools([OLD, OLD], [1])
    backend = backend_over(tools)
    backend.read("ipv4")
    with pytest.raises(BackendError, match="no table was committed: nothing changed"):
        backend.apply("ipv4", change())
    assert len(tools.inputs) == 1


def test_a_failed_put_back_says_which_table_is_left_how():
    tools = FakeTools([TORN, TORN], [2, 1])
    backend = backend_over(tools)
    with pytest.raises(BackendError) as caught:
        backend.apply("ipv4", change(), before=state(OLD))
    assert "putting it back failed" in str(caught.value)
    assert "mangle still holds the new rules; run the task again" in str(caught.value)


def test_without_a_read_to_plan_from_the_backend_reads_first():
    tools = FakeTools([OLD, TORN], [2, 0])
    with pytest.raises(BackendError, match="has been put back"):
        backend_over(tools).apply("ipv4", change())
    assert tools.saves == []
