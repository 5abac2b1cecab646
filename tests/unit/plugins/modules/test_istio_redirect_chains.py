# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The module end to end with a simulated target: check mode writes nothing, an equal kernel is left alone."""

from __future__ import annotations

import functools
import json
import os
import sys

import pytest
from ansible.module_utils.basic import AnsibleModule

from ansible_collections.meshops.sidecar.plugins.modules import istio_redirect_chains
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_save
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.run import CaptureRun
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.ssh_guard import SshSession
from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink
from ansible_collections.meshops.sidecar.tests.unit.plugins.modules.utils import patch_module_args

KERNEL = os.path.join(os.path.dirname(__file__), "..", "module_utils", "fixtures", "kernel")
EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"
READ_ONLY = ("iptables-nft-save", "ip6tables-nft-save")


def restore_noflush(save_text, restore_text):
    """What ``iptables-restore --noflush`` leaves: ``save_text`` with ``restore_text``'s table changes applied."""
    tables = parse_save(save_text)
    dump = None
    for line in restore_text.splitlines():
        word, dummy, rest = line.partition(" ")
        if line.startswith("*"):
            dump = tables.setdefault(line[1:], parse_save("*%s\nCOMMIT\n" % line[1:])[line[1:]])
        elif line.startswith(":"):  # create, or flush
            dump.chains[word[1:]] = []
            dump.policies.setdefault(word[1:], "-")
        elif word == "-X":
            del dump.chains[rest], dump.policies[rest]
        elif word == "-D":
            chain, dummy, args = rest.partition(" ")
            dump.chains[chain].remove(args)
        elif word == "-A":
            chain, dummy, args = rest.partition(" ")
            dump.chains[chain].append(args)
        elif word == "-I":
            chain, position, args = rest.split(" ", 2)
            dump.chains[chain].insert(int(position) - 1, args)
        elif line != "COMMIT":
            raise AssertionError("unexpected restore line %r" % line)
    out = []
    for name, table in tables.items():
        out.append("*" + name)
        out += [":%s %s [0:0]" % (chain, table.policies[chain]) for chain in table.chains]
        out += ["-A %s %s" % (chain, args) for chain, rules in table.chains.items() for args in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


class FakeTarget:
    """Answers the commands the module runs, keeps what the restores wrote (``kernel_applies``); records them."""

    def __init__(self, save4, save6="", kernel_applies=True):
        self.saves = {"iptables-nft-save": save4, "ip6tables-nft-save": save6}
        self.kernel_applies = kernel_applies
        self.calls = []

    def run_command(self, args, data=None, binary_data=False, **kwargs):
        self.calls.append((list(args), data))
        tool = os.path.basename(args[0])
        if tool in self.saves:
            return 0, self.saves[tool], ""
        if tool.endswith("-restore"):
            save = tool.replace("-restore", "-save")
            if self.kernel_applies:
                self.saves[save] = restore_noflush(self.saves[save], data)
            return 0, "", ""
        if args[:2] == ["ip", "-json"] or args[:3] == ["ip", "-6", "-json"]:
            return 0, "[]", ""
        return 0, "", ""

    def writes(self):
        return [args for args, dummy in self.calls
                if os.path.basename(args[0]) not in READ_ONLY and "-json" not in args
                and not (os.path.basename(args[0]) == "nft" and args[1:2] in (["-j"], ["--version"]))]


@pytest.fixture(autouse=True)
def record_dir(mocker, tmp_path):
    """Keep the ownership record out of /run."""
    mocker.patch("ansible_collections.meshops.sidecar.plugins.module_utils._capture.ownership.RECORD_DIR",
                 str(tmp_path / "run"))
    # No netlink to this machine's own namespace: the fake target answers nft, and has no generation.
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import nftables
    mocker.patch.object(nftables.NftablesBackend, "inet_table_names", staticmethod(lambda: None))
    mocker.patch.object(nftables.NftablesBackend, "generation", staticmethod(lambda: None))
    return tmp_path / "run"


def run_module(mocker, capsys, target, session=None, **args):
    mocker.patch("ansible.module_utils.basic.AnsibleModule.run_command", side_effect=target.run_command)
    mocker.patch("ansible.module_utils.basic.AnsibleModule.get_bin_path", side_effect=lambda name, *a, **k: name)
    # The simulated target: not reached over SSH (unless ``session``), and without python-iptables
    # (so the nft tools serve).
    mocker.patch.object(istio_redirect_chains, "CaptureRun", functools.partial(CaptureRun, find_session=lambda: session))
    mocker.patch.dict(sys.modules, {"iptc": None})
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


def test_apply_reads_back_and_fails_when_the_kernel_did_not_take_the_change(mocker, capsys):
    target = FakeTarget(EMPTY_NAT, kernel_applies=False)
    result = run_module(mocker, capsys, target, ipv6=False)
    assert result["failed"] is True
    assert result["msg"].startswith("applied, but reading back found the kernel not as planned: IPv4 rules differ")
    assert "-A OUTPUT -j ISTIO_OUTPUT" in result["msg"]
    assert result["changed"] is True
    saves = [args for args, dummy in target.calls if args[0] == "iptables-nft-save"]
    assert len(saves) == 2  # read, and read back once


def test_a_run_with_nothing_to_change_does_not_read_back(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    run_module(mocker, capsys, target, ipv6=False)
    target.calls = []
    result = run_module(mocker, capsys, target, ipv6=False)
    assert result["changed"] is False
    assert [args for args, dummy in target.calls if args[0] == "iptables-nft-save"] == [["iptables-nft-save"]]
    assert target.writes() == []


# --- native nftables mode --------------------------------------------------------------------------


class NftTarget(FakeTarget):
    """A FakeTarget that also has ``nft``: its version, no tables, and ``nft -f`` answering ``nft_rc``."""

    def __init__(self, save4, version="nftables v1.0.6 (Lester Gooch #5)", nft_rc=0):
        super().__init__(save4)
        self.version, self.nft_rc = version, nft_rc

    def run_command(self, args, data=None, binary_data=False, **kwargs):
        if os.path.basename(args[0]) != "nft":
            return super().run_command(args, data, binary_data, **kwargs)
        self.calls.append((list(args), data))
        if args[1:] == ["--version"]:
            return 0, self.version + "\n", ""
        if args[1:2] == ["-j"]:
            return 0, '{"nftables": [{"metainfo": {"json_schema_version": 1}}]}', ""
        return self.nft_rc, "", "Error: Could not process rule: No such file or directory" if self.nft_rc else ""


def test_native_mode_needs_istio_minimum_nft(mocker, capsys):
    target = NftTarget(EMPTY_NAT, version="nftables v0.9.8 (E.D.S.)")
    result = run_module(mocker, capsys, target, native_nftables=True, ipv6=False)
    assert result["failed"] is True
    assert result["msg"] == "native_nftables=true: not usable on the target, missing nft >= 1.0.1 (found 0.9.8)"
    assert target.writes() == []


def test_native_check_mode_reports_the_transaction_and_writes_nothing(mocker, capsys):
    target = NftTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, native_nftables=True, ipv6=False, _ansible_check_mode=True,
                        _ansible_diff=True)
    assert result["changed"] is True and result["backend"] == "nftables"
    assert result["backend_reason"] == "native_nftables=true"
    assert result["commands"][:3] == ["nft -f - <<EOF", "add table inet istio-proxy-nat", "delete table inet istio-proxy-nat"]
    assert "add rule inet istio-proxy-nat istio-redirect meta l4proto tcp counter redirect to :15001" in result["commands"]
    assert list(result["rules"]) == ["nftables"]
    assert "table inet istio-proxy-nat {" in result["diff"]["after"]
    assert "istio-proxy" not in result["diff"]["before"]
    assert target.writes() == []


def test_switch_to_native_applies_the_tables_first_then_removes_the_iptables_rules(mocker, capsys):
    target = NftTarget(EMPTY_NAT)
    assert run_module(mocker, capsys, target, ipv6=False)["changed"] is True  # iptables mode first
    assert "ISTIO_OUTPUT" in target.saves["iptables-nft-save"]
    target.calls = []
    result = run_module(mocker, capsys, target, native_nftables=True, ipv6=False)
    assert result["changed"] is True and result["backend"] == "nftables"
    assert target.writes() == [["nft", "-f", "-"], ["iptables-nft-restore", "--noflush"]]
    assert "ISTIO" not in target.saves["iptables-nft-save"]


def test_a_refused_native_transaction_leaves_the_iptables_rules(mocker, capsys):
    target = NftTarget(EMPTY_NAT)
    run_module(mocker, capsys, target, ipv6=False)
    before = target.saves["iptables-nft-save"]
    target.nft_rc = 1
    target.calls = []
    result = run_module(mocker, capsys, target, native_nftables=True, ipv6=False)
    assert result["failed"] is True
    assert result["msg"].startswith("native nftables: nft -f - refused the change (rc=1), nothing was applied: Error: ")
    assert target.writes() == [["nft", "-f", "-"]]
    assert target.saves["iptables-nft-save"] == before


@pytest.mark.parametrize("args, message", [
    ({"exclude_interfaces": ['we"ird']},
     "exclude_interfaces='we\"ird': an interface name with a quote or a backslash cannot be written as a rule"),
    ({"exclude_interfaces": ["eth*"]}, "exclude_interfaces='eth*': nftables cannot match this interface name"),
])
def test_native_values_nftables_cannot_take_are_refused_before_any_write(mocker, capsys, args, message):
    target = NftTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, native_nftables=True, ipv6=False, **args)
    assert result["failed"] is True and result["msg"] == message
    assert target.writes() == []


