# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The boot entry point: arguments, apply.json, defaults, exit codes, and the module's own ownership rules."""

from __future__ import annotations

import functools
import json
import sys

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._boot import apply
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import argument_spec
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.run import CaptureError, CaptureRun

# A user's own rules that look like ours (an excluded interface's RETURN), in nat and mangle.
USER_RULES = ("-A PREROUTING -i eth5 -j RETURN", "-A OUTPUT -o eth5 -j RETURN")
BUILTIN = {"nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
           "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")}


def kernel_with_user_rules(ours=""):
    """iptables-save text: the user's look-alike rules in nat and mangle, plus ``ours`` (iptables-save text)."""
    ours_by_table = {}
    table = None
    for line in ours.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") or (line.startswith(":") and not line.split()[0][1:] in BUILTIN.get(table, ())):
            ours_by_table.setdefault(table, []).append(line)
    out = []
    for name in sorted(set(BUILTIN) | set(ours_by_table)):
        out.append("*" + name)
        out += [":%s ACCEPT [0:0]" % chain for chain in BUILTIN.get(name, ())]
        lines = ours_by_table.get(name, [])
        out += [line for line in lines if line.startswith(":")]
        out += [line for line in lines if line.startswith("-A ")]
        if name in BUILTIN:
            out += list(USER_RULES)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


class FakeRunner:
    """A target with the iptables-nft tools, no python-iptables; records every command."""

    def __init__(self, save4):
        self.save4 = save4
        self.calls = []

    def run(self, argv, data=None):
        self.calls.append((list(argv), data))
        if argv[0] == "iptables-nft-save":
            return 0, self.save4, ""
        if argv[0] == "ip6tables-nft-save":
            return 0, "", ""
        if "-json" in argv:
            return 0, "[]", ""
        if argv[:2] == ["nft", "-j"]:  # no native nftables tables
            return 0, '{"nftables": []}', ""
        return 0, "", ""

    def which(self, name):
        return name

    def writes(self):
        return [argv for argv, dummy in self.calls
                if not argv[0].endswith("-save") and "-json" not in argv and argv[:2] != ["nft", "-j"]]


@pytest.fixture(autouse=True)
def isolated(mocker, tmp_path):
    """The ownership record out of /run; no python-iptables, so the nft tools serve."""
    mocker.patch("ansible_collections.meshops.sidecar.plugins.module_utils._capture.ownership.RECORD_DIR",
                 str(tmp_path / "run"))
    mocker.patch.dict(sys.modules, {"iptc": None})


def instance(tmp_path, data):
    directory = tmp_path / "host"
    directory.mkdir()
    (directory / "apply.json").write_text(data if isinstance(data, str) else json.dumps(data))
    return str(directory)


def host_instance(tmp_path, **capture):
    capture = dict({"netns": None, "state": "present", "backend": "nft", "ipv6": False}, **capture)
    return instance(tmp_path, {"format": 2, "netns_params": None, "capture_params": capture})


REAL_ENGINE = functools.partial(CaptureRun, find_session=lambda: None)  # not run over SSH


# --- arguments and apply.json ----------------------------------------------------------------


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        apply.main(["--help"])
    assert exc.value.code == 0
    assert "meshops-interception-apply [-h] [--check] INSTANCE_DIR" in capsys.readouterr().out


def test_missing_instance_dir_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        apply.main([])
    assert exc.value.code == 2
    assert "INSTANCE_DIR" in capsys.readouterr().err


def test_missing_apply_json_fails_with_the_path(tmp_path, capsys):
    assert apply.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cannot read %s/apply.json" % tmp_path in err


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not JSON"),
    ('{"format": 1, "netns": ""}', "has format 1, this engine reads format 2: run the interception role again"),
    ("[]", "has format None"),
    ('{"format": 2, "netns_params": null}', "capture_params must be a dict"),
    ('{"format": 2, "netns_params": {"uplink": null}, "capture_params": {}}', "netns_params must be null or a dict"),
    ('{"format": 2, "netns_params": null, "capture_params": {"inbound_port": ["80"]}}', "unknown option(s) inbound_port"),
])
def test_invalid_apply_json_fails_before_any_command(tmp_path, capsys, text, message):
    runner = FakeRunner("")
    assert apply.main([instance(tmp_path, text)], runner=runner) == 2
    assert message in capsys.readouterr().err
    assert runner.calls == []


