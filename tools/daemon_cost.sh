#!/usr/bin/env bash
# What one request costs qdup-daemon, in figures that depend little on what else the
# machine runs: its CPU time (utime + stime from /proc) per request, and with
# --callgrind its instructions per request under valgrind's callgrind (independent of
# the machine's load; valgrind runs the daemon's threads one at a time, on AVX2 code
# where the processor has AVX-512, so it is a count to compare builds with, not a time).
# Also the CPU time of qdup-load per request, which shares the machine's cores.
#
# usage: tools/daemon_cost.sh --db DB --questions TSV [--clients N] [--requests N]
#                             [--build DIR] [--callgrind] [--out PREFIX] [-- DAEMON ARGS]
# The daemon starts, qdup-load sends 300 requests (1,000 without --callgrind) to warm
# it, the counters are read (or zeroed), REQUESTS measured requests follow (default
# 20,000; 500 with --callgrind, which runs about 50 times slower), and the counters
# are read again. Prints one line: daemon and load CPU ms per request (and Ir per
# request), with qdup-load's RESULT figures. --out keeps callgrind's profile as
# PREFIX.PID.1 (callgrind_annotate reads it). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."

db="" questions="" clients=8 requests="" build=build callgrind=0 out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --db) db=$2; shift 2 ;;
    --questions) questions=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --callgrind) callgrind=1; shift ;;
    --out) out=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "daemon_cost: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$db" ] && [ -n "$questions" ] || { echo "daemon_cost: --db and --questions are required" >&2; exit 2; }
for f in "$build/qdup-daemon" "$build/qdup-load" "$db" "$questions"; do
    [ -e "$f" ] || { echo "daemon_cost: $f not found" >&2; exit 1; }
done
if [ "$callgrind" = 1 ]; then
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
        { echo "daemon_cost: --callgrind needs valgrind (apt-get install valgrind)" >&2; exit 1; }
    : "${requests:=500}"
    warm=300
else
    : "${requests:=20000}"
    warm=1000
fi

tmp=$(mktemp -d)
dpid=""
cleanup() {
    [ -n "$dpid" ] && { kill "$dpid"; wait "$dpid"; } 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
sock=$tmp/s
[ -n "$out" ] || out=$tmp/callgrind.out
if [ "$callgrind" = 1 ]; then
    valgrind --tool=callgrind --callgrind-out-file="$out.%p" --dump-instr=no \
        "$build/qdup-daemon" --db "$db" --socket "$sock" "$@" 2>"$tmp/log" &
else
    "$build/qdup-daemon" --db "$db" --socket "$sock" "$@" 2>"$tmp/log" &
fi
dpid=$!
for _ in $(seq 1 1200); do
    grep -q 'listening on' "$tmp/log" && break
    kill -0 "$dpid" 2>/dev/null || { cat "$tmp/log" >&2; exit 1; }
    sleep 0.25
done
load() {
    "$build/qdup-load" --socket "$sock" --questions "$questions" --clients "$clients" "$@"
}
cpu() { awk '{print $14 + $15}' "/proc/$dpid/stat"; }

load --requests "$warm" --warmup 0 --seed 7 >/dev/null
[ "$callgrind" = 1 ] && callgrind_control -z "$dpid" >/dev/null 2>&1
t0=$(cpu)
/usr/bin/time -f '%U %S' -o "$tmp/time" \
    "$build/qdup-load" --socket "$sock" --questions "$questions" --clients "$clients" \
    --requests "$requests" --warmup 0 --seed 1 >"$tmp/result"
t1=$(cpu)
ir=""
if [ "$callgrind" = 1 ]; then
    callgrind_control -d "$dpid" >/dev/null 2>&1
    total=$(grep -h '^summary' "$out.$dpid".* | tail -1 | awk '{print $2}')
    ir=" daemon_Ir_per_req=$((total / requests))"
fi
tck=$(getconf CLK_TCK)
read -r lu ls <"$tmp/time"
awk -v t0="$t0" -v t1="$t1" -v tck="$tck" -v n="$requests" -v lu="$lu" -v ls="$ls" \
    -v ir="$ir" -v load="$(cut -d' ' -f1 /proc/loadavg)" -v res="$(tail -1 "$tmp/result")" \
    'BEGIN { printf "daemon_cpu_ms_per_req=%.4f load_cpu_ms_per_req=%.4f%s loadavg=%s %s\n",
             (t1 - t0) * 1000 / tck / n, (lu + ls) * 1000 / n, ir, load, res }'
