#!/usr/bin/env bash
# Benchmarks arroyod on the queries of the shared benchmark kit (../shared/bench): each query
# reads the kit's JSON-lines bids file into a blackhole sink through `arroyod run`, and the kit
# prints one JSON line per run (events per second, events per CPU-second, peak RSS), then a
# table of them.
#
# Usage: bench/run.sh [N] [QUERY...]
#   N       rows of the input file (default 1000000; the kit makes bids_<N>.jsonl once)
#   QUERY   kit queries (default: q0_passthrough q1_projection q2_filter qt_tumble_count
#           qh_hop_count q5_hot_items)
# Environment:
#   BENCH_KIT   the kit's directory (default: ../shared/bench beside the repository)
#   SOURCE=nexmark  read the bids from arroyod's nexmark generator (bench/nexmark_src.sql: N
#               events, 92 % bids) instead of the kit's JSON file
#   COMPARE=1   compare with Flink: runs the kit's compare.sh instead (Flink set up with its
#               setup_flink.sh, or FLINK_RESULTS=<kit>/baseline/flink-10000000.jsonl to reuse
#               the stored Flink figures for N=10000000)
#   plus what the kit reads: PARALLELISM, BENCH_CACHE, TIMEOUT, ...
# Builds the release binary first (a long first build: DataFusion).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=${BENCH_KIT:-$root/../shared/bench}
[ -d "$kit" ] || { echo "error: no benchmark kit at $kit (set BENCH_KIT)" >&2; exit 2; }
n=${1:-1000000}
[ $# -gt 0 ] && shift
queries=("$@")
[ ${#queries[@]} -gt 0 ] || queries=(q0_passthrough q1_projection q2_filter qt_tumble_count qh_hop_count q5_hot_items)

cargo build --release -p arroyod --manifest-path "$root/Cargo.toml" >&2
target=${CARGO_TARGET_DIR:-$root/target}
export ARROYOD=${ARROYOD:-$target/release/arroyod}

if [ "${COMPARE:-0}" = 1 ]; then
  exec "$kit/compare.sh" "$n" "${queries[@]}"
fi

results=$(mktemp -t arroyod-bench-XXXXXX.jsonl)
status=0
for q in "${queries[@]}"; do
  if [ "${SOURCE:-file}" = nexmark ]; then
    work=${BENCH_CACHE:-$HOME/.cache/arroyod-bench}/run
    mkdir -p "$work"
    python3 "$kit/run_arroyod.py" --binary "$ARROYOD" --query "$kit/arroyo_sql/$q.sql" \
      --src "$root/bench/nexmark_src.sql" --input /dev/null --rows "$n" \
      --parallelism "${PARALLELISM:-1}" --work-dir "$work" | tee -a "$results" || status=1
  else
    "$kit/arroyod.sh" "$q" "$n" | tee -a "$results" || status=1
  fi
done
python3 "$kit/summarize.py" "$results"
echo "results: $results" >&2
exit $status
