#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Install everything the project's commands need on a fresh Debian 12 machine (root):
#   apt          the Debian packages (netfilter tools, podman + runc, debootstrap, build tools)
#   venv         .venv/ from tests/requirements.txt, constrained by tests/requirements-lock.txt
#   collections  third-party collections (containers.podman, ...) unpacked from the "ansible"
#                wheel on PyPI into .cache/deps (Galaxy is unreachable)
#   cores        one venv per extra ansible-core version, .cache/cores/X.Y, from the exact pins
#                of tests/requirements-core-X.Y.txt on the Python its "# python:" line names
#                (found on PATH or through pyenv); used by the gate "cores"
# With no argument it does apt, venv and collections. Each step is skipped when it is already up
# to date, so `make` targets can call it cheaply. Used by .ci/run, `make demo`, `make venv` and
# (cores) the gate "cores".
#
# Package sources are the machine's own apt and pip configuration; nothing here names a host.
set -euo pipefail

# shellcheck source=tests/utils/lib.sh
. "$(dirname "$0")/lib.sh"

# Debian packages. runc is installed without recommends (as podman's runtime; crun 1.8 fails
# on this kind of machine, see tests/utils/containers.conf).
APT_PACKAGES=(
    iptables nftables ipset iproute2      # netfilter (ipset: cidr_sets) + namespaces for the modules and tests
    podman uidmap debootstrap             # molecule containers and their locally built images
    debian-archive-keyring ca-certificates
    make git shellcheck gcc libc6-dev     # make, the collection copy, sanity's shellcheck, python-iptables' C part
    openssh-client                        # the fleet gate reaches its VMs over SSH
)
APT_PACKAGES_NO_RECOMMENDS=(runc)

# The "ansible" package on PyPI ships these collections; only they are unpacked.
ANSIBLE_WHEEL_SPEC="${ANSIBLE_WHEEL_SPEC:-ansible==12.3.0}"
DEP_COLLECTIONS=(containers.podman ansible.posix community.general)

PYTHON="${PYTHON:-python3}"

missing_packages() {
    local pkg status
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [ "$status" = "install ok installed" ] || printf '%s\n' "$pkg"
    done
}

step_apt() {
    local missing missing_nr python_include
    missing="$(missing_packages "${APT_PACKAGES[@]}")"
    missing_nr="$(missing_packages "${APT_PACKAGES_NO_RECOMMENDS[@]}")"
    # The venv needs a Python with venv/ensurepip and headers (python-iptables compiles C).
    if command -v "$PYTHON" >/dev/null; then
        python_include="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
        if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || [ ! -f "$python_include/Python.h" ]; then
            missing="$missing"$'\n'"python3-venv"$'\n'"python3-dev"
        fi
    else
        missing="$missing"$'\n'"python3"$'\n'"python3-venv"$'\n'"python3-dev"
    fi
    missing="$(printf '%s\n' "$missing" | sed '/^$/d' | sort -u | tr '\n' ' ')"
    missing_nr="$(printf '%s\n' "$missing_nr" | sed '/^$/d' | tr '\n' ' ')"
    if [ -z "${missing// /}" ] && [ -z "${missing_nr// /}" ]; then
        log "apt: all packages present"
        return
    fi
    [ "$(id -u)" = 0 ] || die "apt packages missing ($missing$missing_nr); run as root"
    export DEBIAN_FRONTEND=noninteractive
    log "apt: installing $missing$missing_nr"
    apt-get update -q
    # shellcheck disable=SC2086 # word splitting of the package lists is intended
    [ -z "${missing// /}" ] || apt-get install -y -q $missing
    # shellcheck disable=SC2086
    [ -z "${missing_nr// /}" ] || apt-get install -y -q --no-install-recommends $missing_nr
}

requirements_digest() {
    { cat "$MESHOPS_ROOT/tests/requirements.txt" "$MESHOPS_ROOT/tests/requirements-lock.txt"
      "$VENV_DIR/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

step_venv() {
    local stamp="$VENV_DIR/.meshops-requirements.sha256" version
    if [ ! -x "$VENV_DIR/bin/python" ]; then
        command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
        version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        case "$version" in
            3.11|3.12|3.13) ;;
            *) die "$PYTHON is Python $version; ansible-core 2.19 needs 3.11 to 3.13" ;;
        esac
        log "venv: creating $VENV_DIR with $PYTHON ($version)"
        "$PYTHON" -m venv "$VENV_DIR"
    fi
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(requirements_digest)" ]; then
        log "venv: up to date"
        return
    fi
    log "venv: installing tests/requirements.txt"
    "$VENV_DIR/bin/python" -m pip install --quiet \
        -r "$MESHOPS_ROOT/tests/requirements.txt" -c "$MESHOPS_ROOT/tests/requirements-lock.txt"
    requirements_digest > "$stamp"
}

