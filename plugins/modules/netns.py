#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: netns
short_description: Manage named Linux network namespaces, their uplink, nameservers and sysctls
version_added: 0.1.0
description:
  - Creates and removes named network namespaces, the C(/run/netns/NAME) objects that C(ip netns) manages.
  - Brings up the namespace's loopback interface, and can give the namespace an uplink to the host
    namespace (a veth pair with addresses on both ends and a default route per address family), its
    own nameservers (C(/etc/netns/NAME/resolv.conf), which C(ip netns exec) shows as C(/etc/resolv.conf)),
    and its own C(net.*) sysctls.
  - Names are matched exactly, so V(app) is created even when V(app2) exists.
  - Every option is idempotent. An address, route, nameserver or sysctl that differs is corrected, one that
    is already right is not touched, and a second run with the same options reports no change.
  - All options are checked before anything is changed. Sysctls are checked in a new, empty, unnamed
    network namespace that disappears at once, so an unknown sysctl or a value the kernel refuses is
    reported before any change, in check mode too.
  - A namespace left half-built by an earlier failure is completed, and the module warns about it. That
    covers a C(/run/netns/NAME) file that is not a mounted namespace, and a host end of the uplink
    whose peer is not the namespace's O(uplink.interface). The module fails, and says why, rather than
    replace what is not its own, such as a non-veth device with the uplink's name or a veth that belongs
    to another named namespace.
  - After a change the module reads the state again. If anything still differs from what was asked
    (for example a sysctl value the kernel rewrote), it fails and says what.
author:
  - meshops.sidecar developers (@meshops)
requirements:
  - iproute2 (the C(ip) command, with JSON output; tested with iproute2 6.1)
  - root, or the capabilities C(CAP_SYS_ADMIN) and C(CAP_NET_ADMIN)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  check_mode:
    support: full
    details: Runs only commands that read. Sysctls are tried in a throw-away namespace that has no name.
  diff_mode:
    support: full
    details: The diff shows the namespace, its loopback, uplink, default routes, resolv.conf lines and sysctls before and after.
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled and/or queried by the module has not changed in a relevant way.
    support: full
  platform:
    support: full
    platforms: posix
    details: Linux only.
  action_group:
    support: full
    membership:
      - meshops.sidecar.sidecar
options:
  name:
    description:
      - Name of the network namespace, a file name under C(/run/netns).
      - Must not contain C(/), must not be V(.) or V(..), and must be at most 255 bytes long.
    type: str
    required: true
  state:
    description:
      - V(present) creates the namespace if needed and makes it match the other options.
      - V(absent) removes the namespace, the host ends of veth pairs that lead into it (and O(uplink.host_interface)
        if given and it is a leftover veth whose peer is in no named namespace), and C(/etc/netns/NAME).
        Nothing else is touched. The other options are then ignored.
    type: str
    choices: [present, absent]
    default: present
  loopback:
    description:
      - V(true) brings the loopback interface C(lo) up, V(false) sets it down.
    type: bool
    default: true
  uplink:
    description:
      - A veth pair between the host namespace and the namespace.
      - When the pair exists but is not right (for example its host end leads to another interface, or to a
        namespace that has lost its name), it is deleted and created again.
      - If omitted, any existing uplink is left as it is.
    type: dict
    suboptions:
      host_interface:
        description:
          - Name of the veth end in the host namespace. At most 15 characters, without C(/), C(:), C(%) or white space.
          - If a device of that name exists and is not a veth, or is the uplink of another named namespace, the
            module fails rather than replace it.
        type: str
        required: true
      interface:
        description:
          - Name of the veth end inside the namespace. Same rules as O(uplink.host_interface); not V(lo).
        type: str
        default: eth0
      host_addresses:
        description:
          - Addresses of the host end, in CIDR notation (V(198.18.0.1/30), V(2001:db8::1/64)).
          - This is the whole list. Other addresses on the host end are removed, except the IPv6 link-local
            addresses the kernel adds.
          - IPv6 addresses are added with C(nodad), so they are usable at once.
        type: list
        elements: str
        default: []
      addresses:
        description:
          - Addresses of the end inside the namespace, in CIDR notation (V(198.18.0.2/30), V(2001:db8::2/64)).
          - This is the whole list, as for O(uplink.host_addresses).
        type: list
        elements: str
        default: []
      default_route:
        description:
          - V(true) gives the namespace a default route for each address family that has addresses on both ends.
            The gateway is the first host address of that family. Other default routes of that family in
            the main table are removed. If the gateway is not inside any of O(uplink.addresses)' networks, the
            route is added with C(onlink).
          - V(false) removes default routes through O(uplink.interface).
        type: bool
        default: true
      peer_netns:
        description:
          - Put the other end of the veth pair (O(uplink.host_interface), with O(uplink.host_addresses)) in this
            named network namespace instead of the host namespace, to wire two namespaces together, for example a
            workload and a peer that stands for the rest of the network. It must exist already.
          - When not set, that end is in the host namespace.
        type: str
        version_added: 0.1.0
  nameservers:
    description:
      - Nameserver addresses written to C(/etc/netns/NAME/resolv.conf). The module owns that whole file
        and rewrites it when its content differs.
      - An empty list removes the file, so that C(ip netns exec) uses the host's C(/etc/resolv.conf).
      - If omitted, the file is left as it is.
      - The glibc resolver reads only the first three nameservers; the module warns about more.
    type: list
    elements: str
  sysctls:
    description:
      - C(net.*) sysctls to set inside the namespace, for example V(net.ipv4.ip_forward).
      - Use slashes for names that contain an interface name with a dot (V(net/ipv4/conf/eth0.100/forwarding)).
      - Values may be strings, integers, booleans (V(true) is C(1)) or lists (joined with spaces). They are
        compared as the kernel prints them, with any run of white space taken as one space.
      - Per-interface sysctls (C(net.ipv4.conf.IFACE.*), C(net.ipv6.conf.IFACE.*), C(net.ipv4.neigh.IFACE.*),
        C(net.ipv6.neigh.IFACE.*)) may name C(all), C(default), C(lo), O(uplink.interface) or an interface
        already in the namespace.
      - Sysctls not listed here are left as they are.
    type: dict
    default: {}
