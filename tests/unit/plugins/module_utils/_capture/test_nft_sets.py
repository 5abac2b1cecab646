# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Native mode's CIDR sets: the kernel's JSON read, compared with the plan, and the transaction between."""

from __future__ import annotations

import json

from ansible_collections.meshops.sidecar.plugins.module_utils._capture import nft_reconcile
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import intervals_of_texts
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import plan_ruleset
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_render import render_rule, render_state

# What nft 1.0.6 printed (`nft -j list table inet istio-proxy-nat`) after adding 10.0.0.0/24, 10.0.1.0/24,
# 192.0.2.7/32 and 10.0.3.1-10.0.3.6 to an auto-merge interval set, and one rule matching it.
KERNEL = json.loads("""{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"table": {"family": "inet", "name": "istio-proxy-nat", "handle": 1}},
 {"set": {"family": "inet", "name": "istio-exclude-v4", "table": "istio-proxy-nat", "type": "ipv4_addr", "handle": 1,
  "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 23}}, {"range": ["10.0.3.1", "10.0.3.6"]},
  "192.0.2.7"]}},
 {"set": {"family": "inet", "name": "users", "table": "filter", "type": "ipv4_addr", "handle": 1, "elem": ["1.1.1.1"]}},
 {"chain": {"family": "inet", "table": "istio-proxy-nat", "name": "istio-output", "handle": 2}},
 {"rule": {"family": "inet", "table": "istio-proxy-nat", "chain": "istio-output", "handle": 3, "expr": [
  {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@istio-exclude-v4"}},
  {"counter": {"packets": 4, "bytes": 240}}, {"return": null}]}}]}""")
OPTS = CaptureOptions(native_nftables=True, cidr_sets=True, exclude_outbound_ip_ranges=(
    (IPV4, "10.0.0.0/24"), (IPV4, "10.0.1.0/24"), (IPV4, "192.0.2.7/32"), (IPV4, "10.0.3.1/32"), (IPV4, "10.0.3.2/31"),
    (IPV4, "10.0.3.4/31"), (IPV4, "10.0.3.6/32")))
TABLES = plan_ruleset(OPTS)


def test_the_kernel_s_merged_set_equals_the_plan_and_foreign_sets_are_not_read():
    live = nft_reconcile.live_sets(KERNEL)
    assert list(live) == ["istio-proxy-nat"]
    assert live == nft_reconcile.desired_sets(TABLES)
    assert live["istio-proxy-nat"]["istio-exclude-v4"].intervals == intervals_of_texts(
        ["10.0.0.0/23", "10.0.3.1-10.0.3.6", "192.0.2.7"])


def test_the_set_rule_reads_as_the_planner_writes_it():
    kernel_rule = KERNEL["nftables"][-1]["rule"]["expr"]
    planned = nft_reconcile.canonical_rule(nft_reconcile.rule_expressions("ip daddr @istio-exclude-v4 counter return"))
    assert nft_reconcile.canonical_rule(kernel_rule) == planned
    assert render_rule(kernel_rule) == "ip daddr @istio-exclude-v4 counter return"


def test_only_a_changed_set_is_refilled_and_rules_and_counters_are_kept():
    desired, live = nft_reconcile.desired_state(TABLES), nft_reconcile.desired_state(TABLES)
    wanted = nft_reconcile.desired_sets(TABLES)
    drifted = {"istio-proxy-nat": {"istio-exclude-v4": wanted["istio-proxy-nat"]["istio-exclude-v4"]._replace(
        intervals=intervals_of_texts(["10.0.0.0/23", "10.9.0.0/16"]))}}
    changes = nft_reconcile.plan_changes(desired, live, wanted, drifted)
    assert changes == [nft_reconcile.TableChange("istio-proxy-nat", "refill", ("istio-exclude-v4",))]
    text = nft_reconcile.transaction_text(changes, TABLES)
    assert text.splitlines()[0] == "flush set inet istio-proxy-nat istio-exclude-v4"
    assert text.splitlines()[1].startswith("add element inet istio-proxy-nat istio-exclude-v4 { 10.0.0.0/23, ")
    assert "delete table" not in text and "add rule" not in text
    assert nft_reconcile.plan_changes(desired, live, wanted, wanted) == []


def test_a_missing_or_redeclared_set_rebuilds_the_table():
    desired = nft_reconcile.desired_state(TABLES)
    wanted = nft_reconcile.desired_sets(TABLES)
    assert nft_reconcile.plan_changes(desired, desired, wanted, {})[0].action == "replace"
    other = {"istio-proxy-nat": {"istio-exclude-v4": wanted["istio-proxy-nat"]["istio-exclude-v4"]._replace(flags=())}}
    assert nft_reconcile.plan_changes(desired, desired, wanted, other)[0].action == "replace"


def test_a_rebuilt_table_declares_and_fills_its_sets_before_the_rules_that_match_them():
    text = nft_reconcile.transaction_text([nft_reconcile.TableChange("istio-proxy-nat", "replace")], TABLES)
    lines = text.splitlines()
    declare = lines.index("add set inet istio-proxy-nat istio-exclude-v4 { type ipv4_addr ; flags interval ; "
                          "auto-merge ; }")
    fill = lines.index("add element inet istio-proxy-nat istio-exclude-v4 { 10.0.0.0/23, 10.0.3.1/32, 10.0.3.2/31, "
                       "10.0.3.4/31, 10.0.3.6/32, 192.0.2.7/32 }")
    rule = lines.index("add rule inet istio-proxy-nat istio-output ip daddr @istio-exclude-v4 counter return")
    assert declare < fill < rule


def test_the_digest_covers_the_set_contents():
    other = plan_ruleset(CaptureOptions(native_nftables=True, cidr_sets=True,
                                        exclude_outbound_ip_ranges=((IPV4, "10.0.0.0/24"),)))
    assert nft_reconcile.plan_digest(TABLES) != nft_reconcile.plan_digest(other)


def test_sets_are_shown_in_their_table_merged():
    text = render_state(nft_reconcile.live_state(KERNEL), None, nft_reconcile.live_sets(KERNEL))
    assert ("\tset istio-exclude-v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n"
            "\t\telements = { 10.0.0.0/23, 10.0.3.1-10.0.3.6, 192.0.2.7/32 }\n\t}\n") in text
    assert text.index("set istio-exclude-v4") < text.index("chain istio-output")
