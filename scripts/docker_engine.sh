#!/usr/bin/env bash
# A Docker engine for the container tests: start one when none answers, stop only the one this started.
#
#   usage: scripts/docker_engine.sh start STATE_FILE    (prints what it did; exit 1 when no engine can run)
#          scripts/docker_engine.sh stop STATE_FILE     (stops the engine `start` recorded in STATE_FILE, if any)
#
# start: when `docker version` already reaches an engine, nothing is started. Otherwise Debian's docker.io is
# installed (apt-get, serialized by /tmp/apt.lock) if dockerd is missing, dockerd is started as root in the
# background (log: STATE_FILE.dockerd.log; images stay in /var/lib/docker, so a later run finds them) and its
# pid is written to STATE_FILE. The storage driver is overlay2; where the kernel refuses overlay mounts, dockerd
# is started again with the vfs driver (slower, more disk), and this says so.
# stop: SIGTERM to that pid (dockerd stops its containerd with it), SIGKILL after 30 s; an engine this did not
# start is never touched.
set -euo pipefail
ACTION=${1:?usage: docker_engine.sh start|stop STATE_FILE}
STATE=${2:?usage: docker_engine.sh start|stop STATE_FILE}
LOG="$STATE.dockerd.log"

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

wait_answer() {  # pid, seconds
    local i
    for i in $(seq "$2"); do
        answers && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

start_dockerd() {  # extra dockerd flags...
    : > "$LOG"
    # DOCKERD_NICE (default 0): what the engine runs inherits it (.ci/run builds images in the background at 15, so
    # that the builds take only idle CPU from the tests that time a real vLLM, then sets the engine back to 0)
    nohup nice -n "${DOCKERD_NICE:-0}" dockerd "$@" >>"$LOG" 2>&1 </dev/null &
    echo $!
}

case $ACTION in
    start)
        : > "$STATE"
        if command -v docker >/dev/null 2>&1 && answers; then
            echo "docker engine: already running ($(docker version --format '{{.Server.Version}}')), not started here"
            exit 0
        fi
        [ "$(id -u)" = 0 ] || { echo "docker engine: none answers, and starting one needs root" >&2; exit 1; }
        if ! command -v dockerd >/dev/null 2>&1; then
            echo "docker engine: installing Debian's docker.io ..."
            flock /tmp/apt.lock env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null \
                || { echo "docker engine: apt-get install docker.io failed" >&2; exit 1; }
        fi
        pid=$(start_dockerd)
        if ! wait_answer "$pid" 60; then
            if grep -qi 'overlay' "$LOG"; then
                kill "$pid" 2>/dev/null || true
                wait "$pid" 2>/dev/null || true
                echo "docker engine: overlay2 failed ($(grep -i overlay "$LOG" | tail -n 1 | cut -c1-200)); using vfs"
                pid=$(start_dockerd --storage-driver vfs)
                wait_answer "$pid" 60 || { tail -n 20 "$LOG" >&2; echo "docker engine: dockerd did not start" >&2; exit 1; }
            else
                tail -n 20 "$LOG" >&2
                kill "$pid" 2>/dev/null || true
                echo "docker engine: dockerd did not answer within 60 s (log: $LOG)" >&2
                exit 1
            fi
        fi
        echo "$pid" > "$STATE"
        echo "docker engine: started dockerd $(docker version --format '{{.Server.Version}}') (pid $pid," \
             "storage $(docker info --format '{{.Driver}}'), log $LOG)"
        ;;
    stop)
        pid=$(cat "$STATE" 2>/dev/null || true)
        [ -n "$pid" ] || exit 0
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            echo "docker engine: stopped the dockerd started for this run (pid $pid)"
        fi
        : > "$STATE"
        ;;
    *) echo "usage: docker_engine.sh start|stop STATE_FILE" >&2; exit 2 ;;
esac
