#!/bin/sh
# watchdog.sh: a dependency-light vLLM stall watchdog (POSIX sh, curl, awk).
#
# For hosts where `repro watch` cannot be installed. It reads /metrics only (the log goes
# silent in a stall, and /health stays 200): the engine is stalled when
# vllm:num_requests_running > 0 while vllm:prompt_tokens_total and
# vllm:generation_tokens_total stay flat for --window seconds. Then, optionally, it takes a
# `py-spy dump` of EngineCore and the Workers (evidence for upstream), and restarts the
# server with `docker restart NAME` or a restart command.
#
# What it cannot see: a stall that strikes on the step right after one that finished every
# request leaves the gauge frozen at running=0, which /metrics cannot tell from an idle server.
# `repro watch --probe` tells them apart with a 1-token request that is never answered.
#
# Usage:
#   watchdog.sh --url http://127.0.0.1:8000 --container vllm [--pyspy --dump-dir DIR]
#   watchdog.sh --url http://127.0.0.1:8000 --pid 1234 --restart-cmd 'systemctl restart vllm' --pyspy
#
# Options:
#   --url URL            the server (default http://127.0.0.1:8000)
#   --interval S         seconds between /metrics polls (default 10)
#   --window S           seconds of running > 0 with flat token counters that make a stall (default 180)
#   --container NAME     restart with `docker restart NAME`; py-spy finds the processes in it
#   --restart-cmd CMD    restart with `sh -c CMD` (compose, systemd, ...); overrides docker restart
#   --pid PID            the server's root process on this host (for --pyspy without --container)
#   --pyspy              dump the stacks of EngineCore and Workers before restarting
#   --pyspy-cmd CMD      how to run py-spy (default: py-spy)
#   --dump-dir DIR       where dumps go (default .)
#   --startup-grace S    after a restart, how long the server may take to answer /health (default 600)
#   --backoff S          wait before a restart after the first one; doubles up to 300 s,
#                        resets after 600 healthy seconds (default 10)
#   --max-restarts N     give up (exit 1) after N restarts within an hour (default 5)
#   --once               exit 1 after the first stall (after dump and restart, if configured)
#   --duration S         stop watching after S seconds (exit 0 if no stall)
#
# Exit codes (the same as repro): 0 no stall, 1 stall (with --once) or gave up after
# --max-restarts, 2 usage error, 3 the server could not be reached or restarted, 130 interrupted.

EXIT_OK=0
EXIT_STALL=1
EXIT_USAGE=2
EXIT_TARGET=3
EXIT_INTERRUPTED=130

URL=http://127.0.0.1:8000
INTERVAL=10
WINDOW=180
CONTAINER=
RESTART_CMD=
ROOT_PID=
PYSPY=0
PYSPY_CMD=py-spy
DUMP_DIR=.
GRACE=600
BACKOFF0=10
BACKOFF_MAX=300
RESET_AFTER=600
MAX_RESTARTS=5
ONCE=0
DURATION=

log() { printf '%s watchdog: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2; }
die() { code=$1; shift; printf 'error: %s\n' "$*" >&2; exit "$code"; }
need_value() { [ $# -ge 2 ] || die $EXIT_USAGE "$1 needs a value"; }
is_number() { case $1 in ''|*[!0-9.]*|*.*.*) return 1 ;; *) return 0 ;; esac; }

while [ $# -gt 0 ]; do
    case $1 in
        --url) need_value "$@"; URL=$2; shift ;;
        --interval) need_value "$@"; INTERVAL=$2; shift ;;
        --window) need_value "$@"; WINDOW=$2; shift ;;
        --container) need_value "$@"; CONTAINER=$2; shift ;;
        --restart-cmd) need_value "$@"; RESTART_CMD=$2; shift ;;
        --pid) need_value "$@"; ROOT_PID=$2; shift ;;
        --pyspy) PYSPY=1 ;;
        --pyspy-cmd) need_value "$@"; PYSPY_CMD=$2; shift ;;
        --dump-dir) need_value "$@"; DUMP_DIR=$2; shift ;;
        --startup-grace) need_value "$@"; GRACE=$2; shift ;;
        --backoff) need_value "$@"; BACKOFF0=$2; shift ;;
        --max-restarts) need_value "$@"; MAX_RESTARTS=$2; shift ;;
        --once) ONCE=1 ;;
        --duration) need_value "$@"; DURATION=$2; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit $EXIT_OK ;;
        *) die $EXIT_USAGE "unknown option $1 (see --help)" ;;
    esac
    shift
done

for pair in "--interval:$INTERVAL" "--window:$WINDOW" "--startup-grace:$GRACE" "--backoff:$BACKOFF0" \
            "--max-restarts:$MAX_RESTARTS" ${DURATION:+"--duration:$DURATION"} ${ROOT_PID:+"--pid:$ROOT_PID"}; do
    is_number "${pair#*:}" || die $EXIT_USAGE "${pair%%:*} must be a number, got '${pair#*:}'"
