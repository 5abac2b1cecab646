# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.meshops.sidecar.plugins.filter.target_inputs import FilterModule, netns_options, user_name


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"netns_options", "user_name"}


def test_good_netns_options_come_back_unchanged():
    options = {
        "name": "w1",
        "uplink": {"host_interface": "w1-host", "addresses": ["198.18.0.2/30"], "host_addresses": ["198.18.0.1/30"]},
        "nameservers": ["198.18.0.53", "2001:db8::53"],
        "sysctls": {"net.ipv4.ip_forward": 1},
    }
    assert netns_options(options) is options
    assert netns_options({"name": "w1", "uplink": None, "nameservers": None, "sysctls": {}}) == {
        "name": "w1", "uplink": None, "nameservers": None, "sysctls": {}}


@pytest.mark.parametrize("options, message", [
    ({"name": "a/b"}, "name='a/b'"),
    ({"name": "w1", "uplink": {"host_interface": "eth0:1"}}, "uplink.host_interface='eth0:1'"),
    ({"name": "w1", "uplink": {"host_interface": "h" * 16}}, "uplink.host_interface='hhhhhhhhhhhhhhhh'"),
    ({"name": "w1", "uplink": {"host_interface": "w1h", "addresses": ["198.18.0.2"]}}, "uplink.addresses[0]='198.18.0.2'"),
    ({"name": "w1", "nameservers": ["dns.example"]}, "nameservers[0]='dns.example'"),
    ({"name": "w1", "sysctls": {"kernel.pid_max": 1}}, "sysctls key 'kernel.pid_max'"),
])
def test_bad_netns_options_name_option_and_value(options, message):
    with pytest.raises(AnsibleFilterError) as info:
        netns_options(options)
    assert str(info.value).startswith("netns_options: ")
    assert message in str(info.value)


def test_netns_options_reports_every_problem_at_once():
    with pytest.raises(AnsibleFilterError) as info:
        netns_options({"name": "w1", "uplink": {"host_interface": "a:b"}, "nameservers": ["x"]})
    assert "uplink.host_interface='a:b'" in str(info.value) and "nameservers[0]='x'" in str(info.value)


def test_netns_options_needs_a_dict():
    with pytest.raises(AnsibleFilterError, match="expected a dict"):
        netns_options(["w1"])


def test_user_name():
    assert user_name("istio-proxy") == "istio-proxy"
    with pytest.raises(AnsibleFilterError) as info:
        user_name("bad user", "interception_proxy_user")
    assert str(info.value).startswith("interception_proxy_user='bad user' is not a user name")
    with pytest.raises(AnsibleFilterError, match="user name='-x'"):
        user_name("-x")
