#!/usr/bin/env bash
# End-to-end: podman (through conmon) and containerd (through its runc v2
# shim) run their containers through nexcage on the node `pct` reaches (the
# simulator when run by scripts/test.sh). Installs the clients from apt,
# imports a busybox image, starts a private containerd under a temp dir.
# After every scenario no guest and no nexcage state may be left.
# Prints "N passed, M failed"; exits non-zero if anything failed.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PVE_SIM_ROOT:-}" ]; then
  exec "$repo/scripts/with-sim" "$repo/scripts/clients.sh" "$@"
fi
# shellcheck source=scripts/lib/clients-env.sh
. "$repo/scripts/lib/clients-env.sh"

nexcage_bin=$(command -v nexcage)
# Nothing left: no guest on the node, no state under either runtime root.
nothing_left() {
  local state
  state=$(ls -A "$W/nexcage-podman" /run/containerd/runc/"$CTR_NS" 2>/dev/null | grep -v -e '^~nexcage$' -e ':$' -e '^$')
  [ -z "$(guests)" ] && [ -z "$state" ]
}
quiet() { "$@" >/dev/null; }
# A terminal for the client: script(1) gives it a pty of the size we set.
# The command is run by script's shell: plain programs, no functions.
in_pty() { # input, command...
  local input=$1; shift
  printf '%s\n' "$input" | timeout 60 script -qec "stty rows 33 cols 101; $*" /dev/null
}

clients_install
clients_setup "$nexcage_bin"
trap clients_cleanup EXIT
"$repo/fixtures/bundles/make-rootfs.sh" "$repo/target/fixtures" >/dev/null
clients_image "$repo/target/fixtures/rootfs"
echo "== podman $(podman --version | awk '{print $3}') + conmon, runtime: nexcage"

# Templates nexcage keeps on the node, as Proxmox lists them.
templates() { pveam list local | grep -c 'vztmpl/nexcage-'; }
tpl_before=$(templates)
out=$(podman_nx run --rm "$IMAGE" echo hi 2>&1)
check "podman run --rm echo hi prints hi" [ "$out" = hi ]
check "  nothing left" eventually nothing_left
# podman gives every run a fresh overlay (new top directory, /etc/mtab
# link): the same image must still hit the template cache.
podman_nx run --rm "$IMAGE" true && podman_nx run --rm "$IMAGE" true
runs=$?
check "three podman runs of one image make one template" \
  [ "$runs" = 0 -a "$(templates)" = $((tpl_before + 1)) ]

# OCI hooks as podman injects them from a hooks directory.
mkdir -p "$W/hooks.d"
cat > "$W/hook.sh" <<EOF
#!/bin/sh
echo "\$1 \$(sed -n 's/.*"status": *"\([a-z]*\)".*/\1/p')" >> $W/hook.log
EOF
chmod 755 "$W/hook.sh"
for stage in createRuntime poststart poststop; do
  cat > "$W/hooks.d/$stage.json" <<EOF
{"version": "1.0.0", "hook": {"path": "$W/hook.sh", "args": ["hook.sh", "$stage"]},
 "when": {"always": true}, "stages": ["$stage"]}
EOF
done
out=$(podman_nx --hooks-dir "$W/hooks.d" run --rm "$IMAGE" echo hooked)
check "podman --hooks-dir: the container runs" [ "$out" = hooked ]
check "  its hooks ran at their stages with the state" \
  [ "$(tr '\n' , < "$W/hook.log")" = "createRuntime creating,poststart running,poststop stopped," ]
check "  nothing left" eventually nothing_left

# The client's default seccomp profile is loaded by nexcage's init: one filter
# more than with it off (the node's LXC loads its own in both cases).
filters='sed -n "s/^Seccomp_filters:\t//p" /proc/self/status'
confined=$(podman_nx run --rm "$IMAGE" sh -c "$filters")
unconfined=$(podman_nx run --rm --security-opt seccomp=unconfined "$IMAGE" sh -c "$filters")
check "podman's default seccomp profile is applied" [ "$confined" = $((unconfined + 1)) ]
check "  nothing left" eventually nothing_left

