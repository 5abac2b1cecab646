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

The options are checked by the module's own code: its argument spec (with Ansible's own type
conversions) and its option builder, with controller-side look-ups. Only what is particular to
``cluster.env`` (shell words, variable names, Istio's environment booleans and defaults) lives here.
Documentation of each filter is in the ``.yml`` file of the same name next to this one.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import (
    OptionError,
    argument_spec,
    build_options,
    items,
    user_name_error,
)

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Go's strconv.ParseBool, which Istio reads its environment booleans with.
_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))

# The options a caller may give: the module's, less where it acts and whether rules are wanted.
OPTION_SPECS = {name: spec for name, spec in argument_spec().items() if name not in ("netns", "state")}
_DEFAULTS = ArgumentSpecValidator(OPTION_SPECS).validate({}).validated_parameters

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
    "NATIVE_NFTABLES": ("native_nftables", None),
}

# Where Istio's default (what istio-iptables does when the variable is not set) differs from the
# module's default. A cluster.env that does not set these means what it means to Istio.
ISTIO_DEFAULTS = {
    "inbound_ports": [],
    "exclude_inbound_ports": [],
    "outbound_ip_ranges": [],
}

# Capture variables that are read and checked but become no module option.
_ENV_BOOLEANS = ("DUAL_STACK", "ISTIO_DUAL_STACK")
_IPTABLES_BINARIES = ("legacy", "nft")  # FORCE_IPTABLES_BINARY, as Istio's Validate() allows it


class _Invalid(ValueError):
    """A value that is not what its option or variable takes; the message says why."""

    def __init__(self, message, option=None):
        super().__init__(message)
        self.option = option


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


def _env_bool(value):
    """A boolean as Istio reads it from the environment (Go's strconv.ParseBool)."""
    text = str(value).strip()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _Invalid("%r is not a boolean (true or false)" % (value,))


def _env_mark(value):
    """A mark as iptables and ip-rule read it: decimal or 0x hex (the module takes an int)."""
    text = value.strip()
    if text.lower().startswith("0x"):
        try:
            return int(text[2:], 16)
        except ValueError:
            raise _Invalid("%r is not a mark (a number, or 0x and hex digits)" % (value,))
    return text


def _env_option(option, value):
    """A cluster.env value as the option's type (the module's checks come after)."""
    kind = OPTION_SPECS[option]["type"]
    if kind == "bool":
        return _env_bool(value)
    if option == "tproxy_mark":
        return _env_mark(value)
    return value if kind == "list" else value.strip()


def _controller_id(name):
    """Names resolve on the target; here a name only has to be one useradd could create."""
    problem = user_name_error(name)
    if problem:
        raise ValueError("not a number, and %s" % problem.replace("is not a user name", "not a user or group name"))
    return 0


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
    source = {}  # option -> (variable, value) it came from, to name them when the module's checks fail
    for variable, (option, alias) in ENV_OPTIONS.items():
        scalar = OPTION_SPECS[option]["type"] != "list"
        # Istio's precedence: an alias variable, when set, overrides the primary one.
        chosen = None
        for name in (variable, alias):
            value = None if name is None else _env_value(env, name)
            if value is None or (scalar and value.strip() == ""):
                continue
            chosen = (name, value)
        if chosen is None:
            continue
        source[option] = chosen
        try:
            options[option] = _env_option(option, chosen[1])
        except _Invalid as exc:
            raise _Invalid("cluster.env: %s=%r: %s" % (chosen + (exc,)))
    try:
        options = _checked(options)
    except _Invalid as exc:
        if exc.option not in source:  # an Istio default the module refuses: a bug here, said as it is
            raise _Invalid("cluster.env: Istio's default %s" % exc)
        raise _Invalid("cluster.env: %s=%r: %s" % (source[exc.option] + (exc,)))

    envoy_user = _env_value(env, "ENVOY_USER")
    if envoy_user is not None and envoy_user.strip():
        problem = user_name_error(envoy_user.strip())
        if problem:
            raise _Invalid("cluster.env: ENVOY_USER=%r %s" % (envoy_user, problem))
    for name in _ENV_BOOLEANS:
        value = _env_value(env, name)
        if value is None or value.strip() == "":
            continue
        try:
            _env_bool(value)
        except _Invalid as exc:
            raise _Invalid("cluster.env: %s=%r: %s" % (name, value, exc))
    binary = _env_value(env, "FORCE_IPTABLES_BINARY")
    if binary is not None and binary.strip():
        if binary.strip() not in _IPTABLES_BINARIES:
            raise _Invalid("cluster.env: FORCE_IPTABLES_BINARY=%r: %r is not an iptables binary choice (legacy or nft)"
                           % (binary, binary))
        options["backend"] = binary.strip()
    return options


def _checked(options):
    """The given options, checked by the module's argument spec and option builder, and normalised.

    Raises ``_Invalid`` whose ``option`` names the option at fault.
    """
    given = {name: value for name, value in options.items() if value is not None}
    params = dict(_DEFAULTS)
    for name, value in given.items():
        # One option at a time, so that Ansible's message can be told with the option's value.
        result = ArgumentSpecValidator({name: OPTION_SPECS[name]}).validate({name: value})
        if result.error_messages:
            raise _Invalid("%s=%r: %s" % (name, value, "; ".join(result.error_messages)), name)
        params[name] = result.validated_parameters[name]
    try:
        build_options(params, _controller_id, _controller_id, lambda: [], lambda: False)
    except OptionError as exc:
        raise _Invalid(str(exc), exc.option)
    return {name: items(params[name]) if OPTION_SPECS[name]["type"] == "list" else params[name] for name in given}


def normalise_options(options):
    """Validate a dict of ``istio_redirect_chains`` options; return it with lists split and numbers converted."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise _Invalid("capture options must be a dict, got %s" % type(options).__name__)
    unknown = sorted(str(key) for key in options if key not in OPTION_SPECS)
    if unknown:
        raise _Invalid("unknown capture option(s) %s; known options: %s"
                       % (", ".join(unknown), ", ".join(sorted(OPTION_SPECS))))
    try:
        return _checked(options)
    except _Invalid as exc:
        raise _Invalid("capture option %s" % exc)


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
        return cluster_env_to_options(env, istio_defaults=boolean(istio_defaults))
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
