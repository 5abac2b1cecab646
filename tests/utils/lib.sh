# shellcheck shell=bash disable=SC2034 # the variables are for the scripts that source this file
# Common settings for the build and quality-gate scripts in tests/utils/.
# Source it (". tests/utils/lib.sh"); it only defines variables and functions.
#
# Everything the gates write lives in the git-ignored .cache/ of the checkout (the venv in
# .venv/): ansible's and the test tools' state included, not the invoking user's home.

MESHOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export MESHOPS_ROOT

# The collection's FQCN comes from galaxy.yml, so the scripts follow a rename.
COLLECTION_NAMESPACE="$(sed -n 's/^namespace:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$MESHOPS_ROOT/galaxy.yml")"
COLLECTION_NAME="$(sed -n 's/^name:[[:space:]]*\([A-Za-z0-9_]*\).*/\1/p' "$MESHOPS_ROOT/galaxy.yml")"
COLLECTION_FQCN="$COLLECTION_NAMESPACE.$COLLECTION_NAME"

VENV_DIR="${VENV_DIR:-$MESHOPS_ROOT/.venv}"
CACHE_DIR="$MESHOPS_ROOT/.cache"
# Third-party collections unpacked from the "ansible" wheel (containers.podman, ...).
DEPS_COLLECTIONS_DIR="$CACHE_DIR/deps"
# Real (not symlinked) ansible_collections/NS/NAME copies of the checkout, for ansible-test and
# the build: one per user (gate) so that gates can run at the same time, set by
# sync_collection_copy: .cache/ansible-test/<user>/ansible_collections/NS/NAME.
ANSIBLE_TEST_ROOT=""
COLLECTION_COPY=""
# The built tarball is installed here for `make demo` (and the docs gate installs into a temp dir).
INSTALL_COLLECTIONS_DIR="$CACHE_DIR/install"
BUILD_DIR="$CACHE_DIR/build"
LOG_DIR="$CACHE_DIR/logs"
# HOME for the tools that write under ~ (ansible-test keeps its sanity venvs and the pip
# bootstrap stand-in in ~/.ansible/test; molecule ~/.ansible_async, ~/.cache/molecule; ...).
TOOL_HOME="$CACHE_DIR/home"
ANSIBLE_TEST_HOME="$TOOL_HOME"

# Extra ansible-core versions tested besides the one in .venv: tests/requirements-core-X.Y.txt,
# each installed into its own venv .cache/cores/X.Y by `bootstrap.sh cores`.
CORES_DIR="$CACHE_DIR/cores"

# Python version the gates run ansible-test with: the venv's.
if [ -z "${TEST_PYTHON_VERSION:-}" ]; then
    TEST_PYTHON_VERSION="$("$VENV_DIR/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)"
fi

export PATH="$VENV_DIR/bin:$PATH"
# ansible's own state (tmp, galaxy cache, default collections dir) stays in .cache too.
export ANSIBLE_HOME="$TOOL_HOME/.ansible"
export CONTAINERS_CONF="$MESHOPS_ROOT/tests/utils/containers.conf"
export ANSIBLE_COLLECTIONS_PATH="$DEPS_COLLECTIONS_DIR"
export ANSIBLE_NOCOLOR="${ANSIBLE_NOCOLOR:-1}"
export NO_COLOR="${NO_COLOR-1}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

require_venv() {
    [ -x "$VENV_DIR/bin/ansible-test" ] \
        || die "no venv at $VENV_DIR: run 'make venv' (or tests/utils/bootstrap.sh) first"
}

require_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (network namespaces, netfilter, rootful podman)"
}

