#!/usr/bin/env bash
# Records the run directories under tests/unit/data/report-runs/ from a REAL vLLM on CPU (needs the vLLM lock):
#   flock /tmp/vllm-cpu.lock bash tests/unit/data/report-runs/record.sh /tmp/report-runs
# 1. stress-stall: `repro stress` launches its server with --inject stall-after=30 (the real scheduler blocks
#    for good 30 s into the load), calls it engine-stall after the 20 s window and captures bundle-001.
# 2. watch: `repro watch --serve --probe` owns a second server; `repro stress --url` loads it for 20 s
#    (stress-clean: a clean run), then again while the fault control file stalls the scheduler: the watch
#    detects the stall, captures, stops the server, and (released) restarts it; a short load after the
#    restart shows the recovery; SIGTERM ends the watch.
# Then copy OUT/{stress-clean,stress-stall,watch} here without server logs, bundles and reports (README.md).
set -euo pipefail
OUT=${1:?usage: record.sh OUT_DIR}
PY=${PYTHON:-python}
mkdir -p "$OUT"
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STORE="/dev/shm/repro-report-fixture-$$"
trap 'rm -rf "$STORE" "$STORE-stall"' EXIT

"$PY" -m repro stress --port "$(free_port)" --storage "$STORE-stall" --inject stall-after=30 --concurrency 16 \
    --duration 300 --prompt-len 16-256 --window 20 --startup-grace 0 --samples 2 --out "$OUT/stress-stall" \
    2> "$OUT/stress-stall.stderr" || echo "stress-stall exited $?"

PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
CTL="$OUT/inject.control"
: > "$CTL"
events() { cat "$OUT/watch/events.jsonl" 2>/dev/null || true; }
wait_event() {  # KIND COUNT
    for _ in $(seq 1 1200); do
        [ "$(events | grep -c "\"event\": \"$1\"" || true)" -ge "$2" ] && return 0
        kill -0 "$WPID" 2>/dev/null || { echo "watch exited before $1" >&2; exit 1; }
        sleep 0.5
    done
    echo "no $1 event" >&2; exit 1
}
"$PY" -m repro watch --serve --port "$PORT" --storage "$STORE" --inject-control "$CTL" --out "$OUT/watch" \
    --poll-interval 0.5 --window 6 --min-bad 3 --startup-grace 0 --probe --probe-interval 1 --probe-timeout 3 \
    --capture-samples 2 --capture-interval 1 --no-collect-env --capture-budget 60 --max-restarts 2 \
    --startup-timeout 500 2> "$OUT/watch.stderr" &
WPID=$!
wait_event healthy 1
STRESS=(--url "$URL" --storage-path "$STORE" --concurrency 8 --prompt-len 128-512)
"$PY" -m repro stress "${STRESS[@]}" --duration 20 --window 60 --out "$OUT/stress-clean" 2> "$OUT/stress-clean.stderr"
"$PY" -m repro stress "${STRESS[@]}" --duration 60 --window 60 --on-stall exit --out "$OUT/load-during-stall" \
    2> "$OUT/load-during-stall.stderr" &
SPID=$!
sleep 8
echo "stall-after=0" > "$CTL"
wait_event stop 1
echo release > "$CTL"
wait "$SPID" || echo "load-during-stall exited $?"
wait_event healthy 2
"$PY" -m repro stress "${STRESS[@]}" --duration 15 --window 60 --out "$OUT/load-after" 2> "$OUT/load-after.stderr"
sleep 3
kill -TERM "$WPID"
wait "$WPID" || echo "watch exited $?"
echo "recorded into $OUT"