done
command -v curl >/dev/null 2>&1 || die $EXIT_USAGE "curl is not installed"
command -v awk >/dev/null 2>&1 || die $EXIT_USAGE "awk is not installed"
URL=${URL%/}

now() { date +%s; }
# Whole seconds elapsed a..b compared with a possibly fractional limit: "1" when b - a >= limit.
elapsed_ge() { awk -v a="$1" -v b="$2" -v l="$3" 'BEGIN { print ((b - a) >= l) ? 1 : 0 }'; }

# One poll of /metrics -> "running prompt_tokens generation_tokens" (sums over engines),
# non-zero exit when the server does not answer or the page has no vLLM metrics.
poll() {
    curl -fsS --max-time 5 "$URL/metrics" 2>/dev/null | awk '
        /^#/ { next }
        {
            name = $1; sub(/\{.*/, "", name)
            if (name == "vllm:num_requests_running") { run += $NF; seen = 1 }
            else if (name == "vllm:prompt_tokens_total") { prompt += $NF }
            else if (name == "vllm:generation_tokens_total") { gen += $NF }
        }
        END { if (!seen) exit 1; printf "%d %.0f %.0f\n", run, prompt, gen }'
}

healthy() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$URL/health" 2>/dev/null)" = 200 ]; }

# The host pids of the server's vLLM processes (EngineCore first, then Workers), found in the
# process tree below the server's root: never by name across the host.
server_root() {
    if [ -n "$ROOT_PID" ]; then
        echo "$ROOT_PID"
    elif [ -n "$CONTAINER" ]; then
        docker inspect -f '{{.State.Pid}}' "$CONTAINER" 2>/dev/null
    fi
}

engine_pids() {
    root=$1
    ps -eo pid=,ppid=,args= | awk -v root="$root" '
        { pid = $1; ppid[pid] = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); args[pid] = $0; order[++n] = pid }
        END {
            inside[root] = 1
            for (changed = 1; changed; ) {
                changed = 0
                for (i = 1; i <= n; i++) { p = order[i]; if (!(p in inside) && (ppid[p] in inside)) { inside[p] = 1; changed = 1 } }
            }
            for (i = 1; i <= n; i++) { p = order[i]; if ((p in inside) && args[p] ~ /^VLLM::EngineCore/) print p, args[p] }
            for (i = 1; i <= n; i++) { p = order[i]; if ((p in inside) && args[p] ~ /^VLLM::Worker/) print p, args[p] }
        }'
}

dump_stacks() {
    root=$(server_root)
    if [ -z "$root" ] || [ "$root" = 0 ]; then
        log "py-spy: no server process to dump (give --pid or --container)"
        return
    fi
    mkdir -p "$DUMP_DIR" || { log "py-spy: cannot create $DUMP_DIR"; return; }
    stamp=$(date -u +%Y%m%dT%H%M%SZ)
    found=0
    engine_pids "$root" > "$DUMP_DIR/.watchdog-pids.$$"
    while read -r pid title; do
        found=1
        label=$(printf '%s' "$title" | awk '{ sub(/^VLLM::/, "", $1); gsub(/[^A-Za-z0-9_]/, "_", $1); print $1 }')
        out="$DUMP_DIR/pyspy-$stamp-$label-$pid.txt"
        # py-spy has been seen to hang on a stuck target: a hard timeout.
        if command -v timeout >/dev/null 2>&1; then
            timeout -s KILL 30 $PYSPY_CMD dump --pid "$pid" > "$out" 2>&1
        else
            $PYSPY_CMD dump --pid "$pid" > "$out" 2>&1
        fi
        rc=$?
        if [ $rc -eq 0 ]; then
            log "py-spy: stacks of $title (pid $pid) in $out"
        else
            log "py-spy: dump of $title (pid $pid) failed (exit $rc; in Docker it needs --cap-add SYS_PTRACE), see $out"
        fi
    done < "$DUMP_DIR/.watchdog-pids.$$"
    rm -f "$DUMP_DIR/.watchdog-pids.$$"
    [ $found = 1 ] || log "py-spy: no VLLM::EngineCore or VLLM::Worker below pid $root"
}

restart() {
    if [ -n "$RESTART_CMD" ]; then
        log "restarting: sh -c '$RESTART_CMD'"
        sh -c "$RESTART_CMD" || die $EXIT_TARGET "the restart command failed (exit $?): $RESTART_CMD"
    elif [ -n "$CONTAINER" ]; then
        log "restarting: docker restart $CONTAINER"
        docker restart "$CONTAINER" >/dev/null || die $EXIT_TARGET "docker restart $CONTAINER failed"
    else
        log "no --container or --restart-cmd: not restarting"
        return 1
    fi
}

