#!/usr/bin/env bash
# Copyright: contributors to the meshops.sidecar collection
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Build the container images the molecule scenarios run in, from Debian's packages only
# (no image registry is reachable):
#   localhost/meshops-debian12:latest          debootstrap minbase + python3, iproute2, iptables, nftables, ipset,
#                                              sudo, python3-iptables; CMD sleep infinity
#   localhost/meshops-debian12-systemd:latest  the above + systemd, systemd-sysv, dbus; boots
#                                              /sbin/init (run it with --systemd=always)
#   localhost/meshops-fleet-debian11:latest    "VMs" for the fleet gate (tests/fleet/), one per Debian
#   localhost/meshops-fleet-debian12:latest    release (11 bullseye, 12 bookworm, 13 trixie): debootstrap
#   localhost/meshops-fleet-debian13:latest    minbase + the base packages + systemd, systemd-sysv, dbus,
#                                              openssh-server; a user "fleet" with passwordless sudo and
#                                              no password (key authentication only: the test mounts its
#                                              key); boots /sbin/init with sshd enabled. Built in parallel.
# The Debian mirror is the one the machine's apt configuration uses. Each image carries a label
# with the hash of its recipe; when an image with the same hash exists the build is skipped, so
# repeated runs cost nothing. Set MESHOPS_IMAGE_CACHE=DIR to also keep `podman save` archives
# there (for CI caches that keep a directory but not podman's storage).
#
# The fleet images come from the same mirror (the one that serves the machine's own suite, $SUITE):
# it serves every Debian release still on the main archive.
#
# Usage: build-images.sh [--force] [--print-mirror] [--fleet]      (root)
#   --fleet: only the fleet images (what tests/utils/gates/fleet.sh needs)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"

BASE_IMAGE="localhost/meshops-debian12:latest"
SYSTEMD_IMAGE="localhost/meshops-debian12-systemd:latest"
SUITE="bookworm"
PACKAGES="python3,iproute2,iptables,nftables,ipset,sudo,python3-iptables"
LABEL="org.meshops.recipe"
# Bump when the recipe changes in a way the hashed inputs below do not show.
RECIPE_VERSION=1

SYSTEMD_CONTAINERFILE="$(cat <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends systemd systemd-sysv dbus \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/machine-id /var/lib/dbus/machine-id && touch /etc/machine-id \
 && systemctl mask systemd-udevd.service systemd-udev-trigger.service systemd-logind.service \
      getty.target console-getty.service systemd-firstboot.service \
 && systemctl set-default multi-user.target
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
EOF
)"

# The fleet "VMs": release number, suite. Debian 13's systemd (257) refuses cgroup v1 (what this
# machine's podman gives containers) unless PID 1 is told otherwise: in a container systemd reads
# its "kernel command line" from its own arguments, so the image's CMD carries the flag (older
# releases ignore it).
FLEET_RELEASES="11:bullseye 12:bookworm 13:trixie"
FLEET_PACKAGES="$PACKAGES,systemd,systemd-sysv,dbus,openssh-server"
FLEET_USER="fleet"
FLEET_SETUP="$(cat <<'EOF'
set -e
rm -f /etc/machine-id /var/lib/dbus/machine-id
touch /etc/machine-id
systemctl mask systemd-udevd.service systemd-udev-trigger.service systemd-logind.service \
    getty.target console-getty.service systemd-firstboot.service >/dev/null 2>&1
systemctl set-default multi-user.target >/dev/null 2>&1
systemctl enable ssh.service >/dev/null 2>&1
useradd --create-home --shell /bin/bash --comment "meshops fleet test" "$FLEET_USER"
passwd --lock "$FLEET_USER" >/dev/null
printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$FLEET_USER" > "/etc/sudoers.d/$FLEET_USER"
chmod 0440 "/etc/sudoers.d/$FLEET_USER"
mkdir -p /etc/ssh/sshd_config.d /etc/ssh/authorized_keys
cat > /etc/ssh/sshd_config.d/meshops-fleet.conf <<CONF
# meshops.sidecar fleet test: keys only (the test mounts its key in /etc/ssh/authorized_keys), no root.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UseDNS no
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys/%u
CONF
EOF
)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# The URI of the apt source that serves Debian's main archive for $SUITE.
debian_mirror() {
    python3 - "$SUITE" <<'PY'
import glob, re, sys

suite = sys.argv[1]
entries = []  # (uri, suites, components)

def add(uris, suites, components):
    for uri in uris:
        entries.append((uri.rstrip("/"), suites, components))

files = sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
for path in files:  # deb822 format
    for stanza in re.split(r"\n\s*\n", open(path, encoding="utf-8").read()):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        add(fields.get("uris", "").split(), fields.get("suites", "").split(), fields.get("components", "").split())

for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        continue
    for line in lines:
        line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            add([line[1]], [line[2]], line[3:])

for uri, suites, components in entries:
    if suite in suites and "main" in components and re.match(r"(https?|file)://", uri):
        print(uri)
        break
else:
    sys.exit("no apt source for Debian %s main found in /etc/apt" % suite)
PY
}

