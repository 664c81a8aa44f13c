#!/usr/bin/env bash
# The client benchmark of BENCHMARKS.md ("repro stress: client capacity, like for like"), as recorded there:
# repro stress, `vllm bench serve` and the bare aiohttp loop at concurrency 256 against a fresh
# benchmarks/fast_endpoint.py each, every request writing a 128 KiB hidden-state file, three rounds
# interleaved, 20 s windows. Run from a checkout with the venv built (scripts/install_vllm_cpu.sh) and the
# tiny Llama tokenizer in ~/.cache/repro/tiny-llama-v1 (tests/integration fetches it). It takes the shared
# vLLM lock (so no CPU vLLM server runs beside it) and prints the load average before and after.
#
#   bash benchmarks/run_client_bench.sh [OUT_DIR]     # default /dev/shm/repro-client-bench
#   ROUNDS=1 WINDOW=3 WARM=1 bash benchmarks/run_client_bench.sh   # a quick check that it runs (not a figure)
#
# Prints one JSON line per measurement, then the side-by-side table and the medians; writes OUT_DIR/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
OUT=${1:-/dev/shm/repro-client-bench}
LOCK=${REPRO_BENCH_LOCK:-/tmp/vllm-cpu.lock}
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')  python: $PY"
exec flock -w 1800 "$LOCK" bash -c '
  date -u; echo "load before: $(uptime)"
  env PYTHONPATH="$PWD" "$0" benchmarks/stress_client_bench.py --only capacity --out "$1" --warm "${WARM:-5}" --window "${WINDOW:-20}" --rounds "${ROUNDS:-3}"
  rc=$?
  date -u; echo "load after: $(uptime)"
  rm -rf "$1"/*-c256-files
  exit $rc' "$PY" "$OUT"
