# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.meshops.sidecar.plugins.filter.cluster_env import (
    ENV_OPTIONS,
    OPTION_SPECS,
    FilterModule,
    capture_options,
    cluster_env_capture,
    cluster_env_parse,
)

try:
    from ansible.module_utils.datatag import native_type_name
except ImportError:  # ansible-core < 2.19 names the type as str() of the class
    native_type_name = str

# How the installed ansible-core names a str in its argument spec errors ("is of type str" from
# 2.19 on, "is of type <class 'str'>" before): the tests below check the option and that type.
STR_TYPE = native_type_name(str)

# istioctl/pkg/workload/testdata/vmconfig/ipv4/cluster.env.golden (reference section 3.2).
GOLDEN = """\
CANONICAL_REVISION='latest'
CANONICAL_SERVICE='foo'
CA_ADDR='istiod-rev-1.istio-system.svc:15012'
CLUSTER_MESH_CONFIG_VALUE='foo'
ISTIO_INBOUND_PORTS='*'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_METAJSON_LABELS='{"service.istio.io/canonical-name":"foo","service.istio.io/canonical-revision":"latest"}'
ISTIO_META_CLUSTER_ID='Kubernetes'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_META_MESH_ID=''
ISTIO_META_NETWORK=''
ISTIO_META_WORKLOAD_NAME='foo'
ISTIO_NAMESPACE='bar'
ISTIO_SERVICE='foo.bar'
ISTIO_SERVICE_CIDR='*'
ISTIO_SVC_IP='10.10.10.10'
POD_NAMESPACE='bar'
PROXY_CONFIG_ANNOT_VALUE='bar'
SERVICE_ACCOUNT='vm-serviceaccount'
TRUST_DOMAIN=''
"""


def capture(env, **kwargs):
    return cluster_env_capture(env, **kwargs)


def test_filters_are_registered():
    filters = FilterModule().filters()
    assert set(filters) == {"cluster_env_parse", "cluster_env_capture", "capture_options"}


def test_every_mapped_option_is_a_module_option():
    for option, _alias in ENV_OPTIONS.values():
        assert option in OPTION_SPECS


# ---------------------------------------------------------------------------------------------
# cluster_env_parse


def test_parse_golden():
    env = cluster_env_parse(GOLDEN)
    assert len(env) == 20
    assert env["ISTIO_INBOUND_PORTS"] == "*"
    assert env["ISTIO_LOCAL_EXCLUDE_PORTS"] == "22,15090,15021,15020"
    assert env["ISTIO_METAJSON_LABELS"] == (
        '{"service.istio.io/canonical-name":"foo","service.istio.io/canonical-revision":"latest"}'
    )
    assert env["ISTIO_META_MESH_ID"] == ""
    assert env["CA_ADDR"] == "istiod-rev-1.istio-system.svc:15012"


@pytest.mark.parametrize(
    "line, value",
    [
        ("A='x y'", "x y"),
        ('A="x y"', "x y"),
        ("A=plain", "plain"),
        ("A=", ""),
        ("A=''", ""),
        ("A='it'\"'\"'s'", "it's"),  # what Go's shellescape.Quote writes for a quote
        ("A='it'\\''s'", "it's"),
        ('A="a \\"b\\" \\$c \\\\ \\`d"', 'a "b" $c \\ `d'),
        ('A="keep \\n"', "keep \\n"),
        ("A=x\\ y", "x y"),
        ("A='x' # trailing comment", "x"),
        ("A='*'", "*"),
        ("A='a=b'", "a=b"),
        ("export A='x'", "x"),
        ("  A='x'  ", "x"),
        ("A='{\"k\": [1, 2]}'", '{"k": [1, 2]}'),
        ("A='multi'word", "multiword"),
    ],
)
def test_parse_values(line, value):
    assert cluster_env_parse(line + "\n") == {"A": value}