notes:
  - The namespace is entered in-process with C(setns(2)) to read and write its sysctls; C(ip) commands inside it
    use C(ip -n NAME).
  - With O(state=absent), a namespace still used by a process stays alive, without its name, until that process
    ends. Its host-side veth ends are deleted first so that it is cut off from the host.
  - In check mode nothing changes, so the returned values describe the namespace as it is; the diff and
    RV(actions) show what would change.
seealso:
  - module: community.general.ip_netns
    description: >-
      Creates and removes named namespaces only. It matches names as substrings, reports a change in check mode
      for a namespace that exists, and has no diff.
  - name: ip-netns(8)
    description: The C(ip netns) manual page.
    link: https://man7.org/linux/man-pages/man8/ip-netns.8.html
"""

EXAMPLES = r"""
---
- name: Create a namespace with its loopback up
  meshops.sidecar.netns:
    name: app

- name: A namespace wired to the host, dual-stack, with its own nameserver and forwarding on
  meshops.sidecar.netns:
    name: app
    uplink:
      host_interface: veth-app
      interface: eth0
      host_addresses:
        - 198.18.0.1/30
        - 2001:db8:0:1::1/64
      addresses:
        - 198.18.0.2/30
        - 2001:db8:0:1::2/64
    nameservers:
      - 198.18.0.1
    sysctls:
      net.ipv4.ip_forward: 1
      net.ipv4.ip_local_port_range: 20000 60999
      net.ipv6.conf.eth0.accept_ra: 0

- name: Show what would change, without changing anything
  meshops.sidecar.netns:
    name: app
    uplink:
      host_interface: veth-app
      host_addresses: [198.18.0.5/30]
      addresses: [198.18.0.6/30]
  check_mode: true
  diff: true
  register: app_preview

- name: Wire a workload namespace to a peer namespace rather than to the host
  meshops.sidecar.netns:
    name: app
    uplink:
      host_interface: app-peer
      peer_netns: peer
      host_addresses: [198.18.0.1/30]
      addresses: [198.18.0.2/30]

- name: Remove the namespace, its veth and /etc/netns/app
  meshops.sidecar.netns:
    name: app
    state: absent
"""

RETURN = r"""
name:
  description: Name of the namespace.
  returned: always
  type: str
  sample: app
path:
  description: Path of the namespace's bind mount.
  returned: always
  type: str
  sample: /run/netns/app
exists:
  description:
    - Whether the namespace exists when the module ends.
    - In check mode nothing changes, so this is whether it exists now.
  returned: always
  type: bool
  sample: true
