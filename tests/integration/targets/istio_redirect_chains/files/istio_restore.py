# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Print the exact ``iptables-restore --noflush`` input Istio's ``pilot-agent istio-iptables`` writes.

    istio_restore.py < OPTIONS.json      ->  {"ipv4": TEXT, "ipv6": TEXT}
    istio_restore.py < [OPTIONS, ...]    ->  [{"ipv4": TEXT, "ipv6": TEXT}, ...]

An item may instead be ``{"golden": PATH, "families": ["ipv4", ...]}``: the text is then read from
Istio's golden files ``PATH.FAMILY.restore`` as they are (the collection keeps copies in its unit
test fixtures), so that a configuration can be checked against Istio's own output directly.

OPTIONS.json holds fields of the collection planner's ``CaptureOptions`` (already in Istio's terms:
numeric ids, CIDRs with a prefix length, ``inbound_ports`` ``"*"`` or a list). The text comes from
``_capture.plan.istio_restore_input``, which the planner's unit tests compare byte for byte with
Istio's own golden files. The integration tests load it with the backend's restore tool into a
fresh namespace, as istio-init would, and compare the kernel's rules with what the module made.
This deliberately does not use the module's option parsing: only the planner is shared.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys


def add_collection_to_path():
    """Make ``ansible_collections.meshops.sidecar`` importable: the tree above this file, then the config."""
    here = os.path.dirname(os.path.abspath(__file__))
    while True:
        if os.path.isdir(os.path.join(here, "ansible_collections", "meshops", "sidecar", "plugins")):
            sys.path.insert(0, here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    for root in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep):
        if root and root not in sys.path:
            sys.path.append(root)


def family(text):
    return "ipv4" if ipaddress.ip_network(text.split("/")[0]).version == 4 else "ipv6"


def main():
    add_collection_to_path()
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import CaptureOptions
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import istio_restore_input, plan_rules

    def render(fields):
        if "golden" in fields:
            texts = {}
            for fam in fields["families"]:
                with open("%s.%s.restore" % (fields["golden"], fam)) as handle:
                    texts[fam] = handle.read()
            return texts
        return {fam: istio_restore_input(rules) for fam, rules in plan_rules(options(fields, CaptureOptions)).items()}

    data = json.load(sys.stdin)
    print(json.dumps([render(item) for item in data] if isinstance(data, list) else render(data), sort_keys=True))


def options(fields, capture_options):
    """``CaptureOptions`` from JSON: lists become tuples, CIDRs and nameservers ``(family, text)`` pairs."""
    fields = dict(fields)
    for name in ("proxy_uids", "proxy_gids", "exclude_inbound_ports", "outbound_ports", "exclude_outbound_ports",
                 "exclude_interfaces", "reroute_virtual_interfaces", "exclude_outbound_owner_groups"):
        if name in fields:
            fields[name] = tuple(str(value) for value in fields[name])
    for name in ("inbound_ports", "outbound_owner_groups"):
        if isinstance(fields.get(name), list):
            fields[name] = tuple(str(value) for value in fields[name])
    for name in ("outbound_ip_ranges", "exclude_outbound_ip_ranges", "dns_servers"):
        if isinstance(fields.get(name), list):
            fields[name] = tuple((family(text), text) for text in fields[name])
    return capture_options(**fields)


if __name__ == "__main__":
    main()