core_digest() {
    { cat "$(core_requirements "$1")"; "$2/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}

step_cores() {
    local core python_version python venv stamp
    mkdir -p "$CORES_DIR"
    # Two gates may bootstrap at once (make cores in two shells): one at a time.
    exec 7>"$CORES_DIR.lock"
    flock 7
    for core in $(core_versions); do
        python_version="$(core_python_version "$core")"
        venv="$CORES_DIR/$core"
        stamp="$venv/.meshops-requirements.sha256"
        # A venv left half-made (interrupted while it was created) is made again.
        if [ -e "$venv" ] && [ ! -f "$stamp" ] && ! "$venv/bin/python" -c 'import pip' 2>/dev/null; then
            rm -rf "$venv"
        fi
        if [ ! -x "$venv/bin/python" ]; then
            python="$(find_python_version "$python_version")" \
                || die "ansible-core $core is tested on Python $python_version, which this machine lacks (neither python$python_version on PATH nor a pyenv $python_version.*): install it, e.g. 'pyenv install $python_version'"
            log "cores: creating ${venv#"$MESHOPS_ROOT/"} with $python"
            "$python" -m venv "$venv"
        fi
        if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(core_digest "$core" "$venv")" ]; then
            log "cores: ansible-core $core up to date"
            continue
        fi
        log "cores: installing tests/requirements-core-$core.txt"
        "$venv/bin/python" -m pip install --quiet -r "$(core_requirements "$core")"
        core_digest "$core" "$venv" > "$stamp"
    done
    exec 7>&-
}

step_collections() {
    local stamp="$DEPS_COLLECTIONS_DIR/.meshops-collections" want wheel_dir wheel
    want="$ANSIBLE_WHEEL_SPEC ${DEP_COLLECTIONS[*]}"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "collections: up to date ($want)"
        return
    fi
    wheel_dir="$CACHE_DIR/wheels"
    mkdir -p "$wheel_dir"
    log "collections: fetching the $ANSIBLE_WHEEL_SPEC wheel"
    "$VENV_DIR/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
        -d "$wheel_dir" "$ANSIBLE_WHEEL_SPEC"
    wheel="$wheel_dir/ansible-${ANSIBLE_WHEEL_SPEC#ansible==}-py3-none-any.whl"
    [ -f "$wheel" ] || die "pip download did not leave $wheel"
    rm -rf "$DEPS_COLLECTIONS_DIR"
    mkdir -p "$DEPS_COLLECTIONS_DIR"
    log "collections: unpacking ${DEP_COLLECTIONS[*]}"
    "$VENV_DIR/bin/python" - "$wheel" "$DEPS_COLLECTIONS_DIR" "${DEP_COLLECTIONS[@]}" <<'PY'
import sys, zipfile
wheel, dest, *names = sys.argv[1:]
prefixes = tuple("ansible_collections/%s/" % n.replace(".", "/") for n in names)
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith(prefixes)]
    found = {p for p in prefixes if any(m.startswith(p) for m in members)}
    missing = sorted(set(prefixes) - found)
    if missing:
        sys.exit("not in %s: %s" % (wheel, ", ".join(missing)))
    zf.extractall(dest, members=members)
PY
    printf '%s\n' "$want" > "$stamp"
}

main() {
    local steps=("$@")
    [ ${#steps[@]} -gt 0 ] || steps=(apt venv collections)
    local step start
    for step in "${steps[@]}"; do
        start=$SECONDS
        case "$step" in
            apt) step_apt ;;
            venv) step_venv ;;
            collections) step_venv; step_collections ;;
            cores) step_cores ;;
            *) die "unknown step '$step' (apt, venv, collections, cores)" ;;
        esac
        log "bootstrap $step: $((SECONDS - start)) s"
    done
}

main "$@"
