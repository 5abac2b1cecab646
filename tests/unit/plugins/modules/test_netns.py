# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The netns module end to end, with ``run_command`` answered by a fake ``ip``.

The fake serves real ``ip -json`` outputs (``tests/unit/plugins/module_utils/fixtures/netns_*.json``)
and records every command. Until the first mutating command it shows the machine "before"; after
it, "after". Namespace lookups, sysctl reads and writes, and the scratch-namespace probe are
replaced too, so that nothing here needs root or touches the machine.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from ansible.module_utils import basic

from ansible_collections.meshops.sidecar.plugins.module_utils._netns import state as st
from ansible_collections.meshops.sidecar.plugins.module_utils._netns import system
from ansible_collections.meshops.sidecar.plugins.module_utils._system import namespace
from ansible_collections.meshops.sidecar.plugins.modules import netns
from ansible_collections.meshops.sidecar.tests.unit.plugins.modules.utils import patch_module_args

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "module_utils", "fixtures")
IP = "/usr/sbin/ip"
READ_VERBS = ("show", "list")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


MISSING = {"exists": False, "mounted": False, "outputs": {}, "sysctls": {}}
CONFIGURED = {
    "exists": True,
    "mounted": True,
    "outputs": {
        "ip -json -d addr show dev veth-app": fixture("netns_host_addr.json"),
        "ip -n app -json -d addr show": fixture("netns_addr_uplink.json"),
        "ip -json -d link show type veth": fixture("netns_host_veths.json"),
        "ip -json netns list": fixture("netns_list.json"),
        "ip -n app -json -4 route show table main default": fixture("netns_routes4.json"),
        "ip -n app -json -6 route show table main default": fixture("netns_routes6.json"),
    },
    "sysctls": {"net.ipv4.ip_forward": "1"},
}
ARGS = {
    "name": "app",
    "uplink": {
        "host_interface": "veth-app",
        "host_addresses": ["198.18.0.9/30", "2001:db8:9::1/64"],
        "addresses": ["198.18.0.10/30", "2001:db8:9::2/64"],
    },
    "nameservers": ["198.18.0.9"],
    "sysctls": {"net.ipv4.ip_forward": 1},
}


class FakeMachine:
    def __init__(self, before, after=None, failures=None):
        self.before = before
        self.after = after or before
        self.failures = failures or {}
        self.calls = []
        self.sysctl_writes = []

    @property
    def now(self):
        return self.after if self.mutations else self.before

    @property
    def mutations(self):
        return [call for call in self.calls if not any(verb in call.split() for verb in READ_VERBS)] + self.sysctl_writes

    def run_command(self, module, args, check_rc=False, **kwargs):
        assert isinstance(args, list), "commands must be argv lists, never shell strings"
        assert args[0] == IP
        assert module.run_command_environ_update == {"LANGUAGE": "C", "LC_ALL": "C"}
        line = " ".join(["ip"] + args[1:])
        self.calls.append(line)
        if line in self.failures:
            return self.failures[line]
        if any(verb in args for verb in READ_VERBS):
            if line in self.now["outputs"]:
                return 0, self.now["outputs"][line], ""
            if " dev " in line:
                return 1, "", 'Device "%s" does not exist.\n' % args[-1]
            return 0, "[]", ""
        return 0, "", ""


@pytest.fixture
def machine(monkeypatch, tmp_path):
    holder = {}

    def install(before, after=None, failures=None):
        fake = FakeMachine(before, after, failures)
        holder["fake"] = fake

        def run_command(module, args, **kwargs):
            return fake.run_command(module, args, **kwargs)

        monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
        monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, required=False, opt_dirs=None: IP)
        monkeypatch.setattr(namespace, "exists", lambda name: fake.now["exists"])
        monkeypatch.setattr(namespace, "is_mounted", lambda name: fake.now["mounted"])
        monkeypatch.setattr(namespace, "entered", lambda name: contextlib.nullcontext())
        monkeypatch.setattr(
            namespace, "in_new_namespace", lambda func, probes: {key: {"value": value} for key, (path, value) in probes.items()}
        )
        monkeypatch.setattr(system, "read_sysctls", lambda sysctls: {s.key: fake.now["sysctls"].get(s.key) for s in sysctls})
        monkeypatch.setattr(
            system.NetnsSystem, "_write_sysctl", staticmethod(lambda name, step: fake.sysctl_writes.append("sysctl %s=%s" % (step.key, step.value)))
        )
        monkeypatch.setattr(st, "ETC_NETNS_DIR", str(tmp_path / "etc-netns"))
        return fake

    return install


