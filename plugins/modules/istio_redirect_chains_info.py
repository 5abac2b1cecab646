#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) meshops.sidecar contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: istio_redirect_chains_info
short_description: What Istio sidecar capture a network namespace holds, its counters, and its drift
version_added: 0.1.0
description:
  - Reports, for one network namespace, a list of them, or the host's and every named one, which capture modes hold
    Istio's rules (the iptables-nft tools, legacy iptables, Istio's native nftables tables), which of them is in
    effect and which are leftovers, the rules M(meshops.sidecar.istio_redirect_chains) owns there in the text of
    their mode, its ownership record, and per-rule packet and byte counters with totals of the connections
    redirected outbound, inbound, and of DNS.
  - With O(compare=true), also whether the rules are exactly what M(meshops.sidecar.istio_redirect_chains) would
    make of the capture options given here (same names, types and defaults, O(native_nftables) included), and if
    not, what is missing, extra or out of order. The comparison is the module's own (same planners, ownership
    claims and reconcile, for iptables and for native nftables), so RV(namespaces[].in_sync) is true exactly when
    that module would find no rule to change.
  - Never changes anything. Reading the legacy tables never creates one; native nftables tables are read with
    C(nft -j), never parsed from C(nft list) text.
  - The playbook C(meshops.sidecar.audit) runs it across an inventory and prints one line per host and namespace.
author:
  - meshops.sidecar developers (@meshops)
