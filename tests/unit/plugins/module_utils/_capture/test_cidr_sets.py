# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""cidr_sets: the planned sets, interval arithmetic, and where the set rules stand in both planners."""

from __future__ import annotations

import ipaddress
import random

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import (
    SET_NAMES,
    CidrSet,
    describe_intervals,
    interval_cidrs,
    intervals_of_nft_elements,
    intervals_of_texts,
    iptables_rules_match_sets,
    merged_intervals,
    planned_sets,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_save as parse_iptables
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import generate_rules, plan_ruleset
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import plan_rules

V4 = int(ipaddress.IPv4Address("10.0.0.0"))
EXCLUDES = ((IPV4, "10.0.0.0/24"), (IPV4, "10.0.1.0/24"), (IPV4, "192.0.2.7/32"), (IPV6, "2001:db8:5::/48"))


def _opts(**kwargs):
    base = dict(exclude_outbound_ip_ranges=EXCLUDES, ipv6=True, cidr_sets=True)
    base.update(kwargs)
    return CaptureOptions(**base)


def test_no_sets_without_the_option_and_istio_rules_stay_per_cidr():
    opts = _opts(cidr_sets=False)
    assert planned_sets(opts) == {}
    v4 = [" ".join(rule.args) for rule in plan_rules(opts)[IPV4]]
    assert "-d 10.0.0.0/24 -j RETURN" in v4 and "-d 10.0.1.0/24 -j RETURN" in v4
    assert not any("match-set" in args for args in v4)


def test_sets_per_family_and_list_with_merged_contents():
    sets = planned_sets(_opts(outbound_ip_ranges=((IPV4, "198.18.0.0/15"),)))
    assert sorted(sets) == [("exclude", IPV4), ("exclude", IPV6), ("include", IPV4)]
    exclude_v4 = sets[("exclude", IPV4)]
    assert exclude_v4.name == "istio-exclude-v4" and exclude_v4.family == IPV4
    assert exclude_v4.cidrs() == ["10.0.0.0/23", "192.0.2.7/32"]
    assert sets[("include", IPV4)].cidrs() == ["198.18.0.0/15"]
    assert sets[("exclude", IPV6)].name == "istio-exclude-v6"
    assert set(set_.name for set_ in sets.values()) <= set(SET_NAMES)


def test_a_family_off_gets_no_set_and_an_empty_list_none():
    assert sorted(planned_sets(_opts(ipv6=False))) == [("exclude", IPV4)]
    assert planned_sets(_opts(exclude_outbound_ip_ranges=())) == {}
    assert planned_sets(_opts(outbound_ip_ranges=())) == planned_sets(_opts())  # include "" : no set


@pytest.mark.parametrize("intervals, merged", [
    ([], ()),
    ([(5, 9), (1, 3)], ((1, 3), (5, 9))),
    ([(1, 3), (4, 9)], ((1, 9),)),  # adjacent
    ([(1, 5), (3, 9)], ((1, 9),)),  # overlapping
    ([(1, 9), (3, 4)], ((1, 9),)),  # contained
    ([(1, 1), (1, 1)], ((1, 1),)),  # duplicate
])
def test_merged_intervals(intervals, merged):
    assert merged_intervals(intervals) == merged


def test_merging_random_cidrs_matches_ipaddress_collapse():
    rng = random.Random(7)
    cidrs = ["10.%d.%d.0/%d" % (rng.randrange(4), rng.randrange(256), rng.choice((22, 23, 24, 30)))
             for dummy in range(500)]
    intervals = intervals_of_texts(cidrs)
    expected = [str(net) for net in ipaddress.collapse_addresses(ipaddress.ip_network(c, strict=False) for c in cidrs)]
    assert interval_cidrs(intervals, IPV4) == expected


def test_whole_space_is_written_as_two_halves():
    assert interval_cidrs(intervals_of_texts(["0.0.0.0/0"]), IPV4) == ["0.0.0.0/1", "128.0.0.0/1"]
    assert interval_cidrs(intervals_of_texts(["::/0"]), IPV6) == ["::/1", "8000::/1"]


def test_a_range_that_is_no_cidr_becomes_the_fewest_cidrs():
    assert interval_cidrs(((V4 + 1, V4 + 6),), IPV4) == ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
    assert describe_intervals(((V4 + 1, V4 + 6),), IPV4) == ["10.0.0.1-10.0.0.6"]
    assert describe_intervals(((V4, V4 + 255),), IPV4) == ["10.0.0.0/24"]


def test_ipv4_mapped_ipv6_is_written_as_inet_ntop_prints_it():
    assert interval_cidrs(intervals_of_texts(["::ffff:198.18.0.9/128"]), IPV6) == ["::ffff:198.18.0.9/128"]


def test_kernel_texts_single_prefix_and_range():
    assert intervals_of_texts(["10.0.0.5", "10.0.0.6/31", "10.0.0.8-10.0.0.9"]) == ((V4 + 5, V4 + 9),)
    with pytest.raises(ValueError):
        intervals_of_texts(["10.0.0.0/24 nomatch"])


def test_nft_json_elements_in_every_form():
    elements = ["10.0.0.5", {"prefix": {"addr": "10.0.1.0", "len": 24}}, {"range": ["10.0.3.0", "10.0.3.3"]},
                {"elem": {"val": "10.0.0.6", "counter": {"packets": 0, "bytes": 0}}}]
    assert intervals_of_nft_elements(elements) == ((V4 + 5, V4 + 6), (V4 + 256, V4 + 511), (V4 + 768, V4 + 771))
    with pytest.raises(ValueError):
        intervals_of_nft_elements([{"set": []}])


def test_iptables_rules_match_the_sets_where_istio_rules_would_stand():
    opts = _opts(outbound_ip_ranges=((IPV4, "198.18.0.0/15"), (IPV6, "2001:db8::/32")),
                 reroute_virtual_interfaces=("veth0",))
    rules = plan_rules(opts)
    v4 = [(rule.chain, " ".join(rule.args), rule.position) for rule in rules[IPV4]]
    tail = [args for chain, args, dummy in v4 if chain == "ISTIO_OUTPUT"][-3:]
    assert tail == ["-d 127.0.0.1/32 -j RETURN",
                    "-m set --match-set istio-exclude-v4 dst -j RETURN",
                    "-m set --match-set istio-include-v4 dst -j ISTIO_REDIRECT"]
    assert ("PREROUTING", "-i veth0 -m set --match-set istio-include-v4 dst -j ISTIO_REDIRECT", 1) in v4
    v6 = [" ".join(rule.args) for rule in rules[IPV6]]
    assert "-m set --match-set istio-exclude-v6 dst -j RETURN" in v6
    assert not any("10.0.0.0" in args or "2001:db8:5::" in args for args in v4 + v6)


def test_an_include_list_of_one_family_captures_nothing_of_the_other():
    rules = plan_rules(_opts(outbound_ip_ranges=((IPV4, "198.18.0.0/15"),)))
    assert not any(rule.jump == "ISTIO_REDIRECT" and rule.chain == "ISTIO_OUTPUT" for rule in rules[IPV6])


def test_native_rules_match_the_sets_and_the_sets_live_in_the_nat_table():
    opts = _opts(outbound_ip_ranges=((IPV4, "198.18.0.0/15"),), reroute_virtual_interfaces=("veth+",))
    texts = [rule.text for rule in generate_rules(opts) if rule.table == "nat"]
    assert "ip daddr @istio-exclude-v4 counter return" in texts
    assert "ip6 daddr @istio-exclude-v6 counter return" in texts
    assert "ip daddr @istio-include-v4 counter jump istio-redirect" in texts
    assert 'iifname "veth*" ip daddr @istio-include-v4 counter jump istio-redirect' in texts
    assert not any("10.0.0.0" in text for text in texts)
    tables = {table.name: table for table in plan_ruleset(opts)}
    assert [cidr_set.name for cidr_set in tables["istio-proxy-nat"].sets] == [
        "istio-exclude-v4", "istio-exclude-v6", "istio-include-v4"]
    assert all(not table.sets for name, table in tables.items() if name != "istio-proxy-nat")


def test_native_rules_without_sets_are_istio_s():
    texts = [rule.text for rule in generate_rules(_opts(cidr_sets=False))]
    assert "ip daddr 10.0.0.0/24 counter return" in texts and not any("@" in text for text in texts)
    assert all(not table.sets for table in plan_ruleset(_opts(cidr_sets=False)))


def test_cidr_set_writes_merged_cidrs():
    assert CidrSet("istio-exclude-v4", IPV4, ((V4, V4 + 511),)).cidrs() == ["10.0.0.0/23"]


@pytest.mark.parametrize("text", ["198.18.4.2 nomatch", "198.18.4.0/24 timeout", " 198.18.4.2", "2001:db8::1 nomatch"])
def test_an_address_with_anything_after_it_is_no_cidr(text):
    with pytest.raises(ValueError):
        intervals_of_texts([text])


def test_rules_matching_sets_of_ours_are_found_in_any_family():
    dump = parse_iptables("*nat\n:ISTIO_OUTPUT - [0:0]\n-A ISTIO_OUTPUT -m set --match-set istio-exclude-v6 dst "
                          "-j RETURN\nCOMMIT\n")
    plain = parse_iptables("*nat\n:ISTIO_OUTPUT - [0:0]\n-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN\nCOMMIT\n")
    assert iptables_rules_match_sets({IPV4: plain, IPV6: dump})
    assert not iptables_rules_match_sets({IPV4: plain, IPV6: BackendError("no IPv6")})
    foreign = parse_iptables("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m set --match-set users dst -j RETURN\nCOMMIT\n")
    assert not iptables_rules_match_sets({IPV4: foreign})
