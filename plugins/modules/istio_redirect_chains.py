#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: istio_redirect_chains
short_description: Istio sidecar traffic capture (istio-init's iptables rules) in a network namespace
version_added: 0.1.0
description:
  - Creates, reconciles and removes the iptables rules Istio's C(istio-init) (C(pilot-agent istio-iptables))
    writes into a pod, so that inbound and outbound TCP, and optionally DNS, go through the sidecar proxy.
    Use it on a VM or host (the namespace the module runs in) or in a named network namespace (O(netns)).
  - For the same options the rules are the ones C(pilot-agent istio-iptables) creates, in the same order, in the
    C(nat), C(mangle) and C(raw) tables, for IPv4 and IPv6 (Istio parity).
  - The module owns the chains C(ISTIO_INBOUND), C(ISTIO_IN_REDIRECT), C(ISTIO_OUTPUT), C(ISTIO_REDIRECT),
    C(ISTIO_OUTPUT_DNS), C(ISTIO_DIVERT), C(ISTIO_TPROXY) and C(ISTIO_DROP) (every C(ISTIO_*) chain), the rules in
    built-in chains that jump to them, the rule shapes only Istio writes (its 1338 mark on proxy traffic to the
    workload), and the other built-in chain rules it placed itself (interface C(RETURN)s, TPROXY connmark rules),
    which it records under C(/run/meshops-sidecar) because anyone may write the same rule. Rules of others
    (Docker, firewalld, your own) are never removed or reordered.
  - State is compared in the canonical form C(iptables-save) prints. Any drift (a rule removed, added, reordered
    or duplicated in an C(ISTIO_*) chain, a jump missing or duplicated) is repaired; an unchanged namespace is not
    written to.
  - Each address family is applied as one transaction; if it fails, the previous rules stay exactly as they were.
author:
  - meshops.sidecar developers (@meshops)
requirements:
  - iproute2 (C(ip)) on the target.
  - For O(backend=nft), the iptables-nft tools (C(iptables-nft-save), C(iptables-nft-restore), and their C(ip6tables)
    variants when IPv6 is captured).
  - For O(backend=legacy), the python-iptables library (C(python3-iptables)) and the legacy iptables libraries.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Nothing is changed; C(changed), RV(commands) and the diff say what would change.
  diff_mode:
    support: full
    details: The before and after text of the rules of ours, in C(iptables-save) form, plus routes.
  idempotent:
    support: full
    description: A second run with the same options changes nothing and reports no change.
  platform:
    platforms: posix
    details: Linux only; needs root (C(CAP_NET_ADMIN), and C(CAP_SYS_ADMIN) to enter O(netns)).
options:
  netns:
    description:
      - Name of the network namespace to act in (C(/run/netns/NAME), as C(ip netns) manages them).
      - When not set, the module acts in the namespace it runs in (the host's).
    type: str
  state:
    description:
      - V(present) makes the rules exactly what the options say.
      - V(absent) removes every chain, jump and rule the module may have created here with any options (not only
        the current ones), the TPROXY policy route and the C(::6) loopback address. Other options are ignored.
    type: str
    choices: [present, absent]
    default: present
  backend:
    description:
      - V(nft) uses the iptables-nft tools (one C(iptables-nft-restore) transaction per family).
      - V(legacy) uses python-iptables (libiptc) under the xtables lock.
      - V(auto) chooses as Istio does, and RV(backend) reports the choice. Legacy only if the legacy tables
        already hold rules, else nft when its tools are present, else legacy.
    type: str
    choices: [auto, nft, legacy]
    default: auto
  proxy_port:
    description: Port outbound traffic is redirected to (Istio C(-p)).
    type: int
    default: 15001
  inbound_capture_port:
    description: Port inbound traffic is redirected to (Istio C(-z)).
    type: int
    default: 15006
  inbound_tunnel_port:
    description: The HBONE tunnel port, never captured (Istio C(-e)).
    type: int
    default: 15008
  proxy_uid:
    description:
      - Users whose traffic bypasses capture, the proxy's (Istio C(-u)). Numbers (V(0) to V(4294967294); 4294967295
        is the kernel's "no id") are taken as they are; names must exist on the target.
      - A list, or an Istio-style comma-separated string.
    type: list
    elements: str
    default: ['1337']
  proxy_gid:
    description:
      - Groups whose traffic bypasses capture (Istio C(-g)). Numbers (V(0) to V(4294967294)) or group names.
      - When not set, the same values as O(proxy_uid), taken as groups, as Istio does.
    type: list
    elements: str
  inbound_interception_mode:
    description:
      - V(REDIRECT) uses nat C(REDIRECT) for inbound traffic.
      - V(TPROXY) keeps the original destination with C(TPROXY) in the mangle table, and manages the fwmark policy
        route (O(tproxy_mark), O(tproxy_route_table)). The proxy then needs C(CAP_NET_ADMIN).
    type: str
    choices: [REDIRECT, TPROXY]
    default: REDIRECT
  tproxy_mark:
    description: Packet mark of TPROXY-diverted traffic (Istio C(-t)).
    type: int
    default: 1337
  tproxy_route_table:
    description: Routing table of the TPROXY policy route (Istio C(-r)).
    type: int
    default: 133
  inbound_ports:
    description:
      - Inbound TCP ports to capture (Istio C(-b)). V(*) captures all but O(exclude_inbound_ports); a list captures
        only those ports; an empty list captures no inbound traffic.
      - Ports are numbers or ranges like V(8000:8100).
    type: list
    elements: str
    default: ['*']
  exclude_inbound_ports:
    description: Inbound ports never captured (Istio C(-d)); only used when O(inbound_ports) is V(*).
    type: list
    elements: str
    default: ['15090', '15021', '15020']
  outbound_ip_ranges:
    description:
      - Destination CIDRs whose outbound traffic is captured (Istio C(-i)). V(*) captures all; an empty list none.
      - Every CIDR needs a prefix length (V(198.18.0.0/15), V(2001:db8::/32)). A zone-scoped address
        (V(fe80::1%eth0/64)) is refused, since a rule cannot match a zone.
    type: list
    elements: str
    default: ['*']
  exclude_outbound_ip_ranges:
    description:
      - Destination CIDRs that bypass capture (Istio C(-x)).
      - Thousands are fine (one rule each, all applied in one transaction), but Ansible templates a long list
        item by item. Passing it as one comma-separated string made with the C(join) filter spares that work
        (about 0.35 s at 10,000 CIDRs on a small machine); see the examples.
    type: list
    elements: str
    default: []
  outbound_ports:
    description: Outbound TCP ports always captured, whatever the destination (Istio C(-q)).
    type: list
    elements: str
    default: []
  exclude_outbound_ports:
    description: Outbound ports, TCP and UDP, that bypass capture (Istio C(-o)).
    type: list
    elements: str
    default: []
  exclude_interfaces:
    description:
      - Interfaces whose traffic is never captured (Istio C(-c)).
      - Names as the kernel allows them (at most 15 bytes, no C(/), C(:), C(%) or white space, not C(.) or C(..)); a
        trailing C(+) is iptables' prefix wildcard (V(veth+)).
    type: list
    elements: str
    default: []
  reroute_virtual_interfaces:
    description:
      - Interfaces whose incoming traffic is treated as outbound and sent to the proxy (Istio C(-k),
        C(KUBE_VIRT_INTERFACES)), for example V(docker0) for containers on a meshed VM.
      - Names as for O(exclude_interfaces).
    type: list
    elements: str
    default: []
  outbound_owner_groups:
    description:
      - Groups whose outbound traffic is captured (C(ISTIO_OUTBOUND_OWNER_GROUPS)). V(*) for all; at most 64 groups.
    type: list
    elements: str
    default: ['*']
  exclude_outbound_owner_groups:
    description:
      - Groups whose outbound traffic is not captured (C(ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE)).
      - Numbers (V(0) to V(4294967294)) or group names, as for O(proxy_gid).
    type: list
    elements: str
    default: []
  capture_dns:
    description:
      - Send DNS (UDP and TCP port 53) to the nameservers in O(dns_servers) to the agent on port 15053 (Istio
        C(--redirect-dns), C(ISTIO_META_DNS_CAPTURE)), with conntrack zones keeping the two legs apart.
    type: bool
    default: false
  capture_all_dns:
    description: With O(capture_dns), capture DNS to every address, not only to O(dns_servers) (Istio C(--capture-all-dns)).
    type: bool
    default: false
  dns_servers:
    description:
      - Nameservers whose DNS traffic is captured with O(capture_dns).
      - When not set, those of the namespace's resolv.conf (C(/etc/netns/NAME/resolv.conf) if present, else
        C(/etc/resolv.conf)). An empty list means none. Zone-scoped addresses (V(fe80::1%eth0)) are refused.
    type: list
    elements: str
  ipv6:
    description:
      - Also program ip6tables.
      - When not set, true when the namespace has a global IPv6 address (unique-local included).
    type: bool
  ipv4_loopback_cidr:
    description: The IPv4 localhost range that is never captured (C(ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR)).
    type: str
    default: 127.0.0.1/32
  drop_invalid:
    description: Drop packets conntrack finds invalid instead of letting them reset connections (Istio C(--drop-invalid)).
    type: bool
    default: false
  native_nftables:
    description:
      - Program Istio's native nftables tables instead of iptables rules, as C(istio-iptables --native-nftables)
        (Helm C(values.global.nativeNftables)) does, C(inet istio-proxy-nat), C(istio-proxy-mangle) and
        C(istio-proxy-raw), one ruleset for both address families, written in one C(nft -f -) transaction. Needs
        C(nft) 1.0.1 or later (Istio's minimum).
      - O(backend) then does not apply and RV(backend) is V(nftables). Every other option keeps its meaning.
      - Switching in either direction converges in one run and leaves nothing of the other mode - the
        C(ISTIO_*) iptables rules of the backend O(backend) selects after moving to native, the C(istio-proxy-*)
        tables after moving back. The new mode's rules are in place before the old ones are removed, so there is
        no moment without capture.
      - Only tables named C(inet istio-proxy-*) are read or written; a re-run with the same options writes
        nothing (counters are kept), and a table that differs from the plan is rebuilt in the same transaction.
    type: bool
    default: false
  cidr_sets:
    description:
      - Match O(exclude_outbound_ip_ranges) and O(outbound_ip_ranges) with one set lookup per address family and
        per list, where Istio writes one rule per CIDR (so every new outbound connection walks the whole list).
        Not an Istio setting; the default keeps the rules identical to Istio's.
      - With O(native_nftables=true), named interval sets (C(auto-merge)) in C(inet istio-proxy-nat), matched as
        C(ip daddr @istio-exclude-v4). On the iptables backends, ipset C(hash:net) sets matched with
        C(-m set --match-set istio-exclude-v4 dst); they need the C(ipset) tool on the target.
      - The sets are named C(istio-exclude-v4), C(istio-exclude-v6), C(istio-include-v4) and C(istio-include-v6);
        only these (and their temporary twins C(*-new)) are ever read or written. A list empty in a family gets no
        set and no rule.
      - Contents compare as merged intervals, so a re-run writes nothing; elements added or removed by hand are
        repaired. An ipset whose contents change is refilled through a temporary set and C(ipset swap), so a
        connection never sees a half-filled set. Sets are created before the rules that match them and removed
        after, and O(state=absent) removes them.
    type: bool
    default: false
  keep_existing_connections:
    description:
      - Leave TCP connections that were open before the rules to go where they went, instead of redirecting them
        mid-stream. Not an Istio setting; the default keeps the rules identical to Istio's.
      - When conntrack first sees a connection that is already open (the rules are the first thing in the network
        namespace to use conntrack, or the connection predates them), it takes that packet as the start of a new
        connection, and Istio's rules redirect it to the proxy, which cuts the connection. The SSH session
        Ansible uses to apply capture on a VM's own namespace is such a connection.
      - When true, the first rule of C(ISTIO_OUTPUT) and of C(ISTIO_INBOUND) (C(istio-output), C(istio-inbound) in
        native mode) returns a new TCP connection whose first packet is not a SYN. Connections that start with a
        SYN, that is every connection opened after the rules, are captured exactly as without it.
      - Applying capture over SSH on the namespace of the SSH session, with outbound capture on, is refused unless
        this is true. The C(meshops.sidecar.interception) role sets it on the host namespace.
    type: bool
    default: false
  verify:
    description:
      - After applying, prove with a live connection that capture works, as Istio's C(--run-validation) does. As
        the first O(proxy_uid), connect to C(127.0.0.6:15002) (and C([::6]:15002) with IPv6), which the rules send to
        O(inbound_capture_port), and check its original destination. Only loopback addresses are used.
      - The task fails, saying why, when the connection is not captured.
    type: bool
    default: false
notes:
  - Safe on the host namespace. When the target is the namespace of the SSH session the task runs over, a capture
    that would send that session's port to the proxy is refused, unless the port is in O(exclude_inbound_ports).
  - The legacy backend and the nft backend each have their own rule set in the kernel. The module warns when the
    backend it does not use also holds C(ISTIO_*) rules.
  - Unlike Istio, cleanup does not depend on the options used to apply. Unlike Istio, the IPv6 rule set is
    controlled by O(ipv6), and unlike Istio, invalid CIDRs fail the task instead of being skipped.
seealso:
  - module: meshops.sidecar.netns
  - name: The meshops.sidecar.interception role
    description: The same capture for a VM or a workload namespace, from istioctl's cluster.env, kept across reboots.
    link: https://github.com/meshops/sidecar/tree/main/roles/interception
  - module: ansible.builtin.iptables
  - module: community.general.iptables_state
  - name: Istio traffic capture, in this collection's docs
    description: How capture works, with a diagram of the chains.
    link: https://github.com/meshops/sidecar/blob/main/docs/capture.md
"""

EXAMPLES = r"""
---
- name: Capture a workload's traffic in its namespace, as istio-init does in a pod
  meshops.sidecar.istio_redirect_chains:
    netns: app

- name: Istio's VM defaults on the host, keeping SSH out of capture
  meshops.sidecar.istio_redirect_chains:
    proxy_uid: istio-proxy
    proxy_gid: istio-proxy
    exclude_inbound_ports: 22,15090,15021,15020
    capture_dns: true
    verify: true

- name: Capture only some destinations, and leave a database alone
  meshops.sidecar.istio_redirect_chains:
    netns: app
    outbound_ip_ranges:
      - 198.18.0.0/15
      - 2001:db8::/32
    exclude_outbound_ports: [5432]
    ipv6: true

- name: Keep thousands of CIDRs out of capture, passed as one string (cheaper for Ansible than a long list)
  meshops.sidecar.istio_redirect_chains:
    netns: app
    exclude_outbound_ip_ranges: "{{ excluded_cidrs | join(',') }}"

- name: TPROXY inbound mode with the legacy backend
  meshops.sidecar.istio_redirect_chains:
    netns: app
    inbound_interception_mode: TPROXY
    backend: legacy

- name: Remove every rule, chain and route capture ever created there
  meshops.sidecar.istio_redirect_chains:
    netns: app
    state: absent
"""

RETURN = r"""
backend:
  description:
    - The backend used, V(nft) or V(legacy); V(nftables) with O(native_nftables=true).
    - V(null) with O(state=absent) when no iptables backend is usable on the target (nothing of theirs can be removed).
  returned: success
  type: str
  sample: nft
backend_reason:
  description: Why that backend was used.
  returned: success
  type: str
  sample: nft tools present and legacy tables hold no rules
ipv6:
  description: Whether IPv6 rules are programmed.
  returned: success
  type: bool
  sample: false
rules:
  description:
    - The desired rules of ours, per address family (V(ipv4), V(ipv6)), as C(iptables-save) prints them.
    - With O(native_nftables=true), one key V(nftables), Istio's C(inet) tables in C(nft list ruleset) form
      (one ruleset serves both families), sets included.
    - With O(cidr_sets=true) on an iptables backend, also a key V(ipsets), the sets as C(ipset save) prints them.
    - Empty with O(state=absent).
  returned: success
  type: dict
  sample:
    ipv4: |
      *nat
      :ISTIO_INBOUND - [0:0]
      :ISTIO_IN_REDIRECT - [0:0]
      :ISTIO_OUTPUT - [0:0]
      :ISTIO_REDIRECT - [0:0]
      -A PREROUTING -p tcp -j ISTIO_INBOUND
      -A OUTPUT -j ISTIO_OUTPUT
      -A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
      COMMIT
commands:
  description:
    - What ran, or would run in check mode, in C(iptables-restore) form per family (one transaction each), the
      C(nft -f -) transaction of the native tables, then the C(ip) commands for routes and addresses. Empty when
      nothing changed.
  returned: success
  type: list
  elements: str
  sample:
    - iptables-nft-restore --noflush <<EOF
    - "*nat"
    - ":ISTIO_OUTPUT - [0:0]"
    - -A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
    - COMMIT
    - EOF
verified:
  description: True when O(verify) proved capture with a live connection.
  returned: when O(verify=true) and not in check mode
  type: bool
  sample: true
verification:
  description: The probes O(verify) made, and where each landed.
  returned: when O(verify=true) and not in check mode
  type: list
  elements: dict
  sample:
    - family: ipv4
      to: 127.0.0.6:15002
      uid: 1337
      gid: 1337
      landed_on: 127.0.0.1:15006
      original_dst: 127.0.0.6:15002
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import argument_spec
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.run import CaptureError, CaptureRun
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ModuleRunner


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
    )
    runner = CaptureRun(module.params, module.check_mode, ModuleRunner(module), module.warn, module._diff)
    try:
        result = runner.execute()
    except CaptureError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
