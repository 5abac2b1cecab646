# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The module end to end with a simulated target: check mode writes nothing, an equal kernel is left alone."""

from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.testing import patch_module_args

from ansible_collections.meshops.sidecar.plugins.modules import istio_redirect_chains

KERNEL = os.path.join(os.path.dirname(__file__), "..", "module_utils", "fixtures", "kernel")
EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
READ_ONLY = ("iptables-nft-save", "ip6tables-nft-save")


class FakeTarget:
    """Answers the commands the module runs; records them."""

    def __init__(self, save4, save6=""):
        self.saves = {"iptables-nft-save": save4, "ip6tables-nft-save": save6}
        self.calls = []

    def run_command(self, args, data=None, binary_data=False, **kwargs):
        self.calls.append((list(args), data))
        tool = os.path.basename(args[0])
        if tool in self.saves:
            return 0, self.saves[tool], ""
        if tool.endswith("-restore"):
            return 0, "", ""
        if args[:2] == ["ip", "-json"] or args[:3] == ["ip", "-6", "-json"]:
            return 0, "[]", ""
        return 0, "", ""

    def writes(self):
        return [args for args, dummy in self.calls
                if os.path.basename(args[0]) not in READ_ONLY and "-json" not in args]


@pytest.fixture(autouse=True)
def record_dir(mocker, tmp_path):
    """Keep the ownership record out of /run."""
    mocker.patch("ansible_collections.meshops.sidecar.plugins.module_utils._capture.ownership.RECORD_DIR",
                 str(tmp_path / "run"))
    return tmp_path / "run"


def run_module(mocker, capsys, target, **args):
    mocker.patch("ansible.module_utils.basic.AnsibleModule.run_command", side_effect=target.run_command)
    mocker.patch("ansible.module_utils.basic.AnsibleModule.get_bin_path", side_effect=lambda name, *a, **k: name)
    mocker.patch("ansible_collections.meshops.sidecar.plugins.module_utils._capture.run.ssh_session", return_value=None)
    mocker.patch("ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_legacy.LegacyBackend.missing",
                 return_value=["python-iptables"])
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            istio_redirect_chains.main()
    return json.loads(capsys.readouterr().out)


def test_check_mode_reports_the_change_and_writes_nothing(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, ipv6=False, _ansible_check_mode=True, _ansible_diff=True)
    assert result["changed"] is True
    assert result["backend"] == "nft"
    assert target.writes() == []
    assert result["commands"][0] == "iptables-nft-restore --noflush <<EOF"
    assert "-A OUTPUT -j ISTIO_OUTPUT" in result["commands"]
    assert "-A OUTPUT -j ISTIO_OUTPUT" in result["diff"]["after"]
    assert "-A OUTPUT -j ISTIO_OUTPUT" not in result["diff"]["before"]


def test_apply_runs_one_restore_per_family(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, ipv6=False)
    assert result["changed"] is True
    restores = [(args, data) for args, data in target.calls if args[0].endswith("-restore")]
    assert [args for args, dummy in restores] == [["iptables-nft-restore", "--noflush"]]
    assert restores[0][1].startswith("*nat\n:ISTIO_INBOUND - [0:0]\n")


def test_kernel_already_right_means_no_change_and_no_write(mocker, capsys):
    with open(os.path.join(KERNEL, "kitchen-sink.ipv4.nft-save")) as handle:
        save4 = handle.read()
    with open(os.path.join(KERNEL, "kitchen-sink.ipv6.nft-save")) as handle:
        save6 = handle.read()
    target = FakeTarget(save4, save6)
    # The kitchen-sink options (see test_reconcile.py), without TPROXY routes to keep ip output empty.
    args = dict(
        inbound_interception_mode="TPROXY", ipv6=True, capture_dns=True, drop_invalid=True,
        dns_servers=["198.18.0.53", "2001:db8::53"], exclude_interfaces=["eth9"],
        reroute_virtual_interfaces=["docker0"], exclude_outbound_ip_ranges="198.18.7.9/16,2001:db8:0:1::/64",
        outbound_ports=["8000:8100"], exclude_outbound_ports=[5432], outbound_owner_groups=["100", "200"],
        proxy_uid=["1337", "0"], proxy_gid=["1337"], ipv4_loopback_cidr="127.0.0.0/8",
        _ansible_check_mode=True,
    )
    result = run_module(mocker, capsys, target, **args)
    # Only the policy route and ::6 are missing in the fake target; the rules are equal.
    assert not any(c.startswith(("iptables", "ip6tables", "python-iptables")) for c in result["commands"])
    assert all(c.startswith("ip ") for c in result["commands"])
    assert target.writes() == []


def test_bad_input_fails_before_reading_anything(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, exclude_outbound_ip_ranges=["300.1.2.3/8"])
    assert result["failed"] is True
    assert "exclude_outbound_ip_ranges='300.1.2.3/8'" in result["msg"]
    assert target.calls == []


def test_absent_removes_with_default_options(mocker, capsys):
    with open(os.path.join(KERNEL, "kitchen-sink.ipv4.nft-save")) as handle:
        target = FakeTarget(handle.read())
    result = run_module(mocker, capsys, target, state="absent")
    restore = next(data for args, data in target.calls if args[0] == "iptables-nft-restore")
    assert "-X ISTIO_OUTPUT_DNS" in restore and "-X ISTIO_TPROXY" in restore
    assert "-A " not in restore and "-I " not in restore
    assert result["changed"] is True
