# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ownership record: round trip, keyed by namespace and inode, gone when nothing is claimed."""

from __future__ import annotations

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture import ownership as record

CLAIMS = {"ipv4": {("nat", "OUTPUT", "-o eth9 -j RETURN")}, "ipv6": set()}


def test_paths_are_keyed_by_name_and_inode(tmp_path):
    assert record.record_path("app", 4026532177, str(tmp_path)).endswith("/netns-app-4026532177.json")
    assert record.record_path(None, 4026531833, str(tmp_path)).endswith("/ns-4026531833.json")
    assert record.record_path("app", 1, str(tmp_path)) != record.record_path("app", 2, str(tmp_path))


def test_round_trip_and_removal(tmp_path):
    path = record.record_path("app", 7, str(tmp_path / "run"))
    assert record.load(path) == {}
    record.save(path, CLAIMS)
    assert record.load(path) == {"ipv4": CLAIMS["ipv4"]}
    record.save(path, {"ipv4": set()})
    assert not (tmp_path / "run" / "netns-app-7.json").exists()


def test_a_damaged_record_claims_nothing(tmp_path):
    path = tmp_path / "ns-1.json"
    path.write_text("{not json")
    assert record.load(str(path)) == {}


def test_prune_removes_records_of_namespaces_that_are_gone(tmp_path):
    root = str(tmp_path)
    live = {"app": 7, "again": 9}
    for netns, inode in (("app", 7), ("gone", 8), ("again", 1)):
        record.save(record.record_path(netns, inode, root), CLAIMS)
    record.save(record.record_path(None, 5, root), CLAIMS)
    record.prune(live.get, root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["netns-app-7.json", "ns-5.json"]


@pytest.mark.parametrize("text", [
    "", '{"rules": {"ipv4": [["nat", "PREROUTING", "-i fi0 -j RETURN"]', "[]", '{"rules": 5}', "\x00\xff garbage",
    '{"other": 1}', '{"rules": []}', '{"rules": {"ipv4": 5}}', '{"rules": {"ipv4": [["nat", "OUTPUT"]]}}',
    '{"rules": {"ipv4": [["nat", "OUTPUT", 5]]}}', '{"rules": {"ipx": [["nat", "OUTPUT", "-o x -j RETURN"]]}}',
    '{"rules": {"ipv4": [["nat", "OUTPUT", "-o x -j RETURN"], "nat OUTPUT"]}}',
])
def test_a_record_of_any_other_shape_claims_nothing_and_says_why(tmp_path, text):
    path = tmp_path / "ns-1.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text)
    warnings = []
    assert record.load(str(path), warnings.append) == {}
    assert record.load(str(path)) == {}  # the old call still works, without a warning
    assert len(warnings) == 1 and str(path) in warnings[0] and "ignored" in warnings[0]


def test_a_missing_record_is_no_record_and_no_warning(tmp_path):
    warnings = []
    assert record.load(str(tmp_path / "ns-1.json"), warnings.append) == {}
    assert warnings == []


def test_the_record_is_replaced_whole_and_leaves_no_temporary_file(tmp_path):
    path = record.record_path("app", 7, str(tmp_path))
    record.save(path, CLAIMS)
    record.save(path, {"ipv4": {("nat", "OUTPUT", "-o eth8 -j RETURN")}})
    assert record.load(path) == {"ipv4": {("nat", "OUTPUT", "-o eth8 -j RETURN")}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["netns-app-7.json"]


STAMP = {"generation": 41, "digest": "ab" * 32}


def test_the_native_stamp_keeps_a_record_without_claims(tmp_path):
    path = record.record_path("w1", 7, str(tmp_path))
    record.save(path, {}, STAMP)
    assert record.load_stamp(path) == STAMP
    assert record.load(path) == {}
    record.save(path, {"ipv4": {("mangle", "PREROUTING", "-i eth9 -j RETURN")}}, STAMP)
    assert record.load_stamp(path) == STAMP
    assert record.load(path) == {"ipv4": {("mangle", "PREROUTING", "-i eth9 -j RETURN")}}
    record.save(path, {}, None)  # neither claims nor stamp: no record at all
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []
    assert record.load_stamp(path) is None


@pytest.mark.parametrize("text", [
    "", "[]", '{"rules": {}}', '{"rules": {}, "nftables": []}', '{"rules": {}, "nftables": {"generation": "1", "digest": "x"}}',
    '{"rules": {}, "nftables": {"generation": true, "digest": "x"}}', '{"rules": {}, "nftables": {"generation": 1}}',
    '{"rules": {}, "nftables": {"generation": 1, "digest": 5}}', "\xff garbage",
])
def test_anything_but_a_stamp_is_no_stamp(tmp_path, text):
    path = tmp_path / "netns-w1-7.json"
    path.write_text(text)
    assert record.load_stamp(str(path)) is None


def test_a_stamp_is_ignored_by_the_claims_reader(tmp_path):
    path = tmp_path / "netns-w1-7.json"
    path.write_text('{"rules": {"ipv4": [["nat", "OUTPUT", "-o eth9 -j RETURN"]]}, "nftables": {"generation": 3, "digest": "d"}}')
    warnings = []
    assert record.load(str(path), warnings.append) == {"ipv4": {("nat", "OUTPUT", "-o eth9 -j RETURN")}}
    assert warnings == []


def test_prune_removes_temporary_records_a_killed_run_left(tmp_path):
    import os
    import time

    stale = tmp_path / ".netns-w1-7.json.abc123.tmp"
    fresh = tmp_path / ".netns-w2-8.json.def456.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - record.STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    record.prune(lambda name: None, str(tmp_path))
    assert not stale.exists()
    assert fresh.exists()  # another run may be writing it right now
