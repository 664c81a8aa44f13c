#!/bin/sh
# Minimal reproducer from `repro bisect`: concurrency 1, storage=/mnt/nfs/hs.
# It hung 1 times in 3h12m44s of load (rate 0.3113/h, 95% CI [0.0079, 1.1484]); the load below runs 16h03m41s (5x the mean time to hang) unless it stalls first.
# Needs: vLLM (`vllm` on PATH) and Python 3 with aiohttp. Exit 1: stall reproduced, 0: no stall.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${PORT:-8000}
export VLLM_LOG_STATS_INTERVAL=${VLLM_LOG_STATS_INTERVAL:-1}
setsid vllm serve "$MODEL"  # (simulated search: no command) > vllm_server.log 2>&1 &
SERVER=$!
trap 'kill -TERM -- -$SERVER 2>/dev/null; sleep 3; kill -KILL -- -$SERVER 2>/dev/null' EXIT INT TERM
echo "waiting for vLLM on port $PORT (log: vllm_server.log) ..."
i=0
until python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PORT/v1/models', timeout=2)" 2>/dev/null; do
  i=$((i+1)); if [ $i -gt 600 ] || ! kill -0 $SERVER 2>/dev/null; then echo 'vLLM did not start' >&2; exit 3; fi
  sleep 1
done
python3 "$HERE/repro_min.py" --url "http://127.0.0.1:$PORT" --concurrency 1 --duration 57821 "$@"
rc=$?
exit $rc