podman_nx run --rm "$IMAGE" sh -c 'exit 7'
check "podman run exits 7 when the process does" [ $? = 7 ]
podman_nx run --rm "$IMAGE" sh -c 'kill -KILL $$'
check "podman run reports death by SIGKILL (137)" [ $? = 137 ]
check "  nothing left" eventually nothing_left

id=$(podman_nx run -d "$IMAGE" sh -c 'echo started-ok; exec sleep 1000')
check "podman run -d starts the container" [ "$(podman_nx inspect -f '{{.State.Status}}' "$id")" = running ]
logs_say() { [ "$(podman_nx logs "$1" 2>&1)" = "$2" ]; }
check "  podman logs has its output" eventually logs_say "$id" started-ok
out=$(podman_nx exec "$id" sh -c 'echo in-$(hostname); exit 5'); rc=$?
check "podman exec passes output" [ "$out" = "in-${id:0:12}" ]
check "podman exec exits with the process status" [ "$rc" = 5 ]
out=$(in_pty 'tty; echo typed-$((6*7)); exit 4' podman --root "$W/storage" --runroot "$W/run" --runtime nexcage exec -it "$id" sh); rc=$?
check "podman exec -it: the process has a terminal" grep -q '^/dev/pts/' <<<"$out"
check "  input and output pass" grep -q '^typed-42' <<<"$out"
check "  exit status passes" [ "$rc" = 4 ]
# podman cp of a running container goes through /proc/<state pid>/root: the
# container's root, never the node's.
echo inside > "$W/cp-in"; rm -f /tmp/cp-in
check "podman cp into the running container" quiet podman_nx cp "$W/cp-in" "$id":/tmp/cp-in
check "  the process sees the file" [ "$(podman_nx exec "$id" cat /tmp/cp-in)" = inside ]
check "  the node's /tmp does not" [ ! -e /tmp/cp-in ]
check "podman cp out of the running container" [ "$(podman_nx cp "$id":/tmp/cp-in - | tar -xO)" = inside ]
cp_fails() { ! podman_nx cp "$1" - >/dev/null 2>&1; }
check "  a file only the node has is not found" cp_fails "$id:$W/cp-in"
top_comms() { podman_nx top "$1" comm | tail -n +2 | sort | tr '\n' ' '; }
check "podman top lists the container's processes, no node's" [ "$(top_comms "$id")" = "init sleep " ]
check "podman pause" quiet podman_nx pause "$id"
check "  state is paused" [ "$(podman_nx inspect -f '{{.State.Status}}' "$id")" = paused ]
check "podman unpause" quiet podman_nx unpause "$id"
check "  state is running" [ "$(podman_nx inspect -f '{{.State.Status}}' "$id")" = running ]
check "  exec works after unpause" [ "$(podman_nx exec "$id" echo back)" = back ]
check "podman stop" quiet podman_nx stop -t 2 "$id"
check "  state is exited" [ "$(podman_nx inspect -f '{{.State.Status}}' "$id")" = exited ]
check "  no guest once stopped" eventually nothing_left
check "podman rm" quiet podman_nx rm "$id"
check "  container gone" bash -c "! podman --root '$W/storage' --runroot '$W/run' container exists '$id'"
check "  nothing left" eventually nothing_left

# Root mode bundle (the org.proxmox.root annotation; `root = "bundle"` in
# config.toml for every container): the guest runs on podman's overlay
# itself, so podman sees the process's writes as it does with runc.
# Templates of at least 0.1 MB: an image's, not the stub's (empty dirs).
image_templates() { pveam list local | awk '$1 ~ /vztmpl\/nexcage-/ && $2 + 0 >= 0.1' | wc -l; }
prune_all() { nexcage --root "$W/nexcage-podman" template prune --all >/dev/null; }
check "templates pruned, so that a converted image would show" prune_all
id=$(podman_nx run -d --annotation org.proxmox.root=bundle "$IMAGE" sh -c 'echo zc > /zero-copy; exec sleep 1000')
check "podman run -d in root mode bundle" [ "$(podman_nx inspect -f '{{.State.Status}}' "$id")" = running ]
diff_has() { podman_nx diff "$1" | grep -qx "$2"; }
check "  podman diff shows the process's write" eventually diff_has "$id" 'A /zero-copy'
check "  no template made for the image (at most the stub)" [ "$(image_templates)" = 0 ]
check "  podman cp of the running container reads the write" [ "$(podman_nx cp "$id":/zero-copy - | tar -xO)" = zc ]
check "podman stop" quiet podman_nx stop -t 2 "$id"
check "  podman diff still shows the write" diff_has "$id" 'A /zero-copy'
check "  and nothing of nexcage's" bash -c "! podman --root '$W/storage' --runroot '$W/run' diff '$id' | grep -q nexcage"
check "  podman cp reads the write" [ "$(podman_nx cp "$id":/zero-copy - | tar -xO)" = zc ]
check "podman rm" quiet podman_nx rm "$id"
check "  nothing left" eventually nothing_left