def test_parse_comments_blank_lines_and_last_wins():
    text = "# written by istioctl\n\nA='1'\n   # indented comment\nB='2'\nA='3'\n"
    assert cluster_env_parse(text) == {"A": "3", "B": "2"}


def test_parse_empty_text():
    assert cluster_env_parse("") == {}
    assert cluster_env_parse("\n# nothing\n") == {}


def test_parse_bytes():
    assert cluster_env_parse(b"A='x'\n") == {"A": "x"}


def test_parse_crlf():
    assert cluster_env_parse("A='x'\r\nB='y'\r\n") == {"A": "x", "B": "y"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("just words\n", "line 1: 'just words' is not a NAME=value assignment"),
        ("A='x'\n1A='x'\n", 'line 2: "1A=\'x\'" is not a NAME=value assignment'),
        ("A-B='x'\n", "is not a NAME=value assignment"),
        ("='x'\n", "is not a NAME=value assignment"),
        ("A='unterminated\n", "line 1: unterminated single quote"),
        ('A="unterminated\n', "line 1: unterminated double quote"),
        ("A=$HOME\n", "shell syntax ($) is not supported"),
        ('A="${HOME}"\n', "shell expansion ($) is not supported"),
        ("A=`id`\n", "shell syntax (`) is not supported"),
        ("A=x; rm -rf /\n", "shell syntax (;) is not supported"),
        ("A=x y\n", "more than one word"),
        ("A='x' 'y'\n", "more than one word"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(AnsibleFilterError) as exc:
        cluster_env_parse(text)
    assert "cluster_env_parse: cluster.env: " in str(exc.value)
    assert message in str(exc.value)


def test_parse_rejects_non_text():
    with pytest.raises(AnsibleFilterError, match="expected the text of a cluster.env file"):
        cluster_env_parse({"A": "x"})


# ---------------------------------------------------------------------------------------------
# cluster_env_capture


def test_capture_golden():
    assert capture(cluster_env_parse(GOLDEN)) == {
        "inbound_ports": ["*"],
        "exclude_inbound_ports": ["22", "15090", "15021", "15020"],
        "outbound_ip_ranges": ["*"],
        "capture_dns": True,
    }


def test_capture_accepts_text():
    assert capture(GOLDEN) == capture(cluster_env_parse(GOLDEN))


def test_capture_keeps_ssh_excluded_from_istioctl_output():
    assert "22" in capture(GOLDEN)["exclude_inbound_ports"]


def test_capture_empty_env_gives_istio_defaults():
    # istio-iptables without -b, -d, -i: no inbound capture, no exclusions, no outbound capture.
    assert capture({}) == {"inbound_ports": [], "exclude_inbound_ports": [], "outbound_ip_ranges": []}


def test_capture_without_istio_defaults():
    assert capture({}, istio_defaults=False) == {}
    assert capture({"ISTIO_INBOUND_PORTS": "80"}, istio_defaults=False) == {"inbound_ports": ["80"]}
    assert capture({}, istio_defaults="false") == {}


def test_empty_inbound_ports_means_no_inbound_capture():
    # The module's own default is '*': an empty value must not fall back to it.
    options = capture({"ISTIO_INBOUND_PORTS": "", "ISTIO_SERVICE_CIDR": "*"}, istio_defaults=False)
    assert options == {"inbound_ports": [], "outbound_ip_ranges": ["*"]}


@pytest.mark.parametrize(
    "variable, value, option, expected",
    [
        ("ISTIO_INBOUND_PORTS", "*", "inbound_ports", ["*"]),
        ("ISTIO_INBOUND_PORTS", "8080,9090,", "inbound_ports", ["8080", "9090"]),
        ("ISTIO_INBOUND_PORTS", " 80 , 443 ", "inbound_ports", ["80", "443"]),
        ("ISTIO_INBOUND_PORTS", "8000:8100", "inbound_ports", ["8000:8100"]),
        ("ISTIO_LOCAL_EXCLUDE_PORTS", "22,15090,15021,15020", "exclude_inbound_ports",
         ["22", "15090", "15021", "15020"]),
        ("ISTIO_LOCAL_EXCLUDE_PORTS", "", "exclude_inbound_ports", []),
        ("ISTIO_SERVICE_CIDR", "*", "outbound_ip_ranges", ["*"]),
        ("ISTIO_SERVICE_CIDR", "10.0.0.0/8,2001:db8::/32", "outbound_ip_ranges", ["10.0.0.0/8", "2001:db8::/32"]),
        ("ISTIO_SERVICE_CIDR", "10.1.2.3/8", "outbound_ip_ranges", ["10.1.2.3/8"]),  # host bits, as netip accepts
        ("ISTIO_SERVICE_CIDR", "", "outbound_ip_ranges", []),
        ("ISTIO_SERVICE_EXCLUDE_CIDR", "198.18.0.0/15", "exclude_outbound_ip_ranges", ["198.18.0.0/15"]),
        ("ISTIO_OUTBOUND_PORTS", "3306", "outbound_ports", ["3306"]),
        ("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "5432,6379", "exclude_outbound_ports", ["5432", "6379"]),
        ("ISTIO_EXCLUDE_INTERFACES", "eth1,tun+", "exclude_interfaces", ["eth1", "tun+"]),
        ("ISTIO_EXCLUDE_INTERFACES", "a+b", "exclude_interfaces", ["a+b"]),  # a name the kernel allows
        ("KUBE_VIRT_INTERFACES", "docker0", "reroute_virtual_interfaces", ["docker0"]),
        ("ISTIO_INBOUND_INTERCEPTION_MODE", "TPROXY", "inbound_interception_mode", "TPROXY"),
        ("ISTIO_INBOUND_INTERCEPTION_MODE", "REDIRECT", "inbound_interception_mode", "REDIRECT"),
        ("ISTIO_INBOUND_TPROXY_MARK", "1337", "tproxy_mark", 1337),
        ("ISTIO_INBOUND_TPROXY_MARK", "0x539", "tproxy_mark", 1337),
        ("ISTIO_INBOUND_TPROXY_ROUTE_TABLE", "133", "tproxy_route_table", 133),
        ("ISTIO_META_DNS_CAPTURE", "true", "capture_dns", True),
        ("ISTIO_META_DNS_CAPTURE", "false", "capture_dns", False),
        ("REDIRECT_DNS", "1", "capture_dns", True),
        ("CAPTURE_ALL_DNS", "T", "capture_all_dns", True),
        ("DROP_INVALID", "True", "drop_invalid", True),
        ("INVALID_DROP", "TRUE", "drop_invalid", True),
        ("PROXY_UID", "1337", "proxy_uid", ["1337"]),
        ("PROXY_UID", "istio-proxy,0", "proxy_uid", ["istio-proxy", "0"]),
        ("PROXY_GID", "1337", "proxy_gid", ["1337"]),
        ("INBOUND_CAPTURE_PORT", "15006", "inbound_capture_port", 15006),
        ("INBOUND_TUNNEL_PORT", "15009", "inbound_tunnel_port", 15009),
        ("ISTIO_OUTBOUND_OWNER_GROUPS", "*", "outbound_owner_groups", ["*"]),
        ("ISTIO_OUTBOUND_OWNER_GROUPS", "java,1001", "outbound_owner_groups", ["java", "1001"]),
        ("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "backup", "exclude_outbound_owner_groups", ["backup"]),
        ("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.0/8", "ipv4_loopback_cidr", "127.0.0.0/8"),
        ("RUN_VALIDATION", "true", "verify", True),
    ],
)
def test_capture_each_variable(variable, value, option, expected):
    options = capture({variable: value}, istio_defaults=False)
    assert options == {option: expected}


def test_every_mapped_variable_is_tested():
    # Keep the parametrised list above complete when a variable is added.
    tested = {
        "ISTIO_INBOUND_PORTS", "ISTIO_LOCAL_EXCLUDE_PORTS", "ISTIO_SERVICE_CIDR", "ISTIO_SERVICE_EXCLUDE_CIDR",
        "ISTIO_OUTBOUND_PORTS", "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "ISTIO_EXCLUDE_INTERFACES",
        "KUBE_VIRT_INTERFACES", "ISTIO_INBOUND_INTERCEPTION_MODE", "ISTIO_INBOUND_TPROXY_MARK",
        "ISTIO_INBOUND_TPROXY_ROUTE_TABLE", "REDIRECT_DNS", "CAPTURE_ALL_DNS", "DROP_INVALID", "PROXY_UID",
        "PROXY_GID", "INBOUND_CAPTURE_PORT", "INBOUND_TUNNEL_PORT", "ISTIO_OUTBOUND_OWNER_GROUPS",
        "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "RUN_VALIDATION",
        "NATIVE_NFTABLES",  # test_native_nftables_selects_the_native_mode
    }
    assert tested == set(ENV_OPTIONS)


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true"}, True),
        ({"REDIRECT_DNS": "true", "ISTIO_META_DNS_CAPTURE": "false"}, False),
        ({"REDIRECT_DNS": "true", "ISTIO_META_DNS_CAPTURE": ""}, True),  # an empty alias is not set
        ({"REDIRECT_DNS": "true"}, True),
    ],
)
def test_dns_alias_overrides_primary(env, expected):
    assert capture(env, istio_defaults=False) == {"capture_dns": expected}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"DROP_INVALID": "false", "INVALID_DROP": "true"}, True),
        ({"DROP_INVALID": "true", "INVALID_DROP": "false"}, False),
        ({"DROP_INVALID": "1"}, True),
    ],
)
def test_drop_invalid_alias_overrides_primary(env, expected):
    assert capture(env, istio_defaults=False) == {"drop_invalid": expected}


