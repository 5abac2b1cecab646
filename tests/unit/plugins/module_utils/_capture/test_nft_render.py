# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The native nftables renderer: the exact inverse of the reconcile's rule translator.

For every rule of every configuration the planner's tests use (Istio's golden transactions, the
configurations of each construction step, the real-kernel fixtures of the reconcile tests) and of
a grid of option combinations, ``rule_expressions(render_rule(canonical))`` is ``canonical`` again.
Rules nobody planned (added by hand; their JSON is what nft 1.0.6 printed for them) never crash.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import plan_ruleset
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_reconcile import (
    Chain,
    canonical_rule,
    desired_state,
    live_state,
    planned_state,
    rule_expressions,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_render import (
    chain_order,
    render_base,
    render_expression,
    render_rule,
    render_state,
    table_order,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nftables")
KERNEL = os.path.join(FIXTURES, "kernel")
GOLDEN_FILES = sorted(name[:-4] for name in os.listdir(FIXTURES) if name.endswith(".nft"))
KERNEL_FILES = sorted(name[:-5] for name in os.listdir(KERNEL) if name.endswith(".json"))
_RULE_LINE = re.compile(r"^(?:add rule inet \S+ \S+|insert rule inet \S+ \S+ index \d+) (.*)$")

# The configurations of test_nft_plan's construction-step tests (and its goldens' options).
STEP_CONFIGS = [
    CaptureOptions(),
    CaptureOptions(proxy_uids=("998",), proxy_gids=("998",), exclude_inbound_ports=("22", "15090", "15021", "15020"),
                   capture_dns=True, dns_servers=((IPV4, "127.0.0.53"),)),
    CaptureOptions(inbound_interception_mode="TPROXY", ipv6=True),
    CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=()),
    CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=(), ipv6=True),
    CaptureOptions(exclude_interfaces=("eth1", "eth2")),
    CaptureOptions(exclude_interfaces=("eth1",), inbound_interception_mode="TPROXY"),
    CaptureOptions(reroute_virtual_interfaces=("eth1", "eth2")),
    CaptureOptions(reroute_virtual_interfaces=("kv0",), outbound_ip_ranges=((IPV4, "10.0.0.0/8"),)),
    CaptureOptions(drop_invalid=True),
    CaptureOptions(inbound_ports=(), outbound_ip_ranges=()),
    CaptureOptions(inbound_ports=("80", "8000:8100")),
    CaptureOptions(inbound_interception_mode="TPROXY", inbound_ports=("80",)),
    CaptureOptions(exclude_outbound_ports=("9000", "8000:8080")),
    CaptureOptions(ipv6=True),
    CaptureOptions(outbound_ip_ranges=((IPV4, "127.0.0.2/32"),)),
    CaptureOptions(proxy_uids=("1", "2"), proxy_gids=("3",), capture_dns=True, capture_all_dns=True),
    CaptureOptions(outbound_owner_groups=("5", "6")),
    CaptureOptions(outbound_owner_groups=()),
    CaptureOptions(exclude_outbound_owner_groups=("7", "8")),
    CaptureOptions(capture_dns=True, capture_all_dns=True, ipv6=True),
    CaptureOptions(capture_dns=True, ipv6=True, dns_servers=((IPV6, "2001:db8::53"), (IPV4, "10.0.0.2"))),
    CaptureOptions(capture_dns=True, dns_servers=((IPV6, "2001:db8::53"),)),
    CaptureOptions(capture_dns=True),
    CaptureOptions(ipv6=True, exclude_outbound_ip_ranges=((IPV4, "10.0.0.1/8"), (IPV6, "2001:db8::/32"))),
    CaptureOptions(exclude_outbound_ip_ranges=((IPV6, "2001:db8::/32"),)),
    CaptureOptions(outbound_ports=("7000", "7100:7200")),
    CaptureOptions(ipv6=True, outbound_ip_ranges=((IPV6, "2001:db8::/32"), (IPV4, "198.18.0.0/15"))),
    CaptureOptions(inbound_interception_mode="TPROXY", proxy_gids=("5",)),
    CaptureOptions(inbound_interception_mode="TPROXY", drop_invalid=True, capture_dns=True, capture_all_dns=True),
]