wait_healthy() {
    start=$(now)
    while :; do
        if healthy && poll >/dev/null; then
            log "server answers again after $(( $(now) - start )) s"
            return 0
        fi
        [ "$(elapsed_ge "$start" "$(now)" "$GRACE")" = 1 ] && return 1
        sleep 1
    done
}

trap 'log "interrupted"; exit $EXIT_INTERRUPTED' INT TERM

# Bad input first, before anything is touched.
if [ -n "$CONTAINER" ] && [ -z "$RESTART_CMD" ]; then
    command -v docker >/dev/null 2>&1 || die $EXIT_USAGE "--container needs the docker command"
    status=$(docker inspect --type container -f '{{.State.Status}}' "$CONTAINER" 2>&1) \
        || die $EXIT_TARGET "--container $CONTAINER: docker inspect failed: $(printf '%s\n' "$status" | tail -n 1)"
    status=$(printf '%s\n' "$status" | tail -n 1)
    [ "$status" = running ] || die $EXIT_TARGET "--container $CONTAINER is not running (status: $status): start it first"
fi
if [ -n "$ROOT_PID" ] && ! kill -0 "$ROOT_PID" 2>/dev/null; then
    die $EXIT_TARGET "no such process: --pid $ROOT_PID"
fi
if [ $PYSPY = 1 ] && ! command -v "${PYSPY_CMD%% *}" >/dev/null 2>&1; then
    die $EXIT_USAGE "--pyspy: '$PYSPY_CMD' not found (install py-spy or pass --pyspy-cmd)"
fi
sample=$(poll) || die $EXIT_TARGET "cannot read vLLM metrics from $URL/metrics (is the server up and is this its URL?)"

log "watching $URL every ${INTERVAL}s: a stall is running > 0 with flat token counters for ${WINDOW}s"
started=$(now)
bad_since=
last_tokens=
restarts=""           # times of the restarts within the last hour
backoff=$BACKOFF0
healthy_since=$started

while :; do
    t=$(now)
    if [ -n "$DURATION" ] && [ "$(elapsed_ge "$started" "$t" "$DURATION")" = 1 ]; then
        log "no stall in ${DURATION}s"
        exit $EXIT_OK
    fi
    if sample=$(poll); then
        set -- $sample
        running=$1; tokens="$2 $3"
        if [ "$running" -gt 0 ] && [ "$tokens" = "$last_tokens" ]; then
            [ -n "$bad_since" ] || { bad_since=$t; log "suspect: running=$running, tokens flat at $tokens"; }
        else
            [ -n "$bad_since" ] && log "progress again (running=$running, tokens $tokens)"
            bad_since=
        fi
        last_tokens=$tokens
        reason="running=$running with prompt/generation tokens flat at $tokens"
    else
        # Down or not answering: the same window applies before a restart.
        [ -n "$bad_since" ] || { bad_since=$t; log "suspect: $URL/metrics does not answer"; }
        last_tokens=
        reason="$URL/metrics has not answered"
    fi
    [ -z "$bad_since" ] && [ "$(elapsed_ge "$healthy_since" "$t" "$RESET_AFTER")" = 1 ] && backoff=$BACKOFF0
    if [ -n "$bad_since" ] && [ "$(elapsed_ge "$bad_since" "$t" "$WINDOW")" = 1 ]; then
        log "STALL: $reason for $(( t - bad_since )) s"
        [ $PYSPY = 1 ] && dump_stacks
        if [ -z "$RESTART_CMD" ] && [ -z "$CONTAINER" ]; then
            exit $EXIT_STALL
        fi
        # Restarts within the last hour; give up when there were already --max-restarts.
        recent=""; n=0
        for r in $restarts; do
            if [ $(( t - r )) -lt 3600 ]; then recent="$recent $r"; n=$((n + 1)); fi
        done
        restarts=$recent
        if [ "$n" -ge "$MAX_RESTARTS" ]; then
            die $EXIT_STALL "giving up: $n restarts in the last hour (--max-restarts $MAX_RESTARTS) and the server stalls again"
        fi
        if [ "$n" -gt 0 ]; then
            log "back-off: waiting ${backoff}s before restart $((n + 1))"
            sleep "$backoff"
            backoff=$(awk -v b="$backoff" -v m="$BACKOFF_MAX" 'BEGIN { b *= 2; print (b > m) ? m : b }')
        fi
        restart
        restarts="$restarts $(now)"
        if ! wait_healthy; then
            log "the server did not answer within ${GRACE}s of the restart"
        fi
        bad_since=
        last_tokens=
        healthy_since=$(now)
        [ $ONCE = 1 ] && exit $EXIT_STALL
        continue
    fi
    [ -n "$bad_since" ] && healthy_since=$t
    sleep "$INTERVAL"
done