def run_module(args, capsys):
    with patch_module_args(args):
        with pytest.raises(SystemExit) as caught:
            netns.main()
    result = json.loads(capsys.readouterr().out)
    result["_rc"] = caught.value.code
    return result


def write_resolv(tmp_path, servers):
    directory = tmp_path / "etc-netns" / "app"
    directory.mkdir(parents=True)
    (directory / "resolv.conf").write_text(st.render_resolv_conf(servers))


def test_check_mode_changes_nothing(machine, capsys, tmp_path):
    fake = machine(MISSING)
    result = run_module(dict(ARGS, _ansible_check_mode=True, _ansible_diff=True), capsys)
    assert result["changed"] is True
    assert fake.mutations == []
    assert all(any(verb in call.split() for verb in READ_VERBS) for call in fake.calls)
    assert not (tmp_path / "etc-netns").exists()
    assert result["exists"] is False and result["interfaces"] == []
    assert result["actions"][:3] == ["ip netns add app", "ip -n app link set dev lo up", "ip link add name veth-app type veth peer name eth0 netns app"]
    assert result["actions"][-1].startswith("write ") and result["actions"][-1].endswith("/etc-netns/app/resolv.conf")
    assert result["diff"]["before"]["exists"] is False and result["diff"]["after"]["exists"] is True


