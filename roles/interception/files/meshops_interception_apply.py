# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""meshops-interception-apply: re-apply the capture rules the meshops.sidecar.interception role applied.

Installed by the role (with a shebang naming the target's Python 3) as
/usr/local/sbin/meshops-interception-apply, and run at boot by its systemd unit, on a machine
that has no Ansible:

    meshops-interception-apply [--check] INSTANCE_DIR

INSTANCE_DIR holds what the role wrote from the istio_redirect_chains module's results:
``apply.json`` (namespace, backend, routes) and ``rules.v4`` / ``rules.v6`` (the module's
``rules`` return value: iptables-save text of the rules it owns). The script

1. re-creates the named namespace (loopback, veth uplink, addresses, default routes, sysctls)
   when it is missing, as the ``meshops.sidecar.netns`` module created it;
2. per address family, compares what the kernel holds of Istio's rules (every ``ISTIO_*``
   chain, the rules in built-in chains that jump into one, and the few Istio-only shapes) with
   the saved rules, and when they differ replaces them in ONE ``iptables-restore --noflush``
   transaction with the backend's own restore binary (``iptables-nft-restore`` or
   ``iptables-legacy-restore``): all of it applies or none of it;
3. adds ``::6/128`` on ``lo`` (IPv6) and the TPROXY policy routes when the rules need them.

Every step is idempotent: on a clean kernel (boot) it creates everything, a second run changes
nothing, rules of others (Docker, firewalld, ...) are never touched. ``--check`` changes
nothing and exits 1 when something would change (0 when all is in place).

Python 3 standard library only. Keep the ownership rules in step with the collection's
``plugins/module_utils/_iptables_text.py``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

FORMAT_VERSION = 1
TABLES = ("mangle", "nat", "raw")
BUILTIN_ORDER = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
FAMILIES = {"ipv4": ("iptables", "rules.v4", "-4"), "ipv6": ("ip6tables", "rules.v6", "-6")}

# Rules in built-in chains only Istio's capture writes, in iptables-save's canonical form.
_OWNED_SHAPES = {
    ("nat", "PREROUTING"): [r"-i \S+ -j RETURN"],
    ("nat", "OUTPUT"): [r"-o \S+ -j RETURN"],
    ("mangle", "PREROUTING"): [
        r"-i \S+ -j RETURN",
        r"-p tcp -m mark --mark 0x[0-9a-f]+ -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    ],
    ("mangle", "OUTPUT"): [
        r"-o \S+ -j RETURN",
        r"-o lo -p tcp -m mark --mark 0x[0-9a-f]+ -j RETURN",
        r"! -d \S+ -o lo -p tcp -m owner --(uid|gid)-owner \d+ -j MARK --set-xmark 0x53a/0xffffffff",
        r"-p tcp -m connmark --mark 0x[0-9a-f]+ -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff",
    ],
    ("raw", "PREROUTING"): [r"(-s \S+ )?-p udp -m udp --sport 53 -j CT --zone 1"],
}
_OWNED_RE = {key: re.compile("^(?:%s)$" % "|".join(shapes)) for key, shapes in _OWNED_SHAPES.items()}
_JUMP_RE = re.compile(r"(^|\s)-(j|g) ISTIO_\S+(\s|$)")
_COUNTERS_RE = re.compile(r"^\[\d+:\d+\]\s+")


class ApplyError(Exception):
    pass


def log(message):
    print("meshops-interception-apply: %s" % message, flush=True)


# ------------------------------------------------------------------------------------------------
# Commands


def run(argv, check=True, stdin=None):
    proc = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                          universal_newlines=True, env=dict(os.environ, LC_ALL="C", LANGUAGE="C"))
    if check and proc.returncode != 0:
        raise ApplyError("%s failed (rc=%d): %s" % (" ".join(shlex.quote(a) for a in argv), proc.returncode,
                                                    (proc.stderr or proc.stdout).strip()))
    return proc


def tool(name):
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        raise ApplyError("%s is not installed" % name)
    return path


def in_netns(netns, argv):
    return ([tool("ip"), "netns", "exec", netns] + argv) if netns else argv


# ------------------------------------------------------------------------------------------------
# iptables-save text


