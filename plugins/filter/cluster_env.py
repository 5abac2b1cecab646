# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters that turn an ``istioctl x workload entry configure`` ``cluster.env`` into capture options.

* ``cluster_env_parse``: the text of a ``cluster.env`` (shell ``KEY='value'`` lines) -> dict.
* ``cluster_env_capture``: that dict -> options of ``meshops.sidecar.istio_redirect_chains``, read the way
  Istio's VM start script hands them to ``pilot-agent istio-iptables``.
* ``capture_options``: validate and normalise a dict of ``istio_redirect_chains`` options (for example the
  role's ``interception_capture``) so that a mistake fails before anything on the target changes.

Documentation of each filter is in the ``.yml`` file of the same name next to this one.
"""

from __future__ import annotations

import ipaddress
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_text

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A user or group name as useradd/groupadd accept it (plus the trailing '$' of machine accounts).
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")
_UINT32_MAX = 4294967295
# Routing tables the kernel itself uses: a TPROXY policy route must not land in them.
_RESERVED_TABLES = {253: "default", 254: "main", 255: "local"}
_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))

# Options of meshops.sidecar.istio_redirect_chains and the kind of value each takes.
OPTION_KINDS = {
    "proxy_port": "port",
    "inbound_capture_port": "port",
    "inbound_tunnel_port": "port",
    "proxy_uid": "ids",
    "proxy_gid": "ids",
    "inbound_interception_mode": "mode",
    "tproxy_mark": "mark",
    "tproxy_route_table": "table",
    "inbound_ports": "ports_or_all",
    "exclude_inbound_ports": "ports",
    "outbound_ip_ranges": "cidrs_or_all",
    "exclude_outbound_ip_ranges": "cidrs",
    "outbound_ports": "ports",
    "exclude_outbound_ports": "ports",
    "exclude_interfaces": "interfaces",
    "reroute_virtual_interfaces": "interfaces",
    "outbound_owner_groups": "groups_or_all",
    "exclude_outbound_owner_groups": "groups",
    "capture_dns": "bool",
    "capture_all_dns": "bool",
    "dns_servers": "addresses",
    "ipv6": "bool",
    "ipv4_loopback_cidr": "loopback4",
    "drop_invalid": "bool",
    "verify": "bool",
}

# cluster.env variable -> (option, alias variable that overrides it when set, or None).
# Section 3.4 of the reference: what istio-start.sh exports into pilot-agent istio-iptables.
ENV_OPTIONS = {
    "ISTIO_INBOUND_PORTS": ("inbound_ports", None),
    "ISTIO_LOCAL_EXCLUDE_PORTS": ("exclude_inbound_ports", None),
    "ISTIO_SERVICE_CIDR": ("outbound_ip_ranges", None),
    "ISTIO_SERVICE_EXCLUDE_CIDR": ("exclude_outbound_ip_ranges", None),
    "ISTIO_OUTBOUND_PORTS": ("outbound_ports", None),
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": ("exclude_outbound_ports", None),
    "ISTIO_EXCLUDE_INTERFACES": ("exclude_interfaces", None),
    "KUBE_VIRT_INTERFACES": ("reroute_virtual_interfaces", None),
    "ISTIO_INBOUND_INTERCEPTION_MODE": ("inbound_interception_mode", None),
    "ISTIO_INBOUND_TPROXY_MARK": ("tproxy_mark", None),
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE": ("tproxy_route_table", None),
    "REDIRECT_DNS": ("capture_dns", "ISTIO_META_DNS_CAPTURE"),
    "CAPTURE_ALL_DNS": ("capture_all_dns", None),
    "DROP_INVALID": ("drop_invalid", "INVALID_DROP"),
    "PROXY_UID": ("proxy_uid", None),
    "PROXY_GID": ("proxy_gid", None),
    "INBOUND_CAPTURE_PORT": ("inbound_capture_port", None),
    "INBOUND_TUNNEL_PORT": ("inbound_tunnel_port", None),
    "ISTIO_OUTBOUND_OWNER_GROUPS": ("outbound_owner_groups", None),
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": ("exclude_outbound_owner_groups", None),
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": ("ipv4_loopback_cidr", None),
    "RUN_VALIDATION": ("verify", None),
}

# Where Istio's default (what istio-iptables does when the variable is not set) differs from the
# module's default. A cluster.env that does not set these means what it means to Istio.
ISTIO_DEFAULTS = {
    "inbound_ports": [],
    "exclude_inbound_ports": [],
    "outbound_ip_ranges": [],
}

# Capture variables that are read and checked but become no module option.
_CHECKED_ONLY = {
    "ENVOY_USER": "name",  # the proxy user: the role reads it
    "DUAL_STACK": "bool",  # the module programs IPv6 when the namespace has a global IPv6 address
    "ISTIO_DUAL_STACK": "bool",
    "NATIVE_NFTABLES": "bool",
    "FORCE_IPTABLES_BINARY": "binary",
}


class _Invalid(ValueError):
    """A value that is not what its option or variable takes; the message says why."""


# ---------------------------------------------------------------------------------------------
# cluster.env text


def _shell_word(value, lineno):
    """Read one shell word (quotes, backslashes), refusing expansions the file cannot mean literally."""
    out = []
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == "'":
            end = value.find("'", i + 1)
            if end < 0:
                raise _Invalid("line %d: unterminated single quote" % lineno)
            out.append(value[i + 1:end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _Invalid("line %d: unterminated double quote" % lineno)
                c = value[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and value[i + 1] in '"\\$`':
                    out.append(value[i + 1])
                    i += 2
                    continue
                if c in "$`":
                    raise _Invalid("line %d: shell expansion (%s) is not supported, write the value literally" % (lineno, c))
                out.append(c)
                i += 1
        elif c == "\\":
            if i + 1 < n:
                out.append(value[i + 1])
            i += 2
        elif c in " \t":
            rest = value[i:].strip()
            if rest and not rest.startswith("#"):
                raise _Invalid("line %d: more than one word after '=' (quote the value)" % lineno)
            break
        elif c in "$`;&|<>()":
            raise _Invalid("line %d: shell syntax (%s) is not supported, write the value literally" % (lineno, c))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_cluster_env(text):
    """``cluster.env`` text -> ``{NAME: value}``; a later assignment wins, as in the shell."""
    if isinstance(text, bytes):
        text = to_text(text, errors="surrogate_or_strict")
    if not isinstance(text, str):
        raise _Invalid("expected the text of a cluster.env file, got %s" % type(text).__name__)
    result = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export"):].strip()
        key, sep, value = line.partition("=")
        if not sep or not _KEY_RE.match(key):
            raise _Invalid("line %d: %r is not a NAME=value assignment" % (lineno, raw))
        result[key] = _shell_word(value, lineno)
    return result


# ---------------------------------------------------------------------------------------------
# Values


def _items(value):
    """A list option's items: a list, or an Istio-style comma-separated string; empty items dropped."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        items = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise _Invalid("item %r is not a string or a number" % (item,))
            items.extend(_items(str(item)))
        return items
    if isinstance(value, bool):
        raise _Invalid("expected a list or a comma-separated string, got a boolean")
    if isinstance(value, int):
        return [str(value)]
    if not isinstance(value, str):
        raise _Invalid("expected a list or a comma-separated string")
    return [item.strip() for item in value.split(",") if item.strip()]


def _int(value, what, low, high, allow_hex=False):
    if isinstance(value, bool):
        raise _Invalid("%r is not %s" % (value, what))
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        try:
            if allow_hex and text.lower().startswith("0x"):
                number = int(text[2:], 16)
            elif text.isdigit():
                number = int(text, 10)
            else:
                raise ValueError(text)
        except ValueError:
            raise _Invalid("%r is not %s" % (value, what))
    if not low <= number <= high:
        raise _Invalid("%r is not %s" % (value, what))
    return number


def _port(value):
    return _int(value, "a port (1-65535)", 1, 65535)


def _port_spec(item):
    """A port or an iptables port range ``FIRST:LAST`` (Istio passes ports to iptables verbatim)."""
    if ":" in item:
        first, last = item.split(":", 1)
        try:
            low, high = _port(first), _port(last)
        except _Invalid:
            raise _Invalid("%r is not a port (1-65535) or a range FIRST:LAST" % item)
        if low > high:
            raise _Invalid("%r is not a port range: %d is above %d" % (item, low, high))
        return "%d:%d" % (low, high)
    try:
        return str(_port(item))
    except _Invalid:
        raise _Invalid("%r is not a port (1-65535) or a range FIRST:LAST" % item)


def _ports(value, allow_all):
    items = _items(value)
    if allow_all and items == ["*"]:
        return ["*"]
    if "*" in items:
        raise _Invalid("'*' must be the only item" if allow_all else "'*' is not allowed here")
    return [_port_spec(item) for item in items]


def _cidr(item):
    # netip.ParsePrefix, which Istio uses, insists on a prefix length and accepts host bits.
    if "/" not in item:
        raise _Invalid("%r is not a CIDR: the prefix length (/N) is missing" % item)
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise _Invalid("%r is not a CIDR" % item)
    return item


def _cidrs(value, allow_all):
    items = _items(value)
    if allow_all and items == ["*"]:
        return ["*"]
    if "*" in items:
        raise _Invalid("'*' must be the only item" if allow_all else "'*' is not allowed here")
    return [_cidr(item) for item in items]


def _addresses(value):
    result = []
    for item in _items(value):
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise _Invalid("%r is not an IP address" % item)
        result.append(item)
    return result


def _interface(item):
    # Linux interface names: at most 15 bytes, no '/', ':' or blanks; iptables adds the '+' wildcard.
    if len(item.encode("utf-8")) > 15 or item in (".", "..") or re.search(r"[/:\s]", item) or "+" in item[:-1]:
        raise _Invalid("%r is not a network interface name" % item)
    return item


def _ids(value):
    result = []
    for item in _items(value):
        if not (item.isdigit() or _NAME_RE.match(item)):
            raise _Invalid("%r is not a number or a user/group name" % item)
        if item.isdigit():
            _int(item, "an id (0-4294967295)", 0, _UINT32_MAX)
        result.append(item)
    return result


def _groups(value, allow_all):
    items = _items(value)
    if allow_all and items == ["*"]:
        return ["*"]
    if "*" in items:
        raise _Invalid("'*' must be the only item" if allow_all else "'*' is not allowed here")
    result = _ids(items)
    if allow_all and len(result) > 64:
        raise _Invalid("%d groups: at most 64 are allowed (one iptables rule holds them all)" % len(result))
    return result


def _env_bool(value):
    """A boolean as Istio reads it from the environment (Go's strconv.ParseBool)."""
    text = str(value).strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid("%r is not a boolean (true or false)" % (value,))


def _bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip()
    if text in _TRUE or text.lower() in ("yes", "on"):
        return True
    if text in _FALSE or text.lower() in ("no", "off"):
        return False
    raise _Invalid("%r is not a boolean (true/false)" % (value,))


def _mode(value):
    text = str(value).strip()
    if text in ("REDIRECT", "TPROXY"):
        return text
    raise _Invalid("%r is not an interception mode (REDIRECT or TPROXY)" % (value,))


def _mark(value):
    return _int(value, "a mark (0-4294967295)", 0, _UINT32_MAX, allow_hex=True)


def _table(value):
    number = _int(value, "a routing table (1-4294967295)", 1, _UINT32_MAX)
    if number in _RESERVED_TABLES:
        raise _Invalid("%r is the kernel's %r routing table" % (value, _RESERVED_TABLES[number]))
    return number


def _loopback4(value):
    text = str(value).strip()
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise _Invalid("%r is not an IPv4 CIDR" % (value,))
    if "/" not in text or not net.is_loopback or not 8 <= net.prefixlen <= 32:
        raise _Invalid("%r is not an IPv4 loopback CIDR with a prefix length of 8 to 32" % (value,))
    return text


def _name(value):
    text = str(value).strip()
    if not _NAME_RE.match(text):
        raise _Invalid("%r is not a user name" % (value,))
    return text


def _binary(value):
    text = str(value).strip()
    if text not in ("legacy", "nft"):
        raise _Invalid("%r is not an iptables binary choice (legacy or nft)" % (value,))
    return text


_KINDS = {
    "port": _port,
    "ports": lambda v: _ports(v, False),
    "ports_or_all": lambda v: _ports(v, True),
    "cidrs": lambda v: _cidrs(v, False),
    "cidrs_or_all": lambda v: _cidrs(v, True),
    "interfaces": lambda v: [_interface(item) for item in _items(v)],
    "ids": _ids,
    "groups": lambda v: _groups(v, False),
    "groups_or_all": lambda v: _groups(v, True),
    "addresses": _addresses,
    "bool": _bool,
    "mode": _mode,
    "mark": _mark,
    "table": _table,
    "loopback4": _loopback4,
    "name": _name,
    "binary": _binary,
}
# cluster.env values are environment strings: booleans are read as Istio reads them.
_ENV_KINDS = dict(_KINDS, bool=_env_bool)
_SCALAR_KINDS = frozenset(("port", "bool", "mode", "mark", "table", "loopback4", "name", "binary"))


def _env_value(env, name):
    """The variable's value as text, or None when it is not set."""
    if env.get(name) is None:
        return None
    return to_text(env[name])


def cluster_env_to_options(env, istio_defaults=True):
    """Map parsed ``cluster.env`` variables to ``istio_redirect_chains`` options (see the .yml docs)."""
    if not isinstance(env, dict):
        raise _Invalid("expected the dict cluster_env_parse returns, got %s" % type(env).__name__)
    options = dict(ISTIO_DEFAULTS) if istio_defaults else {}
    for variable, (option, alias) in ENV_OPTIONS.items():
        kind = OPTION_KINDS[option]
        # Istio's precedence: an alias variable, when set, overrides the primary one.
        chosen = None
        for name in (variable, alias):
            if name is None:
                continue
            value = _env_value(env, name)
            if value is None or (kind in _SCALAR_KINDS and value.strip() == ""):
                continue
            chosen = (name, value)
        if chosen is None:
            continue
        name, value = chosen
        try:
            options[option] = _ENV_KINDS[kind](value)
        except _Invalid as exc:
            raise _Invalid("cluster.env: %s=%r: %s" % (name, value, exc))
    for name, kind in _CHECKED_ONLY.items():
        value = _env_value(env, name)
        if value is None or value.strip() == "":
            continue
        try:
            checked = _ENV_KINDS[kind](value)
        except _Invalid as exc:
            raise _Invalid("cluster.env: %s=%r: %s" % (name, value, exc))
        if name == "NATIVE_NFTABLES" and checked:
            raise _Invalid(
                "cluster.env: NATIVE_NFTABLES=%r: Istio's native nftables mode is not what this collection "
                "programs (it writes the iptables rules istio-iptables writes, through the nft or legacy backend); "
                "remove the variable" % value
            )
        if name == "FORCE_IPTABLES_BINARY":
            options["backend"] = checked
    return options


def normalise_options(options):
    """Validate a dict of ``istio_redirect_chains`` options; return it with lists split and numbers converted."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _Invalid("capture options must be a dict, got %s" % type(options).__name__)
    unknown = sorted(str(key) for key in options if key not in OPTION_KINDS and key != "backend")
    if unknown:
        raise _Invalid(
            "unknown capture option(s) %s; known options: %s"
            % (", ".join(unknown), ", ".join(sorted(list(OPTION_KINDS) + ["backend"])))
        )
    result = {}
    for key, value in options.items():
        if key == "backend":
            if value not in ("auto", "nft", "legacy"):
                raise _Invalid("capture option backend=%r: not one of auto, nft, legacy" % (value,))
            result[key] = value
            continue
        kind = OPTION_KINDS[key]
        if value is None:
            continue
        try:
            result[key] = _KINDS[kind](value)
        except _Invalid as exc:
            raise _Invalid("capture option %s=%r: %s" % (key, value, exc))
    return result


# ---------------------------------------------------------------------------------------------
# Filters


def cluster_env_parse(text):
    try:
        return parse_cluster_env(text)
    except _Invalid as exc:
        raise AnsibleFilterError("cluster_env_parse: cluster.env: %s" % exc)


def cluster_env_capture(env, istio_defaults=True):
    if isinstance(env, (str, bytes)):
        env = cluster_env_parse(env)
    try:
        return cluster_env_to_options(env, istio_defaults=_bool(istio_defaults))
    except _Invalid as exc:
        raise AnsibleFilterError("cluster_env_capture: %s" % exc)


def capture_options(options):
    try:
        return normalise_options(options)
    except _Invalid as exc:
        raise AnsibleFilterError("capture_options: %s" % exc)


class FilterModule:
    """meshops.sidecar cluster.env filters."""

    def filters(self):
        return {
            "cluster_env_parse": cluster_env_parse,
            "cluster_env_capture": cluster_env_capture,
            "capture_options": capture_options,
        }
