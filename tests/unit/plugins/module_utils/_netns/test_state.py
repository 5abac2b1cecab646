# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pure parts of the netns module: options, ``ip -json`` parsing, resolv.conf, and the plan.

The ``netns_*.json`` fixtures are real ``ip -json`` outputs (iproute2 6.1, kernel 6.18) of a namespace
``app`` wired to the host by ``veth-app`` (198.18.0.9/30 <-> 198.18.0.10/30, 2001:db8:9::1 <-> ::2),
with two other namespaces (``other``, ``third``) and their host veths; names were replaced afterwards.
"""

from __future__ import annotations

import ipaddress
import os

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._netns import state as st
from ansible_collections.meshops.sidecar.plugins.module_utils._system.resolv_conf import parse_resolv_conf

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as handle:
        return handle.read()


def params(**overrides):
    base = {"name": "app", "state": "present", "loopback": True, "uplink": None, "nameservers": None, "sysctls": {}}
    base.update(overrides)
    return base


def uplink(**overrides):
    base = {
        "host_interface": "veth-app",
        "interface": "eth0",
        "host_addresses": ["198.18.0.9/30", "2001:db8:9::1/64"],
        "addresses": ["198.18.0.10/30", "2001:db8:9::2/64"],
        "default_route": True,
    }
    base.update(overrides)
    return base


def configured():
    """The current state of the fixtures: ``app`` exactly as :func:`uplink` describes it."""
    return st.Current(
        exists=True,
        links=st.parse_links(fixture("netns_addr_uplink.json")),
        routes=st.parse_routes(fixture("netns_routes4.json"), 4) + st.parse_routes(fixture("netns_routes6.json"), 6),
        host_link=st.parse_links(fixture("netns_host_addr.json"))[0],
        host_veths=st.parse_links(fixture("netns_host_veths.json")),
        nsids=st.parse_netns_ids(fixture("netns_list.json")),
    )


def make_plan(current, kernel_values=None, **overrides):
    result = st.plan(st.validate(params(**overrides)), current, kernel_values)
    # The invariant the module relies on: steps exactly when the views differ.
    assert bool(result.steps) == result.changed, (result.before, result.after, result.steps)
    return result


def commands(result):
    return [step.describe() for step in result.steps]


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


class TestValidate:
    def test_full_options(self):
        desired = st.validate(
            params(
                uplink=uplink(host_addresses=["2001:DB8:9::1/64", "198.18.0.9/30"]),
                nameservers=[" 198.18.0.9", "2001:db8::53"],
                sysctls={"net.ipv4.ip_forward": True, "net/ipv4/conf/eth0.100/forwarding": 1, "net.ipv4.tcp_rmem": [4096, 87380, 6291456]},
            )
        )
        assert desired.name == "app"
        assert desired.path == "/run/netns/app"
        assert [str(a) for a in desired.uplink.host_addresses] == ["2001:db8:9::1/64", "198.18.0.9/30"]
        assert desired.nameservers == ("198.18.0.9", "2001:db8::53")
        assert [(s.key, s.parts, s.value) for s in desired.sysctls] == [
            ("net.ipv4.ip_forward", ("net", "ipv4", "ip_forward"), "1"),
            ("net/ipv4/conf/eth0.100/forwarding", ("net", "ipv4", "conf", "eth0.100", "forwarding"), "1"),
            ("net.ipv4.tcp_rmem", ("net", "ipv4", "tcp_rmem"), "4096 87380 6291456"),
        ]
        assert desired.sysctls[1].path == "/proc/sys/net/ipv4/conf/eth0.100/forwarding"

    def test_defaults(self):
        desired = st.validate({"name": "app", "uplink": {"host_interface": "veth-app"}})
        assert desired.state == "present" and desired.loopback is True
        assert desired.uplink.interface == "eth0" and desired.uplink.default_route is True
        assert desired.uplink.addresses == () and desired.nameservers is None and desired.sysctls == ()

    @pytest.mark.parametrize(
        "overrides, message",
        [
            ({"name": "a/b"}, "name='a/b' must not contain '/' or NUL"),
            ({"name": ""}, "name='' must be a non-empty string"),
            ({"name": ".."}, "name='..' must not be '.' or '..'"),
            ({"name": "n" * 256}, "name='%s' is longer than 255 bytes" % ("n" * 256)),
            ({"uplink": uplink(host_interface="veth-app-abcdefg")}, "uplink.host_interface='veth-app-abcdefg' is longer than 15 characters"),
            ({"uplink": uplink(host_interface="vethé-abcdefghi")}, "uplink.host_interface='vethé-abcdefghi' is longer than 15 bytes"),
            ({"uplink": uplink(interface="eth 0")}, "uplink.interface='eth 0' must not contain '/', ':', '%', NUL or white space"),
            ({"uplink": uplink(interface="veth%d")}, "uplink.interface='veth%d' must not contain"),
            ({"uplink": uplink(interface="lo")}, "uplink.interface='lo' is the loopback interface"),
            ({"uplink": uplink(addresses=["198.18.0.300/30"])}, "uplink.addresses[0]='198.18.0.300/30' is not a valid CIDR"),
            ({"uplink": uplink(addresses=["198.18.0.10"])}, "uplink.addresses[0]='198.18.0.10' is not an IP address with a prefix length"),
            ({"uplink": uplink(host_addresses=["198.18.0.9/33"])}, "uplink.host_addresses[0]='198.18.0.9/33' is not a valid CIDR"),
            ({"uplink": uplink(addresses=["224.0.0.1/4"])}, "uplink.addresses[0]='224.0.0.1/4' is not a usable unicast address"),
            ({"uplink": uplink(addresses=["198.18.0.10/30", "198.18.0.10/29"])}, "uplink.addresses[1]='198.18.0.10/29' repeats the address 198.18.0.10/30"),
            ({"uplink": uplink(addresses=["198.18.0.9/30"])}, "uplink.addresses[0]='198.18.0.9/30' is also in uplink.host_addresses"),
            ({"nameservers": ["198.18.0.9", "dns.example"]}, "nameservers[1]='dns.example' is not an IP address"),
            ({"nameservers": ["198.18.0.9", "198.18.0.9"]}, "nameservers[1]='198.18.0.9' repeats an earlier nameserver"),
            ({"sysctls": {"kernel.hostname": "x"}}, "sysctls key 'kernel.hostname' is not a net.* sysctl"),
            ({"sysctls": {"net..ipv4": 1}}, "sysctls key 'net..ipv4' is not a valid sysctl name"),
            ({"sysctls": {"net/ipv4/../../kernel/x": 1}}, "sysctls key 'net/ipv4/../../kernel/x' is not a valid sysctl name"),
            ({"sysctls": {"net.ipv4.ip_forward": 1.5}}, "sysctls['net.ipv4.ip_forward']=1.5 must be a string, an integer"),
            ({"sysctls": {"net.ipv4.ip_forward": " "}}, "sysctls['net.ipv4.ip_forward']=' ' must not be empty"),
            ({"sysctls": {"net.ipv4.ip_forward": "1\n2"}}, "must be a single line"),
            (
                {"sysctls": {"net.ipv4.ip_forward": 1, "net/ipv4/ip_forward": 1}},
                "sysctls['net/ipv4/ip_forward'] names the same sysctl as sysctls['net.ipv4.ip_forward']",
            ),
        ],
    )
    def test_bad_input_names_option_and_value(self, overrides, message):
        with pytest.raises(st.ValidationError) as caught:
            st.validate(params(**overrides))
        assert message in str(caught.value)

    def test_every_problem_is_reported_at_once(self):
        with pytest.raises(st.ValidationError) as caught:
            st.validate(params(name="a/b", uplink=uplink(host_interface="x" * 16, addresses=["nope"]), nameservers=["x"]))
        assert len(caught.value.errors) == 4

    @pytest.mark.parametrize("name", ["eth0", "veth-app", "x" * 15, "a.b", "vlan@1"])
    def test_good_interface_names(self, name):
        assert st.ifname_error(name) is None


class TestSysctlValues:
    def test_normalize(self):
        assert st.normalize_sysctl("4096\t87380\t6291456\n") == "4096 87380 6291456"
        assert st.normalize_sysctl(None) is None

    @pytest.mark.parametrize("value, text", [(True, "1"), (False, "0"), (0, "0"), ("cubic", "cubic"), (["1024", 65535], "1024 65535")])
    def test_values(self, value, text):
        assert st.sysctl_value(value) == text

    def test_probe_paths(self):
        desired = st.validate(
            params(
                uplink=uplink(),
                sysctls={
                    "net.ipv4.ip_forward": 1,
                    "net.ipv6.conf.eth0.accept_ra": 0,
                    "net.ipv4.conf.all.rp_filter": 2,
                    "net.ipv4.neigh.lo.gc_stale_time": 60,
                    "net.ipv4.conf.wg0.forwarding": 1,
                },
            )
        )
        probes, errors = st.sysctl_probes(desired, {"eth0"})
        assert probes == {
            "net.ipv4.ip_forward": ("/proc/sys/net/ipv4/ip_forward", "1"),
            # the uplink's interface does not exist in a scratch namespace: lo stands in for it
            "net.ipv6.conf.eth0.accept_ra": ("/proc/sys/net/ipv6/conf/lo/accept_ra", "0"),
            "net.ipv4.conf.all.rp_filter": ("/proc/sys/net/ipv4/conf/all/rp_filter", "2"),
            "net.ipv4.neigh.lo.gc_stale_time": ("/proc/sys/net/ipv4/neigh/lo/gc_stale_time", "60"),
        }
        assert errors == ["sysctls key 'net.ipv4.conf.wg0.forwarding' is unknown: network namespace 'app' has no interface 'wg0' (it has: eth0, lo)"]

    def test_results(self):
        desired = st.validate(
            params(
                sysctls={
                    "net.ipv4.tcp_rmem": "4096 87380 6291456",
                    "net.core.netdev_max_backlog": 1,
                    "net.netfilter.nf_conntrack_max": 1,
                    "net.ipv4.ip_default_ttl": "abc",
                }
            )
        )
        values, errors = st.sysctl_results(
            desired,
            {
                "net.ipv4.tcp_rmem": {"value": "4096\t87380\t6291456"},
                "net.core.netdev_max_backlog": {"errno": 2, "error": "No such file or directory"},
                "net.netfilter.nf_conntrack_max": {"errno": 13, "error": "Permission denied"},
                "net.ipv4.ip_default_ttl": {"errno": 22, "error": "Invalid argument"},
            },
        )
        assert values == {"net.ipv4.tcp_rmem": "4096 87380 6291456"}
        assert errors == [
            "sysctls key 'net.core.netdev_max_backlog' is unknown: there is no /proc/sys/net/core/netdev_max_backlog in a network namespace",
            "sysctls['net.netfilter.nf_conntrack_max']='1' cannot be set: it is read-only inside a network namespace",
            "sysctls['net.ipv4.ip_default_ttl']='abc' is refused by the kernel: Invalid argument",
        ]


class TestResolvConf:
    def test_render(self):
        assert st.render_resolv_conf(("198.18.0.9", "2001:db8::53")) == (
            "# Nameservers of this network namespace, written by meshops.sidecar.netns.\n"
            "# 'ip netns exec' shows this file as /etc/resolv.conf. Local changes are overwritten.\n"
            "nameserver 198.18.0.9\n"
            "nameserver 2001:db8::53\n"
        )

    def test_parse(self):
        text = "# comment\nsearch example.org\nnameserver 198.18.0.9\nnameserver\tfe80::1%eth0\noptions ndots:2\n"
        assert parse_resolv_conf(text) == ["198.18.0.9", "fe80::1%eth0"]
        assert parse_resolv_conf(st.render_resolv_conf(("198.18.0.1",))) == ["198.18.0.1"]
        assert parse_resolv_conf(None) == []

    def test_path(self):
        assert st.resolv_conf_path("app") == "/etc/netns/app/resolv.conf"


# --------------------------------------------------------------------------------------------
# ip -json parsing
# --------------------------------------------------------------------------------------------


class TestParse:
    def test_fresh_namespace(self):
        (lo,) = st.parse_links(fixture("netns_addr_fresh.json"))
        assert (lo.name, lo.kind, lo.up, lo.operstate, lo.addresses) == ("lo", "loopback", False, "down", [])

    def test_namespace_with_uplink(self):
        lo, eth0 = st.parse_links(fixture("netns_addr_uplink.json"))
        assert lo.up and lo.state == "up" and [str(a) for a in lo.addresses] == ["127.0.0.1/8", "::1/128"]
        assert (eth0.kind, eth0.ifindex, eth0.link_index, eth0.link_netnsid, eth0.operstate) == ("veth", 2, 8, 0, "up")
        assert [str(a) for a in eth0.addresses] == ["198.18.0.10/30", "2001:db8:9::2/64", "fe80::cc47:b8ff:fe83:abdc/64"]
        assert [a.link_local for a in eth0.addresses] == [False, False, True]
        assert [a.scope for a in eth0.addresses] == ["global", "global", "link"]

    def test_host_side(self):
        (host,) = st.parse_links(fixture("netns_host_addr.json"))
        assert (host.name, host.kind, host.link_index, host.link_netnsid) == ("veth-app", "veth", 2, 2)
        veths = st.parse_links(fixture("netns_host_veths.json"))
        assert [(v.name, v.link_netnsid, v.up) for v in veths] == [("veth-other", 0, True), ("veth-third", 1, False), ("veth-app", 2, True)]

    def test_netns_list(self):
        assert st.parse_netns_ids(fixture("netns_list.json")) == {"other": 0, "fresh": None, "third": 1, "app": 2}
        assert st.parse_netns_ids("") == {}

    def test_routes(self):
        (v4,) = st.parse_routes(fixture("netns_routes4.json"), 4)
        (v6,) = st.parse_routes(fixture("netns_routes6.json"), 6)
        assert (v4.gateway, v4.dev, v4.metric, str(v4)) == ("198.18.0.9", "eth0", None, "default via 198.18.0.9 dev eth0")
        assert (v6.gateway, v6.metric, str(v6)) == ("2001:db8:9::1", 1024, "default via 2001:db8:9::1 dev eth0")

    def test_unusual_routes(self):
        text = (
            '[{"type":"unreachable","dst":"default","dev":"lo","metric":2048,"flags":[]},'
            '{"dst":"default","metric":10,"flags":[],"nexthops":[{"gateway":"198.18.0.1","dev":"eth0"}]},'
            '{"dst":"198.18.0.0/30","dev":"eth0","flags":[]}]'
        )
        routes = st.parse_routes(text, 4)
        assert [str(r) for r in routes] == ["unreachable default dev lo", "default multipath"]


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


class TestPlanPresent:
    def test_new_namespace(self):
        result = make_plan(st.Current(), uplink=uplink(), nameservers=["198.18.0.9"], sysctls={"net.ipv4.ip_forward": 1})
        assert commands(result) == [
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
            "set sysctl net.ipv4.ip_forward = 1 (write /proc/sys/net/ipv4/ip_forward inside the namespace)",
            "write /etc/netns/app/resolv.conf",
        ]
        assert result.before["exists"] is False and result.after["exists"] is True
        assert result.after["uplink"]["default_routes"] == ["default via 198.18.0.9 dev eth0", "default via 2001:db8:9::1 dev eth0"]
        assert result.steps[-1].value == st.render_resolv_conf(("198.18.0.9",))

    def test_prefix_name_is_not_a_match(self):
        # "app2" exists, "app" does not: the caller found exists=False for "app", so it is created.
        current = st.Current(nsids={"app2": 0})
        assert commands(make_plan(current))[:1] == ["ip netns add app"]

    def test_configured_namespace_is_left_alone(self):
        current = configured()
        current.sysctls = {"net.ipv4.ip_forward": "1"}
        current.resolv_conf = st.render_resolv_conf(("198.18.0.9",))
        result = make_plan(current, uplink=uplink(), nameservers=["198.18.0.9"], sysctls={"net.ipv4.ip_forward": "1"})
        assert result.steps == [] and not result.changed
        assert result.before["uplink"]["addresses"] == ["198.18.0.10/30", "2001:db8:9::2/64"]  # link-local left out

    def test_address_order_does_not_matter(self):
        result = make_plan(configured(), uplink=uplink(addresses=["2001:db8:9::2/64", "198.18.0.10/30"]))
        assert result.steps == []

    def test_changed_address_is_corrected_and_nothing_else_touched(self):
        result = make_plan(configured(), uplink=uplink(addresses=["198.18.0.10/30", "2001:db8:9::3/64"]))
        assert commands(result) == [
            "ip -n app addr del 2001:db8:9::2/64 dev eth0",
            "ip -n app addr replace 2001:db8:9::3/64 dev eth0 nodad",
            # the route of a family whose addresses changed is re-applied (idempotent replace)
            "ip -n app -6 route replace default table main via 2001:db8:9::1 dev eth0 metric 1024",
        ]
        assert result.before["uplink"]["addresses"] == ["198.18.0.10/30", "2001:db8:9::2/64"]
        assert result.after["uplink"]["addresses"] == ["198.18.0.10/30", "2001:db8:9::3/64"]

    def test_deleting_an_ipv4_address_reapplies_the_others(self):
        current = configured()
        eth0 = current.link("eth0")
        eth0.addresses.append(st.Address(ipaddress.ip_interface("198.18.0.11/30")))
        result = make_plan(current, uplink=uplink())
        assert commands(result) == [
            "ip -n app addr del 198.18.0.11/30 dev eth0",
            "ip -n app addr replace 198.18.0.10/30 dev eth0",
            "ip -n app -4 route replace default table main via 198.18.0.9 dev eth0",
        ]

    def test_changed_gateway(self):
        result = make_plan(configured(), uplink=uplink(host_addresses=["198.18.0.9/30", "2001:db8:9::5/64", "2001:db8:9::1/64"]))
        assert commands(result) == [
            "ip -n app -6 route del default table main via 2001:db8:9::1 dev eth0 metric 1024",
            "ip addr replace 2001:db8:9::5/64 dev veth-app nodad",
            "ip -n app -6 route replace default table main via 2001:db8:9::5 dev eth0",
        ]

    def test_gateway_outside_the_inner_network_is_onlink(self):
        current = configured()
        result = make_plan(current, uplink=uplink(host_addresses=["198.18.1.1/32", "2001:db8:9::1/64"], addresses=["198.18.0.10/32", "2001:db8:9::2/64"]))
        assert "ip -n app -4 route replace default table main via 198.18.1.1 dev eth0 onlink" in commands(result)

    def test_no_default_route(self):
        result = make_plan(configured(), uplink=uplink(default_route=False))
        assert commands(result) == [
            "ip -n app -4 route del default table main via 198.18.0.9 dev eth0",
            "ip -n app -6 route del default table main via 2001:db8:9::1 dev eth0 metric 1024",
        ]
        assert result.after["uplink"]["default_routes"] == []

    def test_ipv4_only_uplink_drops_the_ipv6_route_through_it(self):
        result = make_plan(configured(), uplink=uplink(host_addresses=["198.18.0.9/30"], addresses=["198.18.0.10/30"]))
        assert commands(result) == [
            "ip -n app -6 route del default table main via 2001:db8:9::1 dev eth0 metric 1024",
            "ip addr del 2001:db8:9::1/64 dev veth-app",
            "ip -n app addr del 2001:db8:9::2/64 dev eth0",
        ]

    def test_other_default_routes_are_replaced(self):
        current = configured()
        current.routes.append(st.Route(4, gateway="198.18.5.1", dev="eth1", metric=100))
        current.routes.append(st.Route(4, type="unreachable", dev="lo", metric=200))
        result = make_plan(current, uplink=uplink())
        assert commands(result) == [
            "ip -n app -4 route del default table main via 198.18.5.1 dev eth1 metric 100",
            "ip -n app -4 route del unreachable default table main dev lo metric 200",
        ]

    def test_down_interfaces_are_brought_up(self):
        current = configured()
        current.host_link.up = False
        current.link("eth0").up = False
        current.link("lo").up = False
        current.routes = []  # the kernel drops IPv4 routes through a down interface
        result = make_plan(current, uplink=uplink())
        assert commands(result) == [
            "ip -n app link set dev lo up",
            "ip link set dev veth-app up",
            "ip -n app link set dev eth0 up",
            "ip -n app -4 route replace default table main via 198.18.0.9 dev eth0",
            "ip -n app -6 route replace default table main via 2001:db8:9::1 dev eth0",
        ]

    def test_loopback_down(self):
        assert commands(make_plan(configured(), loopback=False)) == ["ip -n app link set dev lo down"]

    def test_stale_file_is_replaced(self):
        result = make_plan(st.Current(stale_file=True))
        assert commands(result) == ["ip netns delete app", "ip netns add app", "ip -n app link set dev lo up"]
        assert result.before["stale_file"] is True and "stale_file" not in result.after
        assert "not a mounted namespace" in result.warnings[0]

    def test_host_end_whose_peer_is_gone_is_recreated(self):
        # The namespace was recreated while a process kept the old one (and its eth0) alive.
        current = configured()
        current.host_link.link_netnsid = 7  # a namespace without a name
        current.links = [current.link("lo")]
        result = make_plan(current, uplink=uplink())
        assert commands(result)[:3] == [
            "ip link delete dev veth-app",
            "ip link add name veth-app type veth peer name eth0 netns app",
            "ip addr replace 198.18.0.9/30 dev veth-app",
        ]
        assert "its peer is in a namespace that has no name any more" in result.warnings[0]
        assert result.before["uplink"]["paired"] is False and result.after["uplink"]["paired"] is True

    def test_host_end_with_both_ends_on_the_host_is_recreated(self):
        current = configured()
        current.host_link.link_netnsid = None
        result = make_plan(current, uplink=uplink())
        assert commands(result)[0] == "ip link delete dev veth-app"
        assert "both ends of that veth pair are in the host namespace" in result.warnings[0]

    def test_host_end_of_another_namespace_is_refused(self):
        current = configured()
        current.host_link.link_netnsid = 0  # "other"
        with pytest.raises(st.StateError, match="uplink.host_interface='veth-app' is the uplink of network namespace 'other', not of 'app'"):
            make_plan(current, uplink=uplink())

    def test_host_device_that_is_not_a_veth_is_refused(self):
        current = st.Current(host_link=st.Link(name="veth-app", ifindex=3, kind="bridge"))
        with pytest.raises(st.StateError, match="uplink.host_interface='veth-app' exists in the host namespace and is a bridge device, not a veth"):
            make_plan(current, uplink=uplink())

    def test_inner_device_that_is_not_a_veth_is_refused(self):
        current = st.Current(exists=True, links=[st.Link("lo", 1, "loopback", True), st.Link("eth0", 2, "dummy")])
        with pytest.raises(st.StateError, match="uplink.interface='eth0' exists in network namespace 'app' and is a dummy device"):
            make_plan(current, uplink=uplink())

    def test_renamed_host_end_replaces_the_old_pair(self):
        current = configured()
        current.host_link = None  # the user renamed host_interface from veth-app to veth-new
        result = make_plan(current, uplink=uplink(host_interface="veth-new"))
        assert commands(result)[:2] == [
            "ip -n app link delete dev eth0",
            "ip link add name veth-new type veth peer name eth0 netns app",
        ]
        assert "paired with host interface 'veth-app', not 'veth-new'" in result.warnings[0]

    def test_inner_veth_to_another_namespace_is_refused(self):
        current = configured()
        current.host_link = None
        current.host_veths = []
        with pytest.raises(st.StateError, match="is a veth whose peer is in another namespace, not in the host namespace"):
            make_plan(current, uplink=uplink(host_interface="veth-new"))

    def test_inner_veth_with_both_ends_inside_is_refused(self):
        current = configured()
        current.host_link = None
        current.host_veths = [veth for veth in current.host_veths if veth.name != "veth-app"]
        current.link("eth0").link_netnsid = None
        with pytest.raises(st.StateError, match="is a veth whose peer is inside the namespace itself"):
            make_plan(current, uplink=uplink())

    def test_sysctls_compared_as_the_kernel_prints_them(self):
        current = configured()
        current.sysctls = {"net.ipv4.tcp_rmem": "4096 87380 6291456", "net.ipv4.ip_forward": "0"}
        kernel = {"net.ipv4.tcp_rmem": "4096 87380 6291456", "net.ipv4.ip_forward": "1"}
        result = make_plan(current, kernel, sysctls={"net.ipv4.tcp_rmem": "4096   87380 6291456", "net.ipv4.ip_forward": "01"})
        assert commands(result) == ["set sysctl net.ipv4.ip_forward = 01 (write /proc/sys/net/ipv4/ip_forward inside the namespace)"]
        assert result.before["sysctls"] == {"net.ipv4.tcp_rmem": "4096 87380 6291456", "net.ipv4.ip_forward": "0"}
        assert result.after["sysctls"] == kernel

    def test_interface_sysctls_are_rewritten_when_the_pair_is_recreated(self):
        current = configured()
        current.host_link.link_netnsid = None
        current.sysctls = {"net.ipv6.conf.eth0.accept_ra": "0"}
        result = make_plan(current, uplink=uplink(), sysctls={"net.ipv6.conf.eth0.accept_ra": 0})
        assert "set sysctl net.ipv6.conf.eth0.accept_ra = 0 (write /proc/sys/net/ipv6/conf/eth0/accept_ra inside the namespace)" in commands(result)

    def test_nameservers(self):
        current = configured()
        current.resolv_conf = st.render_resolv_conf(("198.18.0.9",))
        assert make_plan(current, nameservers=["198.18.0.9"]).steps == []
        changed = make_plan(current, nameservers=["198.18.0.9", "198.18.0.10"])
        assert commands(changed) == ["write /etc/netns/app/resolv.conf"]
        assert changed.after["resolv_conf"][-1] == "nameserver 198.18.0.10"
        assert commands(make_plan(current, nameservers=[])) == ["remove /etc/netns/app/resolv.conf"]
        assert "resolv_conf" not in make_plan(current).before  # not managed

    def test_hand_edited_resolv_conf_is_rewritten(self):
        current = configured()
        current.resolv_conf = st.render_resolv_conf(("198.18.0.9",)) + "options ndots:5\n"
        assert commands(make_plan(current, nameservers=["198.18.0.9"])) == ["write /etc/netns/app/resolv.conf"]

    def test_too_many_nameservers_warns(self):
        result = make_plan(configured(), nameservers=["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"])
        assert result.warnings == ["nameservers lists 4 servers; the glibc resolver uses only the first 3"]


class TestPlanAbsent:
    def test_removes_namespace_host_ends_and_etc(self):
        current = configured()
        current.etc_dir = True
        result = make_plan(current, state="absent")
        assert commands(result) == [
            "ip link delete dev veth-app",
            "ip netns delete app",
            "remove /etc/netns/app and everything in it",
        ]
        assert result.before == {"exists": True, "host_interfaces": ["veth-app"], "etc_netns": True}
        assert result.after == {"exists": False, "host_interfaces": [], "etc_netns": False}

    def test_other_namespaces_veths_are_left_alone(self):
        current = configured()
        current.nsids["app"] = 5  # no host veth leads into app
        assert commands(make_plan(current, state="absent")) == ["ip netns delete app"]

    def test_nothing_to_do(self):
        result = make_plan(st.Current(nsids={"app2": 0}), state="absent")
        assert result.steps == [] and not result.changed

    def test_stale_file(self):
        result = make_plan(st.Current(stale_file=True), state="absent")
        assert commands(result) == ["ip netns delete app"]

    def test_leftover_host_end_named_by_uplink(self):
        current = st.Current(host_link=st.Link("veth-app", 8, "veth", link_index=2, link_netnsid=9), nsids={"other": 0})
        assert commands(make_plan(current, state="absent", uplink=uplink())) == ["ip link delete dev veth-app"]

    @pytest.mark.parametrize(
        "link, warning",
        [
            (st.Link("veth-app", 8, "bridge"), "uplink.host_interface='veth-app' is a bridge device, not a veth: left alone"),
            (
                st.Link("veth-app", 8, "veth", link_index=2, link_netnsid=0),
                "uplink.host_interface='veth-app' is the uplink of network namespace 'other': left alone",
            ),
        ],
    )
    def test_host_interface_that_is_not_ours(self, link, warning):
        result = make_plan(st.Current(host_link=link, nsids={"other": 0}), state="absent", uplink=uplink())
        assert result.steps == [] and result.warnings == [warning]


def test_step_description_quotes_odd_arguments():
    assert st.command("ip", "netns", "add", "my ns").describe() == "ip netns add 'my ns'"
    assert st.command("ip", "netns", "add", "it's").describe() == "ip netns add 'it'\"'\"'s'"


class TestPeerNamespace:
    """uplink.peer_netns: the other end of the pair lives in a named namespace, not in the host's."""

    def test_every_command_for_that_end_runs_in_the_peer_namespace(self):
        result = make_plan(st.Current(), uplink=uplink(peer_netns="peer"))
        assert commands(result)[2:6] == [
            "ip -n peer link add name veth-app type veth peer name eth0 netns app",
            "ip -n peer addr replace 198.18.0.9/30 dev veth-app",
            "ip -n peer addr replace 2001:db8:9::1/64 dev veth-app nodad",
            "ip -n peer link set dev veth-app up",
        ]
        assert not any(c.startswith("ip link") or c.startswith("ip addr") for c in commands(result))

    def test_absent_removes_the_peer_end_in_the_peer_namespace(self):
        current = configured()
        current.host_veths = []
        result = make_plan(current, state="absent", uplink=uplink(peer_netns="peer"))
        assert "ip -n peer link delete dev veth-app" in commands(result)

    @pytest.mark.parametrize("value,message", [
        ("app", "uplink.peer_netns='app' is the namespace itself"),
        ("a/b", "uplink.peer_netns='a/b'"),
    ])
    def test_bad_peer_names(self, value, message):
        with pytest.raises(st.ValidationError) as caught:
            st.validate(params(uplink=uplink(peer_netns=value)))
        assert message in str(caught.value)
