#!/usr/bin/env bash
# Runs nexcage on a demo bundle (a busybox rootfs) over a simulated Proxmox
# node whose containers are real LXC containers. Run scripts/setup.sh first.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# Re-run ourselves on a fresh simulated node (with-sim puts pct and nexcage on PATH).
if [ -z "${PVE_SIM_ROOT:-}" ]; then
  exec "$repo/scripts/with-sim" "$repo/scripts/demo.sh" "$@"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$repo/fixtures/bundles/make-rootfs.sh" "$repo/target/fixtures"
mkdir -p "$work/demo"
cat > "$work/demo/config.json" <<JSON
{
  "ociVersion": "1.0.2",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["sh", "-c", "echo hello from \$(hostname), uid \$(id -u); sleep 1; echo bye; exit 3"],
    "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    "cwd": "/"
  },
  "root": {"path": "$repo/target/fixtures/rootfs"},
  "hostname": "nexcage-demo",
  "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
}
JSON
cd "$work/demo"
say() { printf '\n$ %s\n' "$*"; }
status() { nexcage state "$1" | sed -n 's/.*"status": "\(.*\)".*/\1/p'; }

say nexcage create --bundle . --pid-file demo.pid demo
nexcage create --bundle . --pid-file demo.pid demo
say nexcage state demo; nexcage state demo
say pct list; pct list
say nexcage start demo; nexcage start demo
say nexcage list; nexcage list
while [ "$(status demo)" != stopped ]; do sleep 0.2; done
say nexcage delete demo; nexcage delete demo
say "pct list   # nothing left"; pct list
say "nexcage run --bundle . demo2   # foreground: output and exit status of the process"
set +e; nexcage run --bundle . demo2; rc=$?; set -e
echo "exit status: $rc"
[ "$rc" = 3 ]
echo
echo "demo finished: the process ran in a real LXC container managed as Proxmox guest"