def test_apply_creates_and_then_verifies(machine, capsys, tmp_path):
    fake = machine(MISSING, CONFIGURED)
    result = run_module(dict(ARGS), capsys)
    assert result["_rc"] == 0, result
    assert result["changed"] is True
    assert fake.mutations == [
        "ip netns add app",
        "ip -n app link set dev lo up",
        "ip link add name veth-app type veth peer name eth0 netns app",
        "ip addr replace 198.18.0.9/30 dev veth-app",
        "ip addr replace 2001:db8:9::1/64 dev veth-app nodad",
        "ip link set dev veth-app up",
        "ip -n app addr replace 198.18.0.10/30 dev eth0",
        "ip -n app addr replace 2001:db8:9::2/64 dev eth0 nodad",
        "ip -n app link set dev eth0 up",
        "ip -n app -4 route replace default table main via 198.18.0.9 dev eth0",
        "ip -n app -6 route replace default table main via 2001:db8:9::1 dev eth0",
        "sysctl net.ipv4.ip_forward=1",
    ]
    assert len(result["actions"]) == len(fake.mutations) + 1  # + resolv.conf
    assert (tmp_path / "etc-netns" / "app" / "resolv.conf").read_text() == st.render_resolv_conf(("198.18.0.9",))
    # the return values describe the namespace as read after the change
    assert result["exists"] is True and result["path"] == "/run/netns/app"
    assert [(i["name"], i["state"]) for i in result["interfaces"]] == [("lo", "up"), ("eth0", "up")]
    assert result["interfaces"][1]["addresses"][:2] == ["198.18.0.10/30", "2001:db8:9::2/64"]
    assert result["host_interface"]["name"] == "veth-app"
    assert result["nameservers"] == ["198.18.0.9"] and result["sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert "diff" not in result
    for key in ("owner", "mode", "size", "state"):  # no file facts about /run/netns/app
        assert key not in result


def test_second_run_changes_nothing(machine, capsys, tmp_path):
    fake = machine(CONFIGURED)
    write_resolv(tmp_path, ("198.18.0.9",))
    result = run_module(dict(ARGS, _ansible_diff=True), capsys)
    assert result["changed"] is False and result["actions"] == []
    assert fake.mutations == []
    assert result["diff"]["before"] == result["diff"]["after"]


def test_one_changed_nameserver_only_rewrites_resolv_conf(machine, capsys, tmp_path):
    fake = machine(CONFIGURED)
    write_resolv(tmp_path, ("198.18.0.1",))
    result = run_module(dict(ARGS), capsys)
    assert result["changed"] is True and fake.mutations == []
    assert len(result["actions"]) == 1 and result["nameservers"] == ["198.18.0.9"]


@pytest.mark.parametrize(
    "args, message",
    [
        ({"name": "a/b"}, "name='a/b' must not contain '/' or NUL"),
        ({"name": "app", "uplink": {"host_interface": "veth-app-0123456"}}, "uplink.host_interface='veth-app-0123456' is longer than 15 characters"),
        ({"name": "app", "uplink": {"host_interface": "v", "addresses": ["198.18.0.1/40"]}}, "uplink.addresses[0]='198.18.0.1/40' is not a valid CIDR"),
        ({"name": "app", "sysctls": {"kernel.pid_max": 1}}, "sysctls key 'kernel.pid_max' is not a net.* sysctl"),
    ],
)
def test_bad_input_fails_before_looking(machine, capsys, args, message):
    fake = machine(MISSING)
    result = run_module(args, capsys)
    assert result["failed"] is True and message in result["msg"]
    assert fake.calls == []


def test_unknown_sysctl_fails_before_any_change(machine, capsys, monkeypatch):
    fake = machine(MISSING)
    monkeypatch.setattr(namespace, "in_new_namespace", lambda func, probes: {key: {"errno": 2, "error": "No such file or directory"} for key in probes})
    result = run_module({"name": "app", "sysctls": {"net.ipv4.no_such_thing": 1}}, capsys)
    assert result["failed"] is True
    assert result["msg"] == "sysctls key 'net.ipv4.no_such_thing' is unknown: there is no /proc/sys/net/ipv4/no_such_thing in a network namespace"
    assert fake.mutations == []


def test_foreign_device_is_refused(machine, capsys):
    bridge = '[{"ifindex":4,"ifname":"veth-app","flags":["UP"],"operstate":"UP","linkinfo":{"info_kind":"bridge"},"addr_info":[]}]'
    fake = machine({"exists": False, "mounted": False, "outputs": {"ip -json -d addr show dev veth-app": bridge}, "sysctls": {}})
    result = run_module({"name": "app", "uplink": {"host_interface": "veth-app"}}, capsys)
    assert result["failed"] is True
    assert result["msg"] == "uplink.host_interface='veth-app' exists in the host namespace and is a bridge device, not a veth: refusing to replace it"
    assert fake.mutations == []


def test_failed_command_reports_what_was_done(machine, capsys):
    failures = {"ip link add name veth-app type veth peer name eth0 netns app": (2, "", "RTNETLINK answers: File exists\n")}
    machine(MISSING, MISSING, failures)
    result = run_module(dict(ARGS), capsys)
    assert result["failed"] is True and result["changed"] is True
    assert result["msg"] == (
        "command failed (rc=2): ip link add name veth-app type veth peer name eth0 netns app: RTNETLINK answers: File exists"
    )
    assert result["cmd"] == [IP, "link", "add", "name", "veth-app", "type", "veth", "peer", "name", "eth0", "netns", "app"]
    assert result["rc"] == 2 and result["actions"] == ["ip netns add app", "ip -n app link set dev lo up"]


def test_changed_sysctl_alone_is_written(machine, capsys, tmp_path):
    write_resolv(tmp_path, ("198.18.0.9",))
    fake = machine(CONFIGURED, dict(CONFIGURED, sysctls={"net.ipv4.ip_forward": "0"}))
    result = run_module(dict(ARGS, sysctls={"net.ipv4.ip_forward": 0}), capsys)
    assert result["changed"] is True
    assert fake.mutations == ["sysctl net.ipv4.ip_forward=0"]
    assert result["sysctls"] == {"net.ipv4.ip_forward": "0"}


def test_not_converged(machine, capsys, tmp_path):
    write_resolv(tmp_path, ("198.18.0.9",))
    machine(CONFIGURED)  # the machine ignores the write: ip_forward stays 1
    result = run_module(dict(ARGS, sysctls={"net.ipv4.ip_forward": 0}), capsys)
    assert result["failed"] is True
    assert result["msg"].startswith("network namespace 'app' did not reach the requested state; still to do: set sysctl net.ipv4.ip_forward = 0")
    assert result["actions"] == ["set sysctl net.ipv4.ip_forward = 0 (write /proc/sys/net/ipv4/ip_forward inside the namespace)"]


def test_absent_in_check_mode_and_for_real(machine, capsys, tmp_path):
    write_resolv(tmp_path, ("198.18.0.9",))
    fake = machine(CONFIGURED, MISSING)
    preview = run_module({"name": "app", "state": "absent", "_ansible_check_mode": True, "_ansible_diff": True}, capsys)
    assert preview["changed"] is True and fake.mutations == []
    assert preview["diff"] == {
        "before": {"exists": True, "host_interfaces": ["veth-app"], "etc_netns": True},
        "after": {"exists": False, "host_interfaces": [], "etc_netns": False},
    }
    assert (tmp_path / "etc-netns" / "app").exists()

    result = run_module({"name": "app", "state": "absent"}, capsys)
    assert result["changed"] is True and result["exists"] is False
    assert fake.mutations == ["ip link delete dev veth-app", "ip netns delete app"]
    assert not (tmp_path / "etc-netns" / "app").exists()
    assert (tmp_path / "etc-netns").exists()  # only /etc/netns/app goes


def test_absent_when_already_gone(machine, capsys):
    fake = machine(MISSING)
    result = run_module({"name": "app", "state": "absent"}, capsys)
    assert result["changed"] is False and fake.mutations == [] and result["actions"] == []