def test_native_no_op_is_proven_by_the_generation_without_listing_the_tables(mocker, capsys):
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import nftables

    generation = [5]
    mocker.patch.object(nftables.NftablesBackend, "generation", staticmethod(lambda: generation[0]))
    tables = [["userfilter"]]  # what netlink lists: after the apply, Istio's nat table too
    mocker.patch.object(nftables.NftablesBackend, "inet_table_names", staticmethod(lambda: tables[0]))
    mocker.patch.object(netlink, "nft_table_names", lambda nfproto: tables[0] if nfproto == netlink.NFPROTO_INET else None)
    target = NftTarget(EMPTY_NAT)
    applied = target.run_command

    def commit_bumps_generation(args, data=None, binary_data=False, **kwargs):
        if os.path.basename(args[0]) == "nft" and args[1:] == ["-f", "-"]:
            generation[0] += 1
        return applied(args, data, binary_data, **kwargs)

    target.run_command = commit_bumps_generation
    assert run_module(mocker, capsys, target, native_nftables=True, ipv6=False)["changed"] is True
    assert generation[0] == 6
    # A namespace made later with the same inode (the kernel reuses them) lacks the tables: no shortcut.
    assert run_module(mocker, capsys, target, native_nftables=True, ipv6=False, _ansible_check_mode=True)["changed"] is True
    tables[0] = ["userfilter", "istio-proxy-nat"]
    # Same generation, same plan: the stamp says the tables are the plan, nothing is listed or written,
    # and nft is not started at all (not even for its version: it has nothing to do).
    target.calls = []
    result = run_module(mocker, capsys, target, native_nftables=True, ipv6=False)
    assert result["changed"] is False and result["commands"] == []
    assert "table inet istio-proxy-nat {" in result["rules"]["nftables"]
    assert [args for args, dummy in target.calls if os.path.basename(args[0]) == "nft"] == []
    # Another plan at the same generation: the tables are read (here the fake kernel holds none: rebuilt).
    target.calls = []
    assert run_module(mocker, capsys, target, native_nftables=True, ipv6=False,
                      exclude_outbound_ports=["9090"])["changed"] is True
    assert ["nft", "-j", "list", "table", "inet", "istio-proxy-nat"] in [args for args, dummy in target.calls]
    # Someone else committed: the generation moved, the tables are read again.
    generation[0] += 1
    target.calls = []
    run_module(mocker, capsys, target, native_nftables=True, ipv6=False, exclude_outbound_ports=["9090"])
    assert ["nft", "-j", "list", "table", "inet", "istio-proxy-nat"] in [args for args, dummy in target.calls]


