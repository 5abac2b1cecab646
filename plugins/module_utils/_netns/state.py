# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""Named network namespaces: desired state, current state, and the plan between them.

Everything here is pure: no ``AnsibleModule``, no commands, no files. ``_netns.system`` reads the
machine into a :class:`Current`, this module compares it with the :class:`Desired` state built
from the module options, and returns a :class:`Plan`: the ``before``/``after`` views shown as the
diff, and the ordered steps that turn one into the other. ``changed`` is ``before != after``, and
the plan has steps exactly when the two views differ.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field

from ansible_collections.meshops.sidecar.plugins.module_utils._system.kernel_names import ifname_error
from ansible_collections.meshops.sidecar.plugins.module_utils._system.kernel_names import netns_name_error as name_error
from ansible_collections.meshops.sidecar.plugins.module_utils._system.namespace import path_of

# IFNAMSIZ includes the terminating NUL: interface names have at most 15 bytes.
ETC_NETNS_DIR = "/etc/netns"
PROC_SYS = "/proc/sys"
RESOLV_CONF_HEADER = (
    "# Nameservers of this network namespace, written by meshops.sidecar.netns.\n"
    "# 'ip netns exec' shows this file as /etc/resolv.conf. Local changes are overwritten.\n"
)
# glibc's resolver reads at most this many nameserver lines (MAXNS).
RESOLVER_MAXNS = 3
# Per-interface sysctl directories: net.<family>.<conf|neigh>.<interface>.<setting>.
_PER_INTERFACE = (("net", "ipv4", "conf"), ("net", "ipv6", "conf"), ("net", "ipv4", "neigh"), ("net", "ipv6", "neigh"))
_ALWAYS_THERE = ("all", "default", "lo")


class ValidationError(Exception):
    """The module options are wrong. ``errors`` lists every problem, each naming option and value."""

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


class StateError(Exception):
    """The machine is in a state the module refuses to change (it would destroy something not its own)."""


# --------------------------------------------------------------------------------------------
# Desired state (from the module options)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Uplink:
    host_interface: str
    interface: str
    host_addresses: tuple
    addresses: tuple
    default_route: bool
    peer_netns: str = None  # the "host" end lives in this named namespace instead of the host's

    @property
    def host_ip(self):
        """``ip`` as it acts on the side that holds O(uplink.host_interface)."""
        return ["ip"] if self.peer_netns is None else ["ip", "-n", self.peer_netns]


@dataclass(frozen=True)
class Sysctl:
    key: str  # as the user wrote it: net.ipv4.ip_forward or net/ipv4/conf/eth0.100/forwarding
    parts: tuple  # ("net", "ipv4", "ip_forward")
    value: str  # the value given, as a string

    @property
    def path(self):
        return os.path.join(PROC_SYS, *self.parts)


@dataclass(frozen=True)
class Desired:
    name: str
    state: str = "present"
    loopback: bool = True
    uplink: Uplink = None
    nameservers: tuple = None  # None: /etc/netns/NAME/resolv.conf is not managed
    sysctls: tuple = ()  # of Sysctl, in the order given

    @property
    def path(self):
        return path_of(self.name)


def _address_list(option, values, errors):
    result = []
    for index, value in enumerate(values or []):
        label = "%s[%d]=%r" % (option, index, value)
        if not isinstance(value, str) or "/" not in value:
            errors.append("%s is not an IP address with a prefix length (CIDR), such as 198.18.0.2/30" % label)
            continue
        try:
            iface = ipaddress.ip_interface(value.strip())
        except ValueError as exc:
            errors.append("%s is not a valid CIDR: %s" % (label, exc))
            continue
        if iface.ip.is_unspecified or iface.ip.is_multicast or iface.ip.is_loopback:
            errors.append("%s is not a usable unicast address" % label)
            continue
        clash = [other for other in result if other.ip == iface.ip]
        if clash:
            errors.append("%s repeats the address %s" % (label, clash[0]))
            continue
        result.append(iface)
    return tuple(result)


def sysctl_parts(key):
    """Split a sysctl name (dots, or slashes when an interface name has a dot) into path parts."""
    if not isinstance(key, str) or key == "":
        raise ValueError("is not a sysctl name")
    sep = "/" if "/" in key else "."
    parts = tuple(key.split(sep))
    if parts[0] != "net":
        raise ValueError("is not a net.* sysctl; only those belong to a network namespace")
    if len(parts) < 3 or any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise ValueError("is not a valid sysctl name")
    return parts