def parse_save(text):
    """``{table: {"chains": {chain: [args]}, "declared": [chains]}}`` of iptables-save output."""
    tables = {}
    current = None
    for raw in text.splitlines():
        line = _COUNTERS_RE.sub("", raw.strip())
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), {"chains": {}, "declared": []})
        elif line == "COMMIT":
            current = None
        elif current is None:
            raise ApplyError("cannot parse iptables-save line %r (outside a table)" % raw)
        elif line.startswith(":"):
            name = line[1:].split()[0]
            current["declared"].append(name)
            current["chains"].setdefault(name, [])
        elif line.startswith("-A "):
            chain, rest = (line + " ").split(" ", 2)[1:]
            current["chains"].setdefault(chain, []).append(rest.strip())
        else:
            raise ApplyError("cannot parse iptables-save line %r" % raw)
    return tables


def owned(table, chain, args, extra=()):
    if chain.startswith("ISTIO_") or _JUMP_RE.search(args) or args in extra:
        return True
    shape = _OWNED_RE.get((table, chain))
    return bool(shape and shape.match(args))


def owned_state(dump, desired=None):
    """``{table: (chains, builtin)}``: ``ISTIO_*`` chains with their rules, our rules in built-in chains."""
    state = {}
    for table in TABLES:
        chains, builtin = {}, {}
        tdump = dump.get(table, {"chains": {}})
        extra = {}
        if desired is not None:
            extra = desired.get(table, ({}, {}))[1]
        for chain, rules in tdump["chains"].items():
            if chain.startswith("ISTIO_"):
                chains[chain] = list(rules)
            elif chain in BUILTIN_ORDER:
                ours = [args for args in rules if owned(table, chain, args, extra.get(chain, ()))]
                if ours:
                    builtin[chain] = ours
        state[table] = (chains, builtin)
    return state


def plan(current, desired, heads):
    """Restore text that turns ``current`` into ``desired`` (empty when they are equal)."""
    lines = []
    for table in TABLES:
        have_chains, have_builtin = current[table]
        want_chains, want_builtin = desired[table]
        rewrite = [c for c in sorted(want_chains) if have_chains.get(c) != want_chains[c]]
        stale = [c for c in sorted(have_chains) if c not in want_chains]
        builtins = [c for c in BUILTIN_ORDER if have_builtin.get(c, []) != want_builtin.get(c, [])]
        ops = [":%s - [0:0]" % c for c in rewrite + stale]
        for chain in builtins:
            ops += ["-D %s %s" % (chain, args) for args in have_builtin.get(chain, [])]
        ops += ["-X %s" % c for c in stale]
        for chain in rewrite:
            ops += ["-A %s %s" % (chain, args) for args in want_chains[chain]]
        for chain in builtins:
            wanted = want_builtin.get(chain, [])
            top = heads.get(table, {}).get(chain, 0)
            ops += ["-I %s %d %s" % (chain, n + 1, args) for n, args in enumerate(wanted[:top])]
            ops += ["-A %s %s" % (chain, args) for args in wanted[top:]]
        if ops:
            lines += ["*" + table] + ops + ["COMMIT"]
    return "\n".join(lines) + "\n" if lines else ""


def head_counts(desired, reroute_interfaces):
    """How many of the leading nat PREROUTING rules go on top (KUBE_VIRT_INTERFACES rules are inserted)."""
    count = 0
    for args in desired["nat"][1].get("PREROUTING", []):
        match = re.match(r"^(?:-d \S+ )?-i (\S+) ", args)
        if not match or match.group(1) not in reroute_interfaces:
            break
        count += 1
    return {"nat": {"PREROUTING": count}} if count else {}