# apt may reach the mirror through a proxy configured for apt only; debootstrap reads the
# environment, so pass apt's setting on.
export_apt_proxy() {
    local proxy=""
    if [ -z "${http_proxy:-}" ] && command -v apt-config >/dev/null; then
        eval "$(apt-config shell proxy Acquire::http::Proxy)"
        if [ -n "$proxy" ] && [ "$proxy" != DIRECT ]; then
            export http_proxy="$proxy"
        fi
    fi
}

image_recipe() {
    podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$1" 2>/dev/null || true
}

# Reuse a saved archive of the image with this recipe hash, if MESHOPS_IMAGE_CACHE has one.
load_cached() {
    local image="$1" hash="$2" archive
    [ -n "${MESHOPS_IMAGE_CACHE:-}" ] || return 1
    archive="$MESHOPS_IMAGE_CACHE/$(basename "${image%%:*}")-$hash.tar"
    [ -f "$archive" ] || return 1
    log "loading $image from $archive"
    podman load -q -i "$archive" >/dev/null && [ "$(image_recipe "$image")" = "$hash" ]
}

save_cached() {
    local image="$1" hash="$2" archive
    [ -n "${MESHOPS_IMAGE_CACHE:-}" ] || return 0
    mkdir -p "$MESHOPS_IMAGE_CACHE"
    archive="$MESHOPS_IMAGE_CACHE/$(basename "${image%%:*}")-$hash.tar"
    rm -f "$MESHOPS_IMAGE_CACHE/$(basename "${image%%:*}")"-*.tar
    podman save -q -o "$archive" "$image"
}

ROOTFS=""
cleanup_rootfs() {
    [ -n "$ROOTFS" ] && [ -d "$ROOTFS" ] || return 0
    # debootstrap may leave proc/sys mounted inside the tree when it fails: unmount first,
    # and never let rm cross into another file system.
    local mnt
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v root="$ROOTFS" 'index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf --one-file-system "$ROOTFS"
    ROOTFS=""
}
trap cleanup_rootfs EXIT

# debootstrap SUITE with PACKAGES into a new $ROOTFS, without package lists or downloaded .debs.
debootstrap_rootfs() {
    local suite="$1" packages="$2" mirror
    mirror="${DEBIAN_MIRROR:-$(debian_mirror)}"
    export_apt_proxy
    ROOTFS="$(mktemp -d /var/tmp/meshops-rootfs.XXXXXX)"
    log "debootstrap $suite ($packages) from $mirror"
    debootstrap --variant=minbase --include="$packages" "$suite" "$ROOTFS" "$mirror" \
        > "$ROOTFS.log" 2>&1 || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; die "debootstrap $suite failed"; }
    rm -f "$ROOTFS.log"
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
}

build_base() {
    local hash="$1" start=$SECONDS
    debootstrap_rootfs "$SUITE" "$PACKAGES"
    log "importing $BASE_IMAGE"
    tar --numeric-owner -C "$ROOTFS" -c . | podman import --quiet \
        --change 'CMD ["sleep", "infinity"]' \
        --change "LABEL $LABEL=$hash" \
        - "$BASE_IMAGE" >/dev/null
    cleanup_rootfs
    log "$BASE_IMAGE built in $((SECONDS - start)) s"
}

# One fleet image: debootstrap, the setup script in the tree (chroot, no network), import.
build_fleet() {
    local image="$1" suite="$2" hash="$3" start=$SECONDS
    debootstrap_rootfs "$suite" "$FLEET_PACKAGES"
    FLEET_USER="$FLEET_USER" chroot "$ROOTFS" /bin/sh -c "$FLEET_SETUP" \
        || die "setting up the $suite tree for $image failed"
    log "importing $image"
    tar --numeric-owner -C "$ROOTFS" -c . | podman import --quiet \
        --change 'CMD ["/sbin/init", "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"]' \
        --change 'STOPSIGNAL SIGRTMIN+3' \
        --change "LABEL $LABEL=$hash" \
        - "$image" >/dev/null
    cleanup_rootfs
    log "$image built in $((SECONDS - start)) s"
}