# Root mode clone: one base guest per image, made a Proxmox template, and
# every container a linked clone of it.
base_guests() { for v in $(guests); do pct config "$v" | grep -qx 'template: 1' && echo "$v"; done; return 0; }
out=$(podman_nx run --rm --annotation org.proxmox.root=clone "$IMAGE" sh -c 'echo one > /w; cat /w')
check "podman run in root mode clone" [ "$out" = one ]
out=$(podman_nx run --rm --annotation org.proxmox.root=clone "$IMAGE" sh -c 'cat /w 2>/dev/null || echo fresh')
check "  a second run is a clone of the image, not of the first" [ "$out" = fresh ]
check "  two runs of one image, one base guest" [ "$(base_guests | wc -l)" = 1 ]
only_the_base_left() { [ "$(guests)" = "$(base_guests)" ]; }
check "  no guest left but the base" eventually only_the_base_left
check "  prune removes the base with its template" prune_all
check "  nothing left" eventually nothing_left

out=$(in_pty 'tty; stty size; echo typed-$((6*7)); exit 3' podman --root "$W/storage" --runroot "$W/run" --runtime nexcage run -it --rm "$IMAGE" sh); rc=$?
check "podman run -it: the process has a terminal" grep -q '^/dev/pts/' <<<"$out"
check "  of the client's size" grep -q '^33 101' <<<"$out"
check "  input and output pass" grep -q '^typed-42' <<<"$out"
check "  exit status passes" [ "$rc" = 3 ]
check "  nothing left" eventually nothing_left

echo "== containerd $(containerd --version | awk '{print $3}') (private), shim runc v2, BinaryName: nexcage"
clients_containerd || exit 1
R=(--runc-binary "$NEXCAGE_RT")

tpl_before=$(templates)
out=$(ctr_nx run "${R[@]}" --rm "$IMAGE" c1 echo hi 2>&1)
check "ctr run --rm echo hi prints hi" [ "$out" = hi ]
tpl_first=$(templates)
ctr_nx run "${R[@]}" --rm "$IMAGE" c1b true && ctr_nx run "${R[@]}" --rm "$IMAGE" c1c true
runs=$?
check "three ctr runs of one image make at most one template" \
  [ "$runs" = 0 -a "$(templates)" = "$tpl_first" -a "$tpl_first" -le $((tpl_before + 1)) ]
check "  nothing left" nothing_left
plain=$(ctr_nx run "${R[@]}" --rm "$IMAGE" c1s sh -c "$filters")
confined=$(ctr_nx run "${R[@]}" --rm --seccomp "$IMAGE" c1s sh -c "$filters; echo hi")
check "ctr run --seccomp runs under containerd's default profile" \
  [ "$confined" = "$((plain + 1))"$'\n'hi ]
check "  nothing left" nothing_left
ctr_nx run "${R[@]}" --rm "$IMAGE" c2 sh -c 'exit 7'
check "ctr run exits 7 when the process does" [ $? = 7 ]
ctr_nx run "${R[@]}" --rm "$IMAGE" c3 sh -c 'kill -TERM $$'
check "ctr run reports death by SIGTERM (143)" [ $? = 143 ]
check "  nothing left" nothing_left