def sync_family(config, family, instance_dir, check):
    binary, filename, _flag = FAMILIES[family]
    path = os.path.join(instance_dir, filename)
    want_text = ""
    if os.path.exists(path):
        with open(path, "r") as handle:
            want_text = handle.read()
    backend = config["backend"]
    if backend not in ("nft", "legacy"):
        raise ApplyError("apply.json: backend %r is neither nft nor legacy" % backend)
    netns = config.get("netns") or ""
    if not want_text.strip() and not os.path.exists(path):
        return False
    desired = owned_state(parse_save(want_text))
    save = run(in_netns(netns, [tool("%s-%s-save" % (binary, backend))])).stdout
    current = owned_state(parse_save(save), desired)
    text = plan(current, desired, head_counts(desired, config.get("reroute_virtual_interfaces", [])))
    if not text:
        log("%s %s rules are in place" % (family, backend))
        return False
    if check:
        log("%s %s rules differ; would apply:\n%s" % (family, backend, text.rstrip()))
        return True
    restore = [tool("%s-%s-restore" % (binary, backend)), "--noflush"]
    if backend == "legacy":
        restore.append("--wait=30")
    run(in_netns(netns, restore), stdin=text)
    log("%s %s rules applied (%d lines, one transaction)" % (family, backend, text.count("\n")))
    return True


# ------------------------------------------------------------------------------------------------
# Namespace and routes


def netns_exists(name):
    out = run([tool("ip"), "-json", "netns", "list"]).stdout.strip()
    return any(entry.get("name") == name for entry in (json.loads(out) if out else []))


def ensure_netns(config, check):
    name = config.get("netns") or ""
    setup = config.get("netns_setup") or {}
    if not name:
        return False
    ip = tool("ip")
    changed = False
    if not netns_exists(name):
        if check:
            log("namespace %s is missing; would create it" % name)
            return True
        run([ip, "netns", "add", name])
        log("namespace %s created" % name)
        changed = True
    if setup.get("loopback", True):
        state = json.loads(run([ip, "-n", name, "-json", "link", "show", "dev", "lo"]).stdout)
        if "UP" not in state[0].get("flags", []):
            if check:
                return True
            run([ip, "-n", name, "link", "set", "lo", "up"])
            changed = True
    for key, value in sorted((setup.get("sysctls") or {}).items()):
        # As the netns module takes them: slashes for names holding a dotted interface name.
        proc_path = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))
        value = sysctl_text(value)
        current = " ".join(run(in_netns(name, ["cat", proc_path])).stdout.split())
        if current != value:
            if check:
                return True
            run(in_netns(name, ["sh", "-c", 'echo "$1" > "$2"', "sh", str(value), proc_path]))
            changed = True
    uplink = setup.get("uplink")
    if uplink:
        changed = ensure_uplink(ip, name, uplink, check) or changed
    return changed


