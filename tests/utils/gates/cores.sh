#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "cores": the ansible-core versions tested besides the main venv's, one venv each
# (.cache/cores/X.Y from tests/requirements-core-X.Y.txt, made here by `bootstrap.sh cores`).
# The cheap steps run on every version: sanity (gates/sanity.sh: every test on the venv's Python)
# and units (gates/unit.sh). The multi-version sanity tests (compile, import) also run on every
# other target Python the range supports and the machine has, each Python once, spread over the
# versions (see below). The expensive step, the integration target istio_redirect_chains (root,
# real namespaces), runs only at the edges of the range: the oldest and the newest version.
#
# The steps run in three streams at once (CORES_JOBS; the other gates run one at a time): the
# sanity steps one after the other in the first (they share ansible-test's venv cache, which one
# ansible-test at a time may fill); integration and units, longest first, in the others, and in
# the first too once its sanity steps are done. The integration runs mostly wait (on probes,
# servers, timeouts: a two-stream run used 0.85 of a core on average), so on two cores the
# two of them run side by side, next to sanity (they can: each names its namespaces and
# interfaces with a random prefix). Each
# step has its own collection copy and log, .cache/logs/cores-X.Y-STEP.log (its tail is shown
# when it fails), and its time; the table of steps also goes to .cache/logs/cores.steps, which
# run-gates.sh prints under this gate's line. CORES_JOBS=1 runs everything in one stream.
# Arguments: the versions to test (default: every tests/requirements-core-X.Y.txt).
set -uo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"

INTEGRATION_TARGET=istio_redirect_chains
# A step that hangs must not eat CI's 90 minutes; the slowest measured (an integration run on a
# loaded machine) took 13.5 minutes.
STEP_TIMEOUT="${CORES_STEP_TIMEOUT:-1800}"
JOBS="${CORES_JOBS:-3}"