def _grid():
    """Every combination of the options that change which rules exist and how they read."""
    axes = [
        ("inbound", [dict(), dict(inbound_interception_mode="TPROXY"), dict(inbound_ports=("80", "8000:8100")),
                     dict(inbound_interception_mode="TPROXY", inbound_ports=("443",)), dict(inbound_ports=())]),
        ("ipv6", [dict(), dict(ipv6=True)]),
        ("dns", [dict(), dict(capture_dns=True, capture_all_dns=True),
                 dict(capture_dns=True, dns_servers=((IPV4, "198.18.0.53"), (IPV6, "2001:db8::53")))]),
        ("outbound", [dict(), dict(outbound_ip_ranges=((IPV4, "198.18.0.0/15"), (IPV6, "2001:db8::/32")),
                                   exclude_outbound_ip_ranges=((IPV4, "198.18.9.1/24"),), outbound_ports=("7000",),
                                   exclude_outbound_ports=("9000", "8000:8080"))]),
        ("interfaces", [dict(), dict(exclude_interfaces=("veth+", "1eth"), reroute_virtual_interfaces=("kv0",))]),
        ("extras", [dict(), dict(drop_invalid=True, outbound_owner_groups=("5",), proxy_gids=("7", "8"),
                                 tproxy_mark=4000, proxy_port=15101)]),
    ]
    for choice in itertools.product(*(values for name, values in axes)):
        options = {}
        for part in choice:
            options.update(part)
        yield CaptureOptions(**options)


GRID = list(_grid())


def golden_rules(name):
    """The rule text of every ``add rule`` / ``insert rule`` line of a golden transaction (Istio's own)."""
    with open(os.path.join(FIXTURES, name + ".nft")) as handle:
        return [match.group(1) for match in map(_RULE_LINE.match, handle.read().splitlines()) if match]


def kernel_document(name):
    with open(os.path.join(KERNEL, name + ".json")) as handle:
        return json.load(handle)


def planned_texts(opts):
    return [text for table in plan_ruleset(opts) for chain in table.chains for text in chain.rules]


def assert_round_trip(text):
    """The planner's ``text`` -> canonical -> rendered -> canonical again, with no JSON left in the words."""
    canonical = canonical_rule(rule_expressions(text))
    rendered = render_rule(canonical)
    assert canonical_rule(rule_expressions(rendered)) == canonical, (text, rendered)
    assert '{"' not in rendered, (text, rendered)
    # The expressions before canonicalisation (meta l4proto tcp still there) read back the same too.
    from_raw = render_rule(rule_expressions(text))
    assert canonical_rule(rule_expressions(from_raw)) == canonical, (text, from_raw)
    return rendered


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_every_rule_of_istio_goldens_round_trips(name):
    texts = golden_rules(name)
    if name != "cleanup":
        assert texts, "a golden transaction without rules"
    for text in texts:
        assert_round_trip(text)


@pytest.mark.parametrize("index", range(len(STEP_CONFIGS)))
def test_every_rule_of_the_step_configs_round_trips(index):
    texts = planned_texts(STEP_CONFIGS[index])
    assert texts
    for text in texts:
        assert_round_trip(text)


def test_every_rule_of_the_grid_round_trips():
    seen = set()
    for opts in GRID:
        for text in planned_texts(opts):
            if text not in seen:
                seen.add(text)
                assert_round_trip(text)
    assert len(GRID) == 5 * 2 * 3 * 2 * 2 * 2 and len(seen) > 100


@pytest.mark.parametrize("name", KERNEL_FILES)
def test_every_rule_the_kernel_stores_round_trips(name):
    document = kernel_document(name)
    rules = [item["rule"] for item in document["nftables"] if "rule" in item]
    assert rules
    istio = [rule for rule in rules if rule["family"] == "inet" and rule["table"].startswith("istio-proxy-")]
    for rule in istio:
        canonical = canonical_rule(rule["expr"])
        # Raw kernel expressions (with counter values, and meta l4proto as nft keeps it) and canonical ones.
        for rendered in (render_rule(rule["expr"]), render_rule(canonical)):
            assert '{"' not in rendered, rendered
            assert canonical_rule(rule_expressions(rendered)) == canonical, rendered
    for chains in live_state(document).values():
        for chain in chains.values():
            for canonical in chain.rules:
                assert canonical_rule(rule_expressions(render_rule(canonical))) == canonical