# Refresh the real collection copy ansible-test needs (tracked + untracked-not-ignored files).
# $1 names the copy (the gate using it); MESHOPS_COPY_SUFFIX, set by the cores gate, gives each
# ansible-core version copies of its own. The copy stays locked until this process and its
# children exit, so two runs of the same gate in one checkout wait for each other instead of
# rewriting files under each other's feet.
sync_collection_copy() {
    local user="${1:?sync_collection_copy needs the name of its user}${MESHOPS_COPY_SUFFIX:+-$MESHOPS_COPY_SUFFIX}"
    ANSIBLE_TEST_ROOT="$CACHE_DIR/ansible-test/$user"
    COLLECTION_COPY="$ANSIBLE_TEST_ROOT/ansible_collections/$COLLECTION_NAMESPACE/$COLLECTION_NAME"
    mkdir -p "$ANSIBLE_TEST_ROOT"
    exec 8>"$ANSIBLE_TEST_ROOT.lock"
    if ! flock -n 8; then
        log "waiting for another run using ${ANSIBLE_TEST_ROOT#"$MESHOPS_ROOT/"} to finish"
        flock 8
    fi
    python3 "$MESHOPS_ROOT/tests/utils/sync-collection.py" "$MESHOPS_ROOT" "$COLLECTION_COPY"
    # ansible-test lists content with `git ls-files` of the nearest enclosing repository: without
    # a repository of its own the copy would be seen through the checkout's, where .cache/ is
    # ignored, and every target would be skipped. An empty repository makes all of the copy's
    # files "untracked, not ignored" (its .gitignore still hides tests/output).
    [ -e "$COLLECTION_COPY/.git" ] || git -C "$COLLECTION_COPY" init -q
    # Other collections (for integration targets) sit next to ours; symlinks are fine for them.
    local dep
    if [ -d "$DEPS_COLLECTIONS_DIR/ansible_collections" ]; then
        for dep in "$DEPS_COLLECTIONS_DIR"/ansible_collections/*; do
            [ -d "$dep" ] || continue
            [ "$(basename "$dep")" = "$COLLECTION_NAMESPACE" ] && continue
            ln -sfn "$dep" "$ANSIBLE_TEST_ROOT/ansible_collections/$(basename "$dep")"
        done
    fi
}

# For ansible-lint and molecule: HOME under .cache/, and the working tree itself as the
# collection. Both tools (ansible-compat) otherwise build and install the checkout into
# $ANSIBLE_HOME/collections on every run; they skip that when the collection there is a symlink
# to the current directory. So the playbooks they run use exactly the files being edited.
use_working_tree_collection() {
    export HOME="$TOOL_HOME"
    local link="$ANSIBLE_HOME/collections/ansible_collections/$COLLECTION_NAMESPACE/$COLLECTION_NAME"
    mkdir -p "$(dirname "$link")"
    if [ -e "$link" ] && [ ! -L "$link" ]; then
        rm -rf "$link"
    fi
    ln -sfn "$MESHOPS_ROOT" "$link"
    export ANSIBLE_COLLECTIONS_PATH="$ANSIBLE_HOME/collections:$DEPS_COLLECTIONS_DIR"
}

# ansible-test bootstraps pip in its sanity venvs with a script it downloads from
# ci-files.testing.ansible.com (unreachable here). It uses a cached copy named after the pip
# version it pins, so put our offline stand-in there.
install_get_pip_standin() {
    local at_dir pip_version cache
    at_dir="$("$VENV_DIR/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')"
    pip_version="$(sed -n "s/.*pip='\([0-9.]*\)'.*/\1/p" "$at_dir/_internal/python_requirements.py" | head -n1)"
    [ -n "$pip_version" ] || die "cannot find the pip version ansible-test pins in $at_dir"
    cache="$ANSIBLE_TEST_HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
    mkdir -p "$(dirname "$cache")"
    # Copied under another name and renamed: the cores gate runs two ansible-tests at once, and
    # one must never read a half-written copy.
    if ! cmp -s "$MESHOPS_ROOT/tests/utils/get-pip-offline.py" "$cache"; then
        cp "$MESHOPS_ROOT/tests/utils/get-pip-offline.py" "$cache.$$"
        mv -f "$cache.$$" "$cache"
    fi
}

