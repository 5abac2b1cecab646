# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Module parameters to ``CaptureOptions``: Istio-style lists, validation, and clear errors. No I/O.

Everything that needs the target (user and group names, resolv.conf, IPv6 detection) is passed
in, so every rule about what is valid lives here and is unit-tested.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6, CaptureOptions, address_text
from ansible_collections.meshops.sidecar.plugins.module_utils._system.kernel_names import ifname_error

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# An IPv4 CIDR already in the form ipaddress would print: taken as it is (thousands of exclusions).
_PLAIN_IPV4_CIDR = re.compile(r"%s(?:\.%s){3}/(?:3[0-2]|[12]?[0-9])" % (_OCTET, _OCTET))
MAX_OWNER_GROUPS = 64  # Istio's limit for ISTIO_OUTBOUND_OWNER_GROUPS
# Tables the kernel itself uses for routing (local, main, default); a TPROXY table must be another.
RESERVED_ROUTE_TABLES = frozenset((253, 254, 255))
# uid_t/gid_t: (uid_t)-1 = 4294967295 is the kernel's "no id" (setresuid's "unchanged"), never an owner.
MAX_ID = 4294967294
# shadow-utils' useradd/groupadd rule: [A-Za-z0-9_.][A-Za-z0-9_.-]*$?, not all digits, not . or ..
_USER_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?")
USER_NAME_MAX = 32  # useradd's limit (the size of utmp's ut_user)

# The one schema of the capture options: what the rules are made of. The module's argument spec,
# the role's meta/argument_specs.yml (checked by a unit test) and the controller-side filters all
# come from here. Names, types and defaults are the public contract.
_STR_LIST = dict(type="list", elements="str")
CAPTURE_OPTION_SPECS = {
    "proxy_port": dict(type="int", default=15001),
    "inbound_capture_port": dict(type="int", default=15006),
    "inbound_tunnel_port": dict(type="int", default=15008),
    "proxy_uid": dict(_STR_LIST, default=["1337"]),
    "proxy_gid": dict(_STR_LIST),
    "inbound_interception_mode": dict(type="str", default="REDIRECT", choices=["REDIRECT", "TPROXY"]),
    "tproxy_mark": dict(type="int", default=1337),
    "tproxy_route_table": dict(type="int", default=133),
    "inbound_ports": dict(_STR_LIST, default=["*"]),
    "exclude_inbound_ports": dict(_STR_LIST, default=["15090", "15021", "15020"]),
    "outbound_ip_ranges": dict(_STR_LIST, default=["*"]),
    "exclude_outbound_ip_ranges": dict(_STR_LIST, default=[]),
    "outbound_ports": dict(_STR_LIST, default=[]),
    "exclude_outbound_ports": dict(_STR_LIST, default=[]),
    "exclude_interfaces": dict(_STR_LIST, default=[]),
    "reroute_virtual_interfaces": dict(_STR_LIST, default=[]),
    "outbound_owner_groups": dict(_STR_LIST, default=["*"]),
    "exclude_outbound_owner_groups": dict(_STR_LIST, default=[]),
    "capture_dns": dict(type="bool", default=False),
    "capture_all_dns": dict(type="bool", default=False),
    "dns_servers": dict(_STR_LIST),
    "ipv6": dict(type="bool"),
    "ipv4_loopback_cidr": dict(type="str", default="127.0.0.1/32"),
    "drop_invalid": dict(type="bool", default=False),
    # Istio's --native-nftables: its inet tables instead of iptables rules (see _capture.nft_plan).
    "native_nftables": dict(type="bool", default=False),
    # Beyond Istio: each CIDR list as one set lookup per family (see _capture.cidr_sets).
    "cidr_sets": dict(type="bool", default=False),
    # Beyond Istio: connections open before the rules (picked up by conntrack mid-stream) keep going
    # where they went (see _capture.plan.KEEP_EXISTING_ARGS).
    "keep_existing_connections": dict(type="bool", default=False),
}
# How a task applies the rules and checks them afterwards: options of a run, not of the rules.
BACKEND_SPEC = dict(type="str", default="auto", choices=["auto", "nft", "legacy"])
VERIFY_SPEC = dict(type="bool", default=False)
# Where the module acts, and whether the rules are wanted at all.
TARGET_SPECS = {
    "netns": dict(type="str"),
    "state": dict(type="str", default="present", choices=["present", "absent"]),
}

LIST_OPTIONS = tuple(name for name, spec in CAPTURE_OPTION_SPECS.items() if spec["type"] == "list")


def argument_spec():
    """The argument spec of ``istio_redirect_chains``: a fresh copy, since AnsibleModule may change it."""
    spec = {name: dict(value) for name, value in TARGET_SPECS.items()}
    spec["backend"] = dict(BACKEND_SPEC)
    spec.update((name, dict(value)) for name, value in CAPTURE_OPTION_SPECS.items())
    spec["verify"] = dict(VERIFY_SPEC)
    for value in spec.values():
        if isinstance(value.get("default"), list):
            value["default"] = list(value["default"])
    return spec


