#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# `make bench`: the cost of one istio_redirect_chains task against the equivalent
# ansible.builtin.iptables tasks and a no-op task, and how it grows with excluded CIDRs, on both
# backends, in throw-away network namespaces; and the data path: the connect latency of captured new
# connections inside those namespaces with 0 to 10,000 excluded CIDRs (`ARGS=--datapath-only` runs only
# that part). Needs root. Not part of `make test`.
#
# Run from the repository root, with the venv on PATH. If ANSIBLE_COLLECTIONS_PATH does not lead
# to meshops.sidecar, a temporary ansible_collections/meshops/sidecar symlink to this checkout is
# put first on it. Arguments go to tests/bench/bench.py (--help lists them).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

if [ "$(id -u)" != 0 ]; then
    echo "make bench needs root: it creates network namespaces and programs netfilter in them" >&2
    exit 1
fi
for tool in ip ansible-playbook python3; do
    command -v "$tool" >/dev/null || { echo "make bench: '$tool' is not on PATH" >&2; exit 1; }
done

# Every namespace of this run is named "$BENCH_NS_PREFIX-<number>"; the trap removes exactly those,
# whatever happens to bench.py.
BENCH_NS_PREFIX="msbench-$$-$RANDOM"
export BENCH_NS_PREFIX
scratch="$(mktemp -d "${TMPDIR:-/tmp}/meshops-bench.XXXXXX")"

cleanup() {
    local name
    for name in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case "$name" in
            "$BENCH_NS_PREFIX"-[0-9]*) ip netns delete "$name" 2>/dev/null || true ;;
        esac
    done
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

found=""
IFS=: read -r -a paths <<<"${ANSIBLE_COLLECTIONS_PATH:-}"
for dir in "${paths[@]}"; do
    if [ -n "$dir" ] && [ -f "$dir/ansible_collections/meshops/sidecar/galaxy.yml" ]; then
        found="$dir"
        break
    fi
done
if [ -z "$found" ]; then
    mkdir -p "$scratch/collections/ansible_collections/meshops"
    ln -s "$root" "$scratch/collections/ansible_collections/meshops/sidecar"
    ANSIBLE_COLLECTIONS_PATH="$scratch/collections${ANSIBLE_COLLECTIONS_PATH:+:$ANSIBLE_COLLECTIONS_PATH}"
fi
export ANSIBLE_COLLECTIONS_PATH

python3 tests/bench/bench.py "$@"