def test_alias_bad_value_is_reported_under_its_own_name():
    with pytest.raises(AnsibleFilterError, match="ISTIO_META_DNS_CAPTURE='yes'"):
        capture({"REDIRECT_DNS": "true", "ISTIO_META_DNS_CAPTURE": "yes"})


@pytest.mark.parametrize(
    "variable",
    ["ISTIO_INBOUND_INTERCEPTION_MODE", "ISTIO_INBOUND_TPROXY_MARK", "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
     "INBOUND_CAPTURE_PORT", "INBOUND_TUNNEL_PORT", "CAPTURE_ALL_DNS", "ISTIO_META_DNS_CAPTURE",
     "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "RUN_VALIDATION"],
)
def test_empty_scalar_keeps_the_default(variable):
    assert capture({variable: ""}, istio_defaults=False) == {}
    assert capture({variable: "  "}, istio_defaults=False) == {}


def test_proxy_gid_is_not_invented():
    # Istio sets the gid to the uid string when PROXY_GID is unset; the module's default does the same,
    # so the filter must not emit a gid of its own.
    assert capture({"PROXY_UID": "1500"}, istio_defaults=False) == {"proxy_uid": ["1500"]}


def test_force_iptables_binary_selects_the_backend():
    assert capture({"FORCE_IPTABLES_BINARY": "legacy"}, istio_defaults=False) == {"backend": "legacy"}
    assert capture({"FORCE_IPTABLES_BINARY": "nft"}, istio_defaults=False) == {"backend": "nft"}
    assert capture({"FORCE_IPTABLES_BINARY": ""}, istio_defaults=False) == {}


def test_native_nftables_selects_the_native_mode():
    assert capture({"NATIVE_NFTABLES": "true"}, istio_defaults=False) == {"native_nftables": True}
    assert capture({"NATIVE_NFTABLES": "0"}, istio_defaults=False) == {"native_nftables": False}
    assert capture({"NATIVE_NFTABLES": ""}, istio_defaults=False) == {}


@pytest.mark.parametrize(
    "env",
    [
        {"ENVOY_USER": "envoy"},
        {"DUAL_STACK": "true"},
        {"ISTIO_DUAL_STACK": "false"},
        {"ENVOY_PORT": "15001"},  # ignored by Istio since 1.21
        {"ISTIO_INBOUND_EXCLUDE_PORTS": "22"},  # documented in sidecar.env, never read
        {"ISTIO_CUSTOM_IP_TABLES": "true"},
        {"ISTIO_SERVICE": "foo.bar", "CA_ADDR": "x:15012", "ISTIO_SVC_IP": "10.10.10.10"},
        {"ISTIO_META_MESH_ID": ""},
    ],
)
def test_variables_that_give_no_option(env):
    assert capture(env, istio_defaults=False) == {}


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ISTIO_INBOUND_PORTS": "80,http"}, "ISTIO_INBOUND_PORTS='80,http': inbound_ports='http': not a port"),
        ({"ISTIO_INBOUND_PORTS": "0"}, "ISTIO_INBOUND_PORTS='0': inbound_ports='0': ports are 1 to 65535"),
        ({"ISTIO_INBOUND_PORTS": "65536"}, "inbound_ports='65536': ports are 1 to 65535"),
        ({"ISTIO_INBOUND_PORTS": "*,80"}, "ISTIO_INBOUND_PORTS='*,80': inbound_ports=['*', '80']: '*' cannot be combined"),
        ({"ISTIO_INBOUND_PORTS": "0x50"}, "inbound_ports='0x50': not a port"),
        ({"ISTIO_INBOUND_PORTS": "90:80"}, "inbound_ports='90:80': the range is reversed"),
        ({"ISTIO_INBOUND_PORTS": "80:x"}, "inbound_ports='80:x': not a port or a port range"),
        ({"ISTIO_LOCAL_EXCLUDE_PORTS": "*"}, "ISTIO_LOCAL_EXCLUDE_PORTS='*': exclude_inbound_ports='*': not a port"),
        ({"ISTIO_LOCAL_EXCLUDE_PORTS": "22;15090"}, "exclude_inbound_ports='22;15090': not a port"),
        ({"ISTIO_SERVICE_CIDR": "10.0.0.1"}, "ISTIO_SERVICE_CIDR='10.0.0.1': outbound_ip_ranges='10.0.0.1': a CIDR needs a prefix"),
        ({"ISTIO_SERVICE_CIDR": "10.0.0.0/33"}, "outbound_ip_ranges='10.0.0.0/33': not a CIDR"),
        ({"ISTIO_SERVICE_CIDR": "example.com/8"}, "outbound_ip_ranges='example.com/8': not a CIDR"),
        ({"ISTIO_SERVICE_EXCLUDE_CIDR": "*"}, "ISTIO_SERVICE_EXCLUDE_CIDR='*': exclude_outbound_ip_ranges='*': excluding every"),
        ({"ISTIO_OUTBOUND_PORTS": "-1"}, "ISTIO_OUTBOUND_PORTS='-1'"),
        ({"ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "abc"}, "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE='abc'"),
        ({"ISTIO_EXCLUDE_INTERFACES": "averyveryverylongname"}, "'averyveryverylongname': not an interface name"),
        ({"ISTIO_EXCLUDE_INTERFACES": "eth0:1"}, "ISTIO_EXCLUDE_INTERFACES='eth0:1': exclude_interfaces='eth0:1'"),
        ({"ISTIO_EXCLUDE_INTERFACES": "eth/0"}, "exclude_interfaces='eth/0': not an interface name"),
        ({"KUBE_VIRT_INTERFACES": "docker0,.."}, "KUBE_VIRT_INTERFACES='docker0,..'"),
        ({"ISTIO_INBOUND_INTERCEPTION_MODE": "tproxy"},
         "ISTIO_INBOUND_INTERCEPTION_MODE='tproxy': inbound_interception_mode='tproxy': value of "
         "inbound_interception_mode must be one of: REDIRECT, TPROXY, got: tproxy"),
        ({"ISTIO_INBOUND_TPROXY_MARK": "mark"}, "ISTIO_INBOUND_TPROXY_MARK='mark': tproxy_mark='mark': argument 'tproxy_mark' is of type " + STR_TYPE),
        ({"ISTIO_INBOUND_TPROXY_MARK": "4294967296"}, "tproxy_mark=4294967296: a mark is 1 to 4294967295"),
        ({"ISTIO_INBOUND_TPROXY_MARK": "0"}, "ISTIO_INBOUND_TPROXY_MARK='0': tproxy_mark=0: a mark is 1"),
        ({"ISTIO_INBOUND_TPROXY_MARK": "0xzz"}, "ISTIO_INBOUND_TPROXY_MARK='0xzz': '0xzz' is not a mark"),
        ({"ISTIO_INBOUND_TPROXY_ROUTE_TABLE": "254"}, "tproxy_route_table=254: use a table other than 253 (default), 254 (main)"),
        ({"ISTIO_INBOUND_TPROXY_ROUTE_TABLE": "0"}, "ISTIO_INBOUND_TPROXY_ROUTE_TABLE='0': tproxy_route_table=0"),
        ({"ISTIO_META_DNS_CAPTURE": "yes"}, "ISTIO_META_DNS_CAPTURE='yes': 'yes' is not a boolean"),
        ({"REDIRECT_DNS": "on"}, "REDIRECT_DNS='on'"),
        ({"CAPTURE_ALL_DNS": "2"}, "CAPTURE_ALL_DNS='2'"),
        ({"DROP_INVALID": "enabled"}, "DROP_INVALID='enabled'"),
        ({"PROXY_UID": "1337 1338"}, "PROXY_UID='1337 1338': proxy_uid='1337 1338': not a number, and not a user or group name"),
        ({"PROXY_UID": "99999999999"}, "proxy_uid='99999999999': ids are 0 to 4294967294"),
        ({"PROXY_UID": "4294967295"}, "PROXY_UID='4294967295': proxy_uid='4294967295': ids are 0 to 4294967294"),
        ({"PROXY_GID": "-1"}, "PROXY_GID='-1'"),
        ({"INBOUND_CAPTURE_PORT": "15006,15007"}, "INBOUND_CAPTURE_PORT='15006,15007'"),
        ({"INBOUND_TUNNEL_PORT": "99999"}, "INBOUND_TUNNEL_PORT='99999'"),
        ({"ISTIO_OUTBOUND_OWNER_GROUPS": "*,java"}, "ISTIO_OUTBOUND_OWNER_GROUPS='*,java'"),
        ({"ISTIO_OUTBOUND_OWNER_GROUPS": ",".join(str(n) for n in range(65))}, "outbound_owner_groups=65: at most 64 groups"),
        ({"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "*"}, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE='*': exclude_outbound_owner_groups='*'"),
        # Istio would write a bare RETURN (no outbound capture at all); the module refuses an empty include list.
        ({"ISTIO_OUTBOUND_OWNER_GROUPS": ""}, "ISTIO_OUTBOUND_OWNER_GROUPS='': outbound_owner_groups=[]: use '*'"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.0/8"}, "ipv4_loopback_cidr='10.0.0.0/8': must be an IPv4 loopback"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.0/7"}, "ipv4_loopback_cidr='127.0.0.0/7': must be an IPv4 loopback"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1"}, "ipv4_loopback_cidr='127.0.0.1': must be an IPv4 loopback"),
        ({"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "::1/128"}, "ipv4_loopback_cidr='::1/128': must be an IPv4 loopback"),
        ({"RUN_VALIDATION": "maybe"}, "RUN_VALIDATION='maybe'"),
        ({"ENVOY_USER": "bad user"}, "ENVOY_USER='bad user' is not a user name"),
        ({"DUAL_STACK": "yes"}, "DUAL_STACK='yes'"),
        ({"ISTIO_DUAL_STACK": "x"}, "ISTIO_DUAL_STACK='x'"),
        ({"FORCE_IPTABLES_BINARY": "iptables"}, "FORCE_IPTABLES_BINARY='iptables'"),
        ({"NATIVE_NFTABLES": "sure"}, "NATIVE_NFTABLES='sure'"),
    ],
)
def test_capture_errors_name_variable_and_value(env, message):
    with pytest.raises(AnsibleFilterError) as exc:
        capture(env)
    assert str(exc.value).startswith("cluster_env_capture: cluster.env: ")
    assert message in str(exc.value)


def test_capture_rejects_non_dict():
    with pytest.raises(AnsibleFilterError, match="expected the dict cluster_env_parse returns"):
        capture(["A"])


def test_capture_bad_text_fails_as_parse_error():
    with pytest.raises(AnsibleFilterError, match="cluster_env_parse"):
        capture("not an assignment\n")


def test_tproxy_vm_env():
    env = cluster_env_parse(
        GOLDEN
        + "ISTIO_INBOUND_INTERCEPTION_MODE='TPROXY'\nISTIO_INBOUND_TPROXY_MARK='1337'\n"
        + "ISTIO_INBOUND_TPROXY_ROUTE_TABLE='133'\nISTIO_INBOUND_PORTS='8080,9090'\n"
    )
    options = capture(env)
    assert options["inbound_interception_mode"] == "TPROXY"
    assert options["inbound_ports"] == ["8080", "9090"]
    assert options["tproxy_mark"] == 1337
    assert options["tproxy_route_table"] == 133


# ---------------------------------------------------------------------------------------------
# capture_options


def test_options_normalised():
    assert capture_options(
        {
            "inbound_ports": "8080,9090,",
            "exclude_inbound_ports": [22, "15090"],
            "outbound_ip_ranges": "*",
            "proxy_port": "15001",
            "proxy_uid": 1337,
            "capture_dns": "yes",
            "ipv6": False,
            "dns_servers": ["198.18.0.53", "2001:db8::53"],
            "tproxy_mark": "1337",
            "backend": "legacy",
            "verify": None,
        }
    ) == {
        "inbound_ports": ["8080", "9090"],
        "exclude_inbound_ports": ["22", "15090"],
        "outbound_ip_ranges": ["*"],
        "proxy_port": 15001,
        "proxy_uid": ["1337"],
        "capture_dns": True,
        "ipv6": False,
        "dns_servers": ["198.18.0.53", "2001:db8::53"],
        "tproxy_mark": 1337,
        "backend": "legacy",
    }


def test_options_empty_lists_stay_empty():
    assert capture_options({"inbound_ports": [], "dns_servers": "", "outbound_ip_ranges": []}) == {
        "inbound_ports": [],
        "dns_servers": [],
        "outbound_ip_ranges": [],
    }


def test_options_none_and_empty():
    assert capture_options(None) == {}
    assert capture_options({}) == {}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"inbound_port": "80"}, "unknown capture option(s) inbound_port; known options: backend, capture_all_dns"),
        ({"netns": "x", "state": "absent"}, "unknown capture option(s) netns, state"),
        ({"proxy_port": 0}, "capture option proxy_port=0: ports are 1 to 65535"),
        ({"proxy_port": True}, "capture option proxy_port=True"),
        ({"proxy_port": "15001,15002"}, "capture option proxy_port='15001,15002'"),
        ({"inbound_ports": ["*", "80"]}, "inbound_ports=['*', '80']: '*' cannot be combined"),
        ({"inbound_ports": [{"port": 80}]}, "capture option inbound_ports=\"{'port': 80}\": not a port"),
        ({"inbound_ports": True}, "capture option inbound_ports='True': not a port"),
        ({"outbound_ip_ranges": ["10.0.0.1"]}, "outbound_ip_ranges='10.0.0.1': a CIDR needs a prefix length"),
        ({"exclude_outbound_ip_ranges": "*"}, "exclude_outbound_ip_ranges='*': excluding every destination"),
        ({"dns_servers": ["198.18.0.0/24"]}, "dns_servers='198.18.0.0/24': not an IP address"),
        ({"dns_servers": ["fe80::53%eth0"]}, "dns_servers='fe80::53%eth0': a zone-scoped address"),
        ({"exclude_outbound_ip_ranges": ["fe80::1%eth0/64"]}, "exclude_outbound_ip_ranges='fe80::1%eth0/64': a zone-scoped"),
        ({"capture_dns": "perhaps"},
         "capture option capture_dns='perhaps': argument 'capture_dns' is of type " + STR_TYPE + " and we were unable to convert to bool"),
        ({"inbound_interception_mode": "redirect"}, "inbound_interception_mode='redirect': value of inbound_interception_mode must be one of"),
        # The example: the module refuses it, so the filter does, before any change on the target.
        ({"inbound_interception_mode": "TPROXY", "tproxy_mark": 0}, "capture option tproxy_mark=0: a mark is 1 to 4294967295"),
        ({"tproxy_mark": "0x539"}, "capture option tproxy_mark='0x539': argument 'tproxy_mark' is of type " + STR_TYPE),
        ({"proxy_uid": ["4294967295"]}, "capture option proxy_uid='4294967295': ids are 0 to 4294967294"),
        ({"proxy_gid": "4294967296"}, "capture option proxy_gid='4294967296': ids are 0 to 4294967294"),
        ({"exclude_outbound_owner_groups": ["4294967296"]}, "exclude_outbound_owner_groups='4294967296': ids are 0"),
        ({"exclude_interfaces": ["eth0:1"]}, "capture option exclude_interfaces='eth0:1': not an interface name"),
        ({"proxy_uid": "bad user"}, "capture option proxy_uid='bad user': not a number, and not a user or group name"),
        ({"outbound_owner_groups": []}, "capture option outbound_owner_groups=[]: use '*'"),
        ({"verify": "maybe"}, "capture option verify='maybe'"),
        ({"backend": "iptables"}, "capture option backend='iptables': value of backend must be one of: auto, nft, legacy, got: iptables"),
        ({"ipv4_loopback_cidr": "127.0.0.1"}, "ipv4_loopback_cidr='127.0.0.1': must be an IPv4 loopback"),
        ({"tproxy_route_table": 255}, "tproxy_route_table=255: use a table other than"),
        ({"exclude_interfaces": ["eth 0"]}, "exclude_interfaces='eth 0': not an interface name"),
    ],
)
def test_options_errors(options, message):
    with pytest.raises(AnsibleFilterError) as exc:
        capture_options(options)
    assert str(exc.value).startswith("capture_options: ")
    assert message in str(exc.value)