def test_the_text_is_the_planners_where_canonical_form_keeps_every_word():
    assert render_rule(rule_expressions("oifname lo ip6 saddr ::6/128 counter return")) == (
        "oifname lo ip6 saddr ::6 counter return")
    assert render_rule(rule_expressions("meta l4proto tcp counter redirect to :15001")) == (
        "meta l4proto tcp counter redirect to :15001")
    assert render_rule(rule_expressions('iifname "veth*" counter return')) == 'iifname "veth*" counter return'
    assert render_rule(rule_expressions('iifname "1abc" counter return')) == 'iifname "1abc" counter return'
    assert render_rule(rule_expressions("tcp dport != { 53, 15008 } skuid 1 counter jump istio-in-redirect")) == (
        "tcp dport != { 53, 15008 } skuid 1 counter jump istio-in-redirect")
    assert render_rule(rule_expressions("ip daddr 10.1.2.3/8 counter return")) == "ip daddr 10.0.0.0/8 counter return"
    assert render_rule(rule_expressions("tcp dport 8000-8080 counter return")) == "tcp dport 8000-8080 counter return"
    assert render_rule(rule_expressions("meta l4proto tcp ct state related,established counter jump istio-divert")) \
        == "meta l4proto tcp ct state related,established counter jump istio-divert"
    assert render_rule(rule_expressions("meta l4proto tcp ct mark 1337 counter meta mark set ct mark")) == (
        "meta l4proto tcp ct mark 1337 counter meta mark set ct mark")
    assert render_rule(rule_expressions("meta l4proto tcp mark 1337 counter ct mark set mark")) == (
        "meta l4proto tcp mark 1337 counter ct mark set mark")
    assert render_rule(rule_expressions("udp sport 15053 meta skgid 9 counter ct zone set 2")) == (
        "udp sport 15053 skgid 9 counter ct zone set 2")
    assert render_rule(rule_expressions("meta l4proto tcp ip6 daddr != ::1/128 tproxy ip6 to :15006 meta mark set "
                                        "1337 counter accept")) == (
        "meta l4proto tcp ip6 daddr != ::1 tproxy ip6 to :15006 meta mark set 1337 counter accept")
    assert render_rule("[]") == ""
    # nft's empty string, quoted so that the word is there to read back.
    empty = [{"match": {"left": {"meta": {"key": "oifname"}}, "op": "!=", "right": ""}}]
    assert render_rule(empty) == 'oifname != ""'
    assert rule_expressions('oifname != ""') == empty


def test_canonical_form_is_rendered_as_it_is():
    # The tcp match implies meta l4proto tcp, which canonical_rule drops: the text follows.
    canonical = canonical_rule(rule_expressions("meta l4proto tcp tcp dport 15008 counter return"))
    assert render_rule(canonical) == "tcp dport 15008 counter return"
    assert render_rule(json.loads(canonical)) == "tcp dport 15008 counter return"


def test_counter_values_are_not_part_of_the_text():
    assert render_rule([{"counter": {"packets": 12, "bytes": 720}}, {"return": None}]) == "counter return"


