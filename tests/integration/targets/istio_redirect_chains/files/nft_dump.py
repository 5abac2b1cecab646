"""Print, as one JSON object, the nftables tables of a named network namespace, read with ``nft -j``.

    nft_dump.py NETNS

Output: ``{"istio": {TABLE: TABLE_DUMP}, "foreign": {"FAMILY NAME": TABLE_DUMP}, "shape": ...}``, where ``istio``
holds the ``inet istio-proxy-*`` tables (Istio's native mode) and ``foreign`` every other table
(iptables-nft's, a user's own). A TABLE_DUMP is ``{"handle": N, "chains": {CHAIN: {"base": [type,
hook, priority, policy] or null, "rules": [RULE], "counters": [[packets, bytes]]}}}`` where a RULE is
the rule's ``nft -j`` expressions as compact JSON with counter values removed, so two dumps compare
equal when the rules are equal, and ``counters`` keeps the values apart. The table handle tells a
table rewritten (new handle) from one left alone. ``shape`` is ``istio`` without handles and counters
(``{TABLE: {CHAIN: {"base", "rules"}}}``): equal shapes are equal rule sets.

Standard library only; reads only.
"""

from __future__ import annotations

import json
import subprocess
import sys


def nft_json(netns, *command):
    argv = ["ip", "netns", "exec", netns, "nft", "-j"] + list(command)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit("%s failed (rc=%d): %s" % (" ".join(argv), proc.returncode, proc.stderr.strip()))
    return json.loads(proc.stdout or '{"nftables": []}')["nftables"]


def dump_table(netns, family, name):
    table = {"handle": None, "chains": {}}
    for item in nft_json(netns, "list", "table", family, name):
        if "table" in item:
            table["handle"] = item["table"]["handle"]
        elif "chain" in item:
            chain = item["chain"]
            base = [chain["type"], chain["hook"], chain["prio"], chain.get("policy")] if "hook" in chain else None
            table["chains"][chain["name"]] = {"base": base, "rules": [], "counters": []}
        elif "rule" in item:
            rule = item["rule"]
            exprs, counter = [], None
            for expr in rule["expr"]:
                if "counter" in expr:
                    counter = [expr["counter"]["packets"], expr["counter"]["bytes"]]
                    expr = {"counter": None}
                exprs.append(expr)
            chain = table["chains"][rule["chain"]]
            chain["rules"].append(json.dumps(exprs, sort_keys=True, separators=(",", ":")))
            chain["counters"].append(counter)
    return table


def main():
    netns = sys.argv[1]
    out = {"istio": {}, "foreign": {}, "shape": {}}
    for item in nft_json(netns, "list", "tables"):
        if "table" not in item:  # the metainfo item
            continue
        family, name = item["table"]["family"], item["table"]["name"]
        if family == "inet" and name.startswith("istio-proxy-"):
            out["istio"][name] = table = dump_table(netns, family, name)
            out["shape"][name] = {chain: {"base": spec["base"], "rules": spec["rules"]}
                                  for chain, spec in table["chains"].items()}
        else:
            out["foreign"]["%s %s" % (family, name)] = dump_table(netns, family, name)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
