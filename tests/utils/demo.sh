#!/usr/bin/env bash
# Run the demo playbook; if it is interrupted (Ctrl-C, TERM) or fails half-way, take everything it made down again.
# Usage: tests/utils/demo.sh COLLECTION [ansible-playbook args...]
set -u
collection=$1
shift
# shellcheck disable=SC2317 # reached through the trap below
cleanup() {
    trap - INT TERM
    kill -INT "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    echo "==> demo interrupted: removing what it made (${collection}.demo -e demo_state=absent)" >&2
    ansible-playbook "${collection}.demo" -e demo_state=absent "$@" >/dev/null 2>&1 \
        && echo "==> demo removed" >&2 || echo "==> cleanup failed: run 'make demo-clean'" >&2
    exit 130
}
trap cleanup INT TERM
ansible-playbook "${collection}.demo" "$@" &
pid=$!
wait "$pid"
rc=$?
trap - INT TERM
exit "$rc"