def test_options_rejects_non_dict():
    with pytest.raises(AnsibleFilterError, match="capture options must be a dict, got list"):
        capture_options(["inbound_ports"])


def test_capture_output_passes_capture_options():
    # What cluster_env_capture returns is valid input for capture_options (the role chains them).
    options = capture(GOLDEN)
    assert capture_options(options) == options


def test_options_accept_what_the_module_accepts():
    # The largest ids, iptables' wildcard, names that only resolve on the target, IPv6 without a zone.
    assert capture_options({
        "proxy_uid": "4294967294", "proxy_gid": ["istio-proxy"], "exclude_interfaces": "veth+,a+b",
        "outbound_owner_groups": "apps,0", "dns_servers": ["2001:db8::53"], "tproxy_mark": 4294967295,
    }) == {
        "proxy_uid": ["4294967294"], "proxy_gid": ["istio-proxy"], "exclude_interfaces": ["veth+", "a+b"],
        "outbound_owner_groups": ["apps", "0"], "dns_servers": ["2001:db8::53"], "tproxy_mark": 4294967295,
    }


def test_option_specs_are_the_modules():
    # The filter checks with the module's own spec: every option but where it acts and whether.
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import argument_spec

    spec = argument_spec()
    assert OPTION_SPECS == {name: option for name, option in spec.items() if name not in ("netns", "state")}