def test_a_bad_option_value_fails_with_the_option_named(tmp_path, capsys):
    runner = FakeRunner("")
    assert apply.main([host_instance(tmp_path, tproxy_mark=0, inbound_interception_mode="TPROXY")], runner=runner,
                      capture_engine=REAL_ENGINE) == 2
    assert "tproxy_mark" in capsys.readouterr().err
    assert runner.writes() == []


# --- defaults ----------------------------------------------------------------------------------


def test_capture_params_get_every_default_of_the_module():
    spec = argument_spec()
    params = apply.capture_params({"netns": None, "state": "present", "exclude_inbound_ports": ["22", 15090],
                                   "proxy_gid": None})
    assert set(params) == set(spec)
    assert params["exclude_inbound_ports"] == ["22", "15090"]  # elements as the module gets them
    assert params["proxy_uid"] == spec["proxy_uid"]["default"]
    assert params["proxy_gid"] is None
    assert params["backend"] == "auto"
    assert params["capture_dns"] is False


def test_capture_params_turn_the_live_probe_off_at_boot():
    assert apply.capture_params({"verify": True})["verify"] is False


def test_capture_defaults_are_copies():
    first = apply.capture_params({})
    first["inbound_ports"].append("80")
    assert apply.capture_params({})["inbound_ports"] == ["*"]


def test_netns_params_get_the_netns_module_defaults():
    assert apply.netns_params(None) is None
    assert apply.netns_params({"name": "w1", "nameservers": None}) == {
        "name": "w1", "state": "present", "loopback": True, "uplink": None, "nameservers": None, "sysctls": {}}
    uplink = apply.netns_params({"name": "w1", "uplink": {"host_interface": "veth-w1", "addresses": ["198.18.0.2/30"]}})
    assert uplink["uplink"] == {"host_interface": "veth-w1", "interface": "eth0", "host_addresses": [],
                                "addresses": ["198.18.0.2/30"], "default_route": True, "peer_netns": None}


# --- what runs, and the exit codes (fake engines) ----------------------------------------------


class FakeCapture:
    """Stands for CaptureRun: records its arguments, returns ``result``."""

    runs = []

    def __init__(self, result):
        self.result = result

    def __call__(self, params, check_mode, runner, warn, diff_mode=True):
        self.runs.append((params, check_mode, diff_mode))
        return self

    def execute(self):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def fake_netns(result, calls):
    def run(params, check_mode, diff_mode, runner):
        calls.append((params, check_mode, diff_mode))
        return result, ["a warning"]
    return run


NETNS_JSON = {"format": 2, "netns_params": {"name": "w1"}, "capture_params": {"netns": "w1", "state": "present"}}
UNCHANGED = {"changed": False, "backend": "nft", "commands": []}
CHANGED = {"changed": True, "backend": "legacy", "commands": ["a", "b", "c"]}


@pytest.mark.parametrize("check, netns_changed, capture, code, line", [
    (False, False, UNCHANGED, 0, "meshops-interception-apply: nothing to do\n"),
    (False, True, CHANGED, 0, "meshops-interception-apply: changed: network namespace w1: 1 steps; legacy rules: 3 commands\n"),
    (True, False, UNCHANGED, 0, "meshops-interception-apply: in place\n"),
    (True, False, CHANGED, 1, "meshops-interception-apply: would change: legacy rules: 3 commands\n"),
    (True, True, UNCHANGED, 1, "meshops-interception-apply: would change: network namespace w1: 1 steps\n"),
])
def test_exit_code_and_journal_line(tmp_path, capsys, check, netns_changed, capture, code, line):
    netns_calls = []
    FakeCapture.runs = []
    netns_result = {"changed": netns_changed, "exists": True, "commands": ["ip netns add w1"] if netns_changed else []}
    argv = (["--check"] if check else []) + [instance(tmp_path, NETNS_JSON)]
    assert apply.main(argv, runner=FakeRunner(""), netns_engine=fake_netns(netns_result, netns_calls),
                      capture_engine=FakeCapture(capture)) == code
    out, err = capsys.readouterr()
    assert out == line
    assert "warning: a warning" in err
    assert netns_calls[0][0]["name"] == "w1" and netns_calls[0][1:] == (check, False)
    params, check_mode, diff_mode = FakeCapture.runs[0]
    assert params["netns"] == "w1" and check_mode is check and diff_mode is False


