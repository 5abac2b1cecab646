#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "fleet": onboard_vm / offboard_vm on three "VMs" at once, Debian 11, 12 and 13 (systemd
# containers with sshd, images from tests/utils/build-images.sh --fleet), over real SSH: key
# authentication with a key made for this run, the unprivileged user "fleet" with passwordless sudo
# (become), forks 3. The network is this script's own: one named network namespace per VM (podman
# --network ns:/run/netns/NAME) and one for the controller, where ansible-playbook runs
# (ip netns exec), joined by veth pairs on 198.18.1N.0/24 and 2001:db8:1N::/64 (N = 11, 12, 13).
# No podman network, nothing in the host namespace's interfaces, routes or firewall, no route out.
#
# Steps (each timed; docs/testing-fleet.md): the images; the network and VMs; prepare (the snapshot
# offboarding must restore); capture over the live SSH session (tests/fleet/session-capture.yml: the
# module on the VM's own namespace over the session Ansible uses, not yet tracked by conntrack: with
# keep_existing_connections it survives, without it and with port 22 captured the module refuses);
# check mode with diff (must change nothing); onboarding; a second onboarding (changed=0); the SSH
# guard over the session (tests/fleet/guard.yml); checks (tests/fleet/verify.yml: rules per mode, the
# sidecar, live traffic, the session kept); what each release's tools can and cannot do
# (tests/fleet/tools.yml); a reboot of every VM (the container stopped, its namespace replaced by a
# fresh one, started: only the boot unit can bring the rules back; tests/fleet/verify-boot.yml);
# offboarding twice (the second run changed=0); a snapshot comparison with the state before
# onboarding. A failure of the two SSH guard steps or of the tools step is reported at the end; the
# VMs' rules are put back from outside and the later steps run.
#
# Everything it creates is named msfleet-<run id>-*, and removed on any exit: containers, network
# namespaces (with them the veths), the SSH control masters and the run's directory (the key). Logs
# stay in .cache/logs/fleet/.
#
# Environment: MSFLEET_KEEP=1 leaves everything in place on failure, MSFLEET_KEEP=always in any case
# (it prints how to clean up);
# MSFLEET_STOP_AFTER=STEP ends the run (cleanly) after that step, e.g. "prepare".
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv
require_root "the fleet gate (network namespaces, rootful podman)"

cd "$MESHOPS_ROOT"
use_working_tree_collection
for tool in ssh ssh-keygen ssh-keyscan; do
    command -v "$tool" >/dev/null \
        || die "the fleet gate needs the OpenSSH client (ssh, ssh-keygen, ssh-keyscan): apt-get install openssh-client"
done
command -v dpkg-deb >/dev/null || die "the fleet gate needs dpkg-deb"

