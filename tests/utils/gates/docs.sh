#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Gate "docs": documentation and the release artefact.
#  1. ansible-doc renders every module, every other documented plugin and every role
#     (meta/argument_specs.yml), with no warning or error.
#  2. antsibull-docs lint-collection-docs --plugin-docs (semantic markup, O()/M()/RV()
#     references, docs/docsite/*.yml if present).
#  3. antsibull-changelog lint (changelogs/config.yaml and every fragment).
#  4. ansible-galaxy collection build of the collection (exactly the git-visible files); the
#     tarball must not carry build clutter; it installs into a fresh directory, ansible-doc
#     renders every module and role from the installed copy, the netns module runs from it
#     (check mode, nothing to change) and every playbook passes --syntax-check by its FQCN.
set -euo pipefail
# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/../lib.sh"
require_venv
cd "$MESHOPS_ROOT"

failures=0
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }

# Run a command; fail on a non-zero exit or on any warning/error line in its stderr.
run_clean() {
    local err rc=0
    err="$(mktemp)"
    "$@" >/dev/null 2>"$err" || rc=$?
    if [ $rc -ne 0 ] || grep -qE '\[(WARNING|ERROR|DEPRECATION WARNING)\]|^(ERROR|WARNING)' "$err"; then
        cat "$err" >&2
        fail "$* (rc=$rc)"
    else
        printf 'ok: %s\n' "$*"
    fi
    rm -f "$err"
}

# ansible-doc for everything the collection documents, found in collections path $1.
doc_everything() {
    local path="$1" type file name
    shopt -s nullglob
    for file in plugins/modules/*.py; do
        name="$(basename "$file" .py)"
        [ "$name" = __init__ ] && continue
        ANSIBLE_COLLECTIONS_PATH="$path" run_clean ansible-doc -t module "$COLLECTION_FQCN.$name"
    done
    # Other plugin types: whatever ansible-doc lists for the collection.
    for type in action become cache callback cliconf connection filter httpapi inventory \
                lookup netconf shell strategy test vars; do
        [ -d "plugins/$type" ] || continue
        [ "$type" = action ] && continue # action plugins share their module's documentation
        while read -r name; do
            [ -n "$name" ] || continue
            ANSIBLE_COLLECTIONS_PATH="$path" run_clean ansible-doc -t "$type" "$name"
        done < <(ANSIBLE_COLLECTIONS_PATH="$path" ansible-doc -t "$type" --list --json "$COLLECTION_FQCN" 2>/dev/null \
                 | python3 -c 'import json, sys; print("\n".join(sorted(json.load(sys.stdin))))')
    done
    for file in roles/*/; do
        name="$(basename "$file")"
        [ -f "roles/$name/meta/argument_specs.yml" ] || [ -f "roles/$name/meta/argument_specs.yaml" ] \
            || fail "role $name has no meta/argument_specs.yml (ansible-doc and argument validation need it)"
        ANSIBLE_COLLECTIONS_PATH="$path" run_clean ansible-doc -t role "$COLLECTION_FQCN.$name"
    done
}

log "ansible-doc from the working tree"
sync_collection_copy docs
doc_everything "$ANSIBLE_TEST_ROOT:$DEPS_COLLECTIONS_DIR"

log "antsibull-docs lint-collection-docs"
(cd "$COLLECTION_COPY" && ANSIBLE_COLLECTIONS_PATH="$ANSIBLE_TEST_ROOT:$DEPS_COLLECTIONS_DIR" \
    antsibull-docs lint-collection-docs --plugin-docs .) || fail "antsibull-docs lint-collection-docs"

log "antsibull-changelog lint"
if [ -f changelogs/config.yaml ]; then
    antsibull-changelog lint || fail "antsibull-changelog lint"
    if [ -f changelogs/changelog.yaml ]; then
        antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml || fail "changelogs/changelog.yaml"
    fi
else
    fail "changelogs/config.yaml is missing"
fi

log "ansible-galaxy collection build + install"
if ! tarball="$(bash "$MESHOPS_ROOT/tests/utils/build-collection.sh")"; then
    fail "ansible-galaxy collection build"
else
    clutter="$(tar -tzf "$tarball" | grep -E '(^|/)(\.venv|\.cache|\.ansible|\.git|\.ci|__pycache__|\.pytest_cache)(/|$)|^tests/output/|\.pyc$|\.tar\.gz$' || true)"
    [ -z "$clutter" ] || fail "the tarball carries build clutter: $(echo "$clutter" | head -n 5 | tr '\n' ' ')"
    printf 'tarball: %s (%s files, %s)\n' "${tarball#"$MESHOPS_ROOT/"}" "$(tar -tzf "$tarball" | wc -l)" "$(du -h "$tarball" | cut -f1)"
    installed="$(mktemp -d "$CACHE_DIR/install-check.XXXXXX")"
    if ANSIBLE_COLLECTIONS_PATH="$installed" \
        ansible-galaxy collection install --offline --no-deps -p "$installed" "$tarball"; then
        doc_everything "$installed:$DEPS_COLLECTIONS_DIR"
        # The installed modules run: netns in check mode, for a name that does not exist, must
        # load with its module_utils, change nothing and report no change.
        if [ -f plugins/modules/netns.py ]; then
            if out="$(ANSIBLE_COLLECTIONS_PATH="$installed:$DEPS_COLLECTIONS_DIR" ANSIBLE_LOCALHOST_WARNING=false \
                    ANSIBLE_INVENTORY_UNPARSED_WARNING=false ansible localhost --check \
                    -m "$COLLECTION_FQCN.netns" -a "name=meshops-smoke-$$ state=absent" 2>&1)" \
                && grep -q '"changed": false' <<<"$out"; then
                printf 'ok: %s.netns runs from the installed tarball\n' "$COLLECTION_FQCN"
            else
                printf '%s\n' "$out" >&2
                fail "$COLLECTION_FQCN.netns from the installed tarball"
            fi
        fi
        shopt -s nullglob
        for file in playbooks/*.yml playbooks/*.yaml; do
            name="$(basename "${file%.*}")"
            # rc only: a playbook may target groups this throwaway inventory lacks (a warning).
            if ANSIBLE_COLLECTIONS_PATH="$installed:$DEPS_COLLECTIONS_DIR" \
                ansible-playbook --syntax-check -i localhost, "$COLLECTION_FQCN.$name" >/dev/null; then
                printf 'ok: ansible-playbook --syntax-check %s\n' "$COLLECTION_FQCN.$name"
            else
                fail "ansible-playbook --syntax-check $COLLECTION_FQCN.$name"
            fi
        done
    else
        fail "ansible-galaxy collection install of $tarball"
    fi
    rm -rf "$installed"
fi

[ $failures -eq 0 ] || die "$failures docs/build check(s) failed"
log "docs and build checks passed"
