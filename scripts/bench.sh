#!/usr/bin/env bash
# Compares nexcage with runc on the same bundles, in one run, and prints the
# ratios as medians over ITERATIONS (these machines are noisy: compare
# ratios, not seconds), then a table against issue 12's targets.
#   scripts/bench.sh [ITERATIONS]       (default 10)
# Measures, for a busybox rootfs and a Debian bookworm minbase rootfs
# (debootstrap, cached under target/bench/debian-rootfs), in each root
# mode (template: converted and unpacked; bundle: the rootfs itself; clone:
# a linked clone of a base guest unpacked once per image):
# - `run` of a process that exits at once (create+start+wait+delete);
# - `podman run --rm IMAGE true` with nexcage and with runc as podman's
#   runtime (conmon, image, networking and all);
# and on the Debian rootfs:
# - a warm template-cache hit (the `seconds` of nexcage's "reusing template"
#   debug line) against `find -printf` of the same tree;
# - a conversion (template storage pruned first) against
#   `tar | zstd -T0 -3`: throughput and peak RSS;
# - the PSS of a `sleep` in each of two guests of the Debian image, both
#   root modes and runc (page cache shared between guests or not).
# On the simulated node pct is a native binary, built optimized as a node's
# tools are (Cargo.toml); on a real Proxmox node
# each pct run starts Perl and each root volume is an LV with mkfs.ext4
# (README, "Benchmarks").
# Needs root and, on first use, Debian's apt (runc, debootstrap, zstd, time,
# podman...); the Debian rootfs comes from the mirror apt already uses.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${PVE_SIM_ROOT:-}" ]; then
  exec "$repo/scripts/with-sim" "$repo/scripts/bench.sh" "$@"
fi
n=${1:-10}
case $n in '' | *[!0-9]* | 0) echo "usage: $0 [ITERATIONS>0]" >&2; exit 2 ;; esac

missing=()
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v zstd >/dev/null || missing+=(zstd)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Debian archive apt on this machine uses for bookworm (one-line
# sources.list or deb822 .sources); no other network is touched.
debian_mirror() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -e 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      { uris = ""; suites = ""; enabled = 1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { uris = $i; sub(/^URIs:[ \t]*/, "", uris) }
          if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:/, "", suites); suites = suites " " }
          if ($i ~ /^Enabled:[ \t]*no/) enabled = 0
        }
        if (enabled && uris != "" && suites ~ /[ \t]bookworm[ \t]/) { split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f"
  done
}

debian_cache="$repo/target/bench/debian-rootfs"
if [ ! -f "$debian_cache/etc/debian_version" ]; then
  mirror=$(debian_mirror | head -n 1)
  if [ -z "$mirror" ]; then
    echo "bench: no bookworm mirror in /etc/apt/sources.list{,.d}; cannot debootstrap" >&2
    exit 1
  fi
  echo "debootstrap --variant=minbase bookworm from $mirror (once; cached in $debian_cache)" >&2
  rm -rf "$debian_cache.tmp"
  mkdir -p "$(dirname "$debian_cache")"
  debootstrap --variant=minbase bookworm "$debian_cache.tmp" "$mirror" >"$debian_cache.log" 2>&1 || {
    echo "bench: debootstrap failed, see $debian_cache.log" >&2
    exit 1
  }
  mv "$debian_cache.tmp" "$debian_cache"
fi

