#!/usr/bin/env bash
# setup.sh - installs what the tests need on a Debian machine: LXC (and
# lxc-usernsexec), a static busybox for test root filesystems, zstd for
# templates, newuidmap/newgidmap, and root's subordinate id range for
# unprivileged containers; the simulated node's own needs: ip (its network
# namespace and vmbr0), mkfs.ext4, mount and losetup (its root volumes);
# the CNI reference plugins (/usr/lib/cni) that tests run as nerdctl does;
# libseccomp's static archive (libseccomp-dev), which nexcage links to
# compile linux.seccomp profiles; runc and crun, the runtimes the router
# delegates to; protoc (protobuf-compiler), which the CRI API crate of the
# test-only CRI client (fixtures/cri-client) compiles its protobuf
# definitions with; podman, which tests/image_bundle.rs builds and saves
# images with (with its recommends, as scripts/clients.sh installs it); man-db, for the package
# test's `man -w`.
# Idempotent and quiet; works from any directory.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: must run as root (LXC containers are started as root)" >&2
    exit 1
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

missing=()
for pkg in lxc busybox-static zstd uidmap tar file util-linux mount e2fsprogs iproute2 \
    containernetworking-plugins libseccomp-dev runc crun protobuf-compiler man-db; do
    installed "$pkg" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! installed podman; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq podman >/dev/null
fi

# Proxmox maps unprivileged containers to 100000..165535.
for file in /etc/subuid /etc/subgid; do
    touch "$file"
    grep -qx 'root:100000:65536' "$file" || echo 'root:100000:65536' >>"$file"
done
