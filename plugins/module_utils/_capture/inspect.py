# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""What ``istio_redirect_chains_info`` reports: per namespace, which modes hold capture, its rules and counters,
and, given the options of ``istio_redirect_chains``, whether the kernel matches them. Never changes anything.

The comparison is the module's own: the same options, planner, ownership claims and reconcile, so
``in_sync`` is true exactly when ``istio_redirect_chains`` would find no rule to change. Native
nftables mode the same way: one ``nft -j list ruleset`` read (``backends.nftables``), Istio's tables
in comparable form and the change (``nft_reconcile``), the desired tables (``nft_plan``), and the
rules as text (``nft_render``).
"""

from __future__ import annotations

import os
from collections import Counter

from ansible_collections.meshops.sidecar.plugins.module_utils._system import namespace
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import (
    counters,
    nft_reconcile,
    nft_render,
    ownership,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.selection import (
    BackendError,
    make_backends,
    select_backend,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.nftables import NftablesBackend
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import FAMILIES, IPV4
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import FAMILY as NFT_FAMILY
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import plan_ruleset
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import OptionError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import plan_rules
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import (
    desired_state,
    owned_state,
    plan_changes,
    render_state,
    unmarked_rules,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.target_options import target_options

IPTABLES_MODES = ("legacy", "nft")  # when both hold rules, the one istio_redirect_chains (backend=auto) manages first
NFTABLES_MODE = "nftables"  # Istio's native tables: inet istio-proxy-nat, -mangle, -raw


class InspectError(Exception):
    """The task must fail; the message names the option or namespace."""


def target_namespaces(netns):
    """The namespaces to report on, in order: ``None`` is the one the module runs in (the host's).

    ``netns``: None, a name, a list of names, or ``"*"`` (alone) for the host's and every named namespace.
    """
    if netns is None:
        return [None]
    names = [netns] if isinstance(netns, str) else netns
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise InspectError("netns=%r: a namespace name, a list of names, or '*'" % (netns,))
    if "*" in names:
        if names != ["*"]:
            raise InspectError("netns=%r: '*' cannot be combined with names" % (netns,))
        # A file left by an interrupted 'ip netns add' is not a namespace.
        return [None] + [name for name in namespace.list_names() if namespace.is_mounted(name)]
    seen = []
    for name in names:
        problem = namespace.name_error(name)
        if problem:
            raise InspectError("netns=%r: %s" % (name, problem))
        if not namespace.exists(name):
            raise InspectError("netns=%r: no network namespace of that name (%s does not exist)"
                               % (name, namespace.path_of(name)))
        if name not in seen:
            seen.append(name)
    return seen


def read_record(path, warn):
    """``(claims, state)`` of the ownership record: ``present``, ``absent``, or ``damaged`` (``warn`` is told why)."""
    problems = []
    claims = ownership.load(path, problems.append)
    for problem in problems:
        warn(problem)
    if problems:
        return claims, "damaged"
    return claims, "present" if os.path.exists(path) else "absent"


def chain_drift(family, table, chain, have, want):
    """Drift items of one chain: rules ``missing`` or ``extra`` (each copy counts), then rules ``out_of_order``."""
    items = []
    missing = Counter(want) - Counter(have)
    extra = Counter(have) - Counter(want)
    for kind, rules, surplus in (("missing", want, missing), ("extra", have, extra)):
        for rule in rules:
            if surplus[rule]:
                surplus[rule] -= 1
                items.append({"family": family, "table": table, "chain": chain, "kind": kind, "rule": rule})
    # The rules both have, in each order: where they differ, the wanted rule is out of order.
    shared = Counter(want) & Counter(have)
    want_shared, have_shared = _kept(want, shared), _kept(have, shared)
    for wanted, had in zip(want_shared, have_shared):
        if wanted != had:
            items.append({"family": family, "table": table, "chain": chain, "kind": "out_of_order", "rule": wanted})
    return items


def _kept(rules, budget):
    budget = Counter(budget)
    kept = []
    for rule in rules:
        if budget[rule]:
            budget[rule] -= 1
            kept.append(rule)
    return kept


def state_drift(family, current, desired, changes):
    """Drift items of one family, for the tables ``plan_changes`` says differ; a whole chain has ``rule: None``."""
    items = []
    for table in sorted(changes):
        have, want = current[table], desired[table]
        for chain in sorted(set(have.chains) | set(want.chains)):
            if chain not in have.chains:
                items.append({"family": family, "table": table, "chain": chain, "kind": "missing", "rule": None})
            elif chain not in want.chains:
                items.append({"family": family, "table": table, "chain": chain, "kind": "extra", "rule": None})
            items += chain_drift(family, table, chain, have.chains.get(chain, []), want.chains.get(chain, []))
        for chain in sorted(set(have.builtin) | set(want.builtin)):
            items += chain_drift(family, table, chain, have.builtin.get(chain, []), want.builtin.get(chain, []))
    return items


def native_drift(live, desired, changes):
    """Drift items of native mode (family ``inet``) for the tables ``nft_reconcile.plan_changes`` says differ.

    A whole table missing or extra has ``chain: None``, a whole chain ``rule: None``, then each of
    their chains and rules follow; a base chain whose type, hook, priority or policy differ has the
    wanted spec missing and the kernel's extra (``rule`` is the spec line, as ``nft list`` shows it).
    Rules are ``nft_render`` text of their canonical form.
    """
    items = []

    def item(table, chain, kind, rule):
        items.append({"family": NFT_FAMILY, "table": table, "chain": chain, "kind": kind, "rule": rule})

    for table in nft_render.table_order([change.table for change in changes]):
        have, want = live.get(table), desired.get(table)
        if have is None or want is None:
            item(table, None, "missing" if have is None else "extra", None)
        have, want = have or {}, want or {}
        for name in nft_render.chain_order(table, set(have) | set(want)):
            had, wanted = have.get(name), want.get(name)
            if had is None or wanted is None:
                item(table, name, "missing" if had is None else "extra", None)
            elif had.base != wanted.base:
                for kind, base in (("missing", wanted.base), ("extra", had.base)):
                    if base is not None:
                        item(table, name, kind, nft_render.render_base(base))
            for drift in chain_drift(NFT_FAMILY, table, name, had.rules if had else (), wanted.rules if wanted else ()):
                drift["rule"] = nft_render.render_rule(drift["rule"])
                items.append(drift)
    return items


def native_report(live, counted):
    """Istio's native tables for the result: ``[{table, family, chains: [{chain, type, hook, priority, policy,
    rules: [{rule, packets, bytes}]}]}]`` in a stable order; ``counted`` is ``counters.native_counters()``."""
    rules = {}
    for rule in counted["rules"]:
        rules.setdefault((rule["table"], rule["chain"]), []).append(
            {"rule": rule["rule"], "packets": rule["packets"], "bytes": rule["bytes"]})
    report = []
    for table in nft_render.table_order(live):
        chains = []
        for name in nft_render.chain_order(table, live[table]):
            base = live[table][name].base or (None, None, None, None)
            chains.append({"chain": name, "type": base[0], "hook": base[1], "priority": base[2], "policy": base[3],
                           "rules": rules.get((table, name), [])})
        report.append({"table": table, "family": NFT_FAMILY, "chains": chains})
    return report


def choose_active(modes, hooked, native_wanted=False):
    """The mode in effect: of the modes holding rules, those ``hooked`` (jumped to from a built-in chain or in
    a base chain, where traffic passes) first, then in the order the module manages them: native nftables
    first when the compared options want it, else last; None when no mode holds rules."""
    order = (NFTABLES_MODE,) + IPTABLES_MODES if native_wanted else IPTABLES_MODES + (NFTABLES_MODE,)
    for candidates in ([mode for mode in modes if mode in hooked], modes):
        for mode in order:
            if mode in candidates:
                return mode
    return None


class NamespaceInspection:
    """One namespace, read from inside it (enter it first: ``_system.namespace.entered``)."""

    def __init__(self, netns, runner, warn, compare_params=None):
        self.netns = netns
        self.runner = runner
        self.warn = warn
        self.compare_params = compare_params
        self.backends = make_backends(runner)
        self.nftables = NftablesBackend(runner)
        self.ipv6_kernel = os.path.exists("/proc/net/if_inet6")
        self.families = FAMILIES if self.ipv6_kernel else (IPV4,)

    def _options(self):
        """``CaptureOptions`` exactly as ``istio_redirect_chains`` builds them here (``_capture.run``)."""
        params = self.compare_params
        try:
            opts = target_options(params, self.netns)
        except OptionError as exc:
            raise InspectError(str(exc))
        if opts.ipv6 and not self.ipv6_kernel:
            raise InspectError("ipv6=true: IPv6 is disabled in this network namespace's kernel")
        return opts

    def _read(self, backend, family, claims):
        """``(state, dumps, counts)`` of a family in one backend; None when that backend cannot read it here."""
        if backend.missing((family,)):
            return None
        try:
            if backend.name == "nft":
                dumps, counts = counters.nft_counted_read(self.runner.run, self.runner.which, family)
            else:
                dumps, counts = counters.legacy_counted_read(family)
        except BackendError:
            return None  # e.g. no IPv6 in this kernel: nothing of ours can be there
        return owned_state(dumps, claims), dumps, counts

    def _read_native(self):
        """``(document, problems)``: the ``nft -j`` document of Istio's tables here (``backends.nftables``), or
        None and why when ``nft`` is missing or cannot read them (then no native table is reported)."""
        missing = self.nftables.missing()
        if missing:
            return None, ["missing " + ", ".join(missing)]
        try:
            return self.nftables.read(), []
        except BackendError as exc:
            self.warn("cannot look for Istio's native nftables tables: %s" % exc)
            return None, [str(exc)]

    def execute(self):
        opts = self._options() if self.compare_params is not None else None
        plan = plan_rules(opts) if opts and not opts.native_nftables else {}
        recorded, record = read_record(ownership.record_path(self.netns, namespace.inode_of()), self.warn)
        desired, claims = {}, {}
        for family in FAMILIES:
            desired[family] = desired_state(plan.get(family, []), family)
            claims[family] = recorded.get(family, set()) | unmarked_rules(desired[family])  # as _capture.run claims

        reads = {}  # mode -> {family: (state, dumps, counts)}
        for mode in IPTABLES_MODES:
            backend = self.backends[mode]
            reads[mode] = {}
            for family in self.families:
                read = self._read(backend, family, claims[family])
                if read is not None:
                    reads[mode][family] = read
        modes = [mode for mode in ("nft", "legacy")
                 if any(not owned.is_empty() for state, dummy, dummy2 in reads[mode].values() for owned in state.values())]
        hooked = [mode for mode in modes
                  if any(owned.builtin for state, dummy, dummy2 in reads[mode].values() for owned in state.values())]
        document, nft_problems = self._read_native()
        native = nft_reconcile.live_state(document) if document is not None else {}
        if native:
            modes.append(NFTABLES_MODE)
            # Istio's tables carry their own base chains: traffic passes them as soon as one exists.
            if any(chain.base for chains in native.values() for chain in chains.values()):
                hooked.append(NFTABLES_MODE)
        active = choose_active(modes, hooked, bool(opts and opts.native_nftables))

        entry = {
            "netns": self.netns,
            "modes": modes,
            "active": active,
            "leftovers": [mode for mode in modes if mode != active],
            "record": record,
            "rules": {},
            "counters": {"rules": [], "totals": counters.totals([])},
        }
        native_counted = counters.native_counters(document) if native else None
        if native:
            entry["nftables"] = native_report(native, native_counted)
        if active in IPTABLES_MODES:
            rules = []
            for family, (state, dumps, counts) in sorted(reads[active].items()):
                if any(not owned.is_empty() for owned in state.values()):
                    entry["rules"][family] = render_state(state)
                rules += counters.owned_counters(dumps, counts, state, family)
            entry["counters"] = {"rules": rules, "totals": counters.totals(rules)}
        elif active == NFTABLES_MODE:
            entry["rules"][NFTABLES_MODE] = nft_render.render_state(native)  # the key istio_redirect_chains uses
            entry["counters"] = native_counted
        if opts is not None:
            entry.update(self._compare(opts, active, reads, desired, plan, native, nft_problems))
        return entry

    def _compare(self, opts, active, reads, desired, plan, native, nft_problems):
        """``compared_mode``, ``in_sync`` and ``drift``, as ``_capture.run`` reconciles: the wanted mode's rules,
        and the other mode's, which the module removes (native tables outside native mode, the ``ISTIO_*`` rules
        of the iptables backend it would choose in native mode)."""
        if opts.native_nftables:
            if nft_problems:
                raise InspectError("native_nftables=true: cannot read the native nftables tables here: %s"
                                   % "; ".join(nft_problems))
            try:
                wanted = nft_reconcile.desired_state(plan_ruleset(opts))
            except OptionError as exc:
                raise InspectError(str(exc))
            mode = NFTABLES_MODE
            iptables_mode = self._iptables_mode(active, required=False)
        else:
            wanted = {}  # the module deletes Istio's native tables when it manages iptables rules
            mode = iptables_mode = self._iptables_mode(active, required=True)
        changes = nft_reconcile.plan_changes(wanted, native)
        native_items = native_drift(native, wanted, changes)
        iptables_items = []
        in_sync = not changes
        for family in FAMILIES if iptables_mode else ():
            read = reads[iptables_mode].get(family)
            if read is None:
                if family in plan:
                    raise InspectError("cannot read the %s rules of the %s mode to compare them" % (family, mode))
                continue
            family_changes = plan_changes(read[0], desired[family])
            in_sync = in_sync and not family_changes
            iptables_items += state_drift(family, read[0], desired[family], family_changes)
        drift = native_items + iptables_items if mode == NFTABLES_MODE else iptables_items + native_items
        return {"compared_mode": mode, "in_sync": in_sync, "drift": drift}

    def _iptables_mode(self, active, required):
        """The iptables mode the module manages here: the active one, else the backend ``auto`` chooses
        (None when none is usable and not ``required``: native mode then has nothing to clear)."""
        if active in IPTABLES_MODES:
            return active
        try:
            return select_backend("auto", self.families, self.backends["nft"], self.backends["legacy"])[0].name
        except BackendError as exc:
            if required:
                raise InspectError(str(exc))
            return None


def inspect(netns, runner, warn, compare_params=None):
    """``{"namespaces": [...]}`` for ``netns`` (see ``target_namespaces``); compare when ``compare_params`` is given.

    ``runner``: a ``_system.commands`` runner; ``warn(text)`` reports a warning.
    """
    results = []
    for name in target_namespaces(netns):
        try:
            with namespace.entered(name):
                results.append(NamespaceInspection(name, runner, warn, compare_params).execute())
        except namespace.NetnsError as exc:
            if netns in ("*", ["*"]) and not namespace.exists(name):
                continue  # deleted since it was listed: "every namespace" no longer includes it
            raise InspectError("netns=%r: %s" % (name, exc))
        except InspectError as exc:
            raise InspectError("netns=%r: %s" % (name, exc) if name else str(exc))
    return {"namespaces": results}
