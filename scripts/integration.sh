#!/usr/bin/env bash
# Lifecycle scenarios against whatever node `pct` reaches: the simulator
# (scripts/with-sim scripts/integration.sh) or, unchanged, a real Proxmox VE
# node with nexcage on PATH. Prints "N passed, M failed" and exits non-zero
# if anything failed. Leaves no guest and no state behind.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
root=${NEXCAGE_ROOT:-/run/nexcage-integration}
work=$(mktemp -d)
chmod 755 "$work"
prefix="it$$"
passed=0 failed=0

cleanup() {
  for id in "$prefix"-a "$prefix"-b "$prefix"-c "$prefix"-d; do
    nexcage --root "$root" delete --force "$id" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

check() { # name, then a command that must succeed
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"
  else failed=$((failed + 1)); echo "FAIL $name"; fi
}
nx() { nexcage --root "$root" "$@"; }
status() { nx state "$1" 2>/dev/null | sed -n 's/.*"status": "\(.*\)".*/\1/p'; }
wait_status() { # id, wanted status
  for _ in $(seq 1 100); do [ "$(status "$1")" = "$2" ] && return 0; sleep 0.1; done
  return 1
}
guests() { pct list | awk 'NR > 1 {print $1}' | sort; }

"$repo/fixtures/bundles/make-rootfs.sh" "$work/fixture" >/dev/null
bundle() { # dir, shell command for the process
  mkdir -p "$1"
  cat > "$1/config.json" <<JSON
{"ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "$2"],
             "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/"},
 "root": {"path": "$work/fixture/rootfs"}, "hostname": "itest",
 "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}}
JSON
}
before=$(guests)

# 1. run: output and exit status of the process, nothing left after.
bundle "$work/run" 'echo hi from $(hostname); exit 7'
out=$(nx run --bundle "$work/run" "$prefix-a"); rc=$?
check "run prints the process output" [ "$out" = "hi from itest" ]
check "run exits with the process status" [ "$rc" = 7 ]
check "run leaves no guest" [ "$(guests)" = "$before" ]

# 2. create -> created (pid, process not started) -> start -> running -> kill -> stopped -> delete.
bundle "$work/life" 'echo started; exec sleep 1000'
nx create --bundle "$work/life" --pid-file "$work/life.pid" "$prefix-b" > "$work/life.out" 2>&1
check "create succeeds" [ $? = 0 ]
check "state is created" [ "$(status "$prefix-b")" = created ]
check "pid file holds the state pid" grep -q "\"pid\": $(cat "$work/life.pid")," <(nx state "$prefix-b")
check "process not started by create" [ ! -s "$work/life.out" ]
check "start succeeds" nx start "$prefix-b"
check "state is running" [ "$(status "$prefix-b")" = running ]
sleep 0.3
check "output reaches create's stdout" grep -qx started "$work/life.out"
check "start twice is refused" bash -c "! nexcage --root '$root' start '$prefix-b' 2>/dev/null"
check "delete while running is refused" bash -c "! nexcage --root '$root' delete '$prefix-b' 2>/dev/null"
check "kill succeeds" nx kill "$prefix-b" KILL
check "state becomes stopped" wait_status "$prefix-b" stopped
check "kill when stopped is refused" bash -c "! nexcage --root '$root' kill '$prefix-b' 2>/dev/null"
check "delete succeeds" nx delete "$prefix-b"
check "guest gone from pct list" [ "$(guests)" = "$before" ]

# 3. errors.
check "unknown id: does not exist" bash -c "nexcage --root '$root' state nosuch-$prefix 2>&1 | grep -q 'does not exist'"
check "delete --force of an unknown id succeeds" nx delete --force "nosuch-$prefix"
check "bad id is refused" bash -c "! nexcage --root '$root' create --bundle '$work/life' '../x' 2>/dev/null"
nx create --bundle "$work/life" "$prefix-c" >/dev/null 2>&1
check "duplicate id is refused" bash -c "nexcage --root '$root' create --bundle '$work/life' '$prefix-c' 2>&1 | grep -q 'exists'"
check "delete --force of a created container" nx delete --force "$prefix-c"
check "missing bundle is refused" bash -c "! nexcage --root '$root' create --bundle '$work/nope' '$prefix-d' 2>/dev/null"
check "nothing left on the node" [ "$(guests)" = "$before" ]

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
