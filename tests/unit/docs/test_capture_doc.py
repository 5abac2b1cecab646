# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""docs/capture.md shows the rules the module really creates: its rule listing and chain table are checked here."""

from __future__ import annotations

import os
import re

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import (
    chains_in_order,
    istio_restore_input,
    plan_rules,
)

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "capture.md")
EVERYTHING = CaptureOptions(inbound_interception_mode="TPROXY", ipv6=True, capture_dns=True, drop_invalid=True,
                            dns_servers=((IPV4, "198.18.0.53"),))


def doc_text():
    with open(DOC) as handle:
        return handle.read()


def test_default_rule_listing_is_what_the_planner_writes():
    blocks = re.findall(r"```text\n(\* nat\n.*?COMMIT\n)```", doc_text(), re.S)
    assert blocks, "docs/capture.md lost its default rule listing"
    assert blocks[0] == istio_restore_input(plan_rules(CaptureOptions())[IPV4])


def test_chain_table_names_exactly_the_chains_the_planner_creates():
    rules = plan_rules(EVERYTHING)
    planned = {(table, chain) for family in (IPV4, IPV6) for table in ("mangle", "nat", "raw")
               for chain in chains_in_order(rules[family], table)}
    documented = set()
    for table, chains in re.findall(r"^\| `(nat|mangle|raw)` \| ([^|]+) \|", doc_text(), re.M):
        documented |= {(table, chain) for chain in re.findall(r"`(ISTIO_\w+)`", chains)}
    assert documented == planned