# What nft 1.0.6 printed with -j for rules added by hand (none of them is in the planner's grammar).
HAND_ADDED = [
    ([{"match": {"left": {"payload": {"field": "protocol", "protocol": "ip"}}, "op": "==", "right": "icmp"}},
      {"counter": {"bytes": 0, "packets": 0}}, {"accept": None}],
     '{"match":{"left":{"payload":{"field":"protocol","protocol":"ip"}},"op":"==","right":"icmp"}} counter accept'),
    ([{"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "==", "right": {"set": [80, 443]}}},
      {"match": {"left": {"ct": {"key": "state"}}, "op": "in", "right": "new"}}, {"log": {"prefix": "hi there "}},
      {"counter": {"bytes": 0, "packets": 0}}, {"accept": None}],
     'tcp dport { 80, 443 } ct state new {"log":{"prefix":"hi there "}} counter accept'),
    ([{"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": {"set": ["a", "b"]}}}, {"drop": None}],
     '{"match":{"left":{"meta":{"key":"iifname"}},"op":"==","right":{"set":["a","b"]}}} drop'),
    ([{"match": {"left": {"payload": {"field": "saddr", "protocol": "ip"}}, "op": "==",
                 "right": {"set": ["10.0.0.1", "10.0.0.2"]}}}, {"return": None}],
     '{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":{"set":["10.0.0.1",'
     '"10.0.0.2"]}}} return'),
    ([{"match": {"left": {"payload": {"field": "dport", "protocol": "th"}}, "op": "==", "right": 53}},
      {"return": None}],
     '{"match":{"left":{"payload":{"field":"dport","protocol":"th"}},"op":"==","right":53}} return'),
    ([{"match": {"left": {"payload": {"field": "daddr", "protocol": "ip"}}, "op": "==",
                 "right": {"range": ["10.0.0.0", "10.0.0.9"]}}}, {"return": None}],
     '{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":{"range":["10.0.0.0",'
     '"10.0.0.9"]}}} return'),
    ([{"match": {"left": {"meta": {"key": "l4proto"}}, "op": "==", "right": "tcp"}},
      {"redirect": {"port": {"range": [15001, 15002]}}}],
     'meta l4proto tcp {"redirect":{"port":{"range":[15001,15002]}}}'),
    ([{"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "==", "right": 15001}},
      {"goto": {"target": "istio-output"}}],
     'tcp dport 15001 {"goto":{"target":"istio-output"}}'),
    ([{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 16}}, {"counter": {"bytes": 0, "packets": 0}},
      {"continue": None}],
     'meta mark set 16 counter {"continue":null}'),
    # nft keeps a braced ct state as a set (canonical_rule then holds a list of its keys): never guessed.
    ([{"match": {"left": {"ct": {"key": "state"}}, "op": "==", "right": {"set": ["established", "related"]}}},
      {"accept": None}],
     '{"match":{"left":{"ct":{"key":"state"}},"op":"==","right":{"set":["established","related"]}}} accept'),
]


@pytest.mark.parametrize("exprs, expected", HAND_ADDED)
def test_rules_added_by_hand_show_what_is_not_grammar_as_json(exprs, expected):
    assert render_rule(exprs) == expected
    assert render_rule(json.dumps(exprs)) == expected


