# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""What ``istio_redirect_chains`` does, start to end: validate, read, plan, apply, read back, verify.

Everything is decided before anything is changed: bad options, a missing namespace or tool, or
an SSH port that would be captured fail with nothing touched. Each address family is then
applied as one transaction; if a later family fails, the earlier one is put back.

Two modes share the run: the iptables rules (per family, through the nft or legacy backend) and
Istio's native nftables tables (one ``nft -f -`` transaction for both families). Each run plans
both: the mode in use gets its rules, the other is planned empty, so a mode switch or
``state=absent`` leaves nothing of either behind. The wanted mode is applied first, then the other
is cleared: there is no moment without capture.

The planners, the reconciler and renderer of Istio's tables, the ipset code and the verification
probes are imported where a run first needs them: a task compiles only what its mode and its
namespace use (the module's payload is imported from a zip, which Python compiles from source on
every run; see docs/performance.md). An iptables-mode run without ``cidr_sets`` in a namespace with
no table of Istio's imports none of the native or ipset code.
"""

from __future__ import annotations

import os
from ansible_collections.meshops.sidecar.plugins.module_utils._system import namespace, netlink
from ansible_collections.meshops.sidecar.plugins.module_utils._capture import ownership
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import OptionError
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.target_options import target_options
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.model import FAMILIES, IPV4, IPV6, Record
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.ssh_guard import (
    captures_inbound_port,
    captures_outbound_to,
    ssh_session,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.reconcile import (
    desired_state,
    owned_state,
    plan_changes,
    render_state,
    restore_text,
    unmarked_rules,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.routes import RouteManager, desired_policy_routes
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.selection import (
    BackendError,
    make_backends,
    select_backend,
)
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.cidr_sets import iptables_rules_match_sets
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_model import istio_table_names

_FAMILY_TITLE = {IPV4: "IPv4", IPV6: "IPv6"}


class CaptureError(Exception):
    """The run must fail; ``details`` go into the module result."""

    def __init__(self, msg, **details):
        super().__init__(msg)
        self.details = details


def _nft_reconcile():
    """The reconciler of Istio's native tables, imported by the runs that meet or want them."""
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture import nft_reconcile
    return nft_reconcile


def _ipset_reconcile():
    """The ipset planner, imported by the runs that want or hold sets of ours."""
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture import ipset_reconcile
    return ipset_reconcile


def _render_tables(tables, rule_text, sets):
    """Istio's tables as ``nft list`` shows them (``nft_render.render_state``): native mode, diffs, errors."""
    from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_render import render_state
    return render_state(tables, rule_text, sets)


def _istio_table_names():
    """The namespace's ``inet istio-proxy-*`` tables by name, sorted, from one netlink dump; None when unknown."""
    names = netlink.nft_table_names(netlink.NFPROTO_INET)
    return None if names is None else istio_table_names(names)


def _netns_inode(name):
    try:
        return namespace.inode_of(name)
    except OSError:
        return None


class _FamilyPlan(Record):
    """Per address family: the planned rules, the owned state before and after, and the changes between."""

    __slots__ = ("rules", "before", "after", "changes")

    def __init__(self, rules):
        self.rules = rules
        self.before = {}
        self.after = {}
        self.changes = {}


class _NativePlan(Record):
    """Istio's native ``inet istio-proxy-*`` tables: as they are, as wanted, and the transaction between.

    ``before`` and ``after`` are in ``nft_reconcile`` form; ``backend`` is None when the target has no
    ``nft`` and native mode is not wanted (no native table can exist then). ``generation`` is the
    namespace's nftables generation ``before`` was known at (None: unknown), ``digest`` the plan's.
    ``before`` is None when the record's stamp proved the tables equal to the plan without reading them.
    """

    __slots__ = ("backend", "tables", "before", "before_sets", "changes", "generation", "digest", "_after")

    def __init__(self, backend=None):
        self.backend = backend
        self.tables = ()
        self.before = {}
        self.before_sets = {}  # nft_reconcile.live_sets form (cidr_sets)
        self.changes = []
        self.generation = None
        self.digest = ""
        self._after = None

    @property
    def after(self):
        """The desired tables in comparable form, computed when first needed (10,000 rules cost ~0.3 s)."""
        if self._after is None:
            self._after = _nft_reconcile().desired_state(self.tables)
        return self._after

    @property
    def after_sets(self):
        return _nft_reconcile().desired_sets(self.tables)

    @property
    def transaction(self):
        return _nft_reconcile().transaction_text(self.changes, self.tables)

    def text(self):
        """The desired tables as ``nft list`` shows them, rules in the planner's words (fast at any size)."""
        return _render_tables(_nft_reconcile().planned_state(self.tables), str, self.after_sets)


