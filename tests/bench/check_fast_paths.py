# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Live proof that the legacy backend's fast paths (plugins/module_utils/_capture/backends/iptables_legacy_child.py) change nothing.

In a fresh namespace made by the caller (bench.py, or by hand), loads a varied legacy rule set
(the kitchen-sink fixtures of the unit tests, foreign rules of the shapes Docker, firewalls and
users write: gotos, wildcard and negated interfaces, fragments, numeric and negated protocols,
comments, REJECT, MASQUERADE, fall-through rules) plus generated exclusions, for IPv4 and IPv6.
Then, in python-iptables workers as the module uses them:

* read: ``_render_entry`` (bare Rule for simple entries) against ``_render_rule`` of the Rules
  python-iptables builds, entry by entry;
* build: ``_RuleBuilder.entry`` (for rules that differ only in addresses, one checked entry buffer
  per shape with each rule's addresses written into a copy) against a new ``_build_rule`` with its
  ``final_check()`` for every rule, comparing the buffers handed to libiptc, for every rule read
  back above and a few address variants;

and prints one line per check, exiting non-zero on any difference.
Usage: ``python check_fast_paths.py --netns NS``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "unit", "plugins", "module_utils", "fixtures", "kernel")


def _collection_root():
    for entry in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":"):
        if entry and os.path.isfile(os.path.join(entry, "ansible_collections", "meshops", "sidecar", "galaxy.yml")):
            return entry
    raise SystemExit("ANSIBLE_COLLECTIONS_PATH does not lead to meshops.sidecar (run through tests/bench/run.sh)")


sys.path.insert(0, _collection_root())

# pylint: disable=wrong-import-position,protected-access
from ansible_collections.meshops.sidecar.plugins.module_utils._system import namespace
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends import iptables_legacy_child

FOREIGN = {
    "ipv4": """*filter
:FOREIGN - [0:0]
-A INPUT -i eth+ -j ACCEPT
-A INPUT ! -i lo -p 47 -j DROP
-A INPUT -f -j DROP
-A INPUT ! -p udp -j FOREIGN
-A INPUT -g FOREIGN
-A FOREIGN -s 10.0.0.0/8 ! -d 10.1.0.0/16 -j RETURN
-A FOREIGN -p tcp -m tcp --dport 22 -m comment --comment "ssh in" -j ACCEPT
-A FOREIGN -d 198.18.0.1/32
-A FOREIGN -j REJECT --reject-with icmp-port-unreachable
-A OUTPUT ! -o eth0 -j FOREIGN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A OUTPUT -d 198.18.0.0/15 -g DOCKER
-A OUTPUT ! -s 198.19.0.0/16 -o veth+ -p udp -j ACCEPT
COMMIT
""",
    "ipv6": """*filter
:FOREIGN - [0:0]
-A INPUT -i eth+ -j ACCEPT
-A INPUT ! -i lo -p 47 -j DROP
-A INPUT ! -p udp -j FOREIGN
-A INPUT -g FOREIGN
-A FOREIGN -s 2001:db8::/32 ! -d 2001:db8:1::/48 -j RETURN
-A FOREIGN -p tcp -m tcp --dport 22 -m comment --comment "ssh in" -j ACCEPT
-A FOREIGN -d 2001:db8::1/128
-A FOREIGN -j REJECT --reject-with icmp6-port-unreachable
-A OUTPUT ! -o eth0 -j FOREIGN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s fd00::/64 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
-A OUTPUT -d 2001:db8::/32 -g DOCKER
-A OUTPUT ! -s 2001:db8:2::/48 -o veth+ -p udp -j ACCEPT
COMMIT
""",
}
EXCLUSIONS = 2000


