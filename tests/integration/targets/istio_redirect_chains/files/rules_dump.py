# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Print, as one JSON object, the netfilter rules and capture routes of a named network namespace.

    rules_dump.py NETNS BACKEND [--rules-stdin < RULES.json]
    rules_dump.py NETNS,NETNS,... BACKEND      ->  {NETNS: {...}, ...}

BACKEND is ``nft`` or ``legacy``: the rules are read with ``ip netns exec NETNS
{iptables,ip6tables}-BACKEND-save``, so each backend is read with its own tool. Output:

    {"ipv4": {TABLE: {CHAIN: [RULE, ...]}}, "ipv6": {...},
     "routing": {"ipv4": [fwmark rules], "ipv6": [...], "lo6": [addresses on lo]},
     "rules_check": {FAMILY: [problems]}}          # only with --rules-stdin

A RULE is the text ``iptables-save`` prints after ``-A CHAIN``. Built-in chains without rules and
tables without chains or rules are left out, so a table that exists but is empty compares equal to a
table that was never created. User chains are kept even when empty. Chains are a mapping, so
comparing two dumps ignores the order in which chains were created; rules keep their order.

RULES.json on stdin is the ``rules`` return value of istio_redirect_chains ({family: save text}).
``rules_check`` then lists, per family, every way the kernel differs from it: an ``ISTIO_*`` chain
missing, different or unexpected, or a rule of a built-in chain missing or out of order. Its key
``ipsets`` (``cidr_sets`` on an iptables backend: the sets as ``ipset save`` prints them) is checked
against ``ipset save`` in the namespace: ``rules_check.ipsets`` lists every ``istio-*`` set missing,
unexpected, of another type or family, or with other members (``A`` and ``A/32`` are one member).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

BUILTIN = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return proc.stdout


def parse_save(text):
    tables = {}
    table = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            table.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            dummy, chain, *rest = line.split(" ", 2)
            table.setdefault(chain, []).append(rest[0] if rest else "")
        else:
            sys.exit("unexpected iptables-save line: %r" % line)
    dump = {}
    for name, chains in tables.items():
        kept = {chain: rules for chain, rules in chains.items() if rules or chain not in BUILTIN}
        if kept:
            dump[name] = kept
    return dump


def is_subsequence(wanted, have):
    position = 0
    for rule in have:
        if position < len(wanted) and rule == wanted[position]:
            position += 1
    return position == len(wanted)


def rules_problems(kernel, expected):
    problems = []
    for table in sorted(set(kernel) | set(expected)):
        have, want = kernel.get(table, {}), expected.get(table, {})
        for chain in sorted(set(have) | set(want)):
            if chain.startswith("ISTIO_"):
                if chain not in want:
                    problems.append("%s %s: unexpected chain in the kernel" % (table, chain))
                elif chain not in have:
                    problems.append("%s %s: chain missing from the kernel" % (table, chain))
                elif have[chain] != want[chain]:
                    problems.append("%s %s: kernel has %s, rules say %s" % (table, chain, have[chain], want[chain]))
            elif chain in want and not is_subsequence(want[chain], have.get(chain, [])):
                problems.append("%s %s: kernel has %s, rules say %s in this order"
                                % (table, chain, have.get(chain, []), want[chain]))
    return problems


def parse_ipsets(text):
    """``ipset save`` text -> {NAME: [TYPE, FAMILY, sorted members]} for the sets named ``istio-*``."""
    sets = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].startswith("istio-"):
            continue
        if words[0] == "create":
            family = words[words.index("family") + 1] if "family" in words[3:] else None
            sets[words[1]] = [words[2], family, []]
        elif words[0] == "add":
            # the member as a network (A and A/32 are one), with its options (nomatch) if any
            sets[words[1]][2].append(" ".join([str(ipaddress.ip_network(words[2], strict=False))] + words[3:]))
        else:
            sys.exit("unexpected ipset save line: %r" % line)
    for found in sets.values():
        found[2].sort()
    return sets


def ipsets_problems(kernel, expected):
    problems = []
    for name in sorted(set(kernel) | set(expected)):
        if name not in expected:
            problems.append("ipset %s: unexpected in the kernel" % name)
        elif name not in kernel:
            problems.append("ipset %s: missing from the kernel" % name)
        elif kernel[name] != expected[name]:
            problems.append("ipset %s: kernel has %s, rules say %s" % (name, kernel[name], expected[name]))
    return problems


def dump(netns, backend):
    inside = ["ip", "netns", "exec", netns]
    result = {
        "ipv4": parse_save(run(inside + ["iptables-%s-save" % backend])),
        "ipv6": parse_save(run(inside + ["ip6tables-%s-save" % backend])),
        "routing": {
            "ipv4": [line.strip() for line in run(["ip", "-n", netns, "-4", "rule"]).splitlines() if "fwmark" in line],
            "ipv6": [line.strip() for line in run(["ip", "-n", netns, "-6", "rule"]).splitlines() if "fwmark" in line],
            "lo6": ["%s/%s" % (info["local"], info["prefixlen"])
                    for link in json.loads(run(["ip", "-n", netns, "-j", "-6", "addr", "show", "dev", "lo"]) or "[]")
                    for info in link.get("addr_info", [])],
        },
    }
    return result


def main():
    names, backend = sys.argv[1], sys.argv[2]
    if backend not in ("nft", "legacy"):
        sys.exit("backend must be nft or legacy")
    if "," in names:
        print(json.dumps({name: dump(name, backend) for name in names.split(",")}, sort_keys=True))
        return
    result = dump(names, backend)
    if sys.argv[3:] == ["--rules-stdin"]:
        rules = json.load(sys.stdin)
        result["rules_check"] = {family: rules_problems(result[family], parse_save(text))
                                 for family, text in rules.items() if family != "ipsets"}
        if "ipsets" in rules:
            kernel = parse_ipsets(run(["ip", "netns", "exec", names, "ipset", "save"]))
            result["rules_check"]["ipsets"] = ipsets_problems(kernel, parse_ipsets(rules["ipsets"]))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
