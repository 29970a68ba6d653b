#!/usr/bin/env bash
# Time a worker command from process spawn until a graphile-worker jobs table is empty.
#
# An outside check of `kongtask bench --scenario drain-from-spawn`, written
# with nothing but bash, psql, /proc and date (no kongtask code), so anyone can
# measure the same thing a second way and compare.
#
#   spawn_to_empty.sh -d DSN -s SCHEMA [-n JOBS] [-p POLL_MS] [-t TIMEOUT_S] -- COMMAND [ARG...]
#
#   -d DSN      the database (a password belongs in PGPASSWORD, not here)
#   -s SCHEMA   the queue's schema, already migrated (graphile-worker 0.17 layout)
#   -n JOBS     first empty the table and queue JOBS no-op jobs (task bench_noop,
#               payload {"i": 1..JOBS}), then VACUUM ANALYZE and CHECKPOINT;
#               without -n the table is used as it is
#   -p POLL_MS  how often count(*) is polled (default 100)
#   -t TIMEOUT  give up after this many seconds (default 900)
#
# The command is started in the background; from just before that moment
# until count(*) reads 0 is the time. Then the worker's CPU (utime + stime)
# and the server's CPU (postmaster utime + stime + cutime + cstime, plus its
# live children's utime + stime: the CPU of backends that exited is in the
# postmaster's cutime/cstime) are read from /proc, the worker gets SIGTERM,
# and the script waits for it (60 s) and counts what is left. The server's
# CPU needs the server on this machine and its data directory readable.
#
# Output: one JSON line on stdout. Exit code 0 when the worker drained the
# queue and exited with 0, 1 otherwise, 2 for bad usage.
set -euo pipefail

usage() { sed -n '4,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

DSN="" SCHEMA="" JOBS="" POLL_MS=100 TIMEOUT_S=900
while getopts "d:s:n:p:t:h" opt; do
  case "$opt" in
    d) DSN=$OPTARG ;;
    s) SCHEMA=$OPTARG ;;
    n) JOBS=$OPTARG ;;
    p) POLL_MS=$OPTARG ;;
    t) TIMEOUT_S=$OPTARG ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ ${1-} == "--" ]] && shift