work=$(mktemp -d)
chmod 755 "$work"
# shellcheck source=scripts/lib/clients-env.sh
. "$repo/scripts/lib/clients-env.sh"
# The node's LVM-thin pool (its volume group's directory) on a btrfs file
# system of its own: there the simulator's linked clone of a base volume is
# a reflink, constant in time as a node's thin snapshot (`lvcreate -s`);
# on this machine's ext4 it would copy the base's data (docs/pve-sim.md).
# Every other file of the node stays where it was.
command -v mkfs.btrfs >/dev/null || apt-get install -y -qq btrfs-progs >/dev/null
thin_img="$repo/target/bench/thin-pool.img"
thin_pool="$PVE_SIM_ROOT/dev/pve"
rm -f "$thin_img"
truncate -s 64G "$thin_img"
mkfs.btrfs -q -f "$thin_img" >/dev/null 2>&1
mkdir -p "$thin_pool"
mount -o loop "$thin_img" "$thin_pool"
# No copy-on-write for the volumes' own writes (an LV has none either);
# reflinks between such files still work.
chattr +C "$thin_pool"
# Root mode clone's bases are the only guests left at the end: they go
# (with the templates) before the pool does.
release_pool() {
  local r
  for r in "$work/nx" "$W/nexcage-podman"; do
    [ -d "$r" ] && { "$nexcage" --root "$r" template prune --all >/dev/null 2>&1 || true; }
  done
  umount -l "$thin_pool" || true
  rm -f "$thin_img"
}
trap 'clients_cleanup; release_pool; rm -rf --one-file-system "$work"' EXIT
"$repo/fixtures/bundles/make-rootfs.sh" "$repo/target/fixtures"
(cd "$repo" && cargo build -q --release -p nexcage)
nexcage="$repo/target/x86_64-unknown-linux-gnu/release/nexcage"

# One bundle per image for both runtimes: runc wants the rootfs inside,
# nexcage takes any path. Copies, so that nothing here changes the cache.
make_bundle() { # dir, rootfs
  mkdir -p "$1"
  cp -a "$2" "$1/rootfs"
  cat > "$1/config.json" <<JSON
{"ociVersion": "1.0.2",
 "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["true"],
             "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "cwd": "/"},
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
}
make_bundle "$work/busybox" "$repo/target/fixtures/rootfs"
make_bundle "$work/debian" "$debian_cache"
debian_rootfs="$work/debian/rootfs"

now() { date +%s%N; }
# Median of the numbers on stdin (mean of the middle two for an even count).
median() { # [printf format]
  sort -g | awk -v f="${1:-%.1f}\n" '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    m = int((NR + 1) / 2)
    if (NR % 2) printf f, v[m]; else printf f, (v[m] + v[m + 1]) / 2 }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f\n", a / b; else print "nan" }'; }
# Median wall time in ms of n runs of "$@" ID, IDs b1..bn.
time_loop() {
  local i start
  for i in $(seq 1 "$n"); do
    start=$(now)
    "$@" "b$i" >/dev/null
    echo $(( ($(now) - start) / 1000 ))
  done | awk '{ print $1 / 1000 }' | median
}

rows=()
# "met" is judged on the unrounded ratio of the two figures, not on the
# printed one, so that rounding never turns a miss into a hit.
row() { # figure, nexcage, reference, ratio, target (awk condition on r), target text
  local met=-
  [ -n "$5" ] && met=$(awk -v a="$2" -v b="$3" "BEGIN { r = b > 0 ? a / b : -1; print (b > 0 && ($5)) ? \"yes\" : \"NO\" }")
  rows+=("$(printf '%-40s %12s %12s %7s  %-26s %s' "$1" "$2" "$3" "$4" "$6" "$met")")
}

# Root mode bundle through the node's config (the annotation does the same
# per container; podman below uses that).
bundle_config="$work/bundle-mode.toml"
{ cat "$NEXCAGE_CONFIG"; echo 'root = "bundle"'; } > "$bundle_config"
clone_config="$work/clone-mode.toml"
{ cat "$NEXCAGE_CONFIG"; echo 'root = "clone"'; } > "$clone_config"
config_of() { # mode
  case $1 in
    bundle) echo "$bundle_config" ;;
    clone) echo "$clone_config" ;;
    *) echo "$NEXCAGE_CONFIG" ;;
  esac
}
echo "iterations: $n (medians)"
for img in busybox debian; do
  cd "$work/$img"
  runc_ms=$(time_loop runc --root "$work/runc" run --bundle .)
  printf '%-40s %10s ms\n' "$img: runc run (create..delete)" "$runc_ms"
  for mode in template bundle clone; do
    cfg=$(config_of "$mode")
    # Converts the template (or the stub) once, and makes the clone base.
    NEXCAGE_CONFIG=$cfg "$nexcage" --root "$work/nx" run --bundle . warm >/dev/null
    nx_ms=$(NEXCAGE_CONFIG=$cfg time_loop "$nexcage" --root "$work/nx" run --bundle .)
    r=$(ratio "$nx_ms" "$runc_ms")
    printf '%-40s %10s ms\n' "$img: nexcage run, $mode (create..delete)" "$nx_ms"
    echo "$img: ratio nexcage/runc, $mode: $r"
    row "run $img, $mode (ms)" "$nx_ms" "$runc_ms" "$r" "" "none in issue 12"
  done
