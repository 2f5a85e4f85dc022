#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
# Needs root (real LXC containers); installs what it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo build"
cargo build --workspace -q
echo "== cargo test"
cargo test --workspace -q 2>&1 | tee target/cargo-test.log
echo "== scripts/integration.sh on the simulated node"
scripts/with-sim scripts/integration.sh
echo "== scripts/clients.sh: podman and containerd through nexcage on the simulated node"
scripts/clients.sh
echo "== scripts/cri.sh: Kubernetes pods through containerd's CRI, handler nexcage, on the simulated node"
scripts/cri.sh
