#!/usr/bin/env bash
# Compares nexcage with runc on the same busybox bundle, in one run, and
# prints the ratios (these machines are noisy: compare ratios, not seconds).
#   scripts/bench.sh [ITERATIONS]       (default 10)
# Measures: `run` of a process that exits at once (create+start+wait+delete),
# and `podman run --rm IMAGE true` with nexcage and with runc as podman's
# runtime (conmon, image, networking and all).
# On the simulated node pct is a fast native binary; on a real Proxmox node
# each of the three pct runs of a lifecycle starts Perl (~0.3-1 s each).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PVE_SIM_ROOT:-}" ]; then
  exec "$repo/scripts/with-sim" "$repo/scripts/bench.sh" "$@"
fi
n=${1:-10}
command -v runc >/dev/null || {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
}

work=$(mktemp -d)
chmod 755 "$work"
# shellcheck source=scripts/lib/clients-env.sh
. "$repo/scripts/lib/clients-env.sh"
trap 'clients_cleanup; rm -rf "$work"' EXIT
"$repo/fixtures/bundles/make-rootfs.sh" "$repo/target/fixtures"
(cd "$repo" && cargo build -q --release -p nexcage)
nexcage="$repo/target/x86_64-unknown-linux-gnu/release/nexcage"

# One bundle for both: runc wants the rootfs inside, nexcage takes any path.
bundle="$work/bundle"
mkdir -p "$bundle"
cp -a "$repo/target/fixtures/rootfs" "$bundle/rootfs"
cat > "$bundle/config.json" <<JSON
{"ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"],
             "env": ["PATH=/bin:/sbin"], "cwd": "/"},
 "root": {"path": "rootfs"}, "hostname": "bench",
 "mounts": [
   {"destination": "/proc", "type": "proc", "source": "proc"},
   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
   {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
   {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
   {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}],
 "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                          {"type": "uts"}, {"type": "mount"}]}}
JSON

now() { date +%s%N; }
time_loop() { # label, command...
  local label=$1; shift
  local start end
  start=$(now)
  for i in $(seq 1 "$n"); do "$@" "b$i" >/dev/null; done
  end=$(now)
  echo $(( (end - start) / n / 1000000 ))
}

cd "$bundle"
"$nexcage" --root "$work/nx" run --bundle . warm >/dev/null   # converts the template once
nx_ms=$(time_loop nexcage "$nexcage" --root "$work/nx" run --bundle .)
runc_ms=$(time_loop runc runc --root "$work/runc" run --bundle .)

echo "iterations: $n"
printf '%-34s %8s ms\n' "nexcage run (create..delete)" "$nx_ms"
printf '%-34s %8s ms\n' "runc run (create..delete)" "$runc_ms"
awk -v a="$nx_ms" -v b="$runc_ms" 'BEGIN { if (b > 0) printf "ratio nexcage/runc: %.1f\n", a / b }'

# Where a lifecycle's time goes: the node's tools versus nexcage itself.
start=$(now)
steps=$("$nexcage" --root "$work/nx" --debug run --bundle . split 2>&1 >/dev/null |
  sed -n 's/.*msg="finished command=\(pct [a-z]*\).* ms=\([0-9]*\)".*/\1 \2/p')
total_ms=$(( ($(now) - start) / 1000000 ))
tools_ms=$(echo "$steps" | awk '{ s += $3 } END { print s + 0 }')
echo "one lifecycle, split:"
echo "$steps" | awk '{ printf "  %-32s %8s ms\n", $1 " " $2, $3 }'
printf '  %-32s %8s ms\n' "nexcage itself" "$((total_ms - tools_ms))"

# The same comparison as podman's users see it.
clients_install
clients_setup "$nexcage"
clients_image "$repo/target/fixtures/rootfs"
podman_loop() { # runtime
  local start
  start=$(now)
  for _ in $(seq 1 "$n"); do podman_any --runtime "$1" run --rm "$IMAGE" true >/dev/null; done
  echo $(( ($(now) - start) / n / 1000000 ))
}
podman_any --runtime nexcage run --rm "$IMAGE" true >/dev/null   # converts the template once
podman_nx_ms=$(podman_loop nexcage)
podman_runc_ms=$(podman_loop runc)
printf '%-34s %8s ms\n' "podman run --rm (nexcage)" "$podman_nx_ms"
printf '%-34s %8s ms\n' "podman run --rm (runc)" "$podman_runc_ms"
awk -v a="$podman_nx_ms" -v b="$podman_runc_ms" 'BEGIN { if (b > 0) printf "ratio podman nexcage/runc: %.1f\n", a / b }'
