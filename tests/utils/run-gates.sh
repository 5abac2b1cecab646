#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Run quality gates in order (tests/utils/gates/<gate>.sh), keep going after a failure, and end
# with one line per gate: name, result, seconds. Exit status 1 if any gate failed.
# Each gate's output is shown as it runs and kept in .cache/logs/<gate>.log. A gate made of steps
# (cores: one per ansible-core version) leaves their table in .cache/logs/<gate>.steps, printed
# under its line.
#
# Usage: run-gates.sh [GATE...] [-- ARG...]
#   default gates: lint sanity unit integration molecule fleet docs cores; ARGs go to every gate run
set -uo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/lib.sh"

gates=()
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then
        shift
        break
    fi
    gates+=("$1")
    shift
done
[ ${#gates[@]} -gt 0 ] || gates=(lint sanity unit integration molecule fleet docs cores)
for gate in "${gates[@]}"; do
    [ -f "$MESHOPS_ROOT/tests/utils/gates/$gate.sh" ] || die "unknown gate '$gate'"
done

mkdir -p "$LOG_DIR"
results=()
total_start=$SECONDS
any_failed=0
for gate in "${gates[@]}"; do
    printf '\n######## gate %s ########\n' "$gate"
    start=$SECONDS
    rm -f "$LOG_DIR/$gate.steps"
    bash "$MESHOPS_ROOT/tests/utils/gates/$gate.sh" "$@" 2>&1 | tee "$LOG_DIR/$gate.log"
    rc=${PIPESTATUS[0]}
    elapsed=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        result=PASS
    else
        result="FAIL"
        any_failed=1
    fi
    printf '######## gate %s: %s in %d s (log: .cache/logs/%s.log)\n' "$gate" "$result" "$elapsed" "$gate"
    results+=("$(printf '%-18s %-6s %7d' "$gate" "$result" "$elapsed")")
    if [ -s "$LOG_DIR/$gate.steps" ]; then
        while IFS= read -r line; do
            results+=("$line")
        done < "$LOG_DIR/$gate.steps"
    fi
done

printf '\n%-18s %-6s %7s\n' gate result seconds
printf '%s\n' "${results[@]}"
printf '%-18s %-6s %7d\n' total "$([ $any_failed -eq 0 ] && echo PASS || echo FAIL)" $((SECONDS - total_start))
exit $any_failed
