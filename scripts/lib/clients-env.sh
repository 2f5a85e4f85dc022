# shellcheck shell=bash
# Shared by scripts/clients.sh and scripts/bench.sh (sourced, not run):
# real OCI clients - podman (+ conmon) and a private containerd - set up to
# use nexcage as their runtime on the node `pct` reaches, with everything
# they write kept under one work directory.
#
# Needs: $repo, $NEXCAGE_CONFIG (scripts/with-sim exports it), root.
# Sets:  $W (work dir), $IMAGE, $CTR_NS, $NEXCAGE_RT (the runtime path
#        the clients are given); functions podman_nx, podman_runc, ctr_nx.

IMAGE=localhost/nexcage-busybox:latest

# podman, conmon and containerd from Debian's packages (idempotent, quiet).
clients_install() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v conmon >/dev/null || missing+=(conmon)
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  # podman's default bridge network (CNI) sets up NAT with iptables.
  command -v iptables >/dev/null || missing+=(iptables)
  command -v script >/dev/null || missing+=(bsdutils)
  if [ ${#missing[@]} -gt 0 ]; then
    # With recommends: podman's networking (containernetworking-plugins,
    # iptables) comes that way on some releases.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The work dir, the runtime wrappers and podman's containers.conf.
clients_setup() {
  local nexcage_bin=$1
  # /tmp is searchable by everyone, which unprivileged guests need.
  W=$(mktemp -d /tmp/nexcage-clients.XXXXXX)
  chmod 755 "$W"
  mkdir -p "$W/bin"
  # Clients start their runtime with their own environment, so the wrapper
  # carries nexcage's config; a node with /etc/nexcage/config.toml needs
  # no wrapper (docs/clients.md registers the binary itself).
  NEXCAGE_RT="$W/bin/nexcage"
  cat > "$NEXCAGE_RT" <<EOF
#!/bin/sh
NEXCAGE_CONFIG='$NEXCAGE_CONFIG' exec '$nexcage_bin' "\$@"
EOF
  # podman passes no --root: keep its containers' state apart from the
  # node's default /run/nexcage so that "nothing left" can be checked.
  cat > "$W/bin/nexcage-podman" <<EOF
#!/bin/sh
NEXCAGE_CONFIG='$NEXCAGE_CONFIG' exec '$nexcage_bin' --root '$W/nexcage-podman' "\$@"
EOF
  chmod 755 "$NEXCAGE_RT" "$W/bin/nexcage-podman"

  # The quirks of these machines (see clients.md): root lacks
  # CAP_SYS_RESOURCE, so podman's default ulimits must fit under the hard
  # limits; the cgroup layout is hybrid, so cgroupfs; and podman passes
  # --log-format=json only to runtimes it knows, or listed here.
  cat > "$W/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "nexcage"
runtime_supports_json = ["nexcage", "runc"]

[engine.runtimes]
nexcage = ["$W/bin/nexcage-podman"]
EOF
  export CONTAINERS_CONF="$W/containers.conf"
  CTR_NS="nexcage-e2e-$$"
}

podman_any() { podman --root "$W/storage" --runroot "$W/run" "$@"; }
podman_nx() { podman_any --runtime nexcage "$@"; }
podman_runc() { podman_any --runtime runc "$@"; }
ctr_nx() { ctr --address "$W/containerd/containerd.sock" --namespace "$CTR_NS" "$@"; }

# The busybox image: no registry here, so a rootfs imported by podman, and
# the same image handed to containerd as an OCI archive. A second argument
# imports another rootfs under that name instead (bench.sh's Debian image).
clients_image() {
  local rootfs=$1 name=${2:-$IMAGE}
  tar -C "$rootfs" -c . | podman_any import -q - "$name" >/dev/null
}

clients_containerd() {
  local d="$W/containerd"
  mkdir -p "$d"
  cat > "$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$d/containerd.sock"

[ttrpc]
  address = "$d/containerd.sock.ttrpc"

[debug]
  address = "$d/debug.sock"
EOF
  containerd --config "$d/config.toml" >"$d/log" 2>&1 &
  CONTAINERD_PID=$!
  for _ in $(seq 1 100); do
    ctr_nx version >/dev/null 2>&1 && break
    sleep 0.1
  done
  ctr_nx version >/dev/null 2>&1 || { echo "containerd did not start:" >&2; tail -20 "$d/log" >&2; return 1; }
  podman_any save -q --format oci-archive -o "$d/image.tar" "$IMAGE"
  ctr_nx images import "$d/image.tar" >/dev/null
}

# Everything the clients made: containers, shims, mounts, the work dir.
clients_cleanup() {
  [ -n "${W:-}" ] && [ -d "$W" ] || return 0
  if [ -n "${CONTAINERD_PID:-}" ]; then
    for t in $(ctr_nx tasks ls -q 2>/dev/null); do
      ctr_nx tasks kill -s SIGKILL "$t" >/dev/null 2>&1
      ctr_nx tasks rm -f "$t" >/dev/null 2>&1
    done
    for c in $(ctr_nx containers ls -q 2>/dev/null); do ctr_nx containers rm "$c" >/dev/null 2>&1; done
    kill "$CONTAINERD_PID" 2>/dev/null
    wait "$CONTAINERD_PID" 2>/dev/null
    pkill -f "containerd-shim-runc-v2 .*-address $W/" 2>/dev/null
  fi
  podman_any rm -a -f -t 0 >/dev/null 2>&1
  podman_any unmount -a >/dev/null 2>&1
  # Whatever podman or containerd still has mounted under the work dir.
  awk -v w="$W/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf --one-file-system "$W"
}

# The checks' bookkeeping, for clients.sh and cri.sh.
passed=0 failed=0
check() { # name, then a command that must succeed; fails as it did
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"
  else failed=$((failed + 1)); echo "FAIL $name"; return 1; fi
}
# Clients finish some work asynchronously (podman's exit command, CRI's
# stop): retry for up to ten seconds.
eventually() { for _ in $(seq 1 50); do "$@" && return 0; sleep 0.2; done; "$@"; }
guests() { pct list | awk 'NR > 1 {print $1}'; }