def test_check_with_the_namespace_missing_stops_before_reading_its_rules(tmp_path, capsys):
    FakeCapture.runs = []
    netns_result = {"changed": True, "exists": False, "commands": ["ip netns add w1", "ip -n w1 link set lo up"]}
    assert apply.main(["--check", instance(tmp_path, NETNS_JSON)], netns_engine=fake_netns(netns_result, []),
                      capture_engine=FakeCapture(UNCHANGED)) == 1
    assert FakeCapture.runs == []
    assert "network namespace w1: 2 steps" in capsys.readouterr().out


def test_host_namespace_runs_no_netns_engine(tmp_path):
    calls = []
    FakeCapture.runs = []
    assert apply.main([host_instance(tmp_path)], netns_engine=fake_netns({}, calls),
                      capture_engine=FakeCapture(UNCHANGED)) == 0
    assert calls == [] and len(FakeCapture.runs) == 1


def test_an_engine_error_exits_2_with_its_message(tmp_path, capsys):
    assert apply.main([host_instance(tmp_path)], capture_engine=FakeCapture(CaptureError("ipv6=true: no IPv6"))) == 2
    assert capsys.readouterr().err.endswith("/host: ipv6=true: no IPv6\n")


# --- the module's engine: a look-alike rule the module did not record is never touched -------------


def test_user_look_alike_rules_are_not_planned_for_removal(tmp_path, capsys):
    runner = FakeRunner(kernel_with_user_rules())
    assert apply.main(["--check", host_instance(tmp_path)], runner=runner, capture_engine=REAL_ENGINE) == 1
    assert runner.writes() == []
    out = capsys.readouterr().out
    assert out.startswith("meshops-interception-apply: would change: nft rules: ")


def test_in_place_with_user_look_alike_rules_changes_nothing(tmp_path, capsys):
    # What the module wants, from a check run on an empty kernel, next to the user's rules.
    wanted = REAL_ENGINE(apply.capture_params({"backend": "nft", "ipv6": False}), True, FakeRunner(""),
                         lambda text: None, diff_mode=False).execute()["rules"]["ipv4"]
    runner = FakeRunner(kernel_with_user_rules(wanted))
    directory = host_instance(tmp_path)
    assert apply.main(["--check", directory], runner=runner, capture_engine=REAL_ENGINE) == 0
    assert apply.main([directory], runner=runner, capture_engine=REAL_ENGINE) == 0
    assert capsys.readouterr().out.splitlines() == ["meshops-interception-apply: in place",
                                                    "meshops-interception-apply: nothing to do"]
    assert runner.writes() == []


def test_restore_of_a_change_keeps_the_user_look_alike_rules(tmp_path):
    runner = FakeRunner(kernel_with_user_rules())
    apply.main([host_instance(tmp_path)], runner=runner, capture_engine=REAL_ENGINE)
    restores = [data for argv, data in runner.calls if argv[0] == "iptables-nft-restore"]
    assert restores, runner.calls
    for rule in USER_RULES:
        assert rule.replace("-A ", "-D ", 1) not in restores[0]
    assert "-A PREROUTING -p tcp -j ISTIO_INBOUND" in restores[0] or "-I PREROUTING 1 -p tcp -j ISTIO_INBOUND" in restores[0]
