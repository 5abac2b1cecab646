# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Print, as one JSON object, the ipsets and the named nftables sets of a named network namespace.

    sets_dump.py NETNS [BACKEND]

Output:

    {"ipset": {NAME: {"type": "hash:net", "family": "inet", "members": [MEMBER, ...]}},
     "nft": {"FAMILY TABLE NAME": {"type": "ipv4_addr", "flags": [...], "members": [MEMBER, ...]}},
     "ours": {"ipset": {NAME: [MEMBER, ...]}, "nft": {NAME: [MEMBER, ...]}},
     "raw": {"ipset": TEXT, "ipset_initval": {NAME: TEXT}, "nft": TEXT, "nft_istio": TEXT, "nft_istio_text": TEXT, "iptables": TEXT}}

``ipset`` is every ipset of the namespace (``ipset save``), ``nft`` every named set of every nftables
table (``nft -j list sets``). A MEMBER is written as the kernel lists it: ``A/N`` (a prefix), ``A``
(one address) or ``A-B`` (a range nft could not write as a prefix); members are sorted by address.
``ours`` keeps the sets of ``cidr_sets`` only: the ipsets named ``istio-*`` and the sets of the
``inet istio-proxy-*`` tables, by set name. ``raw`` is for byte-for-byte comparisons: ``ipset save``
as printed but for each set's ``initval`` (a random hash seed, chosen when a set is created, so two
sets of the same contents differ by it: written ``initval -``; ``ipset_initval`` keeps them by set
name, so a set created anew is still told from one left alone), ``nft -s list ruleset`` (no counters),
``nft_istio``: ``nft -j list table inet istio-proxy-nat`` as printed (handles and counters included;
null without that table), ``nft_istio_text``: ``nft -s list table inet istio-proxy-nat`` (no handles,
no counters; null without that table), and with BACKEND (``nft`` or ``legacy``) the output of
``iptables-BACKEND-save`` and ``ip6tables-BACKEND-save`` without comment lines and with packet
counters zeroed.

This reads with the kernel's own tools only and shares no code with the module. Standard library only.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def member_key(text):
    first = text.split()[0].split("-", 1)[0].split("/", 1)[0]  # an ipset entry may have options: "A nomatch"
    address = ipaddress.ip_address(first)
    return (address.version, int(address), text)


def parse_ipset_save(text):
    sets = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] == "create":
            family = words[words.index("family") + 1] if "family" in words[3:] else None
            sets[words[1]] = {"type": words[2], "family": family, "members": []}
        elif len(words) >= 3 and words[0] == "add":
            sets[words[1]]["members"].append(" ".join(words[2:]))
    for found in sets.values():
        found["members"].sort(key=member_key)
    return sets


def nft_member(element):
    if isinstance(element, dict) and "elem" in element:
        element = element["elem"]["val"]
    if isinstance(element, str):
        return element
    if isinstance(element, dict) and "prefix" in element:
        return "%s/%d" % (element["prefix"]["addr"], element["prefix"]["len"])
    if isinstance(element, dict) and "range" in element:
        return "%s-%s" % tuple(element["range"])
    return json.dumps(element, sort_keys=True)


def main():
    netns = sys.argv[1]
    backend = sys.argv[2] if len(sys.argv) > 2 else None
    inside = ["ip", "netns", "exec", netns]
    ipset_text = run(inside + ["ipset", "save"])
    ipsets = parse_ipset_save(ipset_text)
    nft_sets = {}
    ours_nft = {}
    for item in json.loads(run(inside + ["nft", "-j", "list", "sets"]) or '{"nftables": []}')["nftables"]:
        if "set" not in item:
            continue
        found = item["set"]
        members = sorted((nft_member(element) for element in found.get("elem", [])), key=member_key)
        nft_sets["%s %s %s" % (found["family"], found["table"], found["name"])] = {
            "type": found.get("type"), "flags": found.get("flags", []), "members": members}
        if found["family"] == "inet" and found["table"].startswith("istio-proxy-"):
            ours_nft[found["name"]] = members
    tables = json.loads(run(inside + ["nft", "-j", "list", "tables"]) or '{"nftables": []}')["nftables"]
    has_nat = any(item.get("table", {}).get("family") == "inet" and item["table"].get("name") == "istio-proxy-nat"
                  for item in tables)
    raw = {"ipset": re.sub(r" initval 0x[0-9a-f]+", " initval -", ipset_text),
           "ipset_initval": dict(re.findall(r"^create (\S+) .* initval (0x[0-9a-f]+)", ipset_text, re.M)),
           "nft": run(inside + ["nft", "-s", "list", "ruleset"]),
           "nft_istio": run(inside + ["nft", "-j", "list", "table", "inet", "istio-proxy-nat"]) if has_nat else None,
           "nft_istio_text": run(inside + ["nft", "-s", "list", "table", "inet", "istio-proxy-nat"]) if has_nat else None,
           "iptables": None}
    if backend:
        saves = []
        for tool in ("iptables-%s-save" % backend, "ip6tables-%s-save" % backend):
            text = run(inside + [tool])
            saves.append("\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines()
                                   if not line.startswith("#")))
        raw["iptables"] = "\n".join(saves)
    print(json.dumps({
        "ipset": ipsets,
        "nft": nft_sets,
        "ours": {"ipset": {name: found["members"] for name, found in ipsets.items() if name.startswith("istio-")},
                 "nft": ours_nft},
        "raw": raw,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