def test_iptables_mode_where_netlink_lists_no_istio_table_never_asks_for_nft(mocker, capsys):
    mocker.patch.object(netlink, "nft_table_names", lambda nfproto: ["userfilter"] if nfproto == netlink.NFPROTO_INET else None)
    target = NftTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, ipv6=False)
    assert result["changed"] is True and result["backend"] == "nft"
    assert [args for args, dummy in target.calls if os.path.basename(args[0]) == "nft"] == []
    looked_up = [call.args[0] for call in AnsibleModule.get_bin_path.call_args_list]
    assert "nft" not in looked_up and "iptables-nft-restore" in looked_up
    # The same run where netlink lists one of Istio's tables: nft reads it (and the fake kernel holds none).
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import nftables
    mocker.patch.object(netlink, "nft_table_names", lambda nfproto: ["istio-proxy-nat"] if nfproto == netlink.NFPROTO_INET else None)
    mocker.patch.object(nftables.NftablesBackend, "inet_table_names", staticmethod(lambda: ["istio-proxy-nat"]))
    target.calls = []
    run_module(mocker, capsys, target, ipv6=False)
    assert ["nft", "-j", "list", "table", "inet", "istio-proxy-nat"] in [args for args, dummy in target.calls]


# --- the SSH guard: the session's namespace is this process's own, as on a VM reached over SSH ---

