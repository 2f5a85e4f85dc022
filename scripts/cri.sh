#!/usr/bin/env bash
# End-to-end: Kubernetes pods through containerd's CRI plugin, driven as
# the kubelet drives it (fixtures/cri-client, runtime.v1 over containerd's
# socket), with the runtime handler `nexcage` (runc v2 shim, BinaryName =
# nexcage) on the node `pct` reaches (the simulator when run by
# scripts/test.sh). A private containerd with the CRI plugin runs under a
# temp dir: its own root, state, socket, CNI config (bridge + host-local on
# a private /24 the script picks, no gateway, no route out) and images
# imported from local archives (busybox and a pause image built here).
# The single-pod flow runs first on handler runc (the reference), then on
# nexcage; then two nexcage pods at once reach each other by IP.
# After the pods: no guest, no nexcage state, no network namespace left.
# Prints "N passed, M failed"; exits non-zero if anything failed.
#
# CRI_DEBUG_DIR=DIR keeps, for a look afterwards: every call containerd's
# shim makes to nexcage (calls.log), each bundle's config.json and the
# runtime's log, containerd's log and the pods' verbose status.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PVE_SIM_ROOT:-}" ]; then
  exec "$repo/scripts/with-sim" "$repo/scripts/cri.sh" "$@"
fi
# shellcheck source=scripts/lib/clients-env.sh
. "$repo/scripts/lib/clients-env.sh"

nexcage_bin=$(command -v nexcage)
cri_bin=$(command -v cri-client) || { echo "cri-client is not built (cargo build --workspace)" >&2; exit 1; }
cri() { "$cri_bin" --endpoint "$W/containerd/containerd.sock" "$@"; }

clients_install
clients_setup "$nexcage_bin"
D="$W/containerd"
BRIDGE="nxcri$$"
BRIDGE=${BRIDGE:0:15}
# A /24 of 10.250.0.0/16 per run, so that two runs on one machine differ;
# the bridge has no address and the pods no default route: traffic stays
# between the pods on it.
SUBNET="10.250.$(($$ % 250)).0/24"