done

# Memory: two guests of the Debian image at once, each running `sleep`;
# the figure is the mean PSS of the sleep processes (pages of the binary
# and libc shared between the guests count half in each). Template mode
# unpacks a copy per guest; bundle mode and runc share the image's pages.
mkdir -p "$work/sleep"
sed -e 's|"args": \["true"\]|"args": ["sleep", "1000"]|' \
    -e "s|\"root\": {\"path\": \"rootfs\"}|\"root\": {\"path\": \"$debian_rootfs\"}|" \
    "$work/debian/config.json" > "$work/sleep/config.json"
sleep_pids() { # ps --format json output on stdin
  local p
  for p in $(tr -d '[] ' | tr , ' '); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = sleep ] && echo "$p"
  done
  return 0
}
mean_pss() { # pids...
  local p t=0
  for p in "$@"; do t=$((t + $(awk '/^Pss:/ { print $2 }' "/proc/$p/smaps_rollup"))); done
  echo $((t / $#))
}
cd "$work/sleep"
pids=()
for i in 1 2; do
  runc --root "$work/runc" run -d --bundle . "m$i" </dev/null >/dev/null 2>&1
  pids+=($(runc --root "$work/runc" ps --format json "m$i" | sleep_pids))
done
runc_pss=$(mean_pss "${pids[@]}")
for i in 1 2; do runc --root "$work/runc" delete --force "m$i"; done
for mode in template bundle clone; do
  cfg=$(config_of "$mode")
  pids=()
  for i in 1 2; do
    NEXCAGE_CONFIG=$cfg "$nexcage" --root "$work/nx" create --bundle . "m$i" </dev/null >/dev/null 2>&1
    NEXCAGE_CONFIG=$cfg "$nexcage" --root "$work/nx" start "m$i"
  done
  sleep 0.5
  for i in 1 2; do
    pids+=($(NEXCAGE_CONFIG=$cfg "$nexcage" --root "$work/nx" ps --format json "m$i" | sleep_pids))
  done
  nx_pss=$(mean_pss "${pids[@]}")
  for i in 1 2; do NEXCAGE_CONFIG=$cfg "$nexcage" --root "$work/nx" delete --force "m$i"; done
  printf '%-40s %10s kB (runc: %s kB)\n' "debian: sleep PSS per guest, $mode" "$nx_pss" "$runc_pss"
  row "sleep PSS, 2 Debian guests, $mode (kB)" "$nx_pss" "$runc_pss" "$(ratio "$nx_pss" "$runc_pss")" "" "none in issue 12"
done

# Where a lifecycle's time goes: the node's tools versus nexcage itself.
cd "$work/busybox"
start=$(now)
steps=$("$nexcage" --root "$work/nx" --debug run --bundle . split 2>&1 >/dev/null |
  sed -n 's/.*msg="finished command=\(pct [a-z]*\).* ms=\([0-9]*\)".*/\1 \2/p')
total_ms=$(( ($(now) - start) / 1000000 ))
tools_ms=$(echo "$steps" | awk '{ s += $3 } END { print s + 0 }')
echo "busybox: one lifecycle, split:"
echo "$steps" | awk '{ printf "  %-38s %8s ms\n", $1 " " $2, $3 }'
printf '  %-38s %8s ms\n' "nexcage itself" "$((total_ms - tools_ms))"

# A warm hit costs the fingerprint walk and a stat; nexcage's debug line
# times exactly that. Each walk is paired with a find over the same tree
# right before it, so both see the same dentry and inode cache.
cd "$work/debian"
find_walk() { find "$debian_rootfs" -printf '%i %m %u %g %s %T@\n' >/dev/null; }
find_walk
: > "$work/hit"; : > "$work/find"; : > "$work/hit-rss"
for i in $(seq 1 "$n"); do
  start=$(now)
  find_walk
  echo $(( ($(now) - start) / 1000 )) | awk '{ print $1 / 1000 }' >> "$work/find"
  /usr/bin/time -f %M -o "$work/rss" \
    "$nexcage" --root "$work/nx" --debug create --bundle . "h$i" 2>"$work/hit.log" >/dev/null
  "$nexcage" --root "$work/nx" delete "h$i"
  cat "$work/rss" >> "$work/hit-rss"
  sed -n 's/.*msg="reusing template .* seconds=\([0-9.e-]*\)".*/\1/p' "$work/hit.log" |
    awk '{ print $1 * 1000 }' >> "$work/hit"
done
[ "$(wc -l < "$work/hit")" -eq "$n" ] || {
  echo "bench: not every create logged a template hit:" >&2
  cat "$work/hit.log" >&2
  exit 1
}
hit_ms=$(median < "$work/hit")
find_ms=$(median < "$work/find")
r=$(ratio "$hit_ms" "$find_ms")
printf '%-40s %10s ms\n' "debian: warm template hit (walk+stat)" "$hit_ms"
printf '%-40s %10s ms\n' "debian: find -printf of the rootfs" "$find_ms"
echo "debian: ratio hit/find: $r"
row "template hit vs find -printf (ms)" "$hit_ms" "$find_ms" "$r" "r <= 1.5" "<= 1.5x"

# Conversion: every create converts, the storage pruned before each. The
# figure is the converter's own `seconds` (archive pass and fsync; the
# fingerprint walk before it is the hit cost above). Peak RSS both of the
# whole create (/usr/bin/time: nexcage and the pct runs it waited for) and
# of nexcage's process alone (VmHWM, sampled until it exits).
tar_bytes=$(tar -C "$debian_rootfs" -cf - . | wc -c)
: > "$work/conv"; : > "$work/conv-rss"; : > "$work/conv-hwm"; : > "$work/zstd"; : > "$work/zstd-rss"
for i in $(seq 1 "$n"); do
  "$nexcage" --root "$work/nx" template prune --all >/dev/null
  /usr/bin/time -f %M -o "$work/rss" \
    "$nexcage" --root "$work/nx" --debug create --bundle . "c$i" 2>"$work/conv.log" >/dev/null &
  tpid=$!
  hwm=0
  while kill -0 "$tpid" 2>/dev/null; do
    for p in $(pgrep -P "$tpid" 2>/dev/null || true); do
      v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true)
      [ -n "$v" ] && [ "$v" -gt "$hwm" ] && hwm=$v
    done
    sleep 0.02
  done
  wait "$tpid"
  "$nexcage" --root "$work/nx" delete "c$i"
  sed -n 's/.*msg="converted rootfs to template .* seconds=\([0-9.e-]*\)".*/\1/p' "$work/conv.log" >> "$work/conv"
  cat "$work/rss" >> "$work/conv-rss"
  echo "$hwm" >> "$work/conv-hwm"
  # Right after each conversion, as the hit is paired with find above, so
  # that both see the same page cache and the same load. zstd writes to
  # /dev/null: no file, no fsync, which the conversion pays for.
  start=$(now)
  tar -C "$debian_rootfs" -cf - . | /usr/bin/time -f %M -o "$work/rss" zstd -q -T0 -3 >/dev/null
  echo $(( ($(now) - start) / 1000 )) | awk '{ print $1 / 1000000 }' >> "$work/zstd"
  cat "$work/rss" >> "$work/zstd-rss"
done
[ "$(wc -l < "$work/conv")" -eq "$n" ] || {
  echo "bench: not every create converted:" >&2
  cat "$work/conv.log" >&2
  exit 1
}
conv_s=$(median %.3f < "$work/conv")
zstd_s=$(median %.3f < "$work/zstd")
conv_mbs=$(awk -v b="$tar_bytes" -v s="$conv_s" 'BEGIN { printf "%.1f\n", b / s / 1e6 }')
zstd_mbs=$(awk -v b="$tar_bytes" -v s="$zstd_s" 'BEGIN { printf "%.1f\n", b / s / 1e6 }')
r=$(ratio "$conv_mbs" "$zstd_mbs")
conv_rss=$(median %.0f < "$work/conv-rss")
conv_hwm=$(median %.0f < "$work/conv-hwm")
zstd_rss=$(median %.0f < "$work/zstd-rss")
hit_rss=$(median %.0f < "$work/hit-rss")
printf '%-40s %10s MB/s (%s bytes of tar in %ss)\n' "debian: nexcage conversion" "$conv_mbs" "$tar_bytes" "$conv_s"
printf '%-40s %10s MB/s (%ss)\n' "debian: tar | zstd -T0 -3" "$zstd_mbs" "$zstd_s"
echo "debian: ratio conversion/zstd: $r"
printf '%-40s %10s kB vs zstd %s kB (nexcage alone: %s kB; a create that hits: %s kB)\n' \
  "debian: conversion peak RSS" "$conv_rss" "$zstd_rss" "$conv_hwm" "$hit_rss"
row "conversion throughput (MB/s)" "$conv_mbs" "$zstd_mbs" "$r" "r >= 1.0" ">= 1.0x"
# Issue 12 asks for "far below" zstd's (it was 5.6 vs 74 MB single-threaded);
# half is this script's reading of that.
row "conversion peak RSS (kB)" "$conv_rss" "$zstd_rss" "$(ratio "$conv_rss" "$zstd_rss")" "r <= 0.5" "far below (read <= 0.5x)"

# The same comparison as podman's users see it.
clients_install
clients_setup "$nexcage"
DEBIAN_IMAGE=localhost/nexcage-debian:latest
clients_image "$repo/target/fixtures/rootfs"
clients_image "$debian_rootfs" "$DEBIAN_IMAGE"
podman_loop() { # runtime, image, podman run options...
  local i start rt=$1 image=$2
  shift 2
  for i in $(seq 1 "$n"); do
    start=$(now)
    podman_any --runtime "$rt" run --rm "$@" "$image" true >/dev/null
    echo $(( ($(now) - start) / 1000 ))
  done | awk '{ print $1 / 1000 }' | median
}
for img in busybox debian; do
  image=$IMAGE target=1.5
  [ "$img" = debian ] && image=$DEBIAN_IMAGE target=2.0
  podman_runc_ms=$(podman_loop runc "$image")
  printf '%-40s %10s ms\n' "$img: podman run --rm (runc)" "$podman_runc_ms"
  for mode in template bundle clone; do
    podman_any --runtime nexcage run --rm --annotation "org.proxmox.root=$mode" "$image" true >/dev/null   # converts once
    podman_nx_ms=$(podman_loop nexcage "$image" --annotation "org.proxmox.root=$mode")
    r=$(ratio "$podman_nx_ms" "$podman_runc_ms")
    printf '%-40s %10s ms\n' "$img: podman run --rm (nexcage, $mode)" "$podman_nx_ms"
    echo "$img: ratio podman nexcage/runc, $mode: $r"
    row "podman run $img, $mode (ms)" "$podman_nx_ms" "$podman_runc_ms" "$r" "r <= $target" "<= ${target}x"
  done
done

echo
echo "issue 12 figures on this machine ($(nproc) cores, simulated node, $n iterations, medians):"
printf '%-40s %12s %12s %7s  %-26s %s\n' "figure" "nexcage" "reference" "ratio" "target" "met"
printf '%s\n' "${rows[@]}"
echo "reference: runc for run/podman, find -printf for the hit, tar | zstd -T0 -3 for conversion"
