#!/usr/bin/env bash
# qdup-daemon side by side with the Python peer (../shared/peers/py_daemon.py: PyTorch
# encoder, Debian's python3-faiss, SQLite, asyncio micro-batching), same questions, same
# index kind, both driven by qdup-load in the same run. Both daemons start once and stay
# up; the load runs alternate between them (qdup, peer, qdup, peer, ...) so that a
# change in the machine's load hits both alike, and the table gives the median of RUNS
# runs per daemon and client count, with the ratio of the medians. Not part of CI: it
# needs python3-torch and python3-faiss (apt-get install python3-torch python3-faiss).
#
# usage: tools/peer_bench.sh [--index Flat|HNSW32] [--ef N] [--rank fused|cosine] [--clients "1 8"]
#                            [--requests N] [--warmup N] [--runs N] [--db DB] [--model MODEL]
#                            [--questions TSV] [--peer PY] [--build DIR]
# The store (--db) is built with qdup-index from the questions if it does not exist yet
# (default models/peer-INDEX.db). Prints the qdup-load RESULT lines, then the table.
# --rank cosine starts qdup-daemon with --rank cosine: the same work as the peer's (the
# top k by cosine alone); the default, fused, is qdup-daemon's own default ranking,
# which also asks the index for the fused ranking's candidates and re-scores them.
set -euo pipefail
cd "$(dirname "$0")/.."

index=Flat ef=16 rank=fused clients="1 8" requests=6000 warmup=500 runs=3 db="" build=build
model=models/default.qdm
data=${QDUP_DATA:-../shared/data}
questions=$data/quora/questions.tsv
peer=$(dirname "$data")/peers/py_daemon.py
while [ $# -gt 0 ]; do
    case "$1" in
    --index) index=$2; shift 2 ;;
    --ef) ef=$2; shift 2 ;;
    --rank) rank=$2; shift 2 ;;
    --clients) clients=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --db) db=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --questions) questions=$2; shift 2 ;;
    --peer) peer=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "peer_bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$index" in Flat|HNSW32) ;; *) echo "peer_bench: --index Flat or HNSW32" >&2; exit 2 ;; esac
case "$rank" in fused|cosine) ;; *) echo "peer_bench: --rank fused or cosine" >&2; exit 2 ;; esac
[ -n "$db" ] || db=models/peer-$index.db
for f in "$build/qdup-daemon" "$build/qdup-load" "$build/qdup-index" "$questions" "$peer"; do
    [ -e "$f" ] || { echo "peer_bench: $f not found" >&2; exit 1; }
done
/usr/bin/python3 -c 'import torch, faiss' 2>/dev/null ||
    { echo "peer_bench: the peer needs python3-torch and python3-faiss" >&2; exit 1; }

if [ ! -e "$db" ]; then
    [ -e "$model" ] || { echo "peer_bench: no model $model to build $db with" >&2; exit 1; }
    echo "peer_bench: building $db ($index)" >&2
    "$build/qdup-index" build --model "$model" --db "$db" --index "$index" "$questions" >&2
fi

tmp=$(mktemp -d)
qpid="" ppid_=""
cleanup() {
    [ -n "$qpid" ] && { kill "$qpid"; wait "$qpid"; } 2>/dev/null || true
    [ -n "$ppid_" ] && { kill "$ppid_"; wait "$ppid_"; } 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Waits (up to $2 seconds) until the file $1 contains "listening".
wait_listening() {
    for _ in $(seq "$2"); do
        grep -q listening "$1" 2>/dev/null && return 0
        sleep 1
    done
    echo "peer_bench: no 'listening' in $1:" >&2
    cat "$1" >&2
    return 1
}

params=()
[ "$index" = HNSW32 ] && params=(--param "efSearch=$ef")
[ "$rank" = cosine ] && params+=(--rank cosine)
"$build/qdup-daemon" --db "$db" --socket "$tmp/qdup.sock" "${params[@]}" >"$tmp/qdup.log" 2>&1 &
qpid=$!
/usr/bin/python3 "$peer" "$questions" "$tmp/peer.sock" --index "$index" --ef "$ef" >"$tmp/peer.log" 2>&1 &
ppid_=$!
wait_listening "$tmp/qdup.log" 60
wait_listening "$tmp/peer.log" 900

results=$tmp/results
for r in $(seq "$runs"); do
    for c in $clients; do
        for who in qdup peer; do
            "$build/qdup-load" --socket "$tmp/$who.sock" --questions "$questions" \
                --clients "$c" --requests "$requests" --warmup "$warmup" --seed "$r" \
                --label "$who" |
                tail -n 1 | tee -a "$results"
        done
    done
done

# The table: medians of qps and p99 per daemon and client count, and qdup / peer.
echo
echo "| index | clients | qdup-daemon q/s (p99 ms) | Python peer q/s (p99 ms) | ratio |"
echo "|---|---|---|---|---|"
for c in $clients; do
    for who in qdup peer; do
        for field in qps p99_ms; do
            grep "clients=$c " "$results" | grep "label=$who" |
                sed -n "s/.* $field=\([0-9.]*\).*/\1/p" | sort -g |
                awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m }' \
                >"$tmp/$who.$field"
        done
    done
    awk -v idx="$index, $rank" -v c="$c" \
        -v qq="$(cat "$tmp/qdup.qps")" -v qp="$(cat "$tmp/qdup.p99_ms")" \
        -v pq="$(cat "$tmp/peer.qps")" -v pp="$(cat "$tmp/peer.p99_ms")" \
        'BEGIN { printf "| %s | %s | %.0f (%.2f) | %.0f (%.2f) | %.1f |\n", idx, c, qq, qp, pq, pp, qq / pq }'
done