# ansible-test's SSH key pair (~/.ansible/test/id_rsa, .pub), made as ansible-test makes it when
# it is missing: ansible-tests started at the same moment would each make it and the second one's
# ssh-keygen would stop at "Overwrite (y/n)?". Made under other names, then renamed.
ensure_ansible_test_ssh_key() {
    local dir="$ANSIBLE_TEST_HOME/.ansible/test" tmp
    [ -f "$dir/id_rsa" ] && [ -f "$dir/id_rsa.pub" ] && return 0
    mkdir -p "$dir"
    tmp="$(mktemp -d "$dir/.keygen.XXXXXX")"
    ssh-keygen -m PEM -q -t rsa -N '' -f "$tmp/id_rsa" || { rm -rf "$tmp"; die "ssh-keygen failed"; }
    # As ansible-test does: paramiko does not read the newer "BEGIN PRIVATE KEY" PEM header.
    sed -i -E 's/(BEGIN|END) PRIVATE KEY/\1 RSA PRIVATE KEY/' "$tmp/id_rsa"
    mv -f "$tmp/id_rsa.pub" "$dir/id_rsa.pub"
    mv -f "$tmp/id_rsa" "$dir/id_rsa"
    rm -rf "$tmp"
}

# Run ansible-test from the collection copy with HOME under .cache/.
ansible_test() {
    install_get_pip_standin
    (cd "$COLLECTION_COPY" && HOME="$ANSIBLE_TEST_HOME" ansible-test "$@")
}

# The X.Y of every tests/requirements-core-X.Y.txt, oldest first.
core_versions() {
    local file
    for file in "$MESHOPS_ROOT"/tests/requirements-core-*.txt; do
        [ -f "$file" ] || continue
        file="${file##*/requirements-core-}"
        printf '%s\n' "${file%.txt}"
    done | sort -t. -k1,1n -k2,2n
}

core_requirements() { printf '%s\n' "$MESHOPS_ROOT/tests/requirements-core-$1.txt"; }

# The Python X.Y a core's venv runs on: the "# python: X.Y" line of its requirements file.
core_python_version() {
    local file version
    file="$(core_requirements "$1")"
    [ -f "$file" ] || die "no ${file#"$MESHOPS_ROOT/"} (ansible-core versions: $(core_versions | tr '\n' ' '))"
    version="$(sed -n 's/^# python: *\([0-9][0-9.]*\).*/\1/p' "$file" | head -n1)"
    [ -n "$version" ] || die "${file#"$MESHOPS_ROOT/"} has no '# python: X.Y' line"
    printf '%s\n' "$version"
}

# Print the path of a base (not venv) Python X.Y interpreter, or return 1 when the machine has
# none. A python3.Y on PATH counts only if it runs: pyenv's shims exist for every installed
# version but answer only for the active ones, so pyenv's own X.Y.* is looked up next.
find_python_version() {
    local version="$1" exe root candidate
    local query='import sys; print(getattr(sys, "_base_executable", None) or sys.executable)'
    if exe="$("python$version" -c "$query" 2>/dev/null)" && [ -x "$exe" ]; then
        printf '%s\n' "$exe"
        return 0
    fi
    if command -v pyenv >/dev/null 2>&1 && root="$(pyenv prefix "$version" 2>/dev/null)" \
            && [ -x "$root/bin/python$version" ]; then
        printf '%s\n' "$root/bin/python$version"
        return 0
    fi
    # pyenv installed but not initialised in this shell (no pyenv on PATH): its versions, newest first.
    if [ -n "${PYENV_ROOT:-}" ]; then
        for candidate in $(printf '%s\n' "$PYENV_ROOT"/versions/"$version".*/bin/"python$version" | sort -V -r); do
            if "$candidate" -c 'pass' 2>/dev/null; then
                printf '%s\n' "$candidate"
                return 0
            fi
        done
    fi
    return 1
}

# The Python versions the ansible-test of venv $1 (default: VENV_DIR) supports on targets (the
# choices of its --python), oldest first.
ansible_test_python_versions() {
    "${1:-$VENV_DIR}/bin/python" -c 'from ansible_test._internal.constants import SUPPORTED_PYTHON_VERSIONS as v; print(" ".join(v))'
}