cleanup() {
  # For a look at a failed run: containerd's log and the runtime's logs.
  if [ -n "${CRI_DEBUG_DIR:-}" ]; then
    mkdir -p "$CRI_DEBUG_DIR"
    cp "$D/log" "$CRI_DEBUG_DIR/containerd.log" 2>/dev/null
    find "$D/state" -name log.json -exec sh -c 'for f; do d=$(basename "$(dirname "$f")"); cp "$f" "$0/$d.log.json"; done' "$CRI_DEBUG_DIR" {} + 2>/dev/null
    cp "$W"/*.status.json "$CRI_DEBUG_DIR/" 2>/dev/null
  fi
  if [ -S "$D/containerd.sock" ]; then
    for c in $(cri list containers --field 'containers.*.id' 2>/dev/null); do
      cri stop-container "$c" >/dev/null 2>&1; cri remove-container "$c" >/dev/null 2>&1
    done
    for p in $(cri list pods --field 'items.*.id' 2>/dev/null); do
      cri stop-pod-sandbox "$p" >/dev/null 2>&1; cri remove-pod-sandbox "$p" >/dev/null 2>&1
    done
  fi
  if [ -n "${CRI_CONTAINERD_PID:-}" ]; then
    kill "$CRI_CONTAINERD_PID" 2>/dev/null
    wait "$CRI_CONTAINERD_PID" 2>/dev/null
    pkill -f "containerd-shim-runc-v2 .*-address $D/" 2>/dev/null
  fi
  ip link del "$BRIDGE" 2>/dev/null
  clients_cleanup
}
trap cleanup EXIT

"$repo/fixtures/bundles/make-rootfs.sh" "$repo/target/fixtures" >/dev/null
clients_image "$repo/target/fixtures/rootfs"

# The pod's sandbox ("pause") image: busybox whose entrypoint blocks until
# SIGTERM (or SIGINT), as registry.k8s.io/pause does.
PAUSE_IMAGE=localhost/nexcage-pause:latest
mkdir -p "$W/pause"
cp -a "$repo/target/fixtures/rootfs/." "$W/pause/"
cat > "$W/pause/pause" <<'EOF'
#!/bin/sh
trap 'exit 0' TERM INT
while :; do
  sleep 2147483647 &
  wait $!
done
EOF
chmod 755 "$W/pause/pause"
tar -C "$W/pause" -c . | podman_any import -q --change 'ENTRYPOINT ["/pause"]' - "$PAUSE_IMAGE" >/dev/null

# nexcage's config for containerd's shims: the node's, plus the router's
# rules (this is the file the CRI's runtime handler `nexcage` reads).
NEXCAGE_CRI_CONFIG="$W/nexcage-cri.toml"
cat "$NEXCAGE_CONFIG" > "$NEXCAGE_CRI_CONFIG"
cat >> "$NEXCAGE_CRI_CONFIG" <<'EOF'

# The pod's sandbox ("pause") container goes to runc, as in a cluster: it
# only holds the pod's namespaces, and a whole Proxmox guest for it would
# be waste. containerd marks it with this annotation.
[[router.rule]]
backend = "runc"
annotations = { "io.kubernetes.cri.container-type" = "sandbox" }
EOF
# Guests per pod sandbox: none, the rule above sends it to runc.
sandbox_guests=0
NEXCAGE_CRI_RT="$W/bin/nexcage-cri"
cat > "$NEXCAGE_CRI_RT" <<EOF
#!/bin/sh
NEXCAGE_CONFIG='$NEXCAGE_CRI_CONFIG' exec '$nexcage_bin' "\$@"
EOF
if [ -n "${CRI_DEBUG_DIR:-}" ]; then
  # Every call the shim makes, the bundles it creates and their logs.
  mkdir -p "$CRI_DEBUG_DIR"
  cat > "$NEXCAGE_CRI_RT" <<EOF
#!/bin/bash
echo "\$(date +%T.%N) \$*" >> '$CRI_DEBUG_DIR/calls.log'
args=("\$@")
for ((i = 0; i < \$#; i++)); do
  case "\${args[i]}" in
    --bundle|-b) cp "\${args[i+1]}/config.json" "$CRI_DEBUG_DIR/config.\${args[\$#-1]}.json" ;;
    --log) log=\${args[i+1]} ;;
  esac
done
NEXCAGE_CONFIG='$NEXCAGE_CRI_CONFIG' '$nexcage_bin' "\$@"
rc=\$?
[ -n "\${log:-}" ] && cp "\$log" "$CRI_DEBUG_DIR/log.\${args[\$#-1]}.json" 2>/dev/null
echo "\$(date +%T.%N) rc=\$rc \$1 \$2 \${args[\$#-1]}" >> '$CRI_DEBUG_DIR/calls.log'
exit \$rc
EOF
fi
chmod 755 "$NEXCAGE_CRI_RT"
NEXCAGE_CRI_ROOT="$W/nexcage-cri"

mkdir -p "$D/cni" "$D/cni-data" "$W/logs"
cat > "$D/cni/10-nexcage-cri.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "nexcage-cri",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": false,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "dataDir": "$D/cni-data",
        "ranges": [[{"subnet": "$SUBNET"}]]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
cat > "$D/config.toml" <<EOF
version = 2
root = "$D/root"
state = "$D/state"

[grpc]
  address = "$D/containerd.sock"

[ttrpc]
  address = "$D/containerd.sock.ttrpc"

[debug]
  address = "$D/debug.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  # The pods' network namespaces under this containerd's state, not the
  # host's /var/run/netns.
  netns_mounts_under_state_dir = true
  # The sandbox asks for oomScoreAdj -998; root here lacks CAP_SYS_RESOURCE
  # (as for podman's ulimits, docs/clients.md), so no score below
  # containerd's own.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nexcage]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.nexcage.options]
        BinaryName = "$NEXCAGE_CRI_RT"
        Root = "$NEXCAGE_CRI_ROOT"
EOF
containerd --config "$D/config.toml" >"$D/log" 2>&1 &
CRI_CONTAINERD_PID=$!
for _ in $(seq 1 100); do cri version >/dev/null 2>&1 && break; sleep 0.1; done
cri version >/dev/null || { echo "containerd with CRI did not start:" >&2; tail -20 "$D/log" >&2; exit 1; }
k8s() { ctr --address "$D/containerd.sock" --namespace k8s.io "$@"; }
podman_any save -q --format oci-archive -o "$W/busybox.tar" "$IMAGE"
podman_any save -q --format oci-archive -o "$W/pause.tar" "$PAUSE_IMAGE"
for archive in busybox pause; do
  k8s images import "$W/$archive.tar" >/dev/null || { echo "importing $archive failed" >&2; exit 1; }
done
echo "== containerd $(containerd --version | awk '{print $3}') (private) CRI $(cri version --field runtime_api_version), handlers runc and nexcage, CNI bridge $BRIDGE $SUBNET"
check "the CRI sees the busybox image" bash -c "'$cri_bin' --endpoint '$D/containerd.sock' image-status '$IMAGE' | grep -q '\"id\"'"

netns_left() { ls -A "$D/state/io.containerd.grpc.v1.cri/netns" 2>/dev/null; }
# Nothing left: no guest, no nexcage state under the handler's Root, no
# network namespace.
nothing_left() {
  local state delegated
  state=$(ls -A "$NEXCAGE_CRI_ROOT"/k8s.io 2>/dev/null | grep -v -e "^~nexcage$")
  delegated=$(ls -A "$NEXCAGE_CRI_ROOT"/k8s.io/~nexcage/delegate/runc 2>/dev/null)
  [ -z "$(guests)" ] && [ -z "$state" ] && [ -z "$delegated" ] && [ -z "$(netns_left)" ]
}
show_left() {
  echo "   left: guests [$(guests | tr '\n' ' ')] state [$(ls -A "$NEXCAGE_CRI_ROOT" "$NEXCAGE_CRI_ROOT"/* 2>/dev/null | tr '\n' ' ')] netns [$(netns_left | tr '\n' ' ')]"
}

pod_json() { # name, handler -> path of its pod config
  local f="$W/$1.pod.json"
  mkdir -p "$W/logs/$1"
  cat > "$f" <<EOF
{"name": "$1", "namespace": "default", "uid": "uid-$1", "hostname": "$1",
 "log_directory": "$W/logs/$1", "runtime_handler": "${2:-nexcage}"}
EOF
  echo "$f"
}
container_json() { # pod, name, shell script -> path of its container config
  local f="$W/$1-$2.ctr.json"
  local script
  script=$(printf '%s' "$3" | sed 's/\\/\\\\/g; s/"/\\"/g')
  cat > "$f" <<EOF
{"name": "$2", "image": "$IMAGE", "command": ["sh", "-c", "$script"], "log_path": "$2.log"}
EOF
  echo "$f"
}
state_of() { cri container-status "$1" --field status.state; }
is_state() { [ "$(state_of "$1")" = "$2" ]; }
exit_code_is() { [ "$(cri container-status "$1" --field status.exit_code)" = "$2" ]; }
pods_listed() { cri list pods --field 'items.*.id' | wc -l; }
remove_containers() { for c; do cri remove-container "$c" || return 1; done; }
# In the CRI's log format: <RFC 3339 time> <stream> F <line> (F: a full line).
log_has() { # log file, stream, line
  grep -qE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+(Z|[+-][0-9:]+) $2 F $3\$" "$1"
}

# ---- one pod, its containers' whole lifecycle ----------------------------
# Run first on handler runc, the reference the expectations come from, then
# on nexcage, where the pod's sandbox and each app container is a guest.
one_pod() { # handler, pod name
  local h=$1 name=$2 cfg pod ip app c1 c2 out rc addr log t0 t1 ms stubborn
  echo "-- one pod on handler $h"
  cfg=$(pod_json "$name" "$h")
  pod=$(cri run-pod-sandbox "$cfg")
  check "RunPodSandbox on handler $h" [ -n "$pod" ] || return
  check "  the pod is ready" [ "$(cri pod-status "$pod" --field status.state)" = 0 ]
  ip=$(cri pod-status "$pod" --field status.network.ip)
  check "  it has an address from host-local in $SUBNET" [ "${ip%.*}" = "${SUBNET%.*}" ]
  cri pod-status --verbose "$pod" > "$W/$name.status.json"

  app=$(container_json "$name" app 'echo hello-from-app; echo oops-on-stderr >&2; trap "echo got-term; exit 0" TERM; while :; do sleep 1; done')
  c1=$(cri create-container "$pod" "$app" "$cfg")
  check "CreateContainer (busybox app) in the pod" [ -n "$c1" ]
  check "  StartContainer" cri start-container "$c1"
  check "  ContainerStatus says running" is_state "$c1" 1
  cri container-status --verbose "$c1" > "$W/$name-app.status.json"
  out=$(cri exec-sync "$c1" -- sh -c 'echo out-$((6*7)); echo err-line >&2; exit 7' 2>"$W/exec.err"); rc=$?
  check "ExecSync passes stdout" [ "$out" = out-42 ]
  check "  and stderr" [ "$(cat "$W/exec.err")" = err-line ]
  check "  and the exit code" [ "$rc" = 7 ]
  out=$(cri exec-sync "$c1" -- hostname)
  check "  the app container has the pod's hostname" [ "$out" = "$name" ]
  addr=$(cri exec-sync "$c1" -- sh -c "ip -4 -o addr show eth0 | awk '{print \$4}'")
  check "  and the pod's address on eth0" [ "${addr%/*}" = "$ip" ]
  log="$W/logs/$name/app.log"
  check "the CRI log file has stdout in CRI format" eventually log_has "$log" stdout hello-from-app
  check "  and stderr" eventually log_has "$log" stderr oops-on-stderr

  # A container that ignores SIGTERM. Under nexcage the init, not the
  # process, is PID 1 in the guest, so the process must ignore TERM itself.
  stubborn=$(container_json "$name" stubborn 'trap "" TERM; echo stubborn-up; while :; do sleep 1; done')
  c2=$(cri create-container "$pod" "$stubborn" "$cfg")
  check "a second container in the pod (ignores SIGTERM) starts" cri start-container "$c2"
  check "  running" is_state "$c2" 1
  if [ "$h" = nexcage ]; then
    check "  both containers (and the sandbox: $sandbox_guests) are guests on the node" \
      [ "$(guests | wc -l)" = $((2 + sandbox_guests)) ]
    check "  the sandbox runs under runc, by the router's sandbox rule" \
      [ -d "$NEXCAGE_CRI_ROOT/k8s.io/~nexcage/delegate/runc/$pod" ]
  fi
  t0=$(date +%s%N)
  check "StopContainer --timeout 10 of the one that exits on TERM" cri stop-container --timeout 10 "$c1"
  t1=$(date +%s%N)
  ms=$(((t1 - t0) / 1000000))
  check "  it stopped before the grace period ended (${ms} ms)" [ "$ms" -lt 8000 ]
  check "  exited with status 0" exit_code_is "$c1" 0
  check "  its TERM handler ran (log)" eventually log_has "$log" stdout got-term
  t0=$(date +%s%N)
  check "StopContainer --timeout 3 of the one that ignores TERM" cri stop-container --timeout 3 "$c2"
  t1=$(date +%s%N)
  ms=$(((t1 - t0) / 1000000))
  check "  it was killed after the grace period (${ms} ms)" [ "$ms" -ge 3000 ]
  check "  by SIGKILL (137)" exit_code_is "$c2" 137
  check "  state EXITED" is_state "$c2" 2
  check "RemoveContainer (both)" remove_containers "$c1" "$c2"
  check "StopPodSandbox" cri stop-pod-sandbox "$pod"
  check "RemovePodSandbox" cri remove-pod-sandbox "$pod"
  check "  no pod listed" [ "$(pods_listed)" = 0 ]
  check "  nothing left (guest, nexcage state, netns)" eventually nothing_left || show_left
}
one_pod runc pod0
one_pod nexcage pod1

# ---- two pods -----------------------------------------------------------
pa_cfg=$(pod_json pod-a nexcage)
pb_cfg=$(pod_json pod-b nexcage)
pa=$(cri run-pod-sandbox "$pa_cfg")
pb=$(cri run-pod-sandbox "$pb_cfg")
echo "-- two pods on handler nexcage"
check "two pods run at once" [ -n "$pa" -a -n "$pb" ]
ip_a=$(cri pod-status "$pa" --field status.network.ip)
ip_b=$(cri pod-status "$pb" --field status.network.ip)
check "  with different addresses from host-local ($ip_a, $ip_b)" \
  [ "${ip_a%.*}" = "${SUBNET%.*}" -a "${ip_b%.*}" = "${SUBNET%.*}" -a "$ip_a" != "$ip_b" ]
srv=$(container_json pod-a srv 'trap "exit 0" TERM; while :; do echo pong-from-a | nc -l -p 7777; done')
cli=$(container_json pod-b cli 'trap "exit 0" TERM; while :; do sleep 1; done')
ca=$(cri create-container "$pa" "$srv" "$pa_cfg") && cri start-container "$ca"
cb=$(cri create-container "$pb" "$cli" "$pb_cfg") && cri start-container "$cb"
check "  an app container in each" [ -n "$ca" -a -n "$cb" ]
check "  two app guests (and sandboxes: $((2 * sandbox_guests))) on the node" \
  [ "$(guests | wc -l)" = $((2 + 2 * sandbox_guests)) ]
pings() { cri exec-sync "$cb" -- ping -c 1 -W 2 "$ip_a" >/dev/null; }
check "pod-b's app pings pod-a's address" pings
nc_reply() { [ "$(cri exec-sync "$cb" -- sh -c "nc -w 2 $ip_a 7777 </dev/null")" = pong-from-a ]; }
check "  and reaches its TCP server" eventually nc_reply
for c in "$ca" "$cb"; do cri stop-container --timeout 5 "$c" && cri remove-container "$c"; done
for p in "$pa" "$pb"; do cri stop-pod-sandbox "$p" && cri remove-pod-sandbox "$p"; done
check "  both pods removed" [ "$(pods_listed)" = 0 ]
check "  nothing left (guest, nexcage state, netns)" eventually nothing_left || show_left

if [ "$failed" != 0 ]; then
  echo "-- containerd log (last 30 lines):"; tail -30 "$D/log"
fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