class _IpsetPlan(Record):
    """The ipsets of ``cidr_sets`` (iptables backends): as they are, as wanted, and the scripts between.

    ``backend`` is None when the run needs no set, ``changes`` (``ipset_reconcile.IpsetChanges``) when there is
    nothing to change."""

    __slots__ = ("backend", "before", "wanted", "changes", "left")

    def __init__(self, backend=None, wanted=None):
        self.backend = backend
        self.before = {}
        self.wanted = {} if wanted is None else wanted
        self.changes = None
        self.left = []  # sets to destroy that a rule elsewhere still matches

    @property
    def fill(self):
        """The ``ipset restore`` script to run before the iptables transaction, "" for none."""
        return self.changes.fill if self.changes else ""

    @property
    def destroy(self):
        """The names of the sets to destroy after it."""
        return self.changes.destroy if self.changes else ()


class _RoutePlan(Record):
    """Policy routes and ``::6`` on ``lo``: as they are, as wanted after the run, and the commands between."""

    __slots__ = ("manager", "now", "passthrough_now", "wanted", "passthrough_after", "commands")

    def __init__(self, manager, now, passthrough_now):
        self.manager = manager
        self.now = now
        self.passthrough_now = passthrough_now
        self.wanted = set()
        self.passthrough_after = False
        self.commands = []


