# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Reconciliation: no change when the kernel is right, a minimal repair for every kind of drift."""

from __future__ import annotations

import os

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import plan_rules
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_save
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import (
    Op,
    desired_state,
    owned_state,
    plan_changes,
    render_state,
    restore_text,
    unmarked_rules,
)

KERNEL = os.path.join(os.path.dirname(__file__), "..", "fixtures", "kernel")
# The options that produced the kitchen-sink fixtures (see test_iptables_text.py).
KITCHEN_SINK = CaptureOptions(
    inbound_interception_mode="TPROXY", ipv6=True, capture_dns=True, drop_invalid=True,
    dns_servers=((IPV4, "198.18.0.53"), (IPV6, "2001:db8::53")), exclude_interfaces=("eth9",),
    reroute_virtual_interfaces=("docker0",),
    exclude_outbound_ip_ranges=((IPV4, "198.18.7.9/16"), (IPV6, "2001:db8:0:1::/64")),
    outbound_ports=("8000:8100",), exclude_outbound_ports=("5432",), outbound_owner_groups=("100", "200"),
    proxy_uids=("1337", "0"), ipv4_loopback_cidr="127.0.0.0/8",
)
FOREIGN = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT -p tcp -m tcp --dport 9 -j RETURN
-A DOCKER -i docker0 -j RETURN
COMMIT
"""


def kernel(family, backend="nft"):
    with open(os.path.join(KERNEL, "kitchen-sink.%s.%s-save" % (family, backend))) as handle:
        return handle.read()


def wanted(opts=KITCHEN_SINK, family=IPV4):
    return desired_state(plan_rules(opts).get(family, []), family)


def changes_for(save_text, opts=KITCHEN_SINK, family=IPV4):
    desired = wanted(opts, family)
    return plan_changes(owned_state(parse_save(save_text), unmarked_rules(desired)), desired)


@pytest.mark.parametrize("family", [IPV4, IPV6])
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_kernel_state_matches_plan_exactly(family, backend):
    assert changes_for(kernel(family, backend), family=family) == {}


def test_fresh_namespace_gets_everything_in_one_batch_per_table():
    changes = changes_for("")
    assert set(changes) == {"mangle", "nat", "raw"}
    nat = changes["nat"]
    assert nat[0] == Op("declare", "ISTIO_INBOUND")
    # Chains are declared before any rule jumps to them.
    first_append = next(i for i, op in enumerate(nat) if op.kind != "declare")
    assert all(op.kind == "declare" for op in nat[:first_append])
    assert Op("insert", "PREROUTING", "-i docker0 -j ISTIO_REDIRECT", 1) in nat
    assert Op("insert", "PREROUTING", "-i docker0 -j RETURN", 2) in nat


def _edit(text, old, new):
    assert old in text
    return text.replace(old, new, 1)


def test_missing_rule_rewrites_only_its_chain():
    text = _edit(kernel(IPV4), "-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN\n", "")
    changes = changes_for(text)
    assert list(changes) == ["nat"]
    assert [op for op in changes["nat"] if op.kind == "declare"] == [Op("declare", "ISTIO_OUTPUT")]
    assert not any(op.chain in ("PREROUTING", "OUTPUT") for op in changes["nat"])


def test_stray_rule_inside_an_istio_chain_is_removed():
    text = _edit(kernel(IPV4), "-A ISTIO_REDIRECT ", "-A ISTIO_REDIRECT -p udp -j ACCEPT\n-A ISTIO_REDIRECT ")
    changes = changes_for(text)
    assert Op("declare", "ISTIO_REDIRECT") in changes["nat"]
    assert Op("append", "ISTIO_REDIRECT", "-p tcp -j REDIRECT --to-ports 15001") in changes["nat"]


def test_reordered_rules_are_repaired():
    text = kernel(IPV4)
    a = "-A ISTIO_OUTPUT -d 127.0.0.0/8 -j RETURN\n"
    b = "-A ISTIO_OUTPUT -d 198.18.0.0/16 -j RETURN\n"
    text = text.replace(a + b, b + a)
    assert Op("declare", "ISTIO_OUTPUT") in changes_for(text)["nat"]


def test_duplicated_jump_is_removed_and_foreign_rules_untouched():
    jump = "-A OUTPUT -j ISTIO_OUTPUT\n"
    text = _edit(kernel(IPV4), jump, jump + "-A OUTPUT -p tcp -m tcp --dport 9 -j RETURN\n" + jump)
    nat = changes_for(text)["nat"]
    deletes = [op for op in nat if op.kind == "delete"]
    assert deletes == [Op("delete", "OUTPUT", "-o eth9 -j RETURN"), Op("delete", "OUTPUT", "-j ISTIO_OUTPUT"),
                       Op("delete", "OUTPUT", "-j ISTIO_OUTPUT")]
    assert [op for op in nat if op.chain == "OUTPUT" and op.kind == "append"] == [
        Op("append", "OUTPUT", "-o eth9 -j RETURN"), Op("append", "OUTPUT", "-j ISTIO_OUTPUT")]
    assert not any("--dport 9" in op.args for op in nat)


def test_missing_jump_is_added():
    text = _edit(kernel(IPV4), "-A OUTPUT -j ISTIO_OUTPUT\n", "")
    assert Op("append", "OUTPUT", "-j ISTIO_OUTPUT") in changes_for(text)["nat"]


def test_absent_removes_everything_of_ours_and_nothing_else():
    recorded = unmarked_rules(wanted())  # what the ownership record holds after the kitchen-sink apply
    current = owned_state(parse_save(kernel(IPV4) + FOREIGN), recorded)
    changes = plan_changes(current, desired_state([], IPV4))
    ops = [op for table_ops in changes.values() for op in table_ops]
    assert {op.chain for op in ops if op.kind == "delete_chain"} == {
        "ISTIO_DIVERT", "ISTIO_DROP", "ISTIO_INBOUND", "ISTIO_TPROXY", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT",
        "ISTIO_OUTPUT_DNS", "ISTIO_REDIRECT"}
    assert not any(op.kind in ("append", "insert") for op in ops)
    assert not any("DOCKER" in op.chain or "DOCKER" in op.args or "--dport 9" in op.args for op in ops)


def test_options_change_drops_stale_chain_and_its_jumps():
    plain = CaptureOptions()
    changes = plan_changes(owned_state(parse_save(kernel(IPV4))), wanted(plain))
    assert Op("delete_chain", "ISTIO_OUTPUT_DNS") in changes["raw"]
    assert Op("delete", "OUTPUT", "-j ISTIO_OUTPUT_DNS") in changes["raw"]
    assert Op("delete", "PREROUTING", "-i docker0 -j ISTIO_REDIRECT") in changes["nat"]


def test_restore_text_and_render_state():
    changes = changes_for("")
    text = restore_text(changes)
    assert text.startswith("*mangle\n:ISTIO_DIVERT - [0:0]\n")
    assert text.count("COMMIT") == 3
    rendered = render_state(wanted())
    # What render_state prints is what iptables-save shows of our rules.
    assert owned_state(parse_save(rendered)) == owned_state(parse_save(kernel(IPV4)))
    assert restore_text({}) == "" and render_state(desired_state([], IPV4)) == ""


def test_unmarked_rules_are_the_ones_a_record_must_list():
    assert unmarked_rules(wanted()) == {
        ("nat", "PREROUTING", "-i eth9 -j RETURN"), ("nat", "OUTPUT", "-o eth9 -j RETURN"),
        ("mangle", "PREROUTING", "-i eth9 -j RETURN"), ("mangle", "OUTPUT", "-o eth9 -j RETURN"),
        ("nat", "PREROUTING", "-i docker0 -j RETURN"),
        ("mangle", "PREROUTING", "-p tcp -m mark --mark 0x539 -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
        ("mangle", "OUTPUT", "-o lo -p tcp -m mark --mark 0x539 -j RETURN"),
        ("mangle", "OUTPUT", "-p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff"),
    }
    assert unmarked_rules(wanted(CaptureOptions())) == set()


def test_foreign_rules_that_look_like_istio_are_not_taken_without_a_record():
    foreign = "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -o wg0 -j RETURN\nCOMMIT\n"
    current = owned_state(parse_save(kernel(IPV4) + foreign))
    assert "-o wg0 -j RETURN" not in current["nat"].builtin.get("OUTPUT", [])
    changes = plan_changes(current, desired_state([], IPV4))
    assert not any("wg0" in op.args or "eth9" in op.args for ops in changes.values() for op in ops)