mapfile -t all_cores < <(core_versions)
[ ${#all_cores[@]} -gt 0 ] || die "no tests/requirements-core-X.Y.txt"
cores=("$@")
[ ${#cores[@]} -gt 0 ] || cores=("${all_cores[@]}")
for core in "${cores[@]}"; do
    [ -f "$(core_requirements "$core")" ] || die "unknown ansible-core version '$core' (known: ${all_cores[*]})"
done
oldest="${all_cores[0]}"
newest="${all_cores[${#all_cores[@]} - 1]}"

mkdir -p "$LOG_DIR"
steps_file="$LOG_DIR/cores.steps"
results_dir="$LOG_DIR/cores.results"
rm -rf "$results_dir"
mkdir -p "$results_dir"
: > "$steps_file"

# One step "CORE:STEP[:ARG]": a gate script run with that core's venv and its own collection
# copy; output to its log; the result to $results_dir/CORE-STEP as "RESULT SECONDS".
run_step() {
    local core step arg log start rc result elapsed
    IFS=: read -r core step arg <<<"$1"
    log="$LOG_DIR/cores-$core-$step.log"
    start=$SECONDS
    log "ansible-core $core: $step${arg:+ $arg} started (log: ${log#"$MESHOPS_ROOT/"})"
    # timeout leads a process group of its own and ends all of it; it runs in the background so
    # that a signal to this script reaches the trap below while the step runs.
    env -u TEST_PYTHON_VERSION VENV_DIR="$CORES_DIR/$core" MESHOPS_COPY_SUFFIX="core-$core" \
        SANITY_TARGET_PYTHONS="${sanity_targets[$core]:-}" \
        timeout --kill-after=60 "$STEP_TIMEOUT" \
        bash "$MESHOPS_ROOT/tests/utils/gates/$step.sh" ${arg:+"$arg"} </dev/null >"$log" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"
    rc=$?
    STEP_PID=""
    elapsed=$((SECONDS - start))
    if [ "$rc" -eq 0 ]; then
        result=PASS
    else
        result=FAIL
        [ "$rc" -ne 124 ] || printf 'ERROR: timed out after %s s\n' "$STEP_TIMEOUT" >>"$log"
        # The end of the log says why; the whole log stays in .cache/logs.
        printf -- '---- last lines of %s ----\n%s\n----\n' "${log#"$MESHOPS_ROOT/"}" "$(tail -n 40 "$log")" >&2
    fi
    log "ansible-core $core: $step $result in $elapsed s"
    printf '%s %d\n' "$result" "$elapsed" >"$results_dir/$core-$step"
}

# Interrupted (Ctrl-C, or TERM from above): end the running step (timeout passes the signal on
# to its whole group), then stop.
STEP_PID=""
stop_step() {
    [ -z "$STEP_PID" ] || kill -TERM "$STEP_PID" 2>/dev/null
    wait 2>/dev/null
}

run_stream() {
    local spec
    for spec in "$@"; do
        run_step "$spec"
    done
}

# The other steps wait in a queue that both streams take from, longest first: the stream that
# runs the sanity steps joins in when they are done.
queue="$results_dir/queue"
TAKEN=""
take_step() {
    exec 6>>"$queue.lock"
    flock 6
    TAKEN="$(head -n 1 "$queue")"
    [ -z "$TAKEN" ] || sed -i 1d "$queue"
    exec 6>&-
    [ -n "$TAKEN" ]
}
run_queue() {
    while take_step; do
        run_step "$TAKEN"
    done
}

start=$SECONDS
if ! bash "$MESHOPS_ROOT/tests/utils/bootstrap.sh" cores; then
    printf '  %-16s %-6s %7d\n' "bootstrap cores" FAIL $((SECONDS - start)) >>"$steps_file"
    die "bootstrap.sh cores failed"
fi
printf '  %-16s %-6s %7d\n' "bootstrap cores" PASS $((SECONDS - start)) >>"$steps_file"

# The target Pythons for compile and import: every Python that a version of the range supports
# on targets (the --python choices of its ansible-test) and the machine has, each run once. Every
# version's own Python (3.11, 3.12) runs with all its tests anyway; each other Python goes to the
# newest version that supports it, so the sanity steps share the work instead of repeating
# it (2.17: 3.7, 2.18: 3.8, 2.20: 3.9 3.10 3.13). Pythons the machine lacks are named.
declare -A sanity_targets=()
covered=" "
for core in "${cores[@]}"; do
    covered+="$(core_python_version "$core") "
done
missing_pythons=()
for ((i = ${#cores[@]} - 1; i >= 0; i--)); do
    core="${cores[i]}"
    versions="$(ansible_test_python_versions "$CORES_DIR/$core")" \
        || die "cannot read the target Pythons of ansible-core $core's ansible-test"
    read -r -a supported <<<"$versions"
    [ ${#supported[@]} -gt 0 ] || die "ansible-core $core's ansible-test names no target Python"
    for version in "${supported[@]}"; do
        [[ "$covered" != *" $version "* ]] || continue
        [[ " ${missing_pythons[*]} " != *" $version "* ]] || continue
        if find_python_version "$version" >/dev/null; then
            sanity_targets[$core]+="${sanity_targets[$core]:+ }$version"
            covered+="$version "
        else
            missing_pythons+=("$version")
        fi
    done
done
for core in "${cores[@]}"; do
    log "ansible-core $core: sanity on Python $(core_python_version "$core")${sanity_targets[$core]:+, compile and import also on ${sanity_targets[$core]}}"
done
if [ ${#missing_pythons[@]} -gt 0 ]; then
    log "WARNING: not on this machine, so compile and import do not run on Python ${missing_pythons[*]}"
fi

sanity_steps=()
other_steps=()
for core in "${cores[@]}"; do
    sanity_steps+=("$core:sanity")
    if [ "$core" = "$oldest" ] || [ "$core" = "$newest" ]; then
        other_steps+=("$core:integration:$INTEGRATION_TARGET")
    fi
done
for core in "${cores[@]}"; do
    other_steps+=("$core:unit")
done

printf '%s\n' "${other_steps[@]}" >"$queue"
ensure_ansible_test_ssh_key
# Streams 2..JOBS take from the queue only; this shell waits for them all.
stream_pids=()
trap '[ ${#stream_pids[@]} -eq 0 ] || kill -TERM "${stream_pids[@]}" 2>/dev/null; stop_step; exit 130' INT TERM
for ((stream = 2; stream <= JOBS; stream++)); do
    (
        trap 'stop_step; exit 130' INT TERM
        run_queue
    ) &
    stream_pids+=($!)
done
run_stream "${sanity_steps[@]}"
run_queue
[ ${#stream_pids[@]} -eq 0 ] || wait "${stream_pids[@]}"
stream_pids=()
trap - INT TERM

# The table in a fixed order (core, then step), whatever order the streams finished in.
failed=()
for core in "${cores[@]}"; do
    for spec in "${sanity_steps[@]}" "${other_steps[@]}"; do
        [ "${spec%%:*}" = "$core" ] || continue
        step="${spec#*:}"
        step="${step%%:*}"
        if [ -f "$results_dir/$core-$step" ]; then
            read -r result elapsed <"$results_dir/$core-$step"
        else
            result=FAIL elapsed=0 # never finished
        fi
        printf '  %-16s %-6s %7d\n' "$core $step" "$result" "$elapsed" >>"$steps_file"
        [ "$result" = PASS ] || failed+=("$core/$step")
    done
done
if [ ${#missing_pythons[@]} -gt 0 ]; then
    printf '  (not on this machine, compile/import not run: Python %s)\n' "${missing_pythons[*]}" >>"$steps_file"
fi
printf '\n  %-16s %-6s %7s\n' step result seconds
cat "$steps_file"
[ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
log "ansible-core ${cores[*]}: every step passed"
