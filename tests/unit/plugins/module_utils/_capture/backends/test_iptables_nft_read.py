# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The nft backend starts iptables-nft-save only for a family whose nat, mangle or raw table exists."""

from __future__ import annotations

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_nft
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6

SAVE = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j ISTIO_OUTPUT\nCOMMIT\n"


class Runner:
    def __init__(self):
        self.calls = []

    def run(self, argv, data=None):
        self.calls.append(argv)
        return 0, SAVE, ""

    @staticmethod
    def which(name):
        return "/usr/sbin/" + name


@pytest.mark.parametrize("family", [IPV4, IPV6])
@pytest.mark.parametrize("tables", [[], ["filter"], ["filter", "security"]])
def test_no_capture_table_in_the_kernel_means_no_process(monkeypatch, family, tables):
    monkeypatch.setattr(iptables_nft, "kernel_table_names", lambda fam: tables if fam == family else None)
    runner = Runner()
    backend = iptables_nft.NftBackend(runner.run, runner.which)
    assert backend.read(family) == {}
    assert runner.calls == []


@pytest.mark.parametrize("tables", [["nat"], ["filter", "mangle"], ["raw"], None])
def test_a_capture_table_or_no_answer_means_the_save_is_read(monkeypatch, tables):
    monkeypatch.setattr(iptables_nft, "kernel_table_names", lambda family: tables)
    runner = Runner()
    backend = iptables_nft.NftBackend(runner.run, runner.which)
    dumps = backend.read(IPV6)
    assert runner.calls == [["/usr/sbin/ip6tables-nft-save"]]
    assert dumps["nat"].chains["OUTPUT"] == ["-p tcp -j ISTIO_OUTPUT"]


def test_the_family_is_asked_by_its_nfproto(monkeypatch):
    asked = []
    monkeypatch.setattr(iptables_nft.netlink, "nft_table_names", lambda nfproto: asked.append(nfproto) or [])
    assert iptables_nft.kernel_table_names(IPV4) == [] and iptables_nft.kernel_table_names(IPV6) == []
    assert asked == [2, 10]  # NFPROTO_IPV4, NFPROTO_IPV6
