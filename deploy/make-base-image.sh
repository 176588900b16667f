#!/usr/bin/env bash
# Make the base image of the qkdnet images, qkdnet-base:bookworm, without any container registry:
# a minimal Debian bookworm made with debootstrap from a Debian package mirror, imported with
# `docker import`. It holds what the node and broker images need and nothing else:
# python3 (3.11, the project's version) with venv, CA certificates, iproute2 (tc/netem for fault
# injection), mosquitto, curl and ping (iputils-ping) for a user who execs into a container, and
# WireGuard (wireguard-go, wireguard-tools) for the encryptors of `qkdnet demo --example wireguard`.
#
#   deploy/make-base-image.sh [--force] [--image NAME] [--mirror URL] [--workdir DIR]
#
# --mirror (or QKDNET_DEBIAN_MIRROR) names another Debian mirror, e.g. a local one.
# Idempotent: does nothing when the image exists, unless --force (which `qkdnet image build`
# passes when the image's package list differs from INCLUDE below). Needs root (debootstrap) and a
# Docker engine; installs debootstrap with apt-get when it is missing. The temporary root file
# system is removed however the script ends. Exit status: 0 done (or nothing to do), 2 usage or
# environment error (not root, no Docker), 1 a step failed (the message names it).
#
# Every step prints a line "==> step: <name>", and a failure prints
# "make-base-image: error: ..." last: `qkdnet image build` relies on both.

set -Eeuo pipefail

IMAGE=qkdnet-base:bookworm
SUITE=bookworm
MIRROR=${QKDNET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VARIANT=minbase
# `qkdnet image build` remakes a base whose org.qkdnet.base.include label differs from this list.
INCLUDE=python3,python3-venv,ca-certificates,iproute2,mosquitto,curl,iputils-ping,wireguard-tools,wireguard-go
WORKDIR=${TMPDIR:-/var/tmp}
FORCE=0
STEP=start
ROOTFS_PARENT=

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
}

error() {  # error STATUS MESSAGE...
    local status=$1
    shift
    echo "make-base-image: error: $*" >&2
    exit "$status"
}

step() {
    STEP=$1
    echo "==> step: $STEP"
}

while [[ $# -gt 0 ]]; do
    case $1 in
        --force) FORCE=1 ;;
        --image) IMAGE=${2:?--image needs a name}; shift ;;
        --mirror) MIRROR=${2:?--mirror needs a URL}; shift ;;
        --workdir) WORKDIR=${2:?--workdir needs a directory}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) error 2 "unknown option $1 (see --help)" ;;
    esac
    shift
done

unmount_below() {  # unmount whatever debootstrap left mounted inside the root file system
    local dir=$1 mounts
    mounts=$(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
    local m
    for m in $mounts; do
        umount -l "$m" 2>/dev/null || true
    done
}

cleanup() {  # the script's exit status stays the one given to exit
    trap - ERR
    if [[ -n $ROOTFS_PARENT && -d $ROOTFS_PARENT ]]; then
        unmount_below "$ROOTFS_PARENT"
        rm -rf --one-file-system "$ROOTFS_PARENT"
    fi
}
trap cleanup EXIT

on_error() {
    local status=$?
    error 1 "step '$STEP' failed (exit status $status)"
}
trap on_error ERR

step "check environment"
command -v docker >/dev/null || error 2 "no docker command: install Docker Engine first"
docker info >/dev/null 2>&1 || error 2 "no Docker engine answers (is dockerd running? can this user use it?)"
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    existing=$(docker image inspect --format '{{.Id}}' "$IMAGE")
    if [[ $FORCE -eq 0 ]]; then
        echo "$IMAGE exists ($existing): nothing to do (--force rebuilds it)"
        exit 0
    fi
else
    existing=
fi
[[ $(id -u) -eq 0 ]] || error 2 "debootstrap needs root: run as root (sudo $0)"

if ! command -v debootstrap >/dev/null; then
    step "install debootstrap"
    command -v apt-get >/dev/null || error 2 "debootstrap is missing and there is no apt-get to install it"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap; } \
        || error 1 "step 'install debootstrap' failed: apt-get could not install debootstrap"
fi

step "debootstrap"
mkdir -p "$WORKDIR"
ROOTFS_PARENT=$(mktemp -d "$WORKDIR/qkdnet-base.XXXXXX")
ROOTFS=$ROOTFS_PARENT/rootfs
echo "debootstrap --variant=$VARIANT --include=$INCLUDE $SUITE $ROOTFS $MIRROR"
if ! debootstrap --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" 2>&1 \
        | tee "$ROOTFS_PARENT/debootstrap.out"; then
    if [[ -f $ROOTFS/debootstrap/debootstrap.log ]]; then
        echo "--- last lines of debootstrap.log:" >&2
        tail -n 15 "$ROOTFS/debootstrap/debootstrap.log" >&2
    fi
    reason=$(grep '^E: ' "$ROOTFS_PARENT/debootstrap.out" | tail -n 1 | cut -c4-)
    error 1 "step 'debootstrap' failed: debootstrap $SUITE from $MIRROR: ${reason:-did not complete (see above)}"
fi
unmount_below "$ROOTFS"

step "trim"
# What a container gets from the engine (/dev, resolv.conf, hosts, hostname) and what only a
# package manager or a human reader needs (package lists and caches, documentation, logs).
find "$ROOTFS/dev" -mindepth 1 -delete
rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"
: > "$ROOTFS/etc/machine-id"
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian
# Later `apt-get install`s in derived images stay small the same way.
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/01-qkdnet-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/doc/*/copyright
EOF
cat > "$ROOTFS/etc/apt/apt.conf.d/01-qkdnet-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF

step "import"
packages=$(dpkg-query --admindir="$ROOTFS/var/lib/dpkg" -W -f '${Package}=${Version}\n' | sort)
package_count=$(wc -l <<<"$packages")
packages_sha256=$(sha256sum <<<"$packages" | cut -d' ' -f1)
python_version=$(dpkg-query --admindir="$ROOTFS/var/lib/dpkg" -W -f '${Version}' python3)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --message "debootstrap --variant=$VARIANT $SUITE $MIRROR (deploy/make-base-image.sh)" \
    --change "LABEL org.qkdnet.component=base" \
    --change "LABEL org.qkdnet.base.suite=$SUITE org.qkdnet.base.variant=$VARIANT" \
    --change "LABEL org.qkdnet.base.mirror=\"$MIRROR\" org.qkdnet.base.include=\"$INCLUDE\"" \
    --change "LABEL org.qkdnet.base.python3=\"$python_version\" org.qkdnet.base.packages=$package_count" \
    --change "LABEL org.qkdnet.base.packages-sha256=$packages_sha256 org.qkdnet.base.created=$created" \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null

step "verify"
docker run --rm --network none "$IMAGE" sh -c \
    'python3 -c "import ssl, sys, venv; print(\"python\", sys.version.split()[0])" \
     && command -v mosquitto >/dev/null && ip -V && curl --version | head -n 1 \
     && ping -c 1 -W 2 127.0.0.1 >/dev/null && ping -V && wg --version && command -v wireguard-go'
image_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
if [[ -n $existing && $existing != "$image_id" ]]; then
    # The image replaced by --force goes, unless an image built on it still needs it.
    docker image rm "$existing" >/dev/null 2>&1 || true
fi
echo "$IMAGE: $image_id, $((size / 1000000)) MB, $package_count packages, python3 $python_version"