[[ -n $DSN && -n $SCHEMA && $# -gt 0 ]] || usage
[[ $POLL_MS =~ ^[1-9][0-9]*$ && $TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || usage
[[ -z $JOBS || $JOBS =~ ^[1-9][0-9]*$ ]] || usage

TABLE="\"${SCHEMA//\"/\"\"}\"._private_jobs"
TICKS=$(getconf CLK_TCK 2>/dev/null || echo 100)
psql_one() { psql -XAtq -v ON_ERROR_STOP=1 "$DSN" -c "$1"; }
log() { printf '[spawn_to_empty] %s\n' "$*" >&2; }

# utime+stime (and with a second argument, + cutime+cstime) of a pid, in ticks;
# empty when the process is gone. The name in /proc/PID/stat may hold spaces,
# so the fields are taken after its closing bracket.
cpu_ticks() {
  local line f
  read -r line 2>/dev/null < "/proc/$1/stat" || return 0
  read -ra f <<< "${line##*) }"
  if [[ -n ${2-} ]]; then
    echo $((f[11] + f[12] + f[13] + f[14]))
  else
    echo $((f[11] + f[12]))
  fi
}

children_of() {
  local kids="" stat line f
  if [[ -r /proc/$1/task/$1/children ]]; then
    read -r kids < "/proc/$1/task/$1/children" || true  # no newline at its end
    echo "$kids"
    return
  fi
  for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null < "$stat" || continue
    read -ra f <<< "${line##*) }"
    [[ ${f[1]} == "$1" ]] && kids+="${stat//[!0-9]/} "
  done
  echo "$kids"
}

POSTMASTER=""
server_ticks() {
  [[ -n $POSTMASTER ]] || return 0
  local total=0 kid t
  for kid in $(children_of "$POSTMASTER"); do
    t=$(cpu_ticks "$kid")
    total=$((total + ${t:-0}))
  done
  t=$(cpu_ticks "$POSTMASTER" reaped)
  if [[ -n $t ]]; then echo $((total + t)); fi
}

# The postmaster, if this machine runs the server: postmaster.pid in its data
# directory, checked against the port it answers on.
if datadir=$(psql_one "show data_directory" 2>/dev/null) \
    && port=$(psql_one "show port") \
    && mapfile -t pidfile 2>/dev/null < "$datadir/postmaster.pid" \
    && [[ ${pidfile[1]-} == "$datadir" && ${pidfile[3]-} == "$port" && -r /proc/${pidfile[0]}/stat ]]; then
  POSTMASTER=${pidfile[0]}
else
  log "server CPU not measured: the server is not local or its data directory is not readable"
fi

if [[ -n $JOBS ]]; then
  log "queueing $JOBS jobs in $SCHEMA"
  SPEC="\"${SCHEMA//\"/\"\"}\".job_spec"
  ADD="\"${SCHEMA//\"/\"\"}\".add_jobs"
  psql_one "truncate $TABLE" >/dev/null
  psql_one "select count(*) from $ADD(array(select json_populate_record(null::$SPEC,
              json_build_object('identifier', 'bench_noop', 'payload', json_build_object('i', g)))
            from generate_series(1, $JOBS) g))" >/dev/null
  psql_one "vacuum analyze $TABLE" >/dev/null
  psql_one "checkpoint" >/dev/null 2>&1 || log "CHECKPOINT not permitted; skipped"
fi
QUEUED=$(psql_one "select count(*) from $TABLE")

# One long-lived psql answers the polls: a new connection (and a psql process)
# every 100 ms would itself cost the machine more than the polling does.
coproc POLL { exec psql -XAtq "$DSN" 2>&1; }
exec {NAP}<> <(:)   # read -t on this fd is a sleep without forking a process

pg0=$(server_ticks)
t0=$(date +%s%N)
"$@" >&2 &   # its output is not this script's: stdout carries only the result
WORKER=$!
deadline=$(( ${t0} + TIMEOUT_S * 1000000000 ))
nap=$(printf '%d.%03d' $((POLL_MS / 1000)) $((POLL_MS % 1000)))
polls=0
while :; do
  read -rt "$nap" -u "$NAP" _ || true
  polls=$((polls + 1))
  if ! kill -0 "$WORKER" 2>/dev/null; then
    wait "$WORKER" && code=0 || code=$?
    log "worker exited (code $code) before the queue emptied"
    exit 1
  fi
  printf 'select count(*) from %s;\n' "$TABLE" >&"${POLL[1]}"
  read -r left <&"${POLL[0]}"
  if [[ ! $left =~ ^[0-9]+$ ]]; then
    log "polling failed: $left"
    kill -TERM "$WORKER"
    exit 1
  fi
  [[ $left == 0 ]] && break
  if (( $(date +%s%N) > deadline )); then
    log "timed out after $TIMEOUT_S s with $left jobs left"
    kill -TERM "$WORKER"
    exit 1
  fi
done
t1=$(date +%s%N)
worker_ticks=$(cpu_ticks "$WORKER")
pg1=$(server_ticks)

kill -TERM "$WORKER"
for _ in $(seq 600); do
  kill -0 "$WORKER" 2>/dev/null || break
  read -rt 0.1 -u "$NAP" _ || true
done
if kill -0 "$WORKER" 2>/dev/null; then
  log "worker did not exit within 60 s of SIGTERM; killing it"
  kill -KILL "$WORKER"
fi
wait "$WORKER" && code=0 || code=$?
printf '\\q\n' >&"${POLL[1]}"
remaining=$(psql_one "select count(*) from $TABLE")
locked=$(psql_one "select count(*) from $TABLE where locked_at is not null")

ns=$((t1 - t0))
ms=$((ns / 1000000))
per_job_us() {  # ticks -> microseconds per job, one decimal
  [[ -n $1 && $QUEUED -gt 0 ]] || { echo null; return; }
  local tenths=$(($1 * 10000000 / TICKS / QUEUED))
  printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}
pg_ticks=""
[[ -n ${pg0:-} && -n ${pg1:-} ]] && pg_ticks=$((pg1 - pg0))
rate=$(( QUEUED * 1000000000 / ns ))
printf '{"jobs": %d, "seconds": %s, "jobs_per_sec": %d, "worker_cpu_us_per_job": %s, ' \
  "$QUEUED" "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))" "$rate" \
  "$(per_job_us "${worker_ticks:-}")"
printf '"pg_cpu_us_per_job": %s, "polls": %d, "poll_ms": %d, "exit_code": %d, ' \
  "$(per_job_us "$pg_ticks")" "$polls" "$POLL_MS" "$code"
printf '"remaining": %d, "locked": %d}\n' "$remaining" "$locked"
[[ $code == 0 && $remaining == 0 ]]
