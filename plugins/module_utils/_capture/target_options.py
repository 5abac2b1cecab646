# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
# Private module utility of meshops.sidecar: no compatibility promise outside this collection.

"""The capture options as the target resolves them: users and groups from its account database,
nameservers from the namespace's resolv.conf, IPv6 from ``/proc/net/if_inet6``.

``istio_redirect_chains`` (``_capture.run``) and ``istio_redirect_chains_info`` (``_capture.inspect``)
both call ``target_options()``, in the target namespace, so they build the very same options.
"""

from __future__ import annotations

import grp
import os
import pwd

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import build_options, has_global_ipv6
from ansible_collections.meshops.sidecar.plugins.module_utils._system.resolv_conf import parse_resolv_conf


def uid_of(name):
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def gid_of(name):
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def read_file(path, default=""):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return default


def default_dns_servers(netns):
    """Nameservers the workload uses: ``/etc/netns/NAME/resolv.conf`` (what ``ip netns exec`` shows it), else ``/etc/resolv.conf``."""
    if netns and os.path.exists("/etc/netns/%s/resolv.conf" % netns):
        return parse_resolv_conf(read_file("/etc/netns/%s/resolv.conf" % netns))
    return parse_resolv_conf(read_file("/etc/resolv.conf"))


def target_options(params, netns):
    """``CaptureOptions`` of ``params`` on this target (raises ``OptionError``); call it inside the namespace."""
    return build_options(params, uid_of, gid_of, lambda: default_dns_servers(netns),
                         lambda: has_global_ipv6(read_file("/proc/net/if_inet6")))