def sysctl_text(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    return " ".join(str(value).split())


def _addresses(ip, argv):
    out = json.loads(run(argv).stdout or "[]")
    return {"%s/%s" % (a["local"], a["prefixlen"]) for link in out for a in link.get("addr_info", [])}


def _link_up(argv):
    out = json.loads(run(argv).stdout or "[]")
    return bool(out) and "UP" in out[0].get("flags", [])


def ensure_uplink(ip, name, uplink, check):
    """The veth pair to the host namespace, as the netns module's ``uplink`` option describes it."""
    host_if = uplink["host_interface"]
    inner = uplink.get("interface") or "eth0"
    host_addresses = uplink.get("host_addresses") or []
    addresses = uplink.get("addresses") or []
    # The other end is in the host namespace, or in another named namespace (uplink.peer_netns).
    peer = uplink.get("peer_netns") or ""
    host_ip = [ip, "-n", peer] if peer else [ip]
    changed = False
    if peer and not netns_exists(peer):
        # Its own unit (or whatever made it) sets it up; the veth end only needs it to exist.
        if check:
            return True
        run([ip, "netns", "add", peer])
        log("namespace %s created (peer of %s)" % (peer, name))
        changed = True
    if run(host_ip + ["link", "show", "dev", host_if], check=False).returncode != 0:
        if check:
            return True
        run(host_ip + ["link", "add", host_if, "type", "veth", "peer", "name", inner, "netns", name])
        changed = True
    sides = (
        (host_ip, host_if, host_addresses),
        ([ip, "-n", name], inner, addresses),
    )
    for prefix, ifname, cidrs in sides:
        have = _addresses(ip, prefix + ["-json", "addr", "show", "dev", ifname])
        for cidr in cidrs:
            if _normal(cidr) in have:
                continue
            if check:
                return True
            run(prefix + ["addr", "add", cidr, "dev", ifname] + (["nodad"] if ":" in cidr else []))
            changed = True
        if not _link_up(prefix + ["-json", "link", "show", "dev", ifname]):
            if check:
                return True
            run(prefix + ["link", "set", ifname, "up"])
            changed = True
    if uplink.get("default_route", True):
        for flag, is_v6 in (("-4", False), ("-6", True)):
            gateways = [c.split("/")[0] for c in host_addresses if (":" in c) == is_v6]
            if not gateways or not any((":" in c) == is_v6 for c in addresses):
                continue
            routes = json.loads(run([ip, "-n", name, flag, "-json", "route", "show", "default"]).stdout or "[]")
            if any(r.get("gateway") == gateways[0] for r in routes):
                continue
            if check:
                return True
            gateway = ipaddress.ip_address(gateways[0])
            onlink = not any(gateway in ipaddress.ip_interface(c).network for c in addresses if (":" in c) == is_v6)
            run([ip, "-n", name, flag, "route", "replace", "default", "via", gateways[0], "dev", inner]
                + (["onlink"] if onlink else []))
            changed = True
    return changed


def _normal(cidr):
    address, length = (cidr.split("/", 1) + [""])[:2]
    if ":" in address:
        address = str(ipaddress.ip_address(address))
    return "%s/%s" % (address, length or ("128" if ":" in address else "32"))


def ensure_routes(config, check):
    netns = config.get("netns") or ""
    routes = config.get("routes") or {}
    ip = tool("ip")
    prefix = [ip, "-n", netns] if netns else [ip]
    changed = False
    if routes.get("loopback6"):
        have = run(prefix + ["-6", "-json", "addr", "show", "dev", "lo"], check=False)
        addrs = json.loads(have.stdout or "[]") if have.returncode == 0 else []
        if not any(a.get("local") == "::6" for link in addrs for a in link.get("addr_info", [])):
            if check:
                return True
            run(prefix + ["-6", "addr", "add", "::6/128", "dev", "lo"])
            changed = True
    tproxy = routes.get("tproxy")
    if tproxy:
        mark, table = int(tproxy["mark"]), int(tproxy["table"])
        for flag in tproxy.get("families", ["-4"]):
            rules = json.loads(run(prefix + [flag, "-json", "rule", "show"]).stdout or "[]")
            if not any(_rule_matches(r, mark, table) for r in rules):
                if check:
                    return True
                run(prefix + [flag, "rule", "add", "fwmark", str(mark), "lookup", str(table)])
                changed = True
            listing = run(prefix + [flag, "-json", "route", "show", "table", str(table)], check=False)
            present = json.loads(listing.stdout or "[]") if listing.returncode == 0 else []
            if not any(r.get("type") == "local" and r.get("dst") == "default" and r.get("dev") == "lo"
                       for r in present):
                if check:
                    return True
                run(prefix + [flag, "route", "replace", "local", "default", "dev", "lo", "table", str(table)])
                changed = True
    return changed


def _rule_matches(rule, mark, table):
    fwmark = rule.get("fwmark")
    if fwmark is None:
        return False
    try:
        value = int(str(fwmark).split("/", maxsplit=1)[0], 0)
    except ValueError:
        return False
    return value == mark and str(rule.get("table")) == str(table)


# ------------------------------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description="Re-apply the capture rules of meshops.sidecar.interception.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when something would change")
    parser.add_argument("instance_dir", help="directory with apply.json, rules.v4 and rules.v6")
    args = parser.parse_args(argv)
    try:
        with open(os.path.join(args.instance_dir, "apply.json"), "r") as handle:
            config = json.load(handle)
        if config.get("format") != FORMAT_VERSION:
            raise ApplyError("apply.json: format %r is not %d" % (config.get("format"), FORMAT_VERSION))
        changed = ensure_netns(config, args.check)
        if args.check and changed:
            return 1
        for family in FAMILIES:
            changed = sync_family(config, family, args.instance_dir, args.check) or changed
        changed = ensure_routes(config, args.check) or changed
    except (ApplyError, OSError, ValueError, KeyError) as exc:
        print("meshops-interception-apply: error: %s" % exc, file=sys.stderr, flush=True)
        return 2
    if args.check:
        log("in place" if not changed else "would change")
        return 1 if changed else 0
    log("changed" if changed else "nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