check "ctr run -d" ctr_nx run "${R[@]}" -d "$IMAGE" c4 sleep 1000
task_status() { ctr_nx tasks ls | awk -v id="$1" '$1 == id {print $3}'; }
check "  task is RUNNING" [ "$(task_status c4)" = RUNNING ]
out=$(ctr_nx tasks exec --exec-id e1 c4 sh -c 'echo exec-out; exit 4'); rc=$?
check "ctr task exec passes output" [ "$out" = exec-out ]
check "  and exits with the process status" [ "$rc" = 4 ]
out=$(in_pty 'sleep 1; tty; stty size; echo typed-$((6*7)); exit 6' ctr --address "$W/containerd/containerd.sock" --namespace "$CTR_NS" tasks exec -t --exec-id e2 c4 sh); rc=$?
check "ctr task exec -t: the process has a terminal" grep -q '^/dev/pts/' <<<"$out"
check "  of the client's size" grep -q '^33 101' <<<"$out"
check "  input and output pass" grep -q '^typed-42' <<<"$out"
check "  exit status passes" [ "$rc" = 6 ]
pids=$(ctr_nx tasks ps c4 | awk 'NR > 1 {print $1}')
all_alive() { [ -n "$1" ] && for p in $1; do [ -d "/proc/$p" ] || return 1; done; }
check "ctr task ps lists the container's host pids" all_alive "$pids"
check "ctr task pause" ctr_nx tasks pause c4
check "  task is PAUSED" [ "$(task_status c4)" = PAUSED ]
check "ctr task resume" ctr_nx tasks resume c4
check "  task is RUNNING" [ "$(task_status c4)" = RUNNING ]
check "ctr task kill" ctr_nx tasks kill -s SIGKILL c4
# The status is asked again on every try (a "$(...)" argument would be
# evaluated once, before eventually starts).
task_is() { [ "$(task_status "$1")" = "$2" ]; }
check "  task is STOPPED" eventually task_is c4 STOPPED
check "ctr task rm" ctr_nx tasks rm c4
check "ctr container rm" ctr_nx containers rm c4
check "  nothing left" nothing_left

# Root mode bundle under containerd: the guest's root is the snapshot
# containerd mounted for the task, so the process's write is in it on the
# host, as with runc.
check "templates pruned, so that a converted image would show" prune_all
check "ctr run -d in root mode bundle" ctr_nx run "${R[@]}" -d --annotation org.proxmox.root=bundle "$IMAGE" cz sh -c 'echo zc > /zero-copy; exec sleep 1000'
zc_file="$W/containerd/state/io.containerd.runtime.v2.task/$CTR_NS/cz/rootfs/zero-copy"
zc_written() { [ "$(cat "$zc_file" 2>/dev/null)" = zc ]; }
check "  the process's write is in containerd's rootfs on the host" eventually zc_written
check "  no template made for the image (at most the stub)" [ "$(image_templates)" = 0 ]
check "  ctr task kill" ctr_nx tasks kill -s SIGKILL cz
check "  task is STOPPED" eventually task_is cz STOPPED
check "  ctr task rm, container rm" bash -c "ctr --address '$W/containerd/containerd.sock' --namespace '$CTR_NS' tasks rm cz && ctr --address '$W/containerd/containerd.sock' --namespace '$CTR_NS' containers rm cz"
check "  nothing left" nothing_left

# ctr sizes the terminal (ResizePty) just after the task starts, not in
# the spec: give it that moment before asking, as a person typing would.
out=$(in_pty 'sleep 1; tty; stty size; echo typed-$((6*7)); exit 3' ctr --address "$W/containerd/containerd.sock" --namespace "$CTR_NS" run "${R[@]}" -t --rm "$IMAGE" c5 sh); rc=$?
echo "$out" > "$W/ctr-t.out"
check "ctr run -t: the process has a terminal" grep -q '^/dev/pts/' <<<"$out"
check "  of the client's size" grep -q '^33 101' <<<"$out"
check "  input and output pass" grep -q '^typed-42' <<<"$out"
check "  exit status passes" [ "$rc" = 3 ]
check "  nothing left" nothing_left

[ "$failed" = 0 ] || { echo "-- ctr -t output:"; cat -A "$W/ctr-t.out"; }
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