requirements:
  - The iptables-nft save tools (C(iptables-nft-save), C(ip6tables-nft-save)) to read the nft mode.
  - The python-iptables library (C(python3-iptables)) to read the legacy mode.
  - C(nft) 1.0.1 or later (Istio's minimum) to read native nftables mode; without it no native table is reported.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.actiongroups
attributes:
  check_mode:
    support: full
    details: The module never changes anything; check mode gives the same result.
  diff_mode:
    support: none
    details: Nothing changes, so there is no diff.
  idempotent:
    description:
      - When run twice in a row with the same arguments, the second invocation indicates no change.
      - This assumes that the system controlled and/or queried by the module has not changed in a relevant way.
    support: full
    details: It only reads and always reports no change. Counters grow with traffic between two runs.
  platform:
    support: full
    platforms: posix
    details: Linux only; needs root (C(CAP_NET_ADMIN) to read rules, C(CAP_SYS_ADMIN) to enter O(netns)).
  action_group:
    support: full
    membership:
      - meshops.sidecar.sidecar
options:
  netns:
    description:
      - The network namespaces to report on, C(/run/netns/NAME) as C(ip netns) manages them.
      - A name, a list of names, or V(*) for the namespace the module runs in (the host's) and every named one.
      - When not set, the namespace the module runs in (the host's).
    type: raw
  compare:
    description:
      - Compare each namespace's rules with the rules M(meshops.sidecar.istio_redirect_chains) would make of the
        capture options of this task (those not given take that module's defaults), and return
        RV(namespaces[].in_sync) and RV(namespaces[].drift).
      - An explicit switch, because every capture option has a default, so "compare when an option is given"
        cannot be told apart from "not given".
      - With O(native_nftables=false), compared against the iptables mode in effect, or where no iptables mode
        holds rules, the backend O(meshops.sidecar.istio_redirect_chains#module:backend=auto) would choose; any
        native nftables table is drift (that module deletes them). With O(native_nftables=true), compared
        against Istio's native tables; the C(ISTIO_*) rules of that iptables backend are drift (that module
        removes them). RV(namespaces[].compared_mode) says which.
      - Policy routes (TPROXY) are not compared, only rules.
    type: bool
    default: false
  proxy_port:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:proxy_port)
        (compared with only when O(compare=true)).
    type: int
    default: 15001
  inbound_capture_port:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:inbound_capture_port)
        (compared with only when O(compare=true)).
    type: int
    default: 15006
  inbound_tunnel_port:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:inbound_tunnel_port)
        (compared with only when O(compare=true)).
    type: int
    default: 15008
  proxy_uid:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:proxy_uid)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: ['1337']
  proxy_gid:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:proxy_gid)
        (compared with only when O(compare=true)).
    type: list
    elements: str
  inbound_interception_mode:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:inbound_interception_mode)
        (compared with only when O(compare=true)).
    type: str
    choices: [REDIRECT, TPROXY]
    default: 'REDIRECT'
  tproxy_mark:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:tproxy_mark)
        (compared with only when O(compare=true)).
    type: int
    default: 1337
  tproxy_route_table:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:tproxy_route_table)
        (compared with only when O(compare=true)).
    type: int
    default: 133
  inbound_ports:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:inbound_ports)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: ['*']
  exclude_inbound_ports:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:exclude_inbound_ports)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: ['15090', '15021', '15020']
  outbound_ip_ranges:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:outbound_ip_ranges)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: ['*']
  exclude_outbound_ip_ranges:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:exclude_outbound_ip_ranges)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: []
  outbound_ports:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:outbound_ports)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: []
  exclude_outbound_ports:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:exclude_outbound_ports)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: []
  exclude_interfaces:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:exclude_interfaces)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: []
  reroute_virtual_interfaces:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:reroute_virtual_interfaces)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: []
  outbound_owner_groups:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:outbound_owner_groups)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: ['*']
  exclude_outbound_owner_groups:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:exclude_outbound_owner_groups)
        (compared with only when O(compare=true)).
    type: list
    elements: str
    default: []
  capture_dns:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:capture_dns)
        (compared with only when O(compare=true)).
    type: bool
    default: false
  capture_all_dns:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:capture_all_dns)
        (compared with only when O(compare=true)).
    type: bool
    default: false
  dns_servers:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:dns_servers)
        (compared with only when O(compare=true)).
    type: list
    elements: str
  ipv6:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:ipv6)
        (compared with only when O(compare=true)).
    type: bool
  ipv4_loopback_cidr:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:ipv4_loopback_cidr)
        (compared with only when O(compare=true)).
    type: str
    default: '127.0.0.1/32'
  drop_invalid:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:drop_invalid)
        (compared with only when O(compare=true)).
    type: bool
    default: false
  native_nftables:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:native_nftables)
        (compared with only when O(compare=true)).
      - Also decides which mode RV(namespaces[].active) names first when several are hooked (see the notes).
    type: bool
    default: false
  cidr_sets:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:cidr_sets)
        (compared with only when O(compare=true) - the rules that match the sets; the sets' contents are not compared).
    type: bool
    default: false
  keep_existing_connections:
    description:
      - O(meshops.sidecar.istio_redirect_chains#module:keep_existing_connections)
        (compared with only when O(compare=true)).
    type: bool
    default: false
notes:
  - When several modes hold rules, all of them are live in the kernel. RV(namespaces[].active) is then, of the
    modes traffic passes (iptables rules jumped to from a built-in chain, native tables with a base chain), the one
    M(meshops.sidecar.istio_redirect_chains) manages - legacy when it holds rules, then nft, then native nftables;
    native nftables first with O(compare=true) and O(native_nftables=true) - and the others are
    RV(namespaces[].leftovers). M(meshops.sidecar.istio_redirect_chains) removes the leftovers of the other mode
    when it applies capture; leftovers of the other iptables backend are removed with
    O(meshops.sidecar.istio_redirect_chains#module:state=absent) and that
    O(meshops.sidecar.istio_redirect_chains#module:backend).
  - RV(namespaces[].rules) and RV(namespaces[].counters) are those of the active mode; Istio's native tables are
    also described in RV(namespaces[].nftables) whenever they exist, leftovers included.
  - In the C(nat) table only a connection's first packet is evaluated, so the outbound, DNS and (REDIRECT) inbound
    totals count connections. TPROXY runs in C(mangle), where every packet that reaches it counts.
seealso:
  - module: meshops.sidecar.istio_redirect_chains
"""

EXAMPLES = r"""
- name: Read the capture of the host's namespace
  meshops.sidecar.istio_redirect_chains_info:
  register: capture

- name: Is every namespace as Istio's VM defaults make it (SSH excluded)?
  meshops.sidecar.istio_redirect_chains_info:
    netns: "*"
    compare: true
    exclude_inbound_ports: [22, 15090, 15021, 15020]
  register: capture

- name: Is the app namespace in Istio's native nftables mode, as its options make it?
  meshops.sidecar.istio_redirect_chains_info:
    netns: app
    compare: true
    native_nftables: true
    exclude_inbound_ports: [22, 15090, 15021, 15020]
  register: native

- name: Fail when another mode left rules behind
  ansible.builtin.assert:
    that:
      - native.namespaces[0].active == 'nftables'
      - native.namespaces[0].leftovers == []
      - native.namespaces[0].in_sync

- name: Show the drift of one workload namespace
  ansible.builtin.debug:
    msg: "{{ (capture.namespaces | selectattr('netns', 'equalto', 'app') | first).drift }}"

- name: Connections redirected to the proxy, per namespace
  ansible.builtin.debug:
    msg: "{{ item.netns | default('host', true) }}: {{ item.counters.totals.outbound.packets }} outbound"
  loop: "{{ capture.namespaces }}"
"""

RETURN = r"""
namespaces:
  description: One entry per namespace, in the order asked (with V(*), the host's first, then by name).
  returned: always
  type: list
  elements: dict
  contains:
    netns:
      description: The namespace's name; V(null) for the namespace the module runs in (the host's).
      type: str
      sample: app
    modes:
      description: The modes that hold Istio's rules here, of V(nft), V(legacy) and V(nftables) (native tables).
      type: list
      elements: str
      sample: [nft]
    active:
      description: The mode in effect, or V(null) when no mode holds rules.
      type: str
      sample: nft
    leftovers:
      description: The other modes that also hold rules (see the notes).
      type: list
      elements: str
      sample: []
    record:
      description:
        - The state of the ownership record of M(meshops.sidecar.istio_redirect_chains) for this namespace
          (the built-in chain rules that only a record can say are its own).
        - V(damaged) when it cannot be read or is not a record; a warning says why.
      type: str
      choices: [present, absent, damaged]
      sample: absent
    rules:
      description:
        - The owned rules of the active mode, under the keys of RV(meshops.sidecar.istio_redirect_chains#module:rules).
        - In an iptables mode, per address family (V(ipv4), V(ipv6)), in C(iptables-save) text, as
          M(meshops.sidecar.istio_redirect_chains) returns them.
        - In native nftables mode, one key V(nftables), with Istio's C(inet) tables as C(nft list ruleset) shows them
          (numeric priorities, no counters, no handles), tables and chains in Istio's order. A rule is written in
          the words M(meshops.sidecar.istio_redirect_chains) plans with, in the form the kernel keeps (host
          addresses without C(/32), no C(meta l4proto tcp) before a C(tcp) match), as that module's diff shows
          them; a part of a rule added by hand that those words cannot say is shown as its C(nft -j) JSON.
        - Empty when no mode holds rules.
      type: dict
      sample:
        ipv4: |
          *nat
          :ISTIO_OUTPUT - [0:0]
          :ISTIO_REDIRECT - [0:0]
          -A OUTPUT -j ISTIO_OUTPUT
          -A ISTIO_OUTPUT -j ISTIO_REDIRECT
          -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
          COMMIT
    nftables:
      description: Istio's native nftables tables here (family C(inet), tables named C(istio-proxy-*)), in Istio's order.
      returned: when native nftables tables exist, also as leftovers
      type: list
      elements: dict
      contains:
        table:
          description: The table's name.
          type: str
          sample: istio-proxy-nat
        family:
          description: Always V(inet).
          type: str
          sample: inet
        chains:
          description:
            - Its chains. C(type), C(hook), C(priority) and C(policy) are those of a base chain, V(null) for a
              regular chain.
            - C(rules) are the chain's rules in kernel order, each with C(rule) (text as in RV(namespaces[].rules)),
              C(packets) and C(bytes) (V(null) for a rule without a C(counter)).
          type: list
          elements: dict
          sample:
            - chain: output
              type: nat
              hook: output
              priority: -100
              policy: accept
              rules:
                - {rule: counter jump istio-output, packets: 12, bytes: 720}
            - chain: istio-redirect
              type: null
              hook: null
              priority: null
              policy: null
              rules:
                - {rule: meta l4proto tcp counter redirect to :15001, packets: 3, bytes: 180}
    counters:
      description: Counters of the owned rules of the active mode.
      type: dict
      contains:
        rules:
          description:
            - Every owned rule with its counters, C(family) V(inet) and the rule's text in native nftables mode.
            - C(packets) and C(bytes) are V(null) for a native rule without a C(counter) expression.
          type: list
          elements: dict
          sample:
            - family: ipv4
              table: nat
              chain: ISTIO_REDIRECT
              rule: -p tcp -j REDIRECT --to-ports 15001
              packets: 1
              bytes: 60
        totals:
          description:
            - V(outbound) is what the proxy-port C(REDIRECT) (chain C(ISTIO_REDIRECT)) matched, V(inbound) what the
              inbound C(REDIRECT) (C(ISTIO_IN_REDIRECT)) or C(TPROXY) matched, V(dns) what the DNS C(REDIRECT)s
              (C(ISTIO_OUTPUT_DNS)) matched; each as C(packets) and C(bytes), both families together.
            - In native nftables mode the same rules of C(istio-proxy-nat) (C(redirect) in C(istio-redirect),
              C(istio-in-redirect) and C(istio-output-dns)) and the C(tproxy) rules of C(istio-proxy-mangle).
          type: dict
          sample:
            outbound: {packets: 1, bytes: 60}
            inbound: {packets: 0, bytes: 0}
            dns: {packets: 0, bytes: 0}
    compared_mode:
      description: The mode the rules were compared in, V(nft), V(legacy) or V(nftables).
      returned: when O(compare=true)
      type: str
      sample: nft
    in_sync:
      description: True when M(meshops.sidecar.istio_redirect_chains) with these options would change no rule.
      returned: when O(compare=true)
      type: bool
      sample: false
    drift:
      description:
        - What differs, each item with C(family), C(table), C(chain), C(kind) (V(missing), V(extra) or
          V(out_of_order)) and C(rule) (the rule text after C(-A CHAIN), or V(null) for a whole C(ISTIO_*) chain
          missing or extra). Empty when in sync.
        - Native nftables items have C(family) V(inet) and the rule's text as in RV(namespaces[].rules); a whole
          table missing or extra has C(chain) V(null) and is followed by its chains and rules, a whole chain has
          C(rule) V(null), and a base chain whose type, hook, priority or policy differs has the wanted spec
          (C(type nat hook output priority -100; policy accept;)) missing and the kernel's extra.
        - Items of the other mode, which M(meshops.sidecar.istio_redirect_chains) would remove, are extra.
      returned: when O(compare=true)
      type: list
      elements: dict
      sample:
        - family: ipv4
          table: nat
          chain: ISTIO_OUTPUT
          kind: missing
          rule: -j ISTIO_REDIRECT
        - family: ipv4
          table: nat
          chain: ISTIO_OUTPUT
          kind: extra
          rule: -d 198.18.9.9/32 -j RETURN
        - family: inet
          table: istio-proxy-nat
          chain: istio-output
          kind: extra
          rule: ip daddr 198.18.9.9 counter return
"""

import copy

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.meshops.sidecar.plugins.module_utils._capture.inspect import InspectError, inspect
from ansible_collections.meshops.sidecar.plugins.module_utils._capture.options import CAPTURE_OPTION_SPECS
from ansible_collections.meshops.sidecar.plugins.module_utils._system.commands import ModuleRunner


def argument_spec():
    spec = dict(netns=dict(type="raw"), compare=dict(type="bool", default=False))
    spec.update(copy.deepcopy(CAPTURE_OPTION_SPECS))
    return spec


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    compare_params = module.params if module.params["compare"] else None
    try:
        result = inspect(module.params["netns"], ModuleRunner(module), module.warn, compare_params)
    except InspectError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
