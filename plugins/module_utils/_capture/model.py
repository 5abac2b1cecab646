# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""What the capture is made of: address families, Istio's fixed numbers, validated options, one rule. No I/O.

The engine's records are ``NamedTuple`` (immutable) and ``Record`` (mutable) classes, not
dataclasses: a dataclass generates and compiles its methods when its class is created, about half
a millisecond each on a target, and the payload is imported anew by every task.
"""

from __future__ import annotations

import socket
from typing import NamedTuple, Optional, Tuple

IPV4 = "ipv4"
IPV6 = "ipv6"
FAMILIES = (IPV4, IPV6)

BUILTIN_CHAINS = frozenset(("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"))
# Tables Istio writes to; rendered in this (alphabetical) order, as Istio does.
CAPTURE_TABLES = ("mangle", "nat", "raw")

DNS_PROXY_PORT = 15053  # istio-agent's DNS listener; not configurable in Istio either
OUTBOUND_MARK = 1338  # marks proxy traffic to the workload itself in TPROXY mode
LOOPBACK_V6 = "::1/128"
PASSTHROUGH_SOURCE = {IPV4: "127.0.0.6/32", IPV6: "::6/128"}


def address_text(address):
    """An ``ipaddress`` address as iptables-save and nft print it (inet_ntop): ``::ffff:198.18.0.9``,
    where Python writes ``::ffff:c612:9``. Every rule text of the collection spells addresses so."""
    if address.version == 6:
        return socket.inet_ntop(socket.AF_INET6, address.packed)
    return address.compressed


class Record:
    """A mutable record: its fields are its ``__slots__``, set by the subclass's ``__init__``; equal by field."""

    __slots__ = ()

    def _values(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return type(other) is type(self) and self._values() == other._values()

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (name, getattr(self, name)) for name in self.__slots__))


def has_loopback(cidrs):
    """Whether ``(family, text)`` CIDRs include a loopback address (Istio then keeps lo traffic captured)."""
    for family, text in cidrs:
        address = text.split("/")[0]
        if (family == IPV4 and address.startswith("127.")) or (family == IPV6 and address == "::1"):
            return True
    return False


class CaptureOptions(NamedTuple):
    """Everything the planner needs, already validated and resolved (ids are numbers as text).

    ``inbound_ports`` and ``outbound_ip_ranges`` are ``"*"`` or a tuple (empty tuple: none).
    CIDR tuples hold ``(family, text)`` pairs so each family gets only its own.
    """

    proxy_port: int = 15001
    inbound_capture_port: int = 15006
    inbound_tunnel_port: int = 15008
    proxy_uids: Tuple[str, ...] = ("1337",)
    proxy_gids: Tuple[str, ...] = ("1337",)
    inbound_interception_mode: str = "REDIRECT"
    tproxy_mark: int = 1337
    tproxy_route_table: int = 133
    inbound_ports: object = "*"
    exclude_inbound_ports: Tuple[str, ...] = ("15090", "15021", "15020")
    outbound_ip_ranges: object = "*"
    exclude_outbound_ip_ranges: Tuple[Tuple[str, str], ...] = ()
    outbound_ports: Tuple[str, ...] = ()
    exclude_outbound_ports: Tuple[str, ...] = ()
    exclude_interfaces: Tuple[str, ...] = ()
    reroute_virtual_interfaces: Tuple[str, ...] = ()
    outbound_owner_groups: object = "*"
    exclude_outbound_owner_groups: Tuple[str, ...] = ()
    capture_dns: bool = False
    capture_all_dns: bool = False
    dns_servers: Tuple[Tuple[str, str], ...] = ()
    ipv6: bool = False
    ipv4_loopback_cidr: str = "127.0.0.1/32"
    drop_invalid: bool = False
    native_nftables: bool = False
    cidr_sets: bool = False
    keep_existing_connections: bool = False

    @property
    def tproxy(self):
        return self.inbound_interception_mode == "TPROXY"

    def dns_servers_of(self, family):
        return [addr for fam, addr in self.dns_servers if fam == family]

    @property
    def redirect_dns(self):
        """DNS capture as Istio decides it: off when there is nothing to capture."""
        return self.capture_dns and (self.capture_all_dns or bool(self.dns_servers))

    @property
    def families(self):
        return FAMILIES if self.ipv6 else (IPV4,)


class Rule(NamedTuple):
    """One rule as Istio writes it: ``-A chain args`` or, with ``position``, ``-I chain N args``."""

    table: str
    chain: str
    args: Tuple[str, ...]
    position: Optional[int] = None

    def istio_line(self):
        head = ["-A", self.chain] if self.position is None else ["-I", self.chain, str(self.position)]
        return " ".join(head + list(self.args))

    @property
    def jump(self):
        return self.args[self.args.index("-j") + 1] if "-j" in self.args else None
