# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Option validation: Istio-style lists, clear errors naming option and value, defaults left to the target."""

from __future__ import annotations

import ipaddress

import pytest

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import (
    CAPTURE_OPTION_SPECS,
    LIST_OPTIONS,
    OptionError,
    argument_spec,
    build_options,
    has_global_ipv6,
    items,
    user_name_error,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._system.resolv_conf import parse_resolv_conf
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6

DEFAULTS = dict(
    proxy_port=15001, inbound_capture_port=15006, inbound_tunnel_port=15008, proxy_uid=["1337"], proxy_gid=None,
    inbound_interception_mode="REDIRECT", tproxy_mark=1337, tproxy_route_table=133, inbound_ports=["*"],
    exclude_inbound_ports=["15090", "15021", "15020"], outbound_ip_ranges=["*"], exclude_outbound_ip_ranges=[],
    outbound_ports=[], exclude_outbound_ports=[], exclude_interfaces=[], reroute_virtual_interfaces=[],
    outbound_owner_groups=["*"], exclude_outbound_owner_groups=[], capture_dns=False, capture_all_dns=False,
    dns_servers=None, ipv6=None, ipv4_loopback_cidr="127.0.0.1/32", drop_invalid=False,
    native_nftables=False,
    cidr_sets=False,
    keep_existing_connections=False,
)
USERS = {"istio-proxy": 998}
GROUPS = {"istio-proxy": 997, "apps": 500}


def build_with_calls(**overrides):
    calls = []

    def resolv():
        calls.append("resolv")
        return ["198.18.0.53", "2001:db8::53"]

    def ipv6():
        calls.append("ipv6")
        return False

    opts = build_options(dict(DEFAULTS, **overrides), USERS.get, GROUPS.get, resolv, ipv6)
    return opts, calls


def build(**overrides):
    return build_with_calls(**overrides)[0]


def error(**overrides):
    with pytest.raises(OptionError) as info:
        build(**overrides)
    return str(info.value)


@pytest.mark.parametrize("value,expected", [
    (None, None), ("", []), ("a,b,,c ", ["a", "b", "c"]), (["a", " ", 80], ["a", "80"]), ([], []),
])
def test_istio_style_lists(value, expected):
    assert items(value) == expected


def test_defaults_are_istio_k8s_defaults():
    opts, calls = build_with_calls()
    assert opts.proxy_uids == ("1337",) and opts.proxy_gids == ("1337",)
    assert opts.inbound_ports == "*" and opts.outbound_ip_ranges == "*"
    assert opts.exclude_inbound_ports == ("15090", "15021", "15020")
    assert opts.ipv6 is False and calls == ["ipv6"]  # resolv.conf is only read for DNS capture


def test_proxy_gid_defaults_to_the_uid_values_resolved_as_groups():
    opts = build(proxy_uid=["istio-proxy"])
    assert opts.proxy_uids == ("998",)
    assert opts.proxy_gids == ("997",)  # the istio-proxy group, not the uid number


def test_numbers_are_taken_as_they_are():
    opts = build(proxy_uid=["0042"], proxy_gid=["7"])
    assert opts.proxy_uids == ("42",) and opts.proxy_gids == ("7",)


@pytest.mark.parametrize("overrides,option,value", [
    (dict(proxy_uid=["nobody-here"]), "proxy_uid", "nobody-here"),
    (dict(proxy_gid=["no-group"]), "proxy_gid", "no-group"),
    (dict(exclude_outbound_owner_groups=["no-group"]), "exclude_outbound_owner_groups", "no-group"),
    (dict(exclude_outbound_ip_ranges=["300.1.2.3/8"]), "exclude_outbound_ip_ranges", "300.1.2.3/8"),
    (dict(exclude_outbound_ip_ranges=["198.18.0.1"]), "exclude_outbound_ip_ranges", "198.18.0.1"),
    (dict(outbound_ip_ranges=["2001:db8::/129"]), "outbound_ip_ranges", "2001:db8::/129"),
    (dict(exclude_inbound_ports=["70000"]), "exclude_inbound_ports", "70000"),
    (dict(exclude_inbound_ports=["0"]), "exclude_inbound_ports", "0"),
    (dict(outbound_ports=["http"]), "outbound_ports", "http"),
    (dict(exclude_outbound_ports=["9000:8000"]), "exclude_outbound_ports", "9000:8000"),
    (dict(inbound_ports=["*", "80"]), "inbound_ports", "['*', '80']"),
    (dict(exclude_interfaces=["a-very-long-interface"]), "exclude_interfaces", "a-very-long-interface"),
    (dict(reroute_virtual_interfaces=["br/0"]), "reroute_virtual_interfaces", "br/0"),
    (dict(dns_servers=["dns.example"], capture_dns=True), "dns_servers", "dns.example"),
    (dict(ipv4_loopback_cidr="10.0.0.0/8"), "ipv4_loopback_cidr", "10.0.0.0/8"),
    (dict(ipv4_loopback_cidr="127.0.0.0/4"), "ipv4_loopback_cidr", "127.0.0.0/4"),
    (dict(ipv4_loopback_cidr="127.0.0.1"), "ipv4_loopback_cidr", "127.0.0.1"),
    (dict(tproxy_route_table=254), "tproxy_route_table", "254"),
    (dict(tproxy_mark=0), "tproxy_mark", "0"),
    (dict(proxy_port=0), "proxy_port", "0"),
    (dict(inbound_capture_port=65536), "inbound_capture_port", "65536"),
    (dict(proxy_uid=[]), "proxy_uid", "[]"),
    (dict(exclude_outbound_ip_ranges=["*"]), "exclude_outbound_ip_ranges", "*"),
    (dict(outbound_owner_groups=[str(g) for g in range(65)]), "outbound_owner_groups", "65"),
    # The kernel's range of ids: (uid_t)-1 means "no id" and never owns a packet.
    (dict(proxy_uid=["4294967295"]), "proxy_uid", "4294967295"),
    (dict(proxy_gid=["4294967295"]), "proxy_gid", "4294967295"),
    (dict(exclude_outbound_owner_groups=["4294967296"]), "exclude_outbound_owner_groups", "4294967296"),
    (dict(outbound_owner_groups=["99999999999"]), "outbound_owner_groups", "99999999999"),
    (dict(proxy_uid=["\u0661\u0662"]), "proxy_uid", "\u0661\u0662"),  # Arabic-Indic digits are a name, not a number
    # Interface names as the kernel allows them.
    (dict(exclude_interfaces=["eth0:1"]), "exclude_interfaces", "eth0:1"),
    (dict(exclude_interfaces=["."]), "exclude_interfaces", "."),
    (dict(exclude_interfaces=[".."]), "exclude_interfaces", ".."),
    (dict(exclude_interfaces=["eth 0"]), "exclude_interfaces", "eth 0"),
    (dict(exclude_interfaces=["\u00e9" * 8]), "exclude_interfaces", "\u00e9" * 8),  # 8 characters, 16 bytes
    (dict(reroute_virtual_interfaces=["veth%d"]), "reroute_virtual_interfaces", "veth%d"),
    # Zones: a rule cannot match one, so it must not be dropped silently.
    (dict(exclude_outbound_ip_ranges=["fe80::1%eth0/64"]), "exclude_outbound_ip_ranges", "fe80::1%eth0/64"),
    (dict(outbound_ip_ranges=["fe80::%2/10"]), "outbound_ip_ranges", "fe80::%2/10"),
    (dict(dns_servers=["fe80::53%eth0"], capture_dns=True), "dns_servers", "fe80::53%eth0"),
    (dict(inbound_ports=["\u0668\u0660"]), "inbound_ports", "\u0668\u0660"),
])
def test_bad_values_name_option_and_value(overrides, option, value):
    message = error(**overrides)
    assert message.startswith(option + "=")
    assert value in message


def test_ports_and_ranges():
    opts = build(exclude_inbound_ports="22, 8000-8100,15020", outbound_ports=[443], inbound_ports="80")
    assert opts.exclude_inbound_ports == ("22", "8000:8100", "15020")
    assert opts.outbound_ports == ("443",) and opts.inbound_ports == ("80",)


def test_empty_lists_mean_none():
    opts = build(inbound_ports=[], outbound_ip_ranges="")
    assert opts.inbound_ports == () and opts.outbound_ip_ranges == ()


def test_cidrs_keep_their_family_and_istio_text():
    opts = build(exclude_outbound_ip_ranges=["198.18.7.9/16", "2001:0DB8::/32"])
    assert opts.exclude_outbound_ip_ranges == ((IPV4, "198.18.7.9/16"), (IPV6, "2001:db8::/32"))


def test_dns_servers_default_to_the_namespace_resolv_conf_only_when_capturing():
    opts, calls = build_with_calls(capture_dns=True)
    assert opts.dns_servers == ((IPV4, "198.18.0.53"), (IPV6, "2001:db8::53"))
    assert "resolv" in calls
    opts, calls = build_with_calls(capture_dns=True, dns_servers=[])
    assert opts.dns_servers == () and not opts.redirect_dns and "resolv" not in calls
    opts, calls = build_with_calls(capture_dns=True, capture_all_dns=True)
    assert opts.redirect_dns and "resolv" not in calls


def test_explicit_ipv6_skips_detection():
    opts, calls = build_with_calls(ipv6=True)
    assert opts.ipv6 is True and "ipv6" not in calls


def test_owner_groups_resolve():
    opts = build(outbound_owner_groups=["apps", "10"])
    assert opts.outbound_owner_groups == ("500", "10")


def test_resolv_conf_parsing():
    text = "# comment\nsearch example\nnameserver 198.18.0.53 # local\nnameserver  2001:db8::53\n;nameserver 1.2.3.4\n"
    assert parse_resolv_conf(text) == ["198.18.0.53", "2001:db8::53"]


def test_global_ipv6_detection():
    loopback = "00000000000000000000000000000001 01 80 10 80       lo\n"
    link = "fe800000000000000000000000000001 02 40 20 80     eth0\n"
    ula = "fd000000000000000000000000000001 02 40 00 80     eth0\n"
    assert not has_global_ipv6(loopback + link)
    assert has_global_ipv6(loopback + ula)


@pytest.mark.parametrize("text", ["198.18.0.1/32", "0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/8", "198.18.7.9/16"])
def test_plain_ipv4_cidrs_are_what_ipaddress_would_print(text):
    opts = build(exclude_outbound_ip_ranges=[text])
    interface = ipaddress.ip_interface(text)
    assert opts.exclude_outbound_ip_ranges == ((IPV4, "%s/%d" % (interface.ip, interface.network.prefixlen)),)


@pytest.mark.parametrize("text", ["198.18.0.01/32", "256.1.1.1/8", "1.2.3.4/33", "1.2.3/8"])
def test_odd_ipv4_cidrs_still_go_through_full_validation(text):
    assert error(exclude_outbound_ip_ranges=[text]).startswith("exclude_outbound_ip_ranges=")


def test_largest_ids_and_wildcard_interfaces_are_accepted():
    opts = build(proxy_uid=["4294967294"], proxy_gid=["0"], exclude_outbound_owner_groups=["4294967294"],
                 exclude_interfaces=["veth+", "a" * 15], reroute_virtual_interfaces=["+"])
    assert opts.proxy_uids == ("4294967294",) and opts.proxy_gids == ("0",)
    assert opts.exclude_outbound_owner_groups == ("4294967294",)
    assert opts.exclude_interfaces == ("veth+", "a" * 15) and opts.reroute_virtual_interfaces == ("+",)


def test_a_resolver_may_say_why_a_name_is_not_one():
    def refuse(name):
        raise ValueError("is not a user name")

    with pytest.raises(OptionError) as info:
        build_options(dict(DEFAULTS, proxy_uid=["bad name"]), refuse, refuse, list, bool)
    assert str(info.value) == "proxy_uid='bad name': is not a user name"


def test_argument_spec_is_the_schema_plus_where_and_how():
    spec = argument_spec()
    assert list(spec) == ["netns", "state", "backend"] + list(CAPTURE_OPTION_SPECS) + ["verify"]
    for name, option in CAPTURE_OPTION_SPECS.items():
        assert spec[name] == option and spec[name] is not option
    spec["proxy_uid"]["default"].append("0")  # AnsibleModule may change what it is given
    assert CAPTURE_OPTION_SPECS["proxy_uid"]["default"] == ["1337"]
    assert set(LIST_OPTIONS) == {name for name, option in spec.items() if option["type"] == "list"}


def test_defaults_of_the_schema_are_what_build_options_is_tested_with():
    assert {name: option.get("default") for name, option in CAPTURE_OPTION_SPECS.items()} == DEFAULTS


@pytest.mark.parametrize("name", ["istio-proxy", "_apt", "w1-proxy", "machine$", "a.b", "1abc", "a" * 32])
def test_user_names_useradd_accepts(name):
    assert user_name_error(name) is None


@pytest.mark.parametrize("name", ["", "bad user", "-proxy", "a:b", "a/b", "1337", ".", "..", "a$b", "a" * 33,
                                  "\u00e9t\u00e9", None, 5])
def test_user_names_useradd_refuses(name):
    assert user_name_error(name)


@pytest.mark.parametrize("name, reason", [
    ("!eth0", "starting with '!'"),
    ('fi"e2', "a quote or a backslash"),
    ("fi'e3", "a quote or a backslash"),
    ("fi\\e4", "a quote or a backslash"),
])
def test_interface_names_the_rule_writers_would_change_are_refused(name, reason):
    for option in ("exclude_interfaces", "reroute_virtual_interfaces"):
        with pytest.raises(OptionError, match="^%s=" % option) as exc:
            build(**{option: [name]})
        assert reason in str(exc.value)


@pytest.mark.parametrize("given, written", [
    ("::ffff:198.18.0.9/128", "::ffff:198.18.0.9/128"),  # as iptables and nft print it, not ::ffff:c612:9
    ("::FFFF:C612:9/128", "::ffff:198.18.0.9/128"),
    ("2001:db8:0:0:0:0:0:1/128", "2001:db8::1/128"),
    ("2001:db8:0:1:0:0:0:1/64", "2001:db8:0:1::1/64"),
])
def test_ipv6_text_is_what_inet_ntop_prints(given, written):
    assert build(exclude_outbound_ip_ranges=[given]).exclude_outbound_ip_ranges == ((IPV6, written),)


def test_an_ipv4_mapped_nameserver_is_written_as_iptables_prints_it():
    opts = build(capture_dns=True, dns_servers=["::ffff:198.18.0.9"], ipv6=True)
    assert opts.dns_servers == ((IPV6, "::ffff:198.18.0.9"),)
