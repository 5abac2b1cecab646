# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""What the legacy backend's forked children run: python-iptables work, one address family each.

Imported by ``iptables_legacy`` only when it forks a child (see there why each family's work runs in
a child of its own); ``with_iptc`` imports python-iptables in the child, and every function
below runs with it imported.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import ipaddress
import os
import socket
import sys
import time

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.base import BackendError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.iptables_legacy import (
    loaded_legacy_tables,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.iptables_text import parse_rule
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import CAPTURE_TABLES, IPV4, address_text
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import Op
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ProcessRunner

XTABLES_LOCK_TIMEOUT = 30  # seconds, as istio-iptables waits (--wait=30)
iptc = None  # python-iptables, imported only inside a legacy child process


class _XtablesLock:
    """The lock every legacy iptables writer takes (a plain flock; python-iptables takes none)."""

    def __init__(self, path=None, timeout=XTABLES_LOCK_TIMEOUT):
        self.path = path or os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
        self.timeout = timeout
        self._fd = None

    def __enter__(self):
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    os.close(self._fd)
                    raise BackendError("could not take the xtables lock %s within %ds: another iptables "
                                       "writer holds it" % (self.path, self.timeout))
                time.sleep(0.05)

    def __exit__(self, *exc_info):
        os.close(self._fd)


def with_iptc(work, *args):
    """In the child: import python-iptables afresh, then ``work(*args)``; errors come back as BackendError text."""
    global iptc  # pylint: disable=global-statement
    try:
        iptc = _import_iptc()
        return {"ok": work(*args)}
    except BackendError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # pylint: disable=broad-except  # reported to the parent, which fails cleanly
        return {"error": "python-iptables: %s: %s" % (type(exc).__name__, exc)}


def _import_iptc():
    """Import python-iptables without its costly, optional use of distutils.

    python-iptables 1.2 (iptc/util.py) takes ``get_python_lib`` from distutils when that imports,
    else from sysconfig, only to look for its helper library; both find the same file. In a
    virtualenv ``import distutils`` goes through setuptools' shim: 0.25 s or more, in every child.
    A ``None`` in ``sys.modules`` makes that import fail as on a Python without distutils. Older
    python-iptables import distutils unconditionally: they get it, as before.
    """
    if "distutils" in sys.modules:
        return importlib.import_module("iptc")
    sys.modules["distutils"] = None
    try:
        return importlib.import_module("iptc")
    except ImportError:
        pass
    finally:
        del sys.modules["distutils"]
    return importlib.import_module("iptc")


def _table(family, name):
    return (iptc.Table if family == IPV4 else iptc.Table6)(name)


def _legacy_rules(family, table):
    """``{chain: [(args, iptc.Rule)]}`` of a table as the kernel has it now, in chain order."""
    handle = _table(family, table)
    handle.refresh()
    return {chain.name: [(_render_rule(rule, family), rule) for rule in chain.rules] for chain in handle.chains}


def legacy_read(family):
    loaded = loaded_legacy_tables(family)
    result = {}
    for table in CAPTURE_TABLES:
        if table in loaded:  # opening a table that is not there would create it
            handle = _table(family, table)
            handle.refresh()
            result[table] = [(chain.name, [_render_entry(handle, chain, entry, family) for entry in _entries(handle, chain)])
                             for chain in handle.chains]
    return result


def _entries(handle, chain):
    """The libiptc entries of ``chain``, as ``iptc.Chain.rules`` walks them before making Rules of them."""
    entries = []
    entry = handle.first_rule(chain.name)
    while entry:
        entries.append(entry)
        entry = handle.next_rule(entry)
    return entries


class _StandardTarget:
    """What ``_render_rule`` reads of a standard target (a verdict or a jump): its name; it has no save()."""

    _module = None

    def __init__(self, name):
        self.name = name


def _render_entry(handle, chain, entry, family):
    """``_render_rule`` of one libiptc entry, without building a python-iptables Rule when not needed.

    Building a Rule is most of a legacy read: ~0.1 ms each, as its Target decodes the extension,
    over a second for 10,000 exclusions. An entry without matches whose target is the standard
    one (``-d CIDR -j RETURN``, a jump) needs none of it: the same field getters on a bare Rule
    over the entry, and the target name libiptc gives (what Rule stores), print the same text.
    """
    rule_class = iptc.Rule if family == IPV4 else iptc.Rule6
    bare = rule_class.__new__(rule_class)  # no __init__: it would decode the target
    bare.entry = entry
    if entry.target_offset == bare._entry_size():  # pylint: disable=protected-access  # no matches
        target = ctypes.cast(ctypes.byref(entry, entry.target_offset), ctypes.POINTER(iptc.xtables.xt_entry_target))
        if target[0].u.user.name == b"":  # XT_STANDARD_TARGET
            jump = handle.get_target(entry)
            bare._matches = []  # pylint: disable=protected-access
            bare._target = _StandardTarget(jump.decode() if jump else "")  # pylint: disable=protected-access
            return _render_rule(bare, family)
    return _render_rule(handle.create_rule(entry, chain), family)


def legacy_holds_rules(family):
    for table in loaded_legacy_tables(family):
        handle = _table(family, table)
        handle.refresh()
        for chain in handle.chains:
            if not handle.builtin_chain(chain.name) or chain.rules:
                return True
    return False


def legacy_apply(family, changes):
    """Check that every rule of ``changes`` can be built, prepare each table (in commit order), then commit them one by one."""
    changes = [(table, [Op(**op) for op in ops]) for table, ops in changes]
    try:
        _check_buildable(family, changes)
    except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
        raise BackendError("%s cannot build the rules, nothing changed: %s. Use backend=nft (the iptables-nft "
                           "tools), or a python-iptables that matches this libxtables" % (_versions(), exc))
    with _XtablesLock():
        before = {table: _legacy_rules(family, table) for table, dummy in changes}
        handles = []
        try:
            for table, ops in changes:
                handle = _table(family, table)
                handle.autocommit = False
                handle.refresh()
                _apply_ops(handle, family, ops, before[table])
                handles.append((table, handle))
        except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
            raise BackendError("python-iptables could not prepare the change, no table was committed: nothing "
                               "changed: %s" % exc)
        committed = []
        for table, handle in handles:
            try:
                handle.commit()
            except iptc.IPTCError as exc:
                refused = "the kernel refused the %s table (%s)" % (table, exc)
                if not committed:
                    raise BackendError("%s; no table was committed: nothing changed" % refused)
                raise BackendError("%s; %s" % (refused, _put_back(family, committed[::-1], before)))
            committed.append(table)
    return True


def _put_back(family, tables, before):
    """Put ``tables`` back to ``before`` (whole tables, read under the lock we still hold); say how it went."""
    restored, failed = [], []
    for table in tables:
        try:
            handle = _table(family, table)
            handle.autocommit = False
            handle.refresh()
            now = {chain.name: chain for chain in handle.chains}
            for name, rules in before[table].items():
                chain = now.get(name) or handle.create_chain(name)
                chain.flush()
                for dummy, rule in rules:
                    chain.append_rule(rule)
            for name in now:
                if name not in before[table] and not handle.builtin_chain(name):
                    now[name].flush()
                    handle.delete_chain(name)
            handle.commit()
            restored.append(table)
        except (iptc.IPTCError, iptc.xtables.XTablesError, ValueError) as exc:
            failed.append("%s (%s)" % (table, exc))
    done = " and ".join(restored)
    if not failed:
        return "table %s had been committed and %s been put back as it was: nothing changed" % (
            done, "has" if len(restored) == 1 else "have")
    return "putting back the tables already committed failed for %s: %s still %s the new rules%s; run the task again" % (
        ", ".join(failed), " and ".join(f.split(" ")[0] for f in failed), "holds" if len(failed) == 1 else "hold",
        "; %s %s back as it was" % (done, "is" if len(restored) == 1 else "are") if restored else "")


def _versions():
    """``python-iptables 1.0.1 with iptables v1.8.11 (legacy)``: what a refusal of python-iptables names."""
    found = "python-iptables %s" % getattr(getattr(iptc, "version", None), "__version__", "(version unknown)")
    runner = ProcessRunner()
    tool = runner.which("iptables-legacy")
    if tool:
        rc, out, dummy = runner.run([tool, "--version"])
        if rc == 0 and out.strip():
            found += " with %s" % out.strip()
    return found


def _check_buildable(family, changes):
    """Set the match options of every rule of ``changes`` (each shape once) on a rule of their own:
    a match python-iptables cannot build (a libxtables it does not match) fails here, before any
    table is opened, since opening one creates it in the kernel. Matches only: python-iptables 1.0
    opens every table of the namespace as soon as a rule gets a target, a verdict included."""
    seen = set()
    for dummy, ops in changes:
        for op in ops:
            if op.kind not in ("append", "insert"):
                continue
            parsed = parse_rule(op.args)
            shape = (parsed.fields.get("-p"), repr(parsed.matches))
            if not parsed.matches or shape in seen:
                continue
            seen.add(shape)
            _rule_with_matches(parsed, family, ("-p",))


_FIELD_SETTERS = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface", "-p": "protocol"}


def _rule_with_matches(parsed, family, fields=tuple(_FIELD_SETTERS)):
    """A python-iptables rule with the ``fields`` and every match of a ``ParsedRule``; no target yet."""
    rule = iptc.Rule() if family == IPV4 else iptc.Rule6()
    for flag, (negated, value) in parsed.fields.items():
        if flag in fields:
            setattr(rule, _FIELD_SETTERS[flag], ("!" if negated else "") + value)
    for name, options in parsed.matches:
        match = rule.create_match(name)
        for option in options:
            if len(option.values) > 1:  # --match-set NAME dst: each value its own argument
                match.set_parameter(option.name[2:], (["!"] if option.negated else []) + option.values)
            else:
                match.set_parameter(option.name[2:], ("!" if option.negated else "") + " ".join(option.values))
    return rule


def _apply_ops(handle, family, ops, current):
    """Carry out ``_reconcile.Op`` steps on a libiptc table handle (nothing is committed here)."""
    # Rules are deleted by number: a rule object read back from libiptc does not always
    # delete by content. Deletes only touch built-in chains, which are never flushed here.
    numbered = {chain: [args for args, dummy in rules] for chain, rules in current.items()}
    entry = _RuleBuilder(family).entry
    for op in ops:
        if op.kind == "declare":
            if handle.is_chain(op.chain):
                iptc.Chain(handle, op.chain).flush()
            else:
                handle.create_chain(op.chain)
        elif op.kind == "delete":
            rules = numbered.get(op.chain, [])
            if op.args not in rules:
                raise ValueError("rule to delete not found in %s: %s" % (op.chain, op.args))
            number = rules.index(op.args)
            rules.pop(number)
            # pylint: disable-next=protected-access  # python-iptables has no public delete-by-number
            if handle._iptc.iptc_delete_num_entry(op.chain.encode(), number, handle._handle) != 1:
                raise ValueError("cannot delete rule %d of %s: %s" % (number + 1, op.chain, handle.strerror()))
        elif op.kind == "delete_chain":
            handle.delete_chain(op.chain)
        elif op.kind == "append":
            handle.append_entry(op.chain, entry(op.args))  # what Chain.append_rule does with the rule
        elif op.kind == "insert":
            handle.insert_entry(op.chain, entry(op.args), op.position - 1)


_ADDRESS_FLAGS = ("-s", "-d")


class _RuleBuilder:
    """What ``Chain.append_rule`` / ``insert_rule`` would hand to libiptc for a rule, cheaply for address-only rules.

    That buffer is the rule's ``final_check()``, then ``rule.rule``. Creating a Rule and its target
    costs ~0.15 ms (the target decodes its extension), and ``rule.rule`` rebuilds a ctypes buffer;
    thousands of exclusions differ only in ``-d``. So for a rule without matches or target options,
    the buffer of the first rule of its shape (the rule without its ``-s``/``-d`` values and their
    ``!``) is kept as a template, and later rules of that shape get a copy with their addresses
    written where python-iptables' ``set_src``/``set_dst`` write them. The check is done once per
    shape: a target without parameters comes out of it as it went in, and addresses are not checked.
    """

    def __init__(self, family):
        self.family = family
        self.shapes = {}  # shape -> template bytes
        self._encode = _ipv4_address_and_mask if family == IPV4 else _ipv6_address_and_mask
        self._layout = None  # from the first Rule built: see _address_layout

    def entry(self, args):
        shape_and_addresses = _plain_address_rule(args)
        if shape_and_addresses is None:
            parsed = parse_rule(args)
            if parsed.matches or parsed.target_options:
                return self._built(args)[1]
            shape_and_addresses = _address_only_shape(parsed)
        shape, addresses = shape_and_addresses
        template = self.shapes.get(shape)
        if template is None:
            rule, entry = self._built(args)
            if self._layout is None:
                self._layout = _address_layout(rule, self.family)
            self.shapes[shape] = bytes(entry)
            return entry
        entry = bytearray(template)
        for flag, (negated, value) in addresses.items():
            address_and_mask = self._encode(value)
            if address_and_mask is None:  # a form the template does not cover: python-iptables parses it
                return self._built(args)[1]
            address, mask = address_and_mask
            address_at, mask_at, invflags_at, bit, inv_mask = self._layout[flag]
            entry[address_at:address_at + len(address)] = address
            entry[mask_at:mask_at + len(mask)] = mask
            # as set_src/set_dst: set the inversion bit, or clear it and every bit outside the mask
            entry[invflags_at] = entry[invflags_at] | bit if negated else entry[invflags_at] & ~bit & inv_mask
        return (ctypes.c_ubyte * len(entry)).from_buffer(entry)

    def _built(self, args):
        """A new Rule for ``args`` and the buffer python-iptables hands libiptc for it."""
        rule = _build_rule(args, self.family)
        rule.final_check()
        return rule, rule.rule


def _address_only_shape(parsed):
    """``(shape, addresses)`` of a parsed rule without matches or target options.

    ``addresses`` is ``{flag: (negated, value)}`` of its ``-s``/``-d``; ``shape`` is everything else.
    """
    addresses = {flag: parsed.fields[flag] for flag in _ADDRESS_FLAGS if flag in parsed.fields}
    others = tuple(sorted((flag, negated, value) for flag, (negated, value) in parsed.fields.items()
                          if flag not in addresses))
    return (parsed.target, others, tuple(sorted(addresses))), addresses


def _plain_address_rule(args):
    """``_address_only_shape(parse_rule(args))`` for ``[!] -s A [!] -d B -j TARGET`` text; None for other text.

    Spares the exclusion rules, written by the thousand, ``parse_rule`` and its general grammar.
    Single spaces and no quotes or backslashes mean ``str.split`` splits as ``shlex.split`` would.
    """
    if not isinstance(args, str) or "'" in args or '"' in args or "\\" in args:
        return None
    tokens = args.split()
    if " ".join(tokens) != args:
        return None
    addresses = {}
    negated = False
    i = 0
    while i < len(tokens) - 1:
        token = tokens[i]
        if token == "!" and not negated:
            negated = True
            i += 1
        elif token in _ADDRESS_FLAGS and token not in addresses:
            addresses[token] = (negated, tokens[i + 1])
            negated = False
            i += 2
        elif token == "-j" and not negated and i == len(tokens) - 2:
            return (tokens[i + 1], (), tuple(sorted(addresses))), addresses
        else:
            return None
    return None


def _address_layout(rule, family):
    """``{flag: (address offset, mask offset, invflags offset, inversion bit, invflags mask)}`` in an entry buffer.

    Taken from python-iptables' ctypes definitions of ``ipt_entry.ip`` / ``ip6t_entry.ipv6``.
    """
    ip_name, prefix = ("ip", "IPT_") if family == IPV4 else ("ipv6", "IP6T_")
    ip_at = getattr(type(rule.entry), ip_name).offset
    ip_type = type(rule.get_ip())
    invflags_at = ip_at + ip_type.invflags.offset
    inv_mask = getattr(ip_type, prefix + "INV_MASK")
    fields = (("-s", "src", "smsk", "INV_SRCIP"), ("-d", "dst", "dmsk", "INV_DSTIP"))
    return {flag: (ip_at + getattr(ip_type, address).offset, ip_at + getattr(ip_type, mask).offset, invflags_at,
                   getattr(ip_type, prefix + inversion), inv_mask)
            for flag, address, mask, inversion in fields}


_IPV4_MASKS = tuple((((1 << bits) - 1) << (32 - bits)).to_bytes(4, "big") for bits in range(33))
_IPV6_MASKS = tuple((((1 << bits) - 1) << (128 - bits)).to_bytes(16, "big") for bits in range(129))


def _split_address(value, family, masks):
    """Address and mask bytes of ``ADDR`` (a host) or ``ADDR/N``; None for a netmask or a length out of range."""
    host, slash, prefix = value.partition("/")
    if not slash:
        bits = len(masks) - 1
    elif prefix.isascii() and prefix.isdigit() and int(prefix) < len(masks):
        bits = int(prefix)
    else:
        return None
    try:
        return socket.inet_pton(family, host), masks[bits]
    except (OSError, ValueError):  # not an address: python-iptables reports it
        return None


def _ipv4_address_and_mask(value):
    """The address and mask bytes ``Rule.set_src``/``set_dst`` write for ``ADDR[/N]``: the address masked."""
    split = _split_address(value, socket.AF_INET, _IPV4_MASKS)
    if split is None:
        return None
    address, mask = split
    return (int.from_bytes(address, "big") & int.from_bytes(mask, "big")).to_bytes(4, "big"), mask


def _ipv6_address_and_mask(value):
    """The address and mask bytes ``Rule6.set_src``/``set_dst`` write for ``ADDR[/N]``: the address as given."""
    return _split_address(value, socket.AF_INET6, _IPV6_MASKS)


def _build_rule(args, family):
    """A python-iptables rule from canonical iptables-save arguments."""
    parsed = parse_rule(args)
    rule = _rule_with_matches(parsed, family)
    target = rule.create_target(parsed.target)
    for option in parsed.target_options:
        target.set_parameter(option.name[2:], " ".join(option.values))
    if family != IPV4:
        fix_ipv6_interface_masks(rule.entry.ipv6)
    return rule


# python-iptables 1.2.0 writes IPv6 interface masks as 0x01 bytes where ip6tables writes 0xff. The
# kernel compares (name ^ rule) & mask per byte, so with 0x01 only one bit of each character counts
# and `-o lo` also matches `vm0`: IPv6 traffic would leave through the lo RETURN rules uncaptured.
_MASK_FIELDS = ("iniface_mask", "outiface_mask")
DAMAGED_MASK = "[ipv6-interface-mask-not-as-ip6tables-writes-it]"


def fix_ipv6_interface_masks(ipv6):
    """Give an ``ip6t_ip6`` the interface masks ip6tables writes: 0xff for every byte the name covers."""
    for name in _MASK_FIELDS:
        covered = len(getattr(ipv6, name))  # ctypes stops at the first zero byte
        setattr(ipv6, name, b"\xff" * covered + b"\0" * (16 - covered))


def has_damaged_interface_mask(ipv6):
    return any(set(getattr(ipv6, name)) - {0xFF} for name in _MASK_FIELDS)


def _render_rule(rule, family):
    """The canonical iptables-save arguments of a python-iptables rule."""
    ip = rule.get_ip()
    out = []
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        out += _address_tokens(flag, value)
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            out += (["!", flag, value[1:]] if value.startswith("!") else [flag, value])
    protocol = rule.protocol
    if protocol and protocol not in ("ip", "all", "0"):
        out += (["!", "-p", protocol[1:]] if protocol.startswith("!") else ["-p", protocol])
    for match in rule.matches:
        out += ["-m", match.name]
        saved = match._get_saved_buf(ip)  # pylint: disable=protected-access  # the extension's own save()
        if saved:
            out.append(saved.decode().strip())
    target = rule.target
    if target is not None and target.name:
        out += ["-j", target.name]
        saved = target._get_saved_buf(ip) if target._module else None  # pylint: disable=protected-access
        if saved and saved.strip():
            out.append(saved.decode().strip())
    if family != IPV4 and has_damaged_interface_mask(rule.entry.ipv6):
        out.append(DAMAGED_MASK)  # differs from the plan, so the rule is written again, correctly
    return " ".join(out)


def _address_tokens(flag, value):
    """The ``-s``/``-d`` arguments for python-iptables' ``[!]ADDR/MASK`` text; none for "any address"."""
    negated = value.startswith("!")
    if not negated:
        # The two commonest texts (no address; an IPv4 host, as thousands of exclusions are)
        # give what ipaddress gives, without its parsing (~30 us, twice per rule read).
        # inet_ntop, which python-iptables uses, already prints the canonical dotted quad.
        if value in ("0.0.0.0/0.0.0.0", "::/0"):
            return []
        if value.endswith("/255.255.255.255"):
            return [flag, value[:-len("/255.255.255.255")] + "/32"]
    network = ipaddress.ip_network(value.lstrip("!"), strict=False)
    if network.prefixlen or negated:
        return (["!"] if negated else []) + [flag, "%s/%d" % (address_text(network.network_address), network.prefixlen)]
    return []