# What the kernel printed for hand-added rules that the grammar does hold.
HAND_ADDED_IN_GRAMMAR = [
    ([{"match": {"left": {"ct": {"key": "state"}}, "op": "!=", "right": "invalid"}}, {"return": None}],
     "ct state != invalid return"),
    ([{"match": {"left": {"ct": {"key": "mark"}}, "op": "!=", "right": 5}}, {"counter": {"bytes": 0, "packets": 0}},
      {"return": None}], "ct mark != 5 counter return"),
    ([{"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "!=", "right": {"range": [3, 4]}}},
      {"return": None}], "tcp dport != 3-4 return"),
    ([{"match": {"left": {"payload": {"field": "daddr", "protocol": "ip6"}}, "op": "!=",
                 "right": {"prefix": {"addr": "2001:db8::", "len": 32}}}}, {"return": None}],
     "ip6 daddr != 2001:db8::/32 return"),
    ([{"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "1abc"}},
      {"match": {"left": {"meta": {"key": "oifname"}}, "op": "==", "right": "veth*"}}, {"return": None}],
     'iifname "1abc" oifname "veth*" return'),
]


@pytest.mark.parametrize("exprs, expected", HAND_ADDED_IN_GRAMMAR)
def test_rules_added_by_hand_in_the_grammar_read_back(exprs, expected):
    assert render_rule(exprs) == expected
    assert canonical_rule(rule_expressions(expected)) == canonical_rule(exprs)


@pytest.mark.parametrize("expr", [
    {"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "a b"}},  # a space splits the word
    {"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": 'a"b'}},
    {"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "!="}},
    {"match": {"left": {"meta": {"key": "iifname"}}, "op": "==", "right": "a\tb"}},
    {"match": {"left": {"meta": {"key": "skuid"}}, "op": "==", "right": "root"}},
    {"match": {"left": {"meta": {"key": "skuid"}}, "op": "==", "right": True}},
    {"match": {"left": {"meta": {"key": "priority"}}, "op": "==", "right": 1}},
    {"match": {"left": {"meta": {"key": "mark"}}, "op": "<", "right": 1}},
    {"match": {"left": {"payload": {"field": "daddr", "protocol": "ip"}}, "op": "==", "right": "not-an-address"}},
    {"match": {"left": {"payload": {"field": "dport", "protocol": "tcp"}}, "op": "in", "right": 1}},
    {"match": {"left": {"ct": {"key": "state"}}, "op": "==", "right": ["a", 1]}},
    {"match": {"left": {"ct": {"key": "mark"}}, "op": "in", "right": 1}},
    {"match": {"left": {"ct": {"key": "status"}}, "op": "==", "right": "dnat"}},
    {"match": {"left": "weird", "op": "==", "right": 1}},
    {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"ct": {"key": "mark"}}}},  # ct mark set ct mark
    {"mangle": {"key": {"meta": {"key": "priority"}}, "value": 1}},
    {"mangle": {"key": {"meta": {"key": "mark"}}, "value": "x"}},
    {"redirect": {"port": 15001, "flags": ["random"]}},
    {"redirect": None},
    {"tproxy": {"family": "ip", "port": 15006, "addr": "127.0.0.1"}},
    {"jump": {"target": "two words"}},
    {"return": {"unexpected": 1}},
    {"counter": None, "return": None},
    {"queue": {"num": 1}},
    {},
])
def test_unknown_expressions_are_their_compact_json(expr):
    rendered = render_expression(expr)
    assert rendered == json.dumps(expr, sort_keys=True, separators=(",", ":"))
    assert render_rule([expr, {"return": None}]) == rendered + " return"


def test_only_expressions_that_read_back_are_words():
    # Each fragment the renderer writes as words reads back as exactly that expression.
    for opts in (STEP_CONFIGS[2], GRID[-1]):
        for text in planned_texts(opts):
            for expr in rule_expressions(text):
                words = render_expression(expr)
                assert canonical_rule(rule_expressions(words)) == canonical_rule([expr]), words


def test_base_chain_specs():
    assert render_base(("nat", "prerouting", -100, "accept")) == "type nat hook prerouting priority -100; policy accept;"
    assert render_base(("route", "output", -150)) == "type route hook output priority -150; policy accept;"
    assert render_base(("filter", "output", -300, "drop")) == "type filter hook output priority -300; policy drop;"
    assert render_base(None) is None


K8S_DEFAULT_TEXT = """\
table inet istio-proxy-nat {
\tchain prerouting {
\t\ttype nat hook prerouting priority -100; policy accept;
\t\tmeta l4proto tcp counter jump istio-inbound
\t}

\tchain output {
\t\ttype nat hook output priority -100; policy accept;
\t\tcounter jump istio-output
\t}

\tchain istio-inbound {
\t\ttcp dport 15008 counter return
\t\ttcp dport 15090 counter return
\t\ttcp dport 15021 counter return
\t\ttcp dport 15020 counter return
\t\tmeta l4proto tcp counter jump istio-in-redirect
\t}

\tchain istio-redirect {
\t\tmeta l4proto tcp counter redirect to :15001
\t}

\tchain istio-in-redirect {
\t\tmeta l4proto tcp counter redirect to :15006
\t}

\tchain istio-output {
\t\toifname lo ip saddr 127.0.0.6 counter return
\t\toifname lo ip daddr != 127.0.0.1 tcp dport != 15008 skuid 1337 counter jump istio-in-redirect
\t\toifname lo skuid != 1337 counter return
\t\tskuid 1337 counter return
\t\toifname lo ip daddr != 127.0.0.1 tcp dport != 15008 skgid 1337 counter jump istio-in-redirect
\t\toifname lo skgid != 1337 counter return
\t\tskgid 1337 counter return
\t\tip daddr 127.0.0.1 counter return
\t\tcounter jump istio-redirect
\t}
}
"""


def test_state_text_of_istio_defaults():
    assert render_state(desired_state(plan_ruleset(CaptureOptions()))) == K8S_DEFAULT_TEXT


def test_state_text_of_the_kernel_equals_the_desired_one():
    for name in ("k8s-default", "kitchen-sink", "k8s-tproxy-dual-stack", "vm-dns-all-dual-stack"):
        live = live_state(kernel_document(name))
        assert render_state(live).startswith("table inet istio-proxy-nat {\n")
    assert render_state(live_state(kernel_document("k8s-default"))) == K8S_DEFAULT_TEXT
    assert render_state({}) == ""


def test_state_order_is_stable_whatever_the_kernel_order():
    document = kernel_document("kitchen-sink")
    items = document["nftables"]
    shuffled = copy.deepcopy(document)
    # Tables and chains listed in reverse (rules keep their order within a chain).
    shuffled["nftables"] = ([item for item in reversed(items) if "table" in item]
                            + [item for item in reversed(items) if "chain" in item]
                            + [item for item in items if "rule" in item])
    assert render_state(live_state(shuffled)) == render_state(live_state(document))
    text = render_state(live_state(document))
    tables = re.findall(r"^table inet (\S+) \{$", text, re.M)
    assert tables == ["istio-proxy-nat", "istio-proxy-mangle", "istio-proxy-raw"]
    mangle = text.split("table inet istio-proxy-mangle {\n")[1].split("\n}\n")[0]
    assert re.findall(r"^\tchain (\S+) \{$", mangle, re.M) == [
        "prerouting", "output", "istio-divert", "istio-tproxy", "istio-inbound", "istio-drop"]


def test_stray_tables_chains_and_rules_are_shown():
    state = desired_state(plan_ruleset(CaptureOptions()))
    state["istio-proxy-nat"]["stray"] = Chain(None, ())
    state["istio-proxy-nat"]["a-stray"] = Chain(("filter", "input", 0, "drop"), (
        canonical_rule([{"match": {"left": {"payload": {"field": "protocol", "protocol": "ip"}}, "op": "==",
                                   "right": "icmp"}}, {"accept": None}]),))
    state["istio-proxy-zzz"] = {}
    text = render_state(state)
    assert text.endswith("\tchain a-stray {\n\t\ttype filter hook input priority 0; policy drop;\n"
                         '\t\t{"match":{"left":{"payload":{"field":"protocol","protocol":"ip"}},"op":"==",'
                         '"right":"icmp"}} accept\n\t}\n\n\tchain stray {\n\t}\n}\ntable inet istio-proxy-zzz {\n}\n')


def test_orders():
    assert table_order(["x", "istio-proxy-raw", "istio-proxy-nat", "a"]) == [
        "istio-proxy-nat", "istio-proxy-raw", "a", "x"]
    assert chain_order("istio-proxy-raw", ["z", "istio-output-dns", "output", "prerouting"]) == [
        "prerouting", "output", "istio-output-dns", "z"]
    assert chain_order("other", ["b", "a"]) == ["a", "b"]


def test_state_of_planner_text_is_shown_as_written():
    # The module's result shows its plan in the planner's own words (rule_text=str): same layout.
    tables = plan_ruleset(STEP_CONFIGS[2])
    planned = render_state(planned_state(tables), str)
    canonical = render_state(desired_state(tables))
    assert planned.count("\n") == canonical.count("\n")
    assert "\t\tmeta l4proto tcp tcp dport 15008 counter return\n" in planned
    assert "\t\ttcp dport 15008 counter return\n" in canonical
    texts = [line.strip() for line in planned.splitlines() if line.startswith("\t\t") and not line.startswith("\t\ttype ")]
    assert texts == planned_texts(STEP_CONFIGS[2])