def exclusions(family):
    if family == "ipv4":
        return "".join("-A ISTIO_OUTPUT -d 198.18.%d.%d/32 -j RETURN\n" % (i // 256, i % 256) for i in range(EXCLUSIONS))
    return "".join("-A ISTIO_OUTPUT -d 2001:db8::%x/128 -j RETURN\n" % i for i in range(EXCLUSIONS))


def load(family):
    tool = "iptables-legacy-restore" if family == "ipv4" else "ip6tables-legacy-restore"
    with open(os.path.join(FIXTURES, "kitchen-sink.%s.legacy-save" % family)) as handle:
        kitchen = handle.read()
    # The fixture's own nat table gains the generated exclusions before its COMMIT.
    head, sep, tail = kitchen.partition("*nat\n")
    body, commit, rest = tail.partition("COMMIT\n")
    text = head + sep + body + exclusions(family) + commit + rest
    for data, flags in ((text, []), (FOREIGN[family], ["--noflush"])):
        subprocess.run([tool] + flags, input=data, text=True, check=True)


def _read_both_ways(family):
    """In the worker: every chain of every loaded table, rendered by the fast path and the full one."""
    iptc = iptables_legacy_child.iptc
    out = []
    fast_time = full_time = 0.0
    for table in sorted(iptables_legacy.loaded_legacy_tables(family)):
        handle = iptables_legacy_child._table(family, table)
        handle.refresh()
        for chain in handle.chains:
            start = time.perf_counter()
            fast = [iptables_legacy_child._render_entry(handle, chain, entry, family) for entry in iptables_legacy_child._entries(handle, chain)]
            fast_time += time.perf_counter() - start
            start = time.perf_counter()
            full = [iptables_legacy_child._render_rule(rule, family) for rule in chain.rules]
            full_time += time.perf_counter() - start
            out.append([table, chain.name, fast, full])
    del iptc
    return {"chains": out, "fast": fast_time, "full": full_time}


EXTRA = {
    "ipv4": ["-s 10.0.0.0/8 -j RETURN", "! -d 198.18.0.0/15 -o lo -j ISTIO_REDIRECT", "-d 198.18.0.9/32 -j RETURN",
             "-s 198.19.0.1/32 -d 198.18.0.0/24 -j RETURN", "! -s 198.19.0.0/16 -j RETURN", "-d 198.18.0.7/32 -j RETURN",
             "-d 198.18.0.1/32 -i docker0 -j ISTIO_REDIRECT", "-d 198.18.0.2/32 -i docker0 -j ISTIO_REDIRECT"],
    "ipv6": ["-s 2001:db8::/32 -j RETURN", "! -d 2001:db8::/48 -o lo -j ISTIO_REDIRECT", "-d 2001:db8::9/128 -j RETURN",
             "-s 2001:db8:1::1/128 -d 2001:db8::/64 -j RETURN", "! -s 2001:db8:2::/48 -j RETURN",
             "-d 2001:db8::1/128 -i docker0 -j ISTIO_REDIRECT", "-d 2001:db8::2/128 -i docker0 -j ISTIO_REDIRECT"],
}


def _build_both_ways(family, all_args):
    """In the worker: what Chain.append_rule hands libiptc for a new Rule, against _RuleBuilder.entry."""
    builder = iptables_legacy_child._RuleBuilder(family)
    differences, errors, fast_time, full_time = [], 0, 0.0, 0.0
    for args in all_args:
        try:
            start = time.perf_counter()
            rule = iptables_legacy_child._build_rule(args, family)
            rule.final_check()
            full = bytes(rule.rule)
            full_time += time.perf_counter() - start
        except Exception:  # pylint: disable=broad-except  # a foreign rule _build_rule cannot express
            errors += 1
            continue
        start = time.perf_counter()
        fast = bytes(builder.entry(args))
        fast_time += time.perf_counter() - start
        if fast != full:
            differences.append(args)
    return {"differences": differences, "built": len(all_args) - errors, "skipped": errors,
            "shapes": len(builder.shapes), "fast": fast_time, "full": full_time}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--netns", required=True, help="a fresh namespace of the caller's")
    args = parser.parse_args()
    namespace.enter(args.netns)
    failed = False
    for family in ("ipv4", "ipv6"):
        load(family)
        result = iptables_legacy._in_child(_read_both_ways, family)
        rules = sum(len(chain[2]) for chain in result["chains"])
        bad = [(table, chain, a, b) for table, chain, fast, full in result["chains"]
               for a, b in zip(fast, full) if a != b]
        bad += [(table, chain, len(fast), len(full)) for table, chain, fast, full in result["chains"]
                if len(fast) != len(full)]
        print("check: legacy read fast path == python-iptables Rules, %s: %d rules, %d differences "
              "(%.2f s against %.2f s)" % (family, rules, len(bad), result["fast"], result["full"]))
        for item in bad[:20]:
            print("   DIFFERENT %s %s: %r != %r" % item)
        failed = failed or bool(bad)
        all_args = [args for chain in result["chains"] for args in chain[3]] + EXTRA[family]
        built = iptables_legacy._in_child(_build_both_ways, family, all_args)
        print("check: legacy rule builder reuse == a new Rule per rule, %s: %d rules (%d address-only shapes; %d "
              "rules not buildable, skipped), %d differences (%.2f s against %.2f s)"
              % (family, built["built"], built["shapes"], built["skipped"], len(built["differences"]), built["fast"],
                 built["full"]))
        for args in built["differences"][:20]:
            print("   DIFFERENT: %s" % args)
        failed = failed or bool(built["differences"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