# Checks whose failure lets the later steps run (reported at the end, or where MSFLEET_STOP_AFTER stops).
FAILED_CHECKS=()
STEP_MARK=""
# A check of the current step failed: noted for the end, marked in the step table.
check_failed() {
    FAILED_CHECKS+=("$1")
    STEP_MARK="  FAILED (see the end)"
}
failed_checks() {
    local count=${#FAILED_CHECKS[@]}
    [ "$count" -eq 0 ] && return 0
    log "failed checks:"
    printf '  %s\n' "${FAILED_CHECKS[@]}" >&2
    FAILED_CHECKS=()  # listed: cleanup need not list them again
    die "$count check(s) failed"
}

gate_start=$SECONDS
step_start=$SECONDS
STEPS=()
step() {  # end the previous step, start the next one
    if [ -n "${STEP_NAME:-}" ]; then
        STEPS+=("$(printf '  %-34s %5d s%s' "$STEP_NAME" $((SECONDS - step_start)) "$STEP_MARK")")
        log "step '$STEP_NAME' done in $((SECONDS - step_start)) s"
    fi
    if [ -n "${STEP_NAME:-}" ] && [ "${MSFLEET_STOP_AFTER:-}" = "$STEP_NAME" ]; then
        STEP_NAME=""
        log "MSFLEET_STOP_AFTER=$MSFLEET_STOP_AFTER: stopping here"
        failed_checks
        exit 0
    fi
    STEP_NAME="${1:-}"
    STEP_MARK=""
    step_start=$SECONDS
    [ -z "$STEP_NAME" ] || log "step '$STEP_NAME'"
}

step "images"
bash "$MESHOPS_ROOT/tests/utils/build-images.sh" --fleet

RELEASES=(11 12 13)
RUN_ID="$(printf '%x%s' $$ "$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')")"
PREFIX="msfleet-$RUN_ID"
CTL_NS="$PREFIX-ctl"
RUN_DIR="$CACHE_DIR/fleet/$RUN_ID"
FLEET_LOG_DIR="$LOG_DIR/fleet"
CREATED_CONTAINERS=()
CREATED_NETNS=()
mkdir -p "$RUN_DIR/cp" "$FLEET_LOG_DIR"
rm -f "$FLEET_LOG_DIR"/*.log

vm_ns() { printf '%s-d%s\n' "$PREFIX" "$1"; }
vm_container() { printf '%s-debian%s\n' "$PREFIX" "$1"; }

cleanup() {
    local rc=$? name
    set +e
    trap - EXIT INT TERM
    # The step under way when the run ended (not through step(): MSFLEET_STOP_AFTER must not turn a
    # failure into success here).
    if [ -n "${STEP_NAME:-}" ]; then
        STEPS+=("$(printf '  %-34s %5d s%s' "$STEP_NAME" $((SECONDS - step_start)) "$([ $rc -eq 0 ] || echo '  FAILED')")")
    fi
    if [ $rc -ne 0 ] && [ ${#FAILED_CHECKS[@]} -gt 0 ]; then
        log "failed checks of earlier steps:"
        printf '  %s\n' "${FAILED_CHECKS[@]}" >&2
    fi
    if [ ${#STEPS[@]} -gt 0 ]; then
        printf '%s\n' "fleet steps (run $RUN_ID):" "${STEPS[@]}" >&2
        printf '%s\n' "${STEPS[@]}" > "$LOG_DIR/fleet.steps" 2>/dev/null
    fi
    if { [ $rc -ne 0 ] && [ "${MSFLEET_KEEP:-0}" = 1 ]; } || [ "${MSFLEET_KEEP:-0}" = always ]; then
        log "MSFLEET_KEEP=${MSFLEET_KEEP}: leaving run $RUN_ID in place (docs/testing-fleet.md). Clean up with:"
        # shellcheck disable=SC2016 # $s and $ns are for the user's shell
        printf '  for s in %s/cp/*; do ssh -o ControlPath="$s" -O exit x; done; podman rm -f %s; for ns in %s; do ip netns del "$ns"; done; rm -rf %s\n' \
            "$RUN_DIR" "${CREATED_CONTAINERS[*]}" "${CREATED_NETNS[*]}" "$RUN_DIR" >&2
        exit $rc
    fi
    close_masters
    for name in "${CREATED_CONTAINERS[@]}"; do
        podman rm -f -t 5 "$name" >/dev/null 2>&1 || log "could not remove container $name"
    done
    for name in "${CREATED_NETNS[@]}"; do
        if ip netns list | awk '{print $1}' | grep -qx -- "$name"; then
            ip netns del "$name" || log "could not remove network namespace $name"
        fi
    done
    rm -rf "$RUN_DIR"
    rmdir "$CACHE_DIR/fleet" 2>/dev/null
    if [ $rc -eq 0 ]; then
        log "fleet gate passed in $((SECONDS - gate_start)) s (logs: ${FLEET_LOG_DIR#"$MESHOPS_ROOT/"}/)"
    else
        log "fleet gate FAILED after $((SECONDS - gate_start)) s (logs: ${FLEET_LOG_DIR#"$MESHOPS_ROOT/"}/)"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The link of VM N: a veth from the controller namespace (vmN, 198.18.N.1) to the VM's (eth0, .2).
# Created inside the two namespaces: nothing appears in the host namespace.
wire_vm() {
    local n="$1" ns
    ns="$(vm_ns "$n")"
    ip netns add "$ns"
    ip -n "$CTL_NS" link add "vm$n" type veth peer name eth0 netns "$ns"
    ip -n "$CTL_NS" addr add "198.18.$n.1/24" dev "vm$n"
    ip -n "$CTL_NS" addr add "2001:db8:$n::1/64" dev "vm$n" nodad
    ip -n "$CTL_NS" link set "vm$n" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "198.18.$n.2/24" dev eth0
    ip -n "$ns" addr add "2001:db8:$n::2/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
}

# No CAP_SYS_PTRACE on purpose: without it root cannot read /proc/PID/environ of the SSH login shell
# (another user's process), as on hardened hosts; the module's SSH guard must not depend on it.
start_vm() {
    local n="$1"
    podman run -d --quiet --name "$(vm_container "$n")" --hostname "debian$n" \
        --label "org.meshops.fleet=$RUN_ID" \
        --network "ns:/run/netns/$(vm_ns "$n")" --add-host "debian$n:127.0.1.1" \
        --systemd=always --cap-add NET_ADMIN --cap-add SYS_ADMIN \
        --volume "$RUN_DIR/authorized_keys:/etc/ssh/authorized_keys/fleet:ro" \
        --volume "$MESHOPS_ROOT/tests/fixtures/molecule/resolv.conf:/etc/resolv.conf:ro" \
        "localhost/meshops-fleet-debian$n:latest" >/dev/null
}

# Wait until sshd of VM N answers, and keep its host keys (this run's known_hosts).
await_ssh() {
    local n="$1" deadline=$((SECONDS + 90)) keys
    while :; do
        keys="$(ip netns exec "$CTL_NS" ssh-keyscan -T 2 "198.18.$n.2" 2>/dev/null || true)"
        [ -z "$keys" ] || break
        [ $SECONDS -lt $deadline ] || {
            podman logs --tail 30 "$(vm_container "$n")" >&2 || true
            die "sshd of debian$n (198.18.$n.2) did not answer within 90 s"
        }
        sleep 1
    done
    printf '%s\n' "$keys" >> "$RUN_DIR/known_hosts"
}

# ansible-playbook in the controller namespace, output kept in $FLEET_LOG_DIR/NAME.log.
playbook() {
    local name="$1" rc=0
    shift
    log "ansible-playbook $* (log: ${FLEET_LOG_DIR#"$MESHOPS_ROOT/"}/$name.log)"
    ip netns exec "$CTL_NS" ansible-playbook "$@" > "$FLEET_LOG_DIR/$name.log" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        tail -n 60 "$FLEET_LOG_DIR/$name.log" >&2
        log "ansible-playbook ($name) failed with status $rc"
    fi
    return $rc
}

# The PLAY RECAP of a log: "host changed failed" lines.
recap() {
    awk '/^PLAY RECAP/ { on = 1; next } on && /ok=/ {
            host = $1; changed = failed = ""
            for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "changed") changed = kv[2]; if (kv[1] == "failed") failed = kv[2] }
            print host, changed, failed }' "$FLEET_LOG_DIR/$1.log"
}

# Every VM in the recap of log $1, with no failure and changed=0 ($2 = zero) or changed>0 ($2 = some).
expect_recap() {
    local name="$1" want="$2" n line changed failed bad=0
    for n in "${RELEASES[@]}"; do
        line="$(recap "$name" | awk -v h="debian$n" '$1 == h')"
        [ -n "$line" ] || { log "$name: debian$n missing from the play recap"; bad=1; continue; }
        read -r _ changed failed <<< "$line"
        if [ "$failed" != 0 ] || { [ "$want" = zero ] && [ "$changed" != 0 ]; } \
                || { [ "$want" = some ] && [ "$changed" = 0 ]; }; then
            log "$name: debian$n has changed=$changed failed=$failed (expected changed $want, failed=0)"
            bad=1
        fi
    done
    [ $bad = 0 ] || { grep -E -B2 'changed: \[' "$FLEET_LOG_DIR/$name.log" | tail -n 40 >&2; die "$name: unexpected play recap"; }
    log "$name: recap as expected (changed $want on every VM)"
}

# The SSH control masters Ansible left running (ControlPersist): ask each to exit.
close_masters() {
    local sock
    for sock in "$RUN_DIR"/cp/*; do
        [ -S "$sock" ] && ssh -o ControlPath="$sock" -O exit fleet-master >/dev/null 2>&1
    done
    return 0
}

# After a failed capture step a wrongly accepted capture may have cut a session or captured port 22:
# put each VM's namespace back as the step found it (no rules: nothing before onboarding uses
# netfilter), from outside (podman exec), and start over with new SSH sessions.
reset_vm_rules() {
    local n
    close_masters
    for n in "${RELEASES[@]}"; do
        podman exec "$(vm_container "$n")" nft flush ruleset || log "could not flush the rules of debian$n"
    done
}

# After a failed check on the onboarded VMs: the onboarded rules again, by the role's own apply command.
reapply_vm_rules() {
    local n
    for n in "${RELEASES[@]}"; do
        podman exec "$(vm_container "$n")" /usr/local/sbin/meshops-interception-apply \
            /etc/meshops-sidecar/interception/host >/dev/null || log "could not put the rules of debian$n back"
    done
}

step "network and VMs"
export MSFLEET_RUN_DIR="$RUN_DIR" MSFLEET_LOG_DIR="$FLEET_LOG_DIR"
export ANSIBLE_CONFIG="$MESHOPS_ROOT/tests/fleet/ansible.cfg"
export ANSIBLE_SSH_CONTROL_PATH_DIR="$RUN_DIR/cp"
ssh-keygen -q -t ed25519 -N '' -C "meshops fleet $RUN_ID" -f "$RUN_DIR/id_ed25519"
cp "$RUN_DIR/id_ed25519.pub" "$RUN_DIR/authorized_keys"
chmod 0644 "$RUN_DIR/authorized_keys"
: > "$RUN_DIR/known_hosts"

CREATED_NETNS+=("$CTL_NS")
ip netns add "$CTL_NS"
ip -n "$CTL_NS" link set lo up
for n in "${RELEASES[@]}"; do
    CREATED_NETNS+=("$(vm_ns "$n")")
    wire_vm "$n"
    CREATED_CONTAINERS+=("$(vm_container "$n")")
    start_vm "$n"
done
for n in "${RELEASES[@]}"; do
    await_ssh "$n"
done
log "VMs up: $(for n in "${RELEASES[@]}"; do printf 'debian%s=198.18.%s.2 ' "$n" "$n"; done)"

step "prepare"
playbook prepare tests/fleet/prepare.yml

# Item one of the SSH guard, for real: capture on the VM's own namespace over the session Ansible uses,
# while that session is still unknown to the VM's conntrack. Its failure is reported at the end; the
# steps after it run in any case (they start from the same state).
step "capture over the live SSH session"
if ! playbook session-capture tests/fleet/session-capture.yml; then
    check_failed "capture over the live SSH session (.cache/logs/fleet/session-capture.log)"
    reset_vm_rules
fi

step "onboard --check --diff"
# The sessions onboarding runs over (verify.yml checks that they survived it).
playbook session-note tests/fleet/session.yml -e session_record=before-onboarding
playbook check-onboard meshops.sidecar.onboard_vm --check --diff
expect_recap check-onboard some
playbook check-unchanged tests/fleet/check.yml

step "onboard"
playbook onboard meshops.sidecar.onboard_vm
expect_recap onboard some

step "onboard again (idempotence)"
playbook onboard-again meshops.sidecar.onboard_vm
expect_recap onboard-again zero

# Item two of the SSH guard: refusals of a capture of port 22 over the session Ansible uses. Like the
# capture step, its failure is reported at the end; the rules are put back from outside in case a
# capture was wrongly accepted, and the checks after it run in any case.
step "SSH guard over the session"
if ! playbook guard tests/fleet/guard.yml; then
    check_failed "the SSH guard over the session (.cache/logs/fleet/guard.log)"
    reapply_vm_rules
fi

step "verify (rules, sidecar, traffic)"
playbook verify tests/fleet/verify.yml

# Item three: what each release's tools can and cannot do. Reported at the end like the SSH guard;
# the VMs' rules are put back from outside should the role have wrongly applied a mode.
step "tools of each release"
if ! playbook tools tests/fleet/tools.yml; then
    check_failed "what each release's tools can and cannot do (.cache/logs/fleet/tools.log)"
    reapply_vm_rules
fi

step "reboot"
for n in "${RELEASES[@]}"; do
    podman stop -t 20 "$(vm_container "$n")" >/dev/null
    # The old link goes first, both ends at once: the namespace can outlive its `ip netns del` for a
    # moment (podman lets go of it asynchronously), and with it the veth whose name wire_vm reuses.
    ip -n "$CTL_NS" link del "vm$n"
    # A fresh namespace: a rebooted kernel keeps no rules, only the boot unit can bring them back.
    ip netns del "$(vm_ns "$n")"
    wire_vm "$n"
    podman start "$(vm_container "$n")" >/dev/null
done
for n in "${RELEASES[@]}"; do
    await_ssh "$n"
done
playbook verify-boot tests/fleet/verify-boot.yml

step "offboard"
playbook offboard meshops.sidecar.offboard_vm
expect_recap offboard some
playbook offboard-again meshops.sidecar.offboard_vm
expect_recap offboard-again zero

step "compare with the state before"
playbook compare tests/fleet/compare.yml
step
failed_checks
