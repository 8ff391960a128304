#!/usr/bin/env bash
# Correctness of the benchmark queries: runs the kit's check_arroyod.sh (windowed results of
# arroyod against Flink's reference on the 1M-row input) with the release binary.
# Usage: bench/check.sh [N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=${BENCH_KIT:-$root/../shared/bench}
cargo build --release -p arroyod --manifest-path "$root/Cargo.toml" >&2
export ARROYOD=${ARROYOD:-${CARGO_TARGET_DIR:-$root/target}/release/arroyod}
exec "$kit/check_arroyod.sh" "$@"
