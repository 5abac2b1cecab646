# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The machine side of the ``netns`` module: read the current state, try sysctls, apply a plan.

Reads are ``ip -json`` commands, ``/etc/netns/NAME/resolv.conf`` and ``/proc/sys/net`` inside the
namespace (entered with ``_system.namespace``). Changes are the plan's steps, run in order; nothing is
changed in check mode. After applying, the state is read again and planned again: anything left
to do means the kernel did not take what was asked, and is reported as a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ansible_collections.meshops.sidecar.plugins.module_utils._netns import state
from ansible_collections.meshops.sidecar.plugins.module_utils._system import namespace
from ansible_collections.meshops.sidecar.plugins.module_utils._system.resolv_conf import parse_resolv_conf


class CommandError(Exception):
    """A command failed. Carries what ``fail_json`` should show."""

    actions = ()  # what was done before the failure

    def __init__(self, msg, argv, rc, stdout, stderr):
        super().__init__(msg)
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class ApplyError(Exception):
    """A change other than a command (sysctl, file) failed, or the result is not what was asked."""

    actions = ()  # what was done before the failure


_MISSING_DEVICE = ("does not exist", "Cannot find device")


def probe_sysctls(probes):
    """Write each value to its path and read it back; runs inside a scratch namespace.

    ``probes`` is ``{key: [path, value]}``. Returns ``{key: {"value": printed}}`` or
    ``{key: {"errno": n, "error": text}}``.
    """
    results = {}
    for key, (path, value) in probes.items():
        try:
            with open(path, "w") as handle:
                handle.write(value)
            with open(path) as handle:
                results[key] = {"value": handle.read().strip()}
        except OSError as exc:
            results[key] = {"errno": exc.errno, "error": exc.strerror or str(exc)}
    return results


def read_sysctls(sysctls):
    """``{key: value}`` of these sysctls in the current namespace (None: not there)."""
    values = {}
    for sysctl in sysctls:
        try:
            with open(sysctl.path) as handle:
                values[sysctl.key] = state.normalize_sysctl(handle.read())
        except FileNotFoundError:
            values[sysctl.key] = None
    return values