def sysctl_value(value):
    """The string to write for a sysctl value given as a string, number, boolean or list."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(item, (int, str)) and not isinstance(item, bool) for item in value):
        value = " ".join(str(item) for item in value)
    if not isinstance(value, str):
        raise ValueError("must be a string, an integer, a boolean or a list of those")
    value = value.strip()
    if value == "":
        raise ValueError("must not be empty")
    if "\n" in value or "\0" in value:
        raise ValueError("must be a single line")
    return value


def normalize_sysctl(text):
    """A sysctl value as compared: the kernel separates fields by tabs, users by spaces."""
    return None if text is None else " ".join(text.split())


def validate(params):
    """Check the module options and return the :class:`Desired` state, or raise :class:`ValidationError`.

    Every problem is reported at once; nothing on the machine has been looked at yet.
    """
    errors = []
    name = params.get("name")
    problem = name_error(name)
    if problem:
        errors.append("name=%r %s" % (name, problem))

    uplink = None
    raw = params.get("uplink")
    if raw is not None:
        host_interface = raw.get("host_interface")
        interface = raw.get("interface") or "eth0"
        for option, value in (("uplink.host_interface", host_interface), ("uplink.interface", interface)):
            problem = ifname_error(value)
            if problem:
                errors.append("%s=%r %s" % (option, value, problem))
        if interface == "lo":
            errors.append("uplink.interface='lo' is the loopback interface of every namespace; choose another name")
        host_addresses = _address_list("uplink.host_addresses", raw.get("host_addresses"), errors)
        addresses = _address_list("uplink.addresses", raw.get("addresses"), errors)
        for index, iface in enumerate(addresses):
            if any(other.ip == iface.ip for other in host_addresses):
                errors.append("uplink.addresses[%d]=%r is also in uplink.host_addresses" % (index, str(iface)))
        peer_netns = raw.get("peer_netns")
        if peer_netns is not None:
            problem = name_error(peer_netns)
            if problem:
                errors.append("uplink.peer_netns=%r %s" % (peer_netns, problem))
            elif peer_netns == name:
                errors.append("uplink.peer_netns=%r is the namespace itself; name another one" % peer_netns)
        default_route = raw.get("default_route")
        uplink = Uplink(
            host_interface=host_interface,
            interface=interface,
            host_addresses=host_addresses,
            addresses=addresses,
            default_route=True if default_route is None else bool(default_route),
            peer_netns=peer_netns,
        )

    nameservers = params.get("nameservers")
    if nameservers is not None:
        checked = []
        for index, value in enumerate(nameservers):
            try:
                address = ipaddress.ip_address(value.strip() if isinstance(value, str) else value)
            except ValueError:
                errors.append("nameservers[%d]=%r is not an IP address" % (index, value))
                continue
            if str(address) in checked:
                errors.append("nameservers[%d]=%r repeats an earlier nameserver" % (index, value))
                continue
            checked.append(str(address))
        nameservers = tuple(checked)

    sysctls = []
    seen = {}
    for key, value in (params.get("sysctls") or {}).items():
        try:
            parts = sysctl_parts(key)
        except ValueError as exc:
            errors.append("sysctls key %r %s" % (key, exc))
            continue
        try:
            text = sysctl_value(value)
        except ValueError as exc:
            errors.append("sysctls[%r]=%r %s" % (key, value, exc))
            continue
        if parts in seen:
            errors.append("sysctls[%r] names the same sysctl as sysctls[%r]" % (key, seen[parts]))
            continue
        seen[parts] = key
        sysctls.append(Sysctl(key=key, parts=parts, value=text))

    if errors:
        raise ValidationError(errors)
    return Desired(
        name=name,
        state=params.get("state") or "present",
        loopback=True if params.get("loopback") is None else bool(params.get("loopback")),
        uplink=uplink,
        nameservers=nameservers,
        sysctls=tuple(sysctls),
    )


# --------------------------------------------------------------------------------------------
# Sysctls: which path to try in a scratch namespace, and what the kernel made of the values
# --------------------------------------------------------------------------------------------


def _interface_of(parts):
    if len(parts) >= 5 and parts[:3] in _PER_INTERFACE:
        return parts[3]
    return None


def sysctl_probes(desired, interfaces):
    """Where each sysctl is tried in a fresh, empty network namespace, and the errors found meanwhile.

    A fresh namespace has the same net.* sysctls as the target, except per-interface ones: it only has
    ``lo``. A per-interface sysctl is tried on ``lo`` instead, provided that the interface is (or will be)
    in the namespace: one of ``interfaces`` (its current ones plus the uplink).

    Returns ``({key: (path, value)}, [error, ...])``.
    """
    probes = {}
    errors = []
    for sysctl in desired.sysctls:
        parts = sysctl.parts
        interface = _interface_of(parts)
        if interface is not None and interface not in _ALWAYS_THERE:
            if interface not in interfaces:
                errors.append(
                    "sysctls key %r is unknown: network namespace %r has no interface %r (it has: %s)"
                    % (sysctl.key, desired.name, interface, ", ".join(sorted(set(interfaces) | {"lo"})))
                )
                continue
            parts = parts[:3] + ("lo",) + parts[4:]
        probes[sysctl.key] = (os.path.join(PROC_SYS, *parts), sysctl.value)
    return probes, errors


def sysctl_results(desired, results):
    """Turn scratch-namespace results into the values to compare, as the kernel prints them.

    ``results`` maps each probed key to ``{"value": printed}`` or ``{"errno": n, "error": text}``.
    Returns ``({key: normalized value}, [error, ...])``.
    """
    wanted = {}
    errors = []
    for sysctl in desired.sysctls:
        result = results.get(sysctl.key)
        if result is None:
            continue
        label = "sysctls[%r]=%r" % (sysctl.key, sysctl.value)
        if "value" in result:
            wanted[sysctl.key] = normalize_sysctl(result["value"])
        elif result.get("errno") == 2:  # ENOENT
            errors.append("sysctls key %r is unknown: there is no %s in a network namespace" % (sysctl.key, sysctl.path))
        elif result.get("errno") in (1, 13):  # EPERM, EACCES
            errors.append("%s cannot be set: it is read-only inside a network namespace" % label)
        else:
            errors.append("%s is refused by the kernel: %s" % (label, result.get("error")))
    return wanted, errors


# --------------------------------------------------------------------------------------------
# resolv.conf
# --------------------------------------------------------------------------------------------


def resolv_conf_path(name, root=None):
    return os.path.join(root or ETC_NETNS_DIR, name, "resolv.conf")


def render_resolv_conf(nameservers):
    """The whole content of /etc/netns/NAME/resolv.conf for these nameservers."""
    return RESOLV_CONF_HEADER + "".join("nameserver %s\n" % server for server in nameservers)


# --------------------------------------------------------------------------------------------
# Current state (parsed from `ip -json`)
# --------------------------------------------------------------------------------------------


@dataclass
class Address:
    interface: object  # ipaddress.IPv4Interface / IPv6Interface
    scope: str = "global"

    @property
    def link_local(self):
        return self.interface.version == 6 and self.interface.ip.is_link_local

    def __str__(self):
        return str(self.interface)


@dataclass
class Link:
    name: str
    ifindex: int
    kind: str = None  # "veth", "loopback", "dummy", ... (None: a plain device)
    up: bool = False
    operstate: str = "unknown"
    link_index: int = None  # veth: ifindex of the peer, in the peer's namespace
    link_netnsid: int = None  # veth: namespace of the peer, as this namespace numbers it; None: same one
    addresses: list = field(default_factory=list)

    @property
    def state(self):
        return "up" if self.up else "down"

    def describe(self):
        return "a %s device" % (self.kind or "network")


@dataclass
class Route:
    family: int  # 4 or 6
    gateway: str = None
    dev: str = None
    metric: int = None
    type: str = None  # None for unicast; "unreachable", "blackhole", ...
    multipath: bool = False

    def __str__(self):
        words = [self.type] if self.type else []
        words.append("default")
        if self.multipath:
            words.append("multipath")
        if self.gateway:
            words.extend(["via", self.gateway])
        if self.dev:
            words.extend(["dev", self.dev])
        return " ".join(words)


def _json(text):
    text = (text or "").strip()
    return json.loads(text) if text else []


def parse_links(text):
    """Links with their addresses from ``ip -json -d addr show`` (or ``link show``)."""
    links = []
    for item in _json(text):
        kind = (item.get("linkinfo") or {}).get("info_kind")
        if kind is None and item.get("link_type") == "loopback":
            kind = "loopback"
        addresses = []
        for info in item.get("addr_info") or []:
            if info.get("family") not in ("inet", "inet6") or "local" not in info:
                continue
            address = ipaddress.ip_interface("%s/%s" % (info["local"], info.get("prefixlen", 128)))
            addresses.append(Address(address, info.get("scope", "global")))
        links.append(
            Link(
                name=item["ifname"],
                ifindex=item["ifindex"],
                kind=kind,
                up="UP" in (item.get("flags") or []),
                operstate=str(item.get("operstate", "unknown")).lower(),
                link_index=item.get("link_index"),
                link_netnsid=item.get("link_netnsid"),
                addresses=addresses,
            )
        )
    return links


def parse_routes(text, family):
    """Default routes from ``ip -json -4|-6 route show table main default``."""
    routes = []
    for item in _json(text):
        if item.get("dst") != "default":
            continue
        route_type = item.get("type")
        routes.append(
            Route(
                family=family,
                gateway=item.get("gateway"),
                dev=item.get("dev"),
                metric=item.get("metric"),
                type=None if route_type in (None, "unicast") else route_type,
                multipath="nexthops" in item or "nhid" in item,
            )
        )
    return routes


def parse_netns_ids(text):
    """``{name: nsid or None}`` from ``ip -json netns list`` (the host's numbering of each namespace)."""
    return {item["name"]: item.get("id") for item in _json(text) if "name" in item}


@dataclass
class Current:
    exists: bool = False  # a live namespace is mounted on /run/netns/NAME
    stale_file: bool = False  # /run/netns/NAME is there, but is not a mounted namespace
    links: list = field(default_factory=list)  # inside the namespace
    routes: list = field(default_factory=list)  # default routes inside, table main, both families
    host_link: Link = None  # uplink.host_interface, in the host namespace
    host_veths: list = field(default_factory=list)  # veths of the host namespace
    nsids: dict = field(default_factory=dict)  # name -> nsid, as the host numbers namespaces
    resolv_conf: str = None  # content of /etc/netns/NAME/resolv.conf
    etc_dir: bool = False  # /etc/netns/NAME exists
    sysctls: dict = field(default_factory=dict)  # key -> value inside (None: not there)

    def link(self, name):
        for link in self.links:
            if link.name == name:
                return link
        return None

    def link_by_index(self, ifindex):
        for link in self.links:
            if link.ifindex == ifindex:
                return link
        return None


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One change. ``kind`` is ``command`` (``argv``), ``sysctl``, ``write``, ``remove`` or ``remove_tree``."""

    kind: str
    argv: list = None
    path: str = None
    value: str = None
    key: str = None

    def describe(self):
        if self.kind == "command":
            return " ".join(_quote(arg) for arg in self.argv)
        if self.kind == "sysctl":
            return "set sysctl %s = %s (write %s inside the namespace)" % (self.key, self.value, self.path)
        if self.kind == "write":
            return "write %s" % self.path
        if self.kind == "remove":
            return "remove %s" % self.path
        return "remove %s and everything in it" % self.path


def _quote(arg):
    if arg and all(char.isalnum() or char in "@%+=:,./-_" for char in arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def command(*argv):
    return Step("command", argv=[str(arg) for arg in argv])


@dataclass
class Plan:
    before: dict
    after: dict
    steps: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def changed(self):
        return self.before != self.after


def _visible(addresses, wanted):
    """Addresses as shown and managed: IPv6 link-local ones the kernel adds are left out."""
    return [a for a in addresses if not (a.link_local and a.interface not in wanted)]


def _sorted(addresses):
    return [str(a) for a in sorted(addresses, key=lambda a: (a.version, a))]


def _of_family(addresses, version):
    return [a for a in addresses if a.version == version]


def gateways(uplink):
    """``{4: (gateway, onlink), 6: ...}``: the default route of each family the uplink carries.

    A family gets a default route when both ends have an address of it; the gateway is the first host
    address of the family, ``onlink`` when no address inside the namespace has it in its network.
    """
    result = {}
    if uplink is None or not uplink.default_route:
        return result
    for version in (4, 6):
        host = _of_family(uplink.host_addresses, version)
        inside = _of_family(uplink.addresses, version)
        if host and inside:
            gateway = host[0].ip
            result[version] = (str(gateway), not any(gateway in iface.network for iface in inside))
    return result


def _route_argv(name, route, verb):
    argv = ["ip", "-n", name, "-%d" % route.family, "route", verb]
    if route.type:
        argv.append(route.type)
    argv.extend(["default", "table", "main"])
    if route.gateway:
        argv.extend(["via", route.gateway])
    if route.dev:
        argv.extend(["dev", route.dev])
    if route.metric is not None:
        argv.extend(["metric", str(route.metric)])
    return argv


def _address_steps(prefix, dev, current, wanted):
    """Delete what is not wanted, then add what is missing (``replace``: idempotent)."""
    steps = []
    deleted = set()
    for address in current:
        if address.interface not in wanted:
            steps.append(command(*(prefix + ["addr", "del", str(address), "dev", dev])))
            deleted.add(address.interface.version)
    present = {a.interface for a in current}
    for address in wanted:
        # Deleting an IPv4 primary address also deletes its secondaries (unless promote_secondaries):
        # when any IPv4 address goes, every wanted one is (re)applied.
        if address not in present or (address.version == 4 and 4 in deleted):
            argv = prefix + ["addr", "replace", str(address), "dev", dev]
            if address.version == 6:
                argv.append("nodad")  # usable at once, instead of after duplicate address detection
            steps.append(command(*argv))
    return steps, deleted


def plan(desired, current, kernel_values=None):
    """The :class:`Plan` from ``current`` to ``desired``; raises :class:`StateError` when refusing.

    ``kernel_values`` maps sysctl keys to the values as the kernel prints them after writing the wanted
    ones (see :func:`sysctl_results`); without it the values given are compared as they are.
    """
    if desired.state == "absent":
        return _plan_absent(desired, current)
    return _plan_present(desired, current, kernel_values or {})


def _owner_of(current, nsid):
    if nsid is None:
        return None
    for name, number in current.nsids.items():
        if number is not None and number == nsid:
            return name
    return None


def _plan_present(desired, current, kernel_values):
    name = desired.name
    ipn = ["ip", "-n", name]
    steps = []
    warnings = []
    before = {"exists": current.exists}
    if current.stale_file:
        before["stale_file"] = True
    after = {"exists": True}

    if current.stale_file:
        warnings.append(
            "%s was a file left by an interrupted 'ip netns add', not a mounted namespace: it is replaced by a new namespace"
            % desired.path
        )
        steps.append(command("ip", "netns", "delete", name))
    if not current.exists:
        steps.append(command("ip", "netns", "add", name))

    lo = current.link("lo") if current.exists else None
    before["loopback"] = lo.state if lo else None
    after["loopback"] = "up" if desired.loopback else "down"
    if (lo.up if lo else False) != desired.loopback:
        steps.append(command(*(ipn + ["link", "set", "dev", "lo", after["loopback"]])))

    uplink = desired.uplink
    recreated = False
    if uplink is not None:
        part = _plan_uplink(desired, current)
        recreated = part.recreated
        warnings.extend(part.warnings)
        before["uplink"] = part.before
        after["uplink"] = part.after
        # Unwanted routes go before any address does (the kernel may drop them with it); wanted
        # ones are (re)applied once the addresses are in place and the link is up.
        steps.extend(part.pair_steps + part.route_deletes + part.address_steps + part.route_adds)

    if desired.sysctls:
        before["sysctls"] = {}
        after["sysctls"] = {}
        for sysctl in desired.sysctls:
            value = current.sysctls.get(sysctl.key)
            want = kernel_values.get(sysctl.key, normalize_sysctl(sysctl.value))
            before["sysctls"][sysctl.key] = value
            after["sysctls"][sysctl.key] = want
            reset = recreated and _interface_of(sysctl.parts) == uplink.interface
            if value != want or reset:
                steps.append(Step("sysctl", key=sysctl.key, path=sysctl.path, value=sysctl.value))

    if desired.nameservers is not None:
        path = resolv_conf_path(name, ETC_NETNS_DIR)
        want = render_resolv_conf(desired.nameservers) if desired.nameservers else None
        before["resolv_conf"] = current.resolv_conf.splitlines() if current.resolv_conf is not None else None
        after["resolv_conf"] = want.splitlines() if want is not None else None
        if want is None and current.resolv_conf is not None:
            steps.append(Step("remove", path=path))
        elif want is not None and current.resolv_conf != want:
            steps.append(Step("write", path=path, value=want))
        if len(desired.nameservers) > RESOLVER_MAXNS:
            warnings.append(
                "nameservers lists %d servers; the glibc resolver uses only the first %d"
                % (len(desired.nameservers), RESOLVER_MAXNS)
            )

    return Plan(before=before, after=after, steps=steps, warnings=warnings)


@dataclass
class _UplinkPlan:
    recreated: bool
    pair_steps: list
    route_deletes: list
    address_steps: list
    route_adds: list
    warnings: list
    before: dict
    after: dict


def _plan_uplink(desired, current):
    name = desired.name
    uplink = desired.uplink
    ipn = ["ip", "-n", name]
    steps = []
    warnings = []
    host = current.host_link
    inner = current.link(uplink.interface) if current.exists else None
    nsid = current.nsids.get(name) if current.exists else None
    hosts_peer = current.link_by_index(host.link_index) if (host and current.exists and nsid is not None and host.link_netnsid == nsid) else None
    paired = bool(host and host.kind == "veth" and inner and hosts_peer is inner)
    label_host = "uplink.host_interface=%r" % uplink.host_interface
    label_inner = "uplink.interface=%r" % uplink.interface

    if host is not None and host.kind != "veth":
        raise StateError("%s exists in the host namespace and is %s, not a veth: refusing to replace it" % (label_host, host.describe()))
    if inner is not None and not paired and inner.kind != "veth":
        raise StateError(
            "%s exists in network namespace %r and is %s, not a veth: refusing to replace it" % (label_inner, name, inner.describe())
        )

    if host is not None and not paired:
        owner = _owner_of(current, host.link_netnsid)
        if host.link_netnsid is None:
            why = "both ends of that veth pair are in the host namespace"
        elif owner is not None and owner != name:
            raise StateError("%s is the uplink of network namespace %r, not of %r: refusing to take it" % (label_host, owner, name))
        elif owner == name:
            why = "its peer in network namespace %r is not %r" % (name, uplink.interface)
        else:
            why = "its peer is in a namespace that has no name any more (deleted while still in use?)"
        warnings.append("%s: %s; the veth pair is recreated" % (label_host, why))
        steps.append(command(*(uplink.host_ip + ["link", "delete", "dev", uplink.host_interface])))
    if inner is not None and not paired:
        # A veth whose peer is in the host namespace (the old uplink under another host name) is replaced;
        # one that leads to another namespace is not ours to cut.
        inner_peer = None
        if nsid is not None:
            for veth in current.host_veths:
                if veth.link_netnsid == nsid and veth.link_index == inner.ifindex:
                    inner_peer = veth
        if inner_peer is None:
            where = "inside the namespace itself" if inner.link_netnsid is None else "in another namespace"
            raise StateError(
                "%s exists in network namespace %r and is a veth whose peer is %s, not in the host namespace: refusing to replace it"
                % (label_inner, name, where)
            )
        warnings.append(
            "%s is paired with host interface %r, not %r; the veth pair is recreated" % (label_inner, inner_peer.name, uplink.host_interface)
        )
        steps.append(command(*(ipn + ["link", "delete", "dev", uplink.interface])))
    if not paired:
        steps.append(
            command(*(uplink.host_ip + ["link", "add", "name", uplink.host_interface, "type", "veth", "peer", "name",
                                        uplink.interface, "netns", name]))
        )

    # Addresses, as they are now (a recreated pair starts with none).
    host_now = _visible(host.addresses, uplink.host_addresses) if host else []
    inner_now = _visible(inner.addresses, uplink.addresses) if inner else []
    host_start = host_now if paired else []
    inner_start = inner_now if paired else []
    host_addr_steps, _host_deleted = _address_steps(uplink.host_ip, uplink.host_interface, host_start, uplink.host_addresses)
    inner_addr_steps, inner_deleted = _address_steps(ipn, uplink.interface, inner_start, uplink.addresses)
    addr_steps = list(host_addr_steps)
    if not paired or not host.up:
        addr_steps.append(command(*(uplink.host_ip + ["link", "set", "dev", uplink.host_interface, "up"])))
    addr_steps.extend(inner_addr_steps)
    inner_was_up = paired and inner.up
    if not inner_was_up:
        addr_steps.append(command(*(ipn + ["link", "set", "dev", uplink.interface, "up"])))

    # Default routes: those through the uplink die with a recreated pair.
    routes = [r for r in current.routes if paired or r.dev != uplink.interface] if current.exists else []
    wanted = gateways(uplink)
    route_deletes = []
    route_adds = []
    kept = []
    for version in (4, 6):
        family = [r for r in routes if r.family == version]
        if version in wanted:
            gateway, onlink = wanted[version]
            keep = None
            for route in family:
                if keep is None and route.gateway == gateway and route.dev == uplink.interface and not route.type and not route.multipath:
                    keep = route
            for route in family:
                if route is not keep:
                    route_deletes.append(command(*_route_argv(name, route, "del")))
            kept.append(Route(version, gateway=gateway, dev=uplink.interface))
            if keep is None or version in inner_deleted or not inner_was_up:
                argv = _route_argv(name, Route(version, gateway=gateway, dev=uplink.interface, metric=keep.metric if keep else None), "replace")
                if onlink:
                    argv.append("onlink")
                route_adds.append(command(*argv))
        else:
            for route in family:
                if route.dev == uplink.interface:
                    route_deletes.append(command(*_route_argv(name, route, "del")))
                else:
                    kept.append(route)

    uplink_before = {
        "host_interface": uplink.host_interface,
        "interface": uplink.interface,
        "paired": paired,
        "host_state": host.state if host else "absent",
        "state": inner.state if inner else "absent",
        "host_addresses": _sorted(a.interface for a in host_now),
        "addresses": _sorted(a.interface for a in inner_now),
        "default_routes": sorted(str(r) for r in current.routes) if current.exists else [],
    }
    uplink_after = {
        "host_interface": uplink.host_interface,
        "interface": uplink.interface,
        "paired": True,
        "host_state": "up",
        "state": "up",
        "host_addresses": _sorted(uplink.host_addresses),
        "addresses": _sorted(uplink.addresses),
        "default_routes": sorted(str(r) for r in kept),
    }
    return _UplinkPlan(
        recreated=not paired,
        pair_steps=steps,
        route_deletes=route_deletes,
        address_steps=addr_steps,
        route_adds=route_adds,
        warnings=warnings,
        before=uplink_before,
        after=uplink_after,
    )


def _plan_absent(desired, current):
    name = desired.name
    steps = []
    warnings = []
    nsid = current.nsids.get(name) if current.exists else None
    host_ends = []
    if nsid is not None:
        host_ends = [veth.name for veth in current.host_veths if veth.link_netnsid == nsid]
    uplink = desired.uplink
    if uplink is not None and current.host_link is not None and uplink.host_interface not in host_ends:
        host = current.host_link
        label = "uplink.host_interface=%r" % uplink.host_interface
        owner = _owner_of(current, host.link_netnsid)
        if host.kind != "veth":
            warnings.append("%s is %s, not a veth: left alone" % (label, host.describe()))
        elif owner is not None and owner != name:
            warnings.append("%s is the uplink of network namespace %r: left alone" % (label, owner))
        else:
            # Its peer is in the host namespace or in a namespace that lost its name: a leftover of this one.
            host_ends.append(uplink.host_interface)
    host_ip = uplink.host_ip if uplink is not None else ["ip"]
    for host_end in host_ends:
        steps.append(command(*(host_ip + ["link", "delete", "dev", host_end])))
    if current.exists or current.stale_file:
        steps.append(command("ip", "netns", "delete", name))
    etc_dir = os.path.join(ETC_NETNS_DIR, name)
    if current.etc_dir:
        steps.append(Step("remove_tree", path=etc_dir))

    before = {"exists": current.exists, "host_interfaces": sorted(host_ends), "etc_netns": current.etc_dir}
    if current.stale_file:
        before["stale_file"] = True
    after = {"exists": False, "host_interfaces": [], "etc_netns": False}
    return Plan(before=before, after=after, steps=steps, warnings=warnings)