def user_name_error(name):
    """Why ``name`` cannot be a user or group name useradd/groupadd create, or None when it can."""
    if not isinstance(name, str) or name == "":
        return "must be a non-empty string"
    if len(name) > USER_NAME_MAX:
        return "is longer than %d characters" % USER_NAME_MAX
    if name.isdigit() or name in (".", "..") or not _USER_NAME.fullmatch(name):
        return ("is not a user name: letters, digits, '_', '.', '-' (not first), an optional final '$', "
                "not all digits")
    return None


class OptionError(ValueError):
    """An option has a value the module cannot use; the message names both."""

    def __init__(self, option, value, reason):
        super().__init__("%s=%r: %s" % (option, value, reason))
        self.option = option


def items(value):
    """An Istio-style list: a list or a comma-separated string; blanks dropped; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    return [str(item).strip() for item in value if str(item).strip()]


def _port(option, text):
    """A port ``N`` or a range ``N:M`` (``N-M`` is accepted and written as iptables writes it)."""
    match = re.fullmatch(r"([0-9]+)(?:[:-]([0-9]+))?", text)
    if not match:
        raise OptionError(option, text, "not a port or a port range like 8000:8100")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise OptionError(option, text, "ports are 1 to 65535")
    if low > high:
        raise OptionError(option, text, "the range is reversed")
    return str(low) if match.group(2) is None else "%d:%d" % (low, high)


def _ports(option, values):
    return tuple(_port(option, text) for text in values)


def _single_port(option, value):
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise OptionError(option, value, "ports are 1 to 65535")
    return value


def _cidr(option, text):
    """``(family, text)`` as Istio writes it: the address as given (not masked), in canonical notation."""
    if _PLAIN_IPV4_CIDR.fullmatch(text):
        return IPV4, text
    if "%" in text:
        raise OptionError(option, text, "a zone-scoped address (%zone) cannot be matched by a rule; drop the zone")
    if "/" not in text:
        raise OptionError(option, text, "a CIDR needs a prefix length, e.g. %s/32" % text)
    try:
        interface = ipaddress.ip_interface(text)
    except ValueError as exc:
        raise OptionError(option, text, "not a CIDR (%s)" % exc)
    family = IPV4 if interface.version == 4 else IPV6
    return family, "%s/%d" % (address_text(interface.ip), interface.network.prefixlen)


def _address(option, text):
    if "%" in text:
        raise OptionError(option, text, "a zone-scoped address (%zone) cannot be matched by a rule; drop the zone")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise OptionError(option, text, "not an IP address")
    return (IPV4 if address.version == 4 else IPV6), address_text(address)


def _interface(option, name):
    # iptables' trailing '+' (a prefix wildcard) is a character the kernel allows in a name anyway.
    problem = ifname_error(name)
    if problem:
        raise OptionError(option, name, "not an interface name: it " + problem)
    # The kernel allows these, the rule writers do not: python-iptables reads a leading '!' as "not"
    # (every other interface would escape capture), iptables-restore drops quotes and backslashes.
    if name.startswith("!"):
        raise OptionError(option, name, "an interface name starting with '!' cannot be written as a rule "
                                        "(iptables reads it as a negation)")
    if any(char in name for char in "\"'\\"):
        raise OptionError(option, name, "an interface name with a quote or a backslash cannot be written as a rule")
    return name


def _ids(option, values, resolve):
    """Numbers are taken as they are (as Istio does); names must resolve on the target.

    ``resolve(name)`` returns the id, None when there is no such name, or raises ``ValueError``
    saying why the name cannot be one (the controller's check, which has no user database).
    """
    resolved = []
    for value in values:
        if value.isascii() and value.isdigit():
            number = int(value)
            if number > MAX_ID:
                raise OptionError(option, value, "ids are 0 to %d (4294967295 is the kernel's 'no id')" % MAX_ID)
            resolved.append(str(number))
            continue
        try:
            number = resolve(value)
        except ValueError as exc:
            raise OptionError(option, value, str(exc))
        if number is None:
            raise OptionError(option, value, "no such %s on the target" % ("user" if option == "proxy_uid" else "group"))
        resolved.append(str(number))
    return tuple(resolved)


def _star_or(option, values, parse_each):
    """``*`` (alone), or a list parsed item by item; an empty list means none."""
    if "*" in values:
        if values != ["*"]:
            raise OptionError(option, values, "'*' cannot be combined with other values")
        return "*"
    return tuple(parse_each(option, value) for value in values)


def _loopback_cidr(value):
    option = "ipv4_loopback_cidr"
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise OptionError(option, value, "not an IPv4 CIDR")
    if "/" not in value or network.version != 4 or not network.is_loopback or not 8 <= network.prefixlen <= 32:
        raise OptionError(option, value, "must be an IPv4 loopback prefix such as 127.0.0.1/32, mask 8 to 32")
    return value


def build_options(params, resolve_user, resolve_group, default_dns_servers, detect_ipv6):
    """Validate module ``params`` and return ``CaptureOptions``; raise ``OptionError`` on the first bad value.

    ``resolve_user(name)`` / ``resolve_group(name)`` return an id or None; ``default_dns_servers()``
    and ``detect_ipv6()`` are only called when the options leave those to the target.
    """
    lists = {name: items(params.get(name)) for name in LIST_OPTIONS}
    for name in ("proxy_port", "inbound_capture_port", "inbound_tunnel_port"):
        _single_port(name, params[name])

    proxy_uid = lists["proxy_uid"] if lists["proxy_uid"] is not None else ["1337"]
    if not proxy_uid:
        raise OptionError("proxy_uid", params.get("proxy_uid"), "at least one uid is needed, or the proxy captures itself")
    # Istio's default for the gid is the uid text itself (a name then resolves as a group).
    proxy_gid = lists["proxy_gid"] if lists["proxy_gid"] is not None else proxy_uid

    mark, table = params["tproxy_mark"], params["tproxy_route_table"]
    if not 1 <= mark <= 0xFFFFFFFF:
        raise OptionError("tproxy_mark", mark, "a mark is 1 to 4294967295")
    if not 1 <= table <= 0xFFFFFFFF or table in RESERVED_ROUTE_TABLES:
        raise OptionError("tproxy_route_table", table, "use a table other than 253 (default), 254 (main), 255 (local)")

    owner_groups = _star_or("outbound_owner_groups", lists["outbound_owner_groups"], lambda o, v: v)
    if owner_groups != "*":
        if not owner_groups:
            raise OptionError("outbound_owner_groups", [], "use '*' to capture every group, or name at least one")
        if len(owner_groups) > MAX_OWNER_GROUPS:
            raise OptionError("outbound_owner_groups", len(owner_groups), "at most %d groups" % MAX_OWNER_GROUPS)
        owner_groups = _ids("outbound_owner_groups", list(owner_groups), resolve_group)

    if "*" in lists["exclude_outbound_ip_ranges"]:
        raise OptionError("exclude_outbound_ip_ranges", "*", "excluding every destination is not capture; "
                          "use outbound_ip_ranges=[] instead")

    capture_dns = params["capture_dns"]
    capture_all_dns = params["capture_all_dns"]
    dns_servers = lists["dns_servers"]
    if capture_dns and not capture_all_dns and dns_servers is None:
        dns_servers = items(default_dns_servers())
    dns = tuple(_address("dns_servers", text) for text in (dns_servers or []))

    ipv6 = params["ipv6"]
    if ipv6 is None:
        ipv6 = bool(detect_ipv6())

    return CaptureOptions(
        proxy_port=params["proxy_port"],
        inbound_capture_port=params["inbound_capture_port"],
        inbound_tunnel_port=params["inbound_tunnel_port"],
        proxy_uids=_ids("proxy_uid", proxy_uid, resolve_user),
        proxy_gids=_ids("proxy_gid", proxy_gid, resolve_group),
        inbound_interception_mode=params["inbound_interception_mode"],
        tproxy_mark=mark,
        tproxy_route_table=table,
        inbound_ports=_star_or("inbound_ports", lists["inbound_ports"], _port),
        exclude_inbound_ports=_ports("exclude_inbound_ports", lists["exclude_inbound_ports"]),
        outbound_ip_ranges=_star_or("outbound_ip_ranges", lists["outbound_ip_ranges"], _cidr),
        exclude_outbound_ip_ranges=tuple(_cidr("exclude_outbound_ip_ranges", c)
                                         for c in lists["exclude_outbound_ip_ranges"]),
        outbound_ports=_ports("outbound_ports", lists["outbound_ports"]),
        exclude_outbound_ports=_ports("exclude_outbound_ports", lists["exclude_outbound_ports"]),
        exclude_interfaces=tuple(_interface("exclude_interfaces", i) for i in lists["exclude_interfaces"]),
        reroute_virtual_interfaces=tuple(_interface("reroute_virtual_interfaces", i)
                                         for i in lists["reroute_virtual_interfaces"]),
        outbound_owner_groups=owner_groups,
        exclude_outbound_owner_groups=_ids("exclude_outbound_owner_groups",
                                           lists["exclude_outbound_owner_groups"], resolve_group),
        capture_dns=capture_dns,
        capture_all_dns=capture_all_dns,
        dns_servers=dns,
        ipv6=ipv6,
        ipv4_loopback_cidr=_loopback_cidr(params["ipv4_loopback_cidr"]),
        drop_invalid=params["drop_invalid"],
        native_nftables=params["native_nftables"],
        cidr_sets=params["cidr_sets"],
        keep_existing_connections=params["keep_existing_connections"],
    )


def has_global_ipv6(if_inet6_text):
    """True when ``/proc/net/if_inet6`` lists a global-scope address (ULA included, as Istio's dual stack)."""
    for line in if_inet6_text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[3] == "00":
            return True
    return False