fleet_image() { printf 'localhost/meshops-fleet-debian%s:latest\n' "$1"; }

fleet_hash() {
    printf '%s\n' "$RECIPE_VERSION" "$1" "$FLEET_PACKAGES" "$FLEET_USER" "$FLEET_SETUP" "$(uname -m)" \
        | sha256sum | cut -c1-16
}

# Every fleet image whose recipe changed, built in parallel (each in a subshell with its own tree).
build_fleet_images() {
    local force="$1" release number suite image hash pids=() names=() i failed=0 start=$SECONDS
    for release in $FLEET_RELEASES; do
        number="${release%%:*}" suite="${release#*:}"
        image="$(fleet_image "$number")" hash="$(fleet_hash "$suite")"
        if [ "$force" = 0 ] && [ "$(image_recipe "$image")" = "$hash" ]; then
            log "$image is up to date ($hash)"
            continue
        elif [ "$force" = 0 ] && load_cached "$image" "$hash"; then
            continue
        fi
        (
            ROOTFS=""
            trap cleanup_rootfs EXIT
            build_fleet "$image" "$suite" "$hash"
            save_cached "$image" "$hash"
        ) &
        pids+=($!)
        names+=("$image")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { log "building ${names[$i]} failed"; failed=1; }
    done
    [ $failed = 0 ] || die "fleet image build failed"
    [ ${#pids[@]} = 0 ] || log "fleet images built in $((SECONDS - start)) s"
}

build_systemd() {
    local hash="$1" ctx start=$SECONDS
    ctx="$(mktemp -d)"
    printf '%s\n' "$SYSTEMD_CONTAINERFILE" > "$ctx/Containerfile"
    log "building $SYSTEMD_IMAGE"
    # --network host: RUN steps use the host's network namespace as they are; the default
    # bridge network would add firewall rules to the host.
    podman build -q --network host --build-arg "BASE=$BASE_IMAGE" \
        --label "$LABEL=$hash" -t "$SYSTEMD_IMAGE" -f "$ctx/Containerfile" "$ctx" >/dev/null \
        || { rm -rf "$ctx"; die "podman build of $SYSTEMD_IMAGE failed"; }
    rm -rf "$ctx"
    log "$SYSTEMD_IMAGE built in $((SECONDS - start)) s"
}

main() {
    local force=0 fleet_only=0 base_hash systemd_hash arg
    for arg in "$@"; do
        case "$arg" in
            --force) force=1 ;;
            --print-mirror) debian_mirror; return ;;
            --fleet) fleet_only=1 ;;
            *) die "usage: $0 [--force] [--print-mirror] [--fleet]" ;;
        esac
    done
    [ "$(id -u)" = 0 ] || die "building the images needs root (debootstrap, rootful podman)"
    command -v debootstrap >/dev/null || die "debootstrap missing: run tests/utils/bootstrap.sh apt"
    command -v podman >/dev/null || die "podman missing: run tests/utils/bootstrap.sh apt"

    # One build at a time (parallel make targets, two checkouts on one machine).
    exec 9>/var/lock/meshops-build-images.lock
    flock 9

    build_fleet_images "$force"
    [ $fleet_only = 0 ] || return 0

    base_hash="$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$PACKAGES" "$(uname -m)" | sha256sum | cut -c1-16)"
    if [ $force = 0 ] && [ "$(image_recipe "$BASE_IMAGE")" = "$base_hash" ]; then
        log "$BASE_IMAGE is up to date ($base_hash)"
    elif [ $force = 0 ] && load_cached "$BASE_IMAGE" "$base_hash"; then
        :
    else
        build_base "$base_hash"
        save_cached "$BASE_IMAGE" "$base_hash"
    fi

    # The systemd image depends on the base image's recipe and its own Containerfile.
    systemd_hash="$(printf '%s\n' "$base_hash" "$SYSTEMD_CONTAINERFILE" | sha256sum | cut -c1-16)"
    if [ $force = 0 ] && [ "$(image_recipe "$SYSTEMD_IMAGE")" = "$systemd_hash" ]; then
        log "$SYSTEMD_IMAGE is up to date ($systemd_hash)"
    elif [ $force = 0 ] && load_cached "$SYSTEMD_IMAGE" "$systemd_hash"; then
        :
    else
        build_systemd "$systemd_hash"
        save_cached "$SYSTEMD_IMAGE" "$systemd_hash"
    fi
}

main "$@"
