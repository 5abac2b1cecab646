# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The routing side of capture: TPROXY's fwmark policy route, and ``::6`` on ``lo`` for IPv6.

TPROXY-marked packets must be delivered locally: ``ip rule fwmark MARK lookup TABLE`` plus
``local default dev lo table TABLE``. Ownership is by shape, as for rules: any fwmark rule
whose table holds exactly that local default route is Istio's, whatever mark and table an
earlier run used. Envoy binds ``::6`` for IPv6 inbound passthrough, which ``lo`` lacks (::1/128).
"""

from __future__ import annotations

import json
import socket
from typing import NamedTuple

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import IPV4, IPV6
from ansible_collections.meshops.sidecar.plugins.module_utils._system import netlink

PASSTHROUGH_V6 = "::6"


class PolicyRoute(NamedTuple):
    family: str
    mark: int
    table: int

    def describe(self):
        return "%s: ip rule fwmark 0x%x lookup %d; local default dev lo table %d" % (
            self.family, self.mark, self.table, self.table)

    def add_commands(self, rule_present=False):
        """``rule_present``: the fwmark rule is there without its route (the kernel would take a second one)."""
        flag = ["-6"] if self.family == IPV6 else []
        rule = [] if rule_present else [["ip"] + flag + ["rule", "add", "fwmark", str(self.mark), "lookup", str(self.table)]]
        return rule + [["ip"] + flag + ["route", "replace", "local", "default", "dev", "lo", "table", str(self.table)]]

    def delete_commands(self):
        flag = ["-6"] if self.family == IPV6 else []
        return [["ip"] + flag + ["rule", "del", "fwmark", str(self.mark), "lookup", str(self.table)],
                ["ip"] + flag + ["route", "del", "local", "default", "dev", "lo", "table", str(self.table)]]


def ip_rule_marks(rules_json):
    """``(mark, table)`` of the fwmark rules of ``ip -json rule show`` (the fallback of the netlink dump).

    Only a numbered table: ``ip`` names main, local and default. A mark reads ``0x539`` or ``0x539/0xff``."""
    return [(int(str(rule["fwmark"]).split("/", 1)[0], 0), int(rule["table"]))
            for rule in json.loads(rules_json or "[]")
            if "fwmark" in rule and str(rule.get("table", "")).isdigit()]


def policy_routes_of(family, marks_and_tables, routes_of_table):
    """Istio-shaped policy routes among fwmark rules ``(mark, table)``: those whose table holds
    ``local default dev lo``. ``routes_of_table(t)`` gives ``ip -json route`` data, asked once a table."""
    found = set()
    local_default = {}
    for mark, table in marks_and_tables:
        if table not in local_default:
            local_default[table] = any(r.get("type") == "local" and r.get("dst") == "default" and r.get("dev") == "lo"
                                       for r in routes_of_table(table))
        if local_default[table]:
            found.add(PolicyRoute(family, mark, table))
    return found


def desired_policy_routes(opts, present):
    if not present or not opts.tproxy or opts.inbound_ports == ():
        return set()
    return {PolicyRoute(family, opts.tproxy_mark, opts.tproxy_route_table) for family in opts.families}


_PASSTHROUGH_V6_HEX = "0" * 31 + "6"  # ::6 as /proc/net/if_inet6 spells it


def has_passthrough_v6(if_inet6_text):
    """True when ``/proc/net/if_inet6`` (address, ifindex, prefix, scope, flags, device) lists ::6/128 on lo."""
    for line in if_inet6_text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0] == _PASSTHROUGH_V6_HEX and fields[2] == "80" and fields[5] == "lo":
            return True
    return False


class RouteManager:
    """Reads and changes policy routes and the ``::6`` address in the current namespace.

    Changes go through ``ip``. The fwmark rules come from one netlink dump a family (``ip rule show``
    when netlink does not answer), and ``::6`` from ``/proc/net/if_inet6``: both show the namespace
    of the calling thread, saving a process each per run.
    """

    def __init__(self, run, ipv6_kernel):
        self._run = run
        self.ipv6_kernel = ipv6_kernel
        self.fwmark_rules = set()  # (family, mark, table) of every fwmark rule policy_routes() saw

    def _json(self, argv, table_may_be_gone=False):
        """``argv``'s output; "" with ``table_may_be_gone`` when ``ip`` says the route table does not exist
        (a rule left whose table lost its last route: drift, the route is put back)."""
        rc, out, err = self._run(argv)
        if rc != 0 and table_may_be_gone and "does not exist" in err:
            return ""
        if rc != 0:
            raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv), rc, err.strip()))
        return out

    def policy_routes(self):
        """Istio-shaped policy routes of each family; ``ip route show table N`` only for a table a fwmark
        rule looks up (none on most hosts)."""
        found = set()
        self.fwmark_rules = set()
        for family in (IPV4, IPV6) if self.ipv6_kernel else (IPV4,):
            flag = ["-6"] if family == IPV6 else []
            marks = netlink.fwmark_rules(socket.AF_INET6 if family == IPV6 else socket.AF_INET)
            if marks is None:  # no netlink answer: ask ip
                marks = ip_rule_marks(self._json(["ip"] + flag + ["-json", "rule", "show"]))
            self.fwmark_rules.update((family, mark, table) for mark, table in marks)
            found |= policy_routes_of(family, marks, lambda table, flag=flag: self._routes_of_table(flag, table))
        return found

    def _routes_of_table(self, flag, table):
        argv = ["ip"] + flag + ["-json", "route", "show", "table", str(table)]
        return json.loads(self._json(argv, table_may_be_gone=True) or "[]")

    def has_passthrough_v6(self):
        if not self.ipv6_kernel:
            return False
        try:
            with open("/proc/net/if_inet6") as handle:
                return has_passthrough_v6(handle.read())
        except OSError as exc:
            raise RuntimeError("reading /proc/net/if_inet6: %s" % exc)

    def run_all(self, commands):
        for argv in commands:
            rc, out, err = self._run(argv)
            if rc != 0:
                raise RuntimeError("%s failed (rc=%d): %s" % (" ".join(argv), rc, (err or out).strip()))