interfaces:
  description:
    - The interfaces inside the namespace, in the order of their interface index. Empty when the namespace does
      not exist.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Interface name.
      type: str
      sample: eth0
    addresses:
      description: All its addresses in CIDR notation, IPv6 link-local ones included.
      type: list
      elements: str
      sample: [198.18.0.2/30, 2001:db8:0:1::2/64, fe80::3c1e:a2ff:fe4b:5d10/64]
    state:
      description: Administrative state, V(up) or V(down).
      type: str
      sample: up
    operstate:
      description: Operational state as the kernel reports it (V(up), V(down), V(lowerlayerdown), V(unknown), ...).
      type: str
      sample: up
  sample:
    - name: lo
      addresses: [127.0.0.1/8, '::1/128']
      state: up
      operstate: unknown
    - name: eth0
      addresses: [198.18.0.2/30]
      state: up
      operstate: up
host_interface:
  description: The host end of the uplink, or V(null) when it does not exist.
  returned: when O(uplink) is given
  type: dict
  contains:
    name:
      description: Interface name.
      type: str
    addresses:
      description: Its addresses in CIDR notation.
      type: list
      elements: str
    state:
      description: Administrative state, V(up) or V(down).
      type: str
  sample:
    name: veth-app
    addresses: [198.18.0.1/30]
    state: up
nameservers:
  description: Nameservers listed in C(/etc/netns/NAME/resolv.conf); empty when that file does not exist.
  returned: always
  type: list
  elements: str
  sample: [198.18.0.1]
sysctls:
  description: The values of the requested sysctls inside the namespace, as the kernel prints them (white space collapsed).
  returned: when O(sysctls) is not empty and O(state=present)
  type: dict
  sample:
    net.ipv4.ip_forward: "1"
commands:
  description:
    - The same list as RV(actions), under the name M(meshops.sidecar.istio_redirect_chains) uses for it.
  returned: always
  type: list
  elements: str
  sample:
    - ip netns add app
    - ip -n app link set dev lo up
actions:
  description:
    - The changes made, in order, or in check mode the changes that would be made. C(ip) commands are shown as
      command lines; sysctl writes and file changes are described.
  returned: always
  type: list
  elements: str
  sample:
    - ip netns add app
    - ip -n app link set dev lo up
    - ip link add name veth-app type veth peer name eth0 netns app
    - ip addr replace 198.18.0.1/30 dev veth-app
    - ip link set dev veth-app up
    - ip -n app addr replace 198.18.0.2/30 dev eth0
    - ip -n app link set dev eth0 up
    - ip -n app -4 route replace default table main via 198.18.0.1 dev eth0
diff:
  description: The namespace before and after, as dictionaries.
  returned: when diff mode is on
  type: dict
  contains:
    before:
      description: State found.
      type: dict
    after:
      description: State asked for.
      type: dict
  sample:
    before:
      exists: false
      loopback: null
    after:
      exists: true
      loopback: up
"""

import platform

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.meshops.sidecar.plugins.module_utils._netns.state import StateError, ValidationError
from ansible_collections.meshops.sidecar.plugins.module_utils._netns.system import ApplyError, CommandError, run_netns
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ModuleRunner
from ansible_collections.meshops.sidecar.plugins.module_utils._system.namespace import NetnsError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            loopback=dict(type="bool", default=True),
            uplink=dict(
                type="dict",
                options=dict(
                    host_interface=dict(type="str", required=True),
                    interface=dict(type="str", default="eth0"),
                    host_addresses=dict(type="list", elements="str", default=[]),
                    addresses=dict(type="list", elements="str", default=[]),
                    default_route=dict(type="bool", default=True),
                    peer_netns=dict(type="str"),
                ),
            ),
            nameservers=dict(type="list", elements="str"),
            sysctls=dict(type="dict", default={}),
        ),
        supports_check_mode=True,
    )
    # RV(path) is the namespace's path: AnsibleModule would otherwise add file facts about it
    # (owner, mode, size, and a "state: file" that contradicts the namespace's state).
    module.add_path_info = lambda kwargs: kwargs
    if platform.system() != "Linux":
        module.fail_json(msg="network namespaces exist only on Linux, not on %s" % platform.system())

    try:
        result, warnings = run_netns(module.params, module.check_mode, module._diff, ModuleRunner(module))
    except ValidationError as exc:
        module.fail_json(msg=str(exc), errors=exc.errors)
    except (StateError, NetnsError) as exc:
        module.fail_json(msg=str(exc))
    except CommandError as exc:
        module.fail_json(
            msg=str(exc), cmd=exc.argv, rc=exc.rc, stdout=exc.stdout, stderr=exc.stderr, actions=list(exc.actions), changed=bool(exc.actions)
        )
    except ApplyError as exc:
        module.fail_json(msg=str(exc), actions=list(exc.actions), changed=bool(exc.actions))
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
