# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ipsets of cidr_sets: reading ``ipset save``, the scripts between two states, the backend's calls."""

from __future__ import annotations

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture import ipset_reconcile
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.ipset import (
    IpsetBackend,
    IpsetHeader,
    IpsetState,
    parse_save,
    parse_terse,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import intervals_of_texts
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions

OPTS = CaptureOptions(exclude_outbound_ip_ranges=((IPV4, "10.0.0.0/24"), (IPV4, "10.0.1.0/24"),
                                                  (IPV6, "2001:db8:5::/48")), ipv6=True, cidr_sets=True)
WANTED = ipset_reconcile.wanted_ipsets(OPTS)
SAVE = """create istio-exclude-v4 hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add istio-exclude-v4 10.0.1.0/24
add istio-exclude-v4 10.0.0.0/24
"""


def _state(family, *texts):
    return IpsetState("hash:net", family, intervals_of_texts(texts))


def test_wanted_sets_are_hash_net_per_family_and_none_in_native_mode_or_without_the_option():
    assert WANTED == {"istio-exclude-v4": _state("inet", "10.0.0.0/23"),
                      "istio-exclude-v6": _state("inet6", "2001:db8:5::/48")}
    assert ipset_reconcile.wanted_ipsets(CaptureOptions(native_nftables=True, cidr_sets=True,
                                                        exclude_outbound_ip_ranges=((IPV4, "10.0.0.0/8"),))) == {}
    assert ipset_reconcile.wanted_ipsets(None) == {}
    assert ipset_reconcile.wanted_ipsets(CaptureOptions(exclude_outbound_ip_ranges=((IPV4, "10.0.0.0/8"),))) == {}


def test_save_output_compares_as_merged_intervals():
    assert parse_save("istio-exclude-v4", SAVE) == WANTED["istio-exclude-v4"]
    assert parse_save("istio-exclude-v4", "create istio-exclude-v4 hash:ip family inet\n").type == "hash:ip"


def test_an_entry_with_options_is_never_equal_to_a_plan():
    state = parse_save("istio-exclude-v4", SAVE + "add istio-exclude-v4 10.9.0.0/16 nomatch\n")
    assert state.intervals[0] == "unreadable" and state != WANTED["istio-exclude-v4"]


def test_nothing_to_do_when_the_sets_are_the_plan():
    assert not ipset_reconcile.plan_changes(WANTED, dict(WANTED))


def test_new_sets_are_created_filled_and_sized():
    changes = ipset_reconcile.plan_changes(WANTED, {})
    assert changes.fill.splitlines() == [
        "create istio-exclude-v4 hash:net family inet hashsize 1024 maxelem 65536",
        "add istio-exclude-v4 10.0.0.0/23",
        "create istio-exclude-v6 hash:net family inet6 hashsize 1024 maxelem 65536",
        "add istio-exclude-v6 2001:db8:5::/48",
    ]
    assert changes.destroy == ()


def test_a_large_set_gets_room_for_all_its_members():
    big = IpsetState("hash:net", "inet", tuple((n * 4, n * 4) for n in range(100000)))
    head = ipset_reconcile.create_lines("istio-exclude-v4", big)[0]
    assert head.endswith("hashsize 131072 maxelem 100000")


def test_changed_contents_are_swapped_in_through_a_temporary_set():
    live = {"istio-exclude-v4": _state("inet", "10.0.0.0/24", "10.9.0.0/16"),
            "istio-exclude-v6": WANTED["istio-exclude-v6"]}
    changes = ipset_reconcile.plan_changes(WANTED, live)
    assert changes.fill.splitlines() == [
        "create istio-exclude-v4-new hash:net family inet hashsize 1024 maxelem 65536",
        "add istio-exclude-v4-new 10.0.0.0/23",
        "swap istio-exclude-v4-new istio-exclude-v4",
        "destroy istio-exclude-v4-new",
    ]
    assert changes.destroy == ()


def test_a_temporary_set_left_by_a_killed_run_is_destroyed_first_or_after():
    stale = {"istio-exclude-v4": _state("inet", "10.0.0.0/24"), "istio-exclude-v4-new": _state("inet", "10.0.0.0/8")}
    changes = ipset_reconcile.plan_changes(WANTED, stale)
    assert changes.fill.splitlines()[0] == "destroy istio-exclude-v4-new"
    assert "istio-exclude-v4-new" not in changes.destroy
    untouched = dict(WANTED, **{"istio-exclude-v4-new": _state("inet", "10.0.0.0/8")})
    assert ipset_reconcile.plan_changes(WANTED, untouched).destroy == ("istio-exclude-v4-new",)


def test_sets_no_longer_wanted_are_destroyed_after_the_rules_and_foreign_sets_never():
    live = dict(WANTED, **{"istio-include-v4": _state("inet", "198.18.0.0/15"), "users-set": _state("inet", "1.0.0.0/8")})
    changes = ipset_reconcile.plan_changes(WANTED, live)
    assert changes.fill == "" and changes.destroy == ("istio-include-v4",)
    assert changes.destroy_commands() == ["ipset destroy istio-include-v4"]
    assert ipset_reconcile.plan_changes({}, live).destroy == ("istio-exclude-v4", "istio-exclude-v6", "istio-include-v4")


def test_a_set_of_another_type_is_refused_naming_it():
    with pytest.raises(ipset_reconcile.IpsetConflict, match="istio-exclude-v4 exists as hash:ip family inet"):
        ipset_reconcile.plan_changes(WANTED, {"istio-exclude-v4": IpsetState("hash:ip", "inet", ())})
    with pytest.raises(ipset_reconcile.IpsetConflict, match="family inet6"):
        ipset_reconcile.plan_changes(WANTED, {"istio-exclude-v4": IpsetState("hash:net", "inet6", ())})


def test_render_shows_the_sets_as_ipset_save_would():
    assert ipset_reconcile.render_ipsets(WANTED) == (
        "create istio-exclude-v4 hash:net family inet\nadd istio-exclude-v4 10.0.0.0/23\n"
        "create istio-exclude-v6 hash:net family inet6\nadd istio-exclude-v6 2001:db8:5::/48\n")


class _Runner:
    def __init__(self, replies, ipset="/usr/sbin/ipset"):
        self.replies, self.calls, self.ipset = replies, [], ipset

    def which(self, name):
        return self.ipset if name == "ipset" else None

    def run(self, argv, data=None):
        self.calls.append((argv[1:], data))
        return self.replies.get(tuple(argv[1:]), (0, "", ""))


def test_backend_reads_only_the_sets_of_ours():
    runner = _Runner({("list", "-name"): (0, "users\nistio-exclude-v4\nistio-exclude-v4x\n", ""),
                      ("save", "istio-exclude-v4"): (0, SAVE, "")})
    assert IpsetBackend(runner).read() == {"istio-exclude-v4": WANTED["istio-exclude-v4"]}
    assert [call[0] for call in runner.calls] == [["list", "-name"], ["save", "istio-exclude-v4"]]


def test_backend_without_the_tool_says_so_and_reads_nothing():
    runner = _Runner({}, ipset=None)
    backend = IpsetBackend(runner)
    assert backend.missing() == ["ipset"] and backend.read() == {} and runner.calls == []


def test_backend_apply_feeds_one_restore_and_reports_a_refusal():
    runner = _Runner({("restore",): (1, "", "ipset v7.17: Error in line 2: Syntax error")})
    with pytest.raises(BackendError, match="ipset restore refused the change.*Syntax error"):
        IpsetBackend(runner).apply("create x hash:net\n")
    assert runner.calls == [(["restore"], "create x hash:net\n")]
    IpsetBackend(runner).apply("")
    assert len(runner.calls) == 1


def test_backend_destroy_leaves_a_set_in_use_and_fails_on_anything_else():
    runner = _Runner({("destroy", "istio-exclude-v4"): (1, "", "Set cannot be destroyed: it is in use by a kernel "
                                                               "component"),
                      ("destroy", "istio-exclude-v6"): (1, "", "The set with the given name does not exist")})
    assert IpsetBackend(runner).destroy(["istio-exclude-v4", "istio-exclude-v6", "istio-include-v4"]) == [
        "istio-exclude-v4"]
    broken = _Runner({("destroy", "istio-exclude-v4"): (1, "", "Kernel error")})
    with pytest.raises(BackendError, match="ipset destroy istio-exclude-v4 failed"):
        IpsetBackend(broken).destroy(["istio-exclude-v4"])


TERSE = """Name: istio-exclude-v4
Type: hash:net
Revision: 7
Header: family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xc7328d7e
Size in memory: 504
References: 1
Number of entries: 2
"""


def test_terse_listing_gives_what_the_set_is_and_its_size():
    assert parse_terse(TERSE) == IpsetHeader("hash:net", "inet", 2)
    assert parse_terse("Name: x\nType: hash:ip\nHeader: family inet6 hashsize 64\nNumber of entries: 0\n") == \
        IpsetHeader("hash:ip", "inet6", 0)
    assert parse_terse("garbage") == IpsetHeader(None, None, None)


def test_expected_headers_count_the_entries_the_fill_writes():
    # 10.0.0.0/24 and 10.0.1.0/24 merge into 10.0.0.0/23: one entry; the IPv6 /48 is one.
    assert ipset_reconcile.expected_headers(WANTED, tuple(WANTED)) == {
        "istio-exclude-v4": IpsetHeader("hash:net", "inet", 1), "istio-exclude-v6": IpsetHeader("hash:net", "inet6", 1)}
    odd = {"istio-exclude-v4": _state("inet", "10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24")}  # /23 + /24
    assert ipset_reconcile.expected_headers(odd, ("istio-exclude-v4",))["istio-exclude-v4"].entries == 2
    for name, state in odd.items():
        assert len([line for line in ipset_reconcile.create_lines(name, state) if line.startswith("add ")]) == 2


def test_headers_are_read_for_the_sets_of_ours_only():
    runner = _Runner({("list", "-name"): (0, "users\nistio-exclude-v4\n", ""),
                      ("list", "-terse", "istio-exclude-v4"): (0, TERSE, "")})
    assert IpsetBackend(runner).read_headers() == {"istio-exclude-v4": IpsetHeader("hash:net", "inet", 2)}
    assert [call[0] for call in runner.calls] == [["list", "-name"], ["list", "-terse", "istio-exclude-v4"]]
    gone = _Runner({("list", "-name"): (0, "istio-exclude-v4\n", ""),
                    ("list", "-terse", "istio-exclude-v4"): (1, "", "The set with the given name does not exist")})
    assert IpsetBackend(gone).read_headers() == {}
    broken = _Runner({("list", "-name"): (0, "istio-exclude-v4\n", ""),
                      ("list", "-terse", "istio-exclude-v4"): (1, "", "Kernel error")})
    with pytest.raises(BackendError, match="ipset list -terse istio-exclude-v4 failed"):
        IpsetBackend(broken).read_headers()
    assert IpsetBackend(_Runner({}, ipset=None)).read_headers() == {}


def test_headers_describe_themselves():
    assert ipset_reconcile.describe_headers({}) == "none"
    assert ipset_reconcile.describe_headers({"b": IpsetHeader("hash:net", "inet6", 3),
                                             "a": IpsetHeader("hash:net", "inet", 1)}) == \
        "a (hash:net inet, 1 entries), b (hash:net inet6, 3 entries)"


def test_a_set_the_run_left_alone_is_not_counted():
    # The plan says 10.0.0.0/23; the kernel holds it as two /24s: the same set, not refilled, not counted.
    expected = ipset_reconcile.expected_headers(WANTED, ("istio-exclude-v6",))
    assert expected["istio-exclude-v4"] == IpsetHeader("hash:net", "inet", None)
    now = {"istio-exclude-v4": IpsetHeader("hash:net", "inet", 2), "istio-exclude-v6": IpsetHeader("hash:net", "inet6", 1)}
    assert ipset_reconcile.headers_match(now, expected)
    assert not ipset_reconcile.headers_match(dict(now, **{"istio-exclude-v6": IpsetHeader("hash:net", "inet6", 3)}),
                                             expected)
    assert not ipset_reconcile.headers_match(dict(now, **{"istio-exclude-v4": IpsetHeader("hash:ip", "inet", 2)}),
                                             expected)
    assert not ipset_reconcile.headers_match({"istio-exclude-v6": now["istio-exclude-v6"]}, expected)
    assert not ipset_reconcile.headers_match(dict(now, **{"istio-include-v4": now["istio-exclude-v4"]}), expected)
    assert "any number of entries" in ipset_reconcile.describe_headers(expected)


def test_the_changes_name_the_sets_they_fill():
    live = {"istio-exclude-v4": WANTED["istio-exclude-v4"]}
    assert ipset_reconcile.plan_changes(WANTED, live).filled == ("istio-exclude-v6",)
    assert ipset_reconcile.plan_changes(WANTED, WANTED).filled == ()


@pytest.mark.parametrize("entry", ["10.0.0.5 nomatch", "10.0.0.0/24 nomatch", "2001:db8::5 nomatch",
                                   "10.0.0.5 timeout 30"])
def test_an_entry_with_options_makes_the_set_unreadable_whatever_its_address(entry):
    family = "inet6" if ":" in entry else "inet"
    name = "istio-exclude-v6" if ":" in entry else "istio-exclude-v4"
    text = "create %s hash:net family %s\nadd %s 10.0.0.0/23\nadd %s %s\n" % (name, family, name, name, entry)
    if ":" in entry:
        text = text.replace("10.0.0.0/23", "2001:db8::/48")
    state = parse_save(name, text)
    assert state.intervals[0] == "unreadable"
    assert entry in state.intervals