def own_session(ports=(22,), client="198.18.0.9", known=True):
    return SshSession(tuple(ports), os.stat("/proc/self/ns/net").st_ino, client, known)


VM_INBOUND = dict(exclude_inbound_ports=["22", "15090", "15021", "15020"])
KEEP_RULE = "-A ISTIO_OUTPUT -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j RETURN"


def test_ssh_guard_refuses_istio_rules_that_would_cut_the_session(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, session=own_session(), ipv6=False, **VM_INBOUND)
    assert result["failed"] is True
    assert "keep_existing_connections=false" in result["msg"]
    assert "198.18.0.9" in result["msg"]
    assert target.writes() == []


def test_ssh_guard_lets_keep_existing_connections_through(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, session=own_session(), ipv6=False, keep_existing_connections=True,
                        **VM_INBOUND)
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert KEEP_RULE in result["rules"]["ipv4"]
    assert "-A ISTIO_INBOUND -p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m conntrack --ctstate NEW -j RETURN" \
        in result["rules"]["ipv4"]


def test_ssh_guard_lets_an_excluded_client_through(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, session=own_session(), ipv6=False,
                        exclude_outbound_ip_ranges=["198.18.0.0/24"], **VM_INBOUND)
    assert result.get("failed") is not True, result
    assert KEEP_RULE not in result["rules"]["ipv4"]


def test_ssh_guard_refuses_the_session_port(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    result = run_module(mocker, capsys, target, session=own_session(), ipv6=False, keep_existing_connections=True)
    assert result["failed"] is True
    assert result["msg"].startswith("refusing to capture inbound TCP port 22:")
    assert target.writes() == []


def test_ssh_guard_with_an_unreadable_session_checks_every_configured_port(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    session = own_session(ports=(22, 2222), client=None, known=False)
    result = run_module(mocker, capsys, target, session=session, ipv6=False, keep_existing_connections=True,
                        **VM_INBOUND)
    assert result["failed"] is True
    assert result["msg"].startswith("refusing to capture inbound TCP port 2222:")
    assert "sshd's configured ports" in result["msg"]
    assert target.writes() == []


def test_ssh_guard_ignores_a_session_in_another_namespace(mocker, capsys):
    target = FakeTarget(EMPTY_NAT)
    session = SshSession((22,), os.stat("/proc/self/ns/net").st_ino + 1, "198.18.0.9")
    result = run_module(mocker, capsys, target, session=session, ipv6=False)
    assert result.get("failed") is not True, result
    assert result["changed"] is True