class CaptureRun:
    """One task: ``execute()`` validates, reads, plans, applies, reads back and verifies, in that order."""

    def __init__(self, params, check_mode, runner, warn, diff_mode=True, find_session=ssh_session):
        """``runner``: a ``_system.commands`` runner; ``warn(text)`` reports a warning.

        ``find_session()`` gives the ``ssh_guard.SshSession`` this task runs over, or None.
        """
        self.params = params
        self.check_mode = check_mode
        self.diff_mode = diff_mode
        self.runner = runner
        self.warn = warn
        self.find_session = find_session
        self.netns = params.get("netns")
        self.present = params["state"] == "present"
        self.claims = {}  # family -> built-in chain rules of ours that nothing marks as ours
        self.ipv6_kernel = False  # set by _validate, in the target namespace
        self.backends = {}  # set by _choose_backend
        self.native = False  # native nftables mode wanted; set by execute
        self.native_stamp = None  # {"generation", "digest"} when the tables are known to be the plan
        self.record, self.recorded = None, {}  # the ownership record's path and content, set by _read

    def execute(self):
        opts = self._validate()
        self.native = bool(opts and opts.native_nftables)
        self._load_record()
        native = self._native_plan(opts)
        backend, reason = self._choose_backend(opts)
        tables = self._read(backend)
        ipsets = self._ipset_plan(opts, tables)
        families = self._plan(opts, tables)
        if backend is not None:
            self._warn_about_other_backend(backend, opts.families if opts else (IPV4,))
        routes = self._routes_plan(opts)
        result = self._result(opts, backend, reason, families, native, ipsets, routes)
        if self.check_mode:
            return result
        if result["changed"]:
            self._apply_modes(backend, families, native, ipsets)
            self._apply_routes(routes, result)
            self._read_back(backend, families, native, ipsets, routes, result)
        self._keep_record(families.after, native)
        if self.params["verify"] and self.present:
            try:
                result.update(self._verify(opts))
            except CaptureError as exc:
                exc.details = dict(result, **exc.details)  # the rules were applied: changed stays true
                raise
        return result

    def _validate(self):
        """Enter the namespace and build the options (None for absent); fail before anything is read or changed."""
        home_inode = namespace.inode_of()
        # Before entering the target: when this very process carries SSH_CONNECTION (root without
        # become), the session's namespace is the one the process started in.
        session = self.find_session()
        if self.netns is not None:
            problem = namespace.name_error(self.netns)
            if problem:
                raise CaptureError("netns=%r: %s" % (self.netns, problem))
            try:
                namespace.enter(self.netns)
            except namespace.NetnsError as exc:
                raise CaptureError("netns=%r: %s" % (self.netns, exc))
        self.ipv6_kernel = os.path.exists("/proc/net/if_inet6")
        if not self.present:
            return None
        try:
            opts = target_options(self.params, self.netns)
        except OptionError as exc:
            raise CaptureError(str(exc))
        if opts.ipv6 and not self.ipv6_kernel:
            raise CaptureError("ipv6=true: IPv6 is disabled in this network namespace's kernel")
        if self.params["capture_dns"] and not opts.redirect_dns:
            self.warn("capture_dns=true but there are no nameservers to capture (dns_servers is empty and "
                      "resolv.conf lists none): DNS capture is off, as Istio does")
        self._refuse_capturing_ssh(opts, session, home_inode)
        return opts

    def _choose_backend(self, opts):
        """The iptables backend, and why. In native mode it only clears ISTIO_* rules: None when unusable."""
        self.backends = make_backends(self.runner)
        try:
            backend, reason = select_backend(self.params["backend"], opts.families if opts else (IPV4,),
                                             self.backends["nft"], self.backends["legacy"])
        except BackendError as exc:
            if self.native or not self.present:  # nothing to clear where no backend works
                return None, "no iptables backend: %s" % exc
            raise CaptureError(str(exc))
        if self.native:
            return backend, "native_nftables=true"
        return backend, reason

    def _native_plan(self, opts):
        """Istio's inet tables now and as wanted: the plan's tables in native mode, none otherwise.

        With 10,000 rules, listing them costs nft a second. So when the record's stamp says that at the
        namespace's current nftables generation the tables were exactly this plan, nothing has been
        committed since and they are not read: the kernel counts every commit, by anyone.

        In iptables mode, when netlink says there is no table of Istio's, there is nothing to clear
        and the nftables backend is not even imported."""
        if not self.native and _istio_table_names() == []:
            return _NativePlan()
        from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.nftables import NftablesBackend
        plan = _NativePlan(NftablesBackend(self.runner))
        if self.native:
            if not plan.backend.present():
                self._refuse_native(plan.backend)
            from ansible_collections.meshops.sidecar.plugins.module_utils._capture.nft_plan import plan_ruleset
            try:
                plan.tables = plan_ruleset(opts)
            except OptionError as exc:
                raise CaptureError(str(exc))
            plan.digest = _nft_reconcile().plan_digest(plan.tables)
        elif not plan.backend.present():
            return _NativePlan()  # no nft at all: no native table can be there
        plan.generation = plan.backend.generation()
        stamp = ownership.load_stamp(self.record)
        proven = {"generation": plan.generation, "digest": plan.digest}
        # The stamp is keyed by the namespace's inode, which the kernel reuses for a later namespace:
        # Istio's tables must also be there, by name, exactly those of the plan.
        if (self.native and plan.generation is not None and stamp == proven
                and _istio_table_names() == sorted(table.name for table in plan.tables)):
            plan.before = None  # and nft is not run: its version is checked when it has work to do
            self.native_stamp = stamp
            return plan
        if self.native:
            self._refuse_native(plan.backend)
        try:
            document = plan.backend.read()
        except BackendError as exc:
            if self.native:
                raise CaptureError(str(exc))
            self.warn("cannot look for Istio's native nftables tables (%s): any there are left as they are" % exc)
            return _NativePlan()
        if not self.native and not document["nftables"]:
            return plan  # no table of Istio's: nothing to clear
        nft_reconcile = _nft_reconcile()
        plan.before = nft_reconcile.live_state(document)
        plan.before_sets = nft_reconcile.live_sets(document)
        if plan.backend.generation() != plan.generation:
            plan.generation = None  # someone committed while we read: what we read has no generation
        names = [table.name for table in plan.tables]
        if set(names) & set(plan.before):
            plan.changes = nft_reconcile.plan_changes(plan.after, plan.before, plan.after_sets, plan.before_sets)
        else:
            plan.changes = nft_reconcile.fresh_changes(names, plan.before)
        if self.native and not plan.changes and plan.generation is not None:
            self.native_stamp = {"generation": plan.generation, "digest": plan.digest}
        return plan

    @staticmethod
    def _refuse_native(backend):
        """Fail when the target's nft is missing or older than Istio's minimum."""
        missing = backend.missing()
        if missing:
            raise CaptureError("native_nftables=true: not usable on the target, missing %s" % ", ".join(missing))

    def _ipset_plan(self, opts, tables):
        """The ipsets of ours now and as wanted. Without the ``ipset`` tool none can be read or
        written: an error when sets are wanted, else there is nothing to do.

        They are only looked for when wanted, for ``state=absent``, or when a rule of ours matches one:
        the common run without ``cidr_sets`` imports no ipset code and starts no ``ipset`` process
        (without ``cidr_sets`` no set is wanted: ``cidr_sets.planned_sets``)."""
        rules_match = iptables_rules_match_sets(tables)
        if self.present and not opts.cidr_sets and not rules_match:
            return _IpsetPlan()
        from ansible_collections.meshops.sidecar.plugins.module_utils._capture.backends.ipset import IpsetBackend
        ipset_reconcile = _ipset_reconcile()
        plan = _IpsetPlan(IpsetBackend(self.runner), wanted=ipset_reconcile.wanted_ipsets(opts))
        if not (plan.wanted or not self.present or rules_match):
            return plan
        if plan.backend.missing():
            if plan.wanted:
                raise CaptureError("cidr_sets=true: the ipset tool is not on the target (install the ipset "
                                   "package), or use native_nftables=true, whose sets need no tool")
            return plan
        try:
            plan.before = plan.backend.read()
            plan.changes = ipset_reconcile.plan_changes(plan.wanted, plan.before)
        except (BackendError, ipset_reconcile.IpsetConflict) as exc:
            raise CaptureError(str(exc))
        return plan

    def _load_record(self):
        self.record = ownership.record_path(self.netns, namespace.inode_of())
        self.recorded = ownership.load(self.record, self.warn)
        self.recorded_stamp = ownership.load_stamp(self.record)

    def _read(self, backend):
        """``{family: parsed tables}`` as the backend reads them now; a family it cannot read is left out."""
        tables = {}
        for family in FAMILIES:
            try:
                if backend is None:
                    raise BackendError("no iptables backend")
                tables[family] = backend.read(family)
            except BackendError as exc:
                tables[family] = exc
        return tables

    def _plan(self, opts, tables):
        """The owned state before, the desired state after, and the changes between them, per family.

        In native mode nothing is wanted here: the iptables rules of ours are planned away."""
        families = _FamilyPlan({})
        if opts and not self.native:
            from ansible_collections.meshops.sidecar.plugins.module_utils._capture.plan import plan_rules
            families.rules = plan_rules(opts)
        for family in FAMILIES:
            desired = desired_state(families.rules.get(family, []), family)
            self.claims[family] = self.recorded.get(family, set()) | unmarked_rules(desired)
            if isinstance(tables[family], BackendError):
                if family in families.rules:
                    raise CaptureError(str(tables[family]))
                continue  # e.g. no IPv6 in this kernel: nothing of ours can be there
            current = owned_state(tables[family], self.claims[family])
            families.before[family] = current
            families.after[family] = desired
            family_changes = plan_changes(current, desired)
            if family_changes:
                families.changes[family] = family_changes
        return families

    def _routes_plan(self, opts):
        """The policy routes and ``::6`` now, as wanted, and the ``ip`` commands from one to the other."""
        manager = RouteManager(self.runner.run, self.ipv6_kernel)
        try:
            routes = _RoutePlan(manager, manager.policy_routes(), manager.has_passthrough_v6())
        except RuntimeError as exc:
            raise CaptureError("reading routes: %s" % exc)
        routes.wanted = desired_policy_routes(opts, self.present) if opts else set()
        passthrough_wanted = bool(opts and opts.ipv6)
        for stale in sorted(routes.now - routes.wanted):
            routes.commands += stale.delete_commands()
        for missing in sorted(routes.wanted - routes.now):
            rule_present = (missing.family, missing.mark, missing.table) in manager.fwmark_rules
            routes.commands += missing.add_commands(rule_present)
        if passthrough_wanted and not routes.passthrough_now:
            routes.commands.append(["ip", "-6", "addr", "add", "::6/128", "dev", "lo"])
        elif not self.present and routes.passthrough_now:
            routes.commands.append(["ip", "-6", "addr", "del", "::6/128", "dev", "lo"])
        routes.passthrough_after = passthrough_wanted or (self.present and routes.passthrough_now)
        return routes

    def _result(self, opts, backend, reason, families, native, ipsets, routes):
        iptables_commands = []
        if ipsets.fill:
            iptables_commands += [ipsets.backend.describe()] + ipsets.fill.splitlines() + ["EOF"]
        for family in FAMILIES:
            if family in families.changes:
                iptables_commands.append(backend.describe(family))
                iptables_commands.extend(restore_text(families.changes[family]).splitlines())
                if backend.name == "nft":
                    iptables_commands.append("EOF")
        if ipsets.changes:
            iptables_commands += ipsets.changes.destroy_commands()
        native_commands = []
        if native.changes:
            native_commands = [native.backend.describe()] + native.transaction.splitlines() + ["EOF"]
        # In the order they run: the wanted mode first (see _apply_modes).
        commands = native_commands + iptables_commands if self.native else iptables_commands + native_commands
        commands.extend(" ".join(argv) for argv in routes.commands)
        if self.native:
            rules = {"nftables": native.text()}
        else:
            rules = {family: render_state(families.after[family]) for family in FAMILIES
                     if family in families.rules and family in families.after}
            if ipsets.wanted:
                rules["ipsets"] = _ipset_reconcile().render_ipsets(ipsets.wanted)
        result = {
            "changed": bool(families.changes or native.changes or ipsets.changes or routes.commands),
            "backend": "nftables" if self.native else (backend.name if backend is not None else None),
            "backend_reason": reason,
            "ipv6": bool(opts and opts.ipv6),
            "rules": rules,
            "commands": commands,
        }
        if self.diff_mode:  # the before/after text can be large (one line per rule): only when asked for
            if native.before is None:  # proven equal by the stamp
                native_before, native_before_sets = native.after, native.after_sets
            else:
                native_before, native_before_sets = native.before, native.before_sets
            result["diff"] = {
                "before": self._describe(families.before, (native_before, native_before_sets), ipsets.before,
                                         routes.now, routes.passthrough_now),
                "after": self._describe(families.after, (native.after, native.after_sets), ipsets.wanted,
                                        routes.wanted, routes.passthrough_after),
            }
        return result

    def _apply_modes(self, backend, families, native, ipsets):
        """The wanted mode first, then the other one cleared: capture never lapses during a switch.

        A failure in the first step leaves everything as it was (one transaction each, families put
        back); a failure in the second says that the new mode is in place and the old one still is.
        The ipsets are filled before the iptables rules that match them, and destroyed after."""
        if not self.native:
            self._fill_ipsets(ipsets)
            try:
                self._apply_families(backend, families)
            except CaptureError as exc:
                self._put_ipsets_back(ipsets, exc)
                raise
            self._destroy_ipsets(ipsets, "the iptables rules were applied, but removing ")
            try:
                self._apply_native(native)
            except CaptureError as exc:
                if families.changes:
                    raise CaptureError("the iptables rules were applied, but removing Istio's native nftables "
                                       "tables failed, both are live: %s" % exc)
                raise
            return
        self._apply_native(native)
        try:
            self._apply_families(backend, families)
            self._destroy_ipsets(ipsets)
        except CaptureError as exc:
            if native.changes:
                raise CaptureError("the native nftables tables were applied, but removing the ISTIO_* iptables "
                                   "rules or their ipsets failed, both are live: %s" % exc)
            raise

    @staticmethod
    def _fill_ipsets(ipsets):
        if not ipsets.fill:
            return
        try:
            ipsets.backend.apply(ipsets.fill)
        except BackendError as exc:
            raise CaptureError("ipsets: %s" % exc)

    def _destroy_ipsets(self, ipsets, context=""):
        """The sets no rule of ours matches any more; one still matched elsewhere is left, with a warning."""
        if not ipsets.destroy:
            return
        try:
            in_use = ipsets.backend.destroy(ipsets.destroy)
        except BackendError as exc:
            raise CaptureError("%sipsets: %s" % (context, exc))
        for name in in_use:
            self.warn("the ipset %s is still matched by a rule this run does not manage (the other iptables "
                      "backend's ISTIO_* rules, or someone else's): it is left in place" % name)
        ipsets.left = in_use

    def _put_ipsets_back(self, ipsets, failure):
        """After a failed iptables transaction: the sets as they were (the old rules match them again)."""
        if not ipsets.fill:
            return
        ipset_reconcile = _ipset_reconcile()
        try:
            back = ipset_reconcile.plan_changes(ipsets.before, ipsets.backend.read())
            ipsets.backend.apply(back.fill)
            ipsets.backend.destroy(back.destroy)
        except (BackendError, ipset_reconcile.IpsetConflict) as undo:
            raise CaptureError("%s; putting the ipsets back failed too: %s" % (failure, undo))

    def _apply_native(self, native):
        if not native.changes:
            return
        try:
            native.backend.apply(native.transaction)
        except BackendError as exc:
            raise CaptureError("native nftables: %s" % exc)
        if self.native and native.generation is not None and native.backend.generation() == native.generation + 1:
            # Our transaction was the only commit since the tables were read, and the kernel applies a
            # transaction whole: the tables are now exactly the plan, no read back needed.
            self.native_stamp = {"generation": native.generation + 1, "digest": native.digest}

    def _apply_families(self, backend, families):
        """Each family in one transaction; when a later one fails, put the earlier ones back as they were."""
        applied = []
        for family in FAMILIES:
            if family not in families.changes:
                continue
            try:
                backend.apply(family, families.changes[family])
            except BackendError as exc:
                for done in applied:
                    try:
                        now = owned_state(backend.read(done), self.claims[done])
                        backend.apply(done, plan_changes(now, families.before[done]))
                    except BackendError as undo:
                        raise CaptureError("%s; putting %s back failed too: %s" % (exc, _FAMILY_TITLE[done], undo))
                raise CaptureError("%s: %s" % (_FAMILY_TITLE[family], exc))
            applied.append(family)

    @staticmethod
    def _apply_routes(routes, result):
        try:
            routes.manager.run_all(routes.commands)
        except RuntimeError as exc:
            raise CaptureError("the rules were applied, but a route change failed: %s" % exc, **result)

    def _read_back(self, backend, families, native, ipsets, routes, result):
        """Read what was just changed again: the kernel must now hold exactly what was planned."""
        problems = []
        if ipsets.changes:
            # ipset restore exits 0 only when every line took effect, so a set it filled holds the
            # script's members: what each set is and its number of entries are read back, not the members.
            try:
                now = ipsets.backend.read_headers()
            except BackendError as exc:
                problems.append("ipsets cannot be read back: %s" % exc)
            else:
                ipset_reconcile = _ipset_reconcile()
                wanted = ipset_reconcile.expected_headers(ipsets.wanted, ipsets.changes.filled)
                now = {name: found for name, found in now.items() if name not in ipsets.left}
                if not ipset_reconcile.headers_match(now, wanted):
                    problems.append("ipsets differ from the plan: now %s, wanted %s" % (
                        ipset_reconcile.describe_headers(now), ipset_reconcile.describe_headers(wanted)))
        if native.changes and not self.native_stamp:  # the stamp: proven by the generation (_apply_native)
            try:
                document = native.backend.read()
                nft_reconcile = _nft_reconcile()
                now, now_sets = nft_reconcile.live_state(document), nft_reconcile.live_sets(document)
            except BackendError as exc:
                problems.append("native nftables tables cannot be read back: %s" % exc)
            else:
                if now != native.after or now_sets != native.after_sets:
                    problems.append("native nftables tables differ from the plan: now\n%swanted\n%s"
                                    % (_render_tables(now, None, now_sets),
                                       _render_tables(native.after, None, native.after_sets)))
        for family in families.changes:
            try:
                now = owned_state(backend.read(family), self.claims[family])
            except BackendError as exc:
                problems.append("%s rules cannot be read back: %s" % (_FAMILY_TITLE[family], exc))
                continue
            left = plan_changes(now, families.after[family])
            if left:
                problems.append("%s rules differ from the plan; still to change:\n%s"
                                % (_FAMILY_TITLE[family], restore_text(left)))
        if routes.commands:
            try:
                routes_now = routes.manager.policy_routes()
                passthrough_now = routes.manager.has_passthrough_v6()
            except RuntimeError as exc:
                problems.append("routes cannot be read back: %s" % exc)
            else:
                if routes_now != routes.wanted or passthrough_now != routes.passthrough_after:
                    problems.append("routes and addresses differ from the plan: now\n%swanted\n%s" % (
                        self._describe({}, None, {}, routes_now, passthrough_now),
                        self._describe({}, None, {}, routes.wanted, routes.passthrough_after)))
        if problems:
            raise CaptureError("applied, but reading back found the kernel not as planned: %s"
                               % "; ".join(problems), **result)

    def _keep_record(self, after, native):
        """Remember the built-in chain rules of ours that nothing else marks as ours (see _capture.ownership),
        and the stamp of the native tables while nothing has been committed since they were known."""
        ownership.prune(_netns_inode)
        claims = {family: unmarked_rules(state) for family, state in after.items()} if self.present else {}
        stamp = self.native_stamp
        if stamp and native.backend.generation() != stamp["generation"]:
            stamp = None  # our own iptables changes, or someone else's, came after
        if ownership.dump(claims, stamp) != ownership.dump(self.recorded, self.recorded_stamp):
            try:
                ownership.save(self.record, claims, stamp)
            except OSError as exc:  # the rules are applied: say so, and what the next run will not know
                self.warn("the rules were applied, but the ownership record %s could not be written (%s): the "
                          "next run leaves rules in built-in chains that only the record says are ours"
                          % (self.record, exc))

    def _refuse_capturing_ssh(self, opts, session, home_inode):
        """Fail when the rules would cut the SSH session this task runs over, or every later one."""
        if session is None:
            return
        target_inode = namespace.inode_of(self.netns) if self.netns else home_inode
        if session.netns_inode != target_inode:
            return
        for port in session.ports:
            if captures_inbound_port(opts, port):
                raise CaptureError(
                    "refusing to capture inbound TCP port %d: it carries the SSH session this task runs over (%s), "
                    "in the same network namespace, and new connections to it would go to the proxy. Add %d to "
                    "exclude_inbound_ports (Istio's VM configuration excludes 22), or narrow inbound_ports."
                    % (port, session.describe(), port))
        if not opts.keep_existing_connections and captures_outbound_to(opts, session.client):
            raise CaptureError(
                "refusing to apply capture with keep_existing_connections=false in the network namespace of the SSH "
                "session this task runs over (%s): when conntrack picks up an open connection, its next packet "
                "counts as new, and the session's replies%s would be redirected to the proxy, cutting the "
                "session. Set keep_existing_connections=true (only connections that start with a SYN are "
                "captured), or exclude the client's address from outbound capture."
                % (session.describe(), " to " + session.client if session.client else ""))

    def _warn_about_other_backend(self, backend, families):
        nft, legacy = self.backends["nft"], self.backends["legacy"]
        other = legacy if backend is nft else nft
        if other.missing(families):
            return
        for family in families:
            if other is legacy and not legacy.holds_rules(family):
                continue
            try:
                theirs = owned_state(other.read(family))
            except BackendError:
                continue
            if any(not table.is_empty() for table in theirs.values()):
                self.warn("the %s backend also holds ISTIO_* rules (%s): both rule sets are live in the kernel. "
                          "Remove them with state=absent backend=%s." % (other.name, _FAMILY_TITLE[family], other.name))

    @staticmethod
    def _describe(states, native, ipsets, policy_routes, passthrough):
        """``native``: ``(tables, sets)`` in ``nft_reconcile`` form, or None; ``ipsets``: ``{name: IpsetState}``."""
        parts = []
        for family in FAMILIES:
            if family in states:
                parts.append("# %s rules of ours\n%s" % (_FAMILY_TITLE[family], render_state(states[family])))
        if ipsets:
            parts.append("# ipsets of ours\n%s" % _ipset_reconcile().render_ipsets(ipsets))
        if native and native[0]:
            parts.append("# native nftables tables of ours\n%s" % _render_tables(native[0], None, native[1]))
        lines = [route.describe() for route in sorted(policy_routes)]
        if passthrough:
            lines.append("ipv6: ::6/128 on lo")
        if lines:
            parts.append("# routes and addresses\n" + "\n".join(lines) + "\n")
        return "".join(parts)

    def _verify(self, opts):
        from ansible_collections.meshops.sidecar.plugins.module_utils._capture.verify import VerifyError, verify_capture
        uid = int(opts.proxy_uids[0])
        gid = int(opts.proxy_gids[0])
        probes = []
        try:
            for family in opts.families:
                probes.append(verify_capture(family, uid, gid, opts.inbound_capture_port))
        except VerifyError as exc:
            raise CaptureError("verify=true: %s" % exc, verified=False, verification=probes)
        return {"verified": True, "verification": probes}