class NetnsSystem:
    """Reads and changes one named namespace through a ``_system.commands`` runner and ``_system.namespace``."""

    def __init__(self, runner):
        self.runner = runner
        self.ip = runner.which("ip")
        if not self.ip:
            raise state.StateError("the ip command (iproute2) is not installed on the target")
        self.done = []

    # -- reading -----------------------------------------------------------------------------

    def run(self, argv, missing_ok=False):
        """Run ``argv`` (its ``ip`` replaced by the real path); return stdout, or None if missing_ok and missing."""
        real = [self.ip if index == 0 and arg == "ip" else arg for index, arg in enumerate(argv)]
        rc, out, err = self.runner.run(real)
        if rc != 0:
            if missing_ok and any(text in err for text in _MISSING_DEVICE):
                return None
            raise CommandError(
                "command failed (rc=%d): %s: %s" % (rc, state.command(*argv).describe(), (err or out).strip()),
                real,
                rc,
                out,
                err,
            )
        return out

    def read(self, desired):
        """The :class:`~state.Current` state of the namespace and of its host side."""
        name = desired.name
        current = state.Current()
        listed = namespace.exists(name)
        current.exists = listed and namespace.is_mounted(name)
        current.stale_file = listed and not current.exists
        uplink = desired.uplink
        host_ip = uplink.host_ip if uplink is not None else ["ip"]
        if uplink is not None and uplink.peer_netns is not None and not namespace.is_mounted(uplink.peer_netns):
            raise state.StateError("uplink.peer_netns=%r: no such network namespace (create it first)" % uplink.peer_netns)
        if uplink is not None:
            found = self.run(host_ip + ["-json", "-d", "addr", "show", "dev", uplink.host_interface], missing_ok=True)
            links = state.parse_links(found) if found is not None else []
            current.host_link = links[0] if links else None
        if current.exists:
            current.links = state.parse_links(self.run(["ip", "-n", name, "-json", "-d", "addr", "show"]))
        if uplink is not None or desired.state == "absent":
            current.host_veths = state.parse_links(self.run(host_ip + ["-json", "-d", "link", "show", "type", "veth"]))
            # After the link dumps: the kernel numbers a peer namespace when it first reports a link to it.
            current.nsids = state.parse_netns_ids(self.run(host_ip + ["-json", "netns", "list"]))
        if current.exists and uplink is not None and desired.state == "present":
            for family in (4, 6):
                out = self.run(["ip", "-n", name, "-json", "-%d" % family, "route", "show", "table", "main", "default"])
                current.routes.extend(state.parse_routes(out, family))
        etc_dir = os.path.join(state.ETC_NETNS_DIR, name)
        current.etc_dir = os.path.lexists(etc_dir)
        try:
            with open(state.resolv_conf_path(name, state.ETC_NETNS_DIR)) as handle:
                current.resolv_conf = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            current.resolv_conf = None
        if current.exists and desired.sysctls and desired.state == "present":
            with namespace.entered(name):
                current.sysctls = read_sysctls(desired.sysctls)
        return current

    def kernel_values(self, desired, current):
        """Check the wanted sysctls in a scratch namespace; return them as the kernel prints them.

        Raises :class:`~state.ValidationError` for unknown sysctls and refused values.
        """
        if not desired.sysctls or desired.state != "present":
            return {}
        interfaces = {link.name for link in current.links}
        if desired.uplink is not None:
            interfaces.add(desired.uplink.interface)
        probes, errors = state.sysctl_probes(desired, interfaces)
        results = namespace.in_new_namespace(probe_sysctls, {key: list(value) for key, value in probes.items()}) if probes else {}
        values, more = state.sysctl_results(desired, results)
        errors.extend(more)
        if errors:
            raise state.ValidationError(errors)
        return values

    # -- changing ----------------------------------------------------------------------------

    def apply(self, desired, plan):
        for step in plan.steps:
            if step.kind == "command":
                self.run(step.argv)
            elif step.kind == "sysctl":
                self._write_sysctl(desired.name, step)
            elif step.kind == "write":
                self._write_file(step.path, step.value)
            elif step.kind == "remove":
                self._remove_file(step.path)
            elif step.kind == "remove_tree":
                self._remove_tree(step.path)
            else:  # pragma: no cover
                raise ApplyError("unknown step %r" % step.kind)
            self.done.append(step.describe())

    @staticmethod
    def _write_sysctl(name, step):
        try:
            with namespace.entered(name):
                with open(step.path, "w") as handle:
                    handle.write(step.value)
        except OSError as exc:
            raise ApplyError(
                "sysctls[%r]=%r could not be set in network namespace %r: %s" % (step.key, step.value, name, exc.strerror or exc)
            )

    @staticmethod
    def _write_file(path, content):
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=directory, prefix=".resolv.conf.")
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(content)
                os.chmod(temp, 0o644)
                os.replace(temp, path)
            except BaseException:
                os.unlink(temp)
                raise
        except OSError as exc:
            raise ApplyError("cannot write %s: %s" % (path, exc.strerror or exc))

    @staticmethod
    def _remove_file(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ApplyError("cannot remove %s: %s" % (path, exc.strerror or exc))
        try:
            os.rmdir(os.path.dirname(path))  # only if nothing else is in /etc/netns/NAME
        except OSError:
            pass

    @staticmethod
    def _remove_tree(path):
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ApplyError("cannot remove %s: %s" % (path, exc.strerror or exc))


def describe(desired, current):
    """The return values that describe the namespace."""
    result = {
        "name": desired.name,
        "path": desired.path,
        "exists": current.exists,
        "interfaces": [
            {
                "name": link.name,
                "addresses": [str(address) for address in link.addresses],
                "state": link.state,
                "operstate": link.operstate,
            }
            for link in sorted(current.links, key=lambda link: link.ifindex)
        ],
        "nameservers": parse_resolv_conf(current.resolv_conf) if current.resolv_conf is not None else [],
    }
    if desired.uplink is not None:
        host = current.host_link
        result["host_interface"] = (
            {"name": host.name, "addresses": [str(address) for address in host.addresses], "state": host.state} if host else None
        )
    if desired.sysctls and desired.state == "present":
        result["sysctls"] = dict(current.sysctls)
    return result


def run_netns(params, check_mode, diff_mode, runner):
    """Do what ``params`` (the netns module's options) ask; return the result and the warnings.

    Raises ``ValidationError`` / ``StateError`` / ``NetnsError`` / ``CommandError`` before any change.
    When a change fails, the ``CommandError`` / ``ApplyError`` raised has ``actions``: what was done.
    Validate, read, plan, apply, read back: the same steps as ``_capture.run``.
    """
    desired = state.validate(params)
    system = NetnsSystem(runner)
    current = system.read(desired)
    kernel_values = system.kernel_values(desired, current)
    plan = state.plan(desired, current, kernel_values)
    if plan.steps and not check_mode:
        try:
            system.apply(desired, plan)
            current = system.read(desired)
            left = state.plan(desired, current, kernel_values)
            if left.steps:
                raise ApplyError(
                    "network namespace %r did not reach the requested state; still to do: %s"
                    % (desired.name, "; ".join(step.describe() for step in left.steps))
                )
        except (CommandError, ApplyError) as exc:
            exc.actions = list(system.done)
            raise
    result = describe(desired, current)
    # The plan has steps exactly when the views differ; a step run without a visible difference still counts.
    result["changed"] = plan.changed or bool(system.done)
    result["actions"] = [step.describe() for step in plan.steps] if check_mode else list(system.done)
    result["commands"] = result["actions"]  # what ran, or would run: the same key as istio_redirect_chains
    if diff_mode:
        result["diff"] = {"before": plan.before, "after": plan.after}
    return result, plan.warnings
