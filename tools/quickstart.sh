#!/usr/bin/env bash
# qdup's main job, from a fresh clone: install the build dependencies, build, train the
# default model if there is none, index the shared Quora questions, start the daemon
# and ask it something. The daemon is left running; the script says how to stop it.
#
#   QDUP_DATA=DIR   where the shared data is (default ../shared/data; holds quora/)
#   QDUP_SKIP_DEPS=1  do not run tools/install-deps.sh (packages already installed)
#   QDUP_SKIP_BUILD=1 use the build directory as it is (tests)
#   QDUP_BUILD=DIR    the build directory (default build)
#   QDUP_MODELS=DIR   where the model, the store, the socket and the log go (default
#                     models/)
#
# The store is built once: a later run keeps it, and never replaces a store that has
# changed since it was built (questions added or removed through the daemon), since
# that would lose them; it rebuilds an unchanged store only when the model is newer.
# The daemon gets its own stdin, stdout and stderr (the log file), so that
# `tools/quickstart.sh | tail` ends.
set -euo pipefail
cd "$(dirname "$0")/.."
data=${QDUP_DATA:-../shared/data}
quora=$data/quora
if [ ! -f "$quora/questions.tsv" ]; then
    echo "quickstart: no $quora/questions.tsv (set QDUP_DATA to the folder holding quora/)" >&2
    exit 1
fi

if [ "${QDUP_SKIP_DEPS:-0}" != 1 ]; then
    tools/install-deps.sh
fi
bin=${QDUP_BUILD:-build}
if [ "${QDUP_SKIP_BUILD:-0}" != 1 ]; then
    cmake -S . -B "$bin" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    cmake --build "$bin" -j"${JOBS:-2}"
fi

models=${QDUP_MODELS:-models}
mkdir -p "$models"
model=$models/default.qdm
if [ ! -f "$model" ]; then
    echo "quickstart: training $model (default recipe; a few minutes)"
    "$bin"/qdup-train --train "$quora/train.tsv" --valid "$quora/valid.tsv" --out "$model"
fi

db=$models/quora.db
sock=$models/qdup.sock
pidf=$models/qdup.pid
logf=$models/qdup.log
# Stop a daemon a previous run left (it holds the store).
if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
    kill "$(cat "$pidf")"
    while kill -0 "$(cat "$pidf")" 2>/dev/null; do sleep 0.1; done
fi

# The store's change count ("seq") right after the build is kept beside it: a store
# whose count differs has changes that a rebuild would lose.
store_seq() {
    "$bin"/qdup-index info --db "$db" --json | grep -o '"seq": *[0-9]*' | grep -o '[0-9]*$'
}
if [ -f "$db" ]; then
    now=$(store_seq || echo unknown)
    built=$(cat "$db.built-seq" 2>/dev/null || echo unknown)
    if [ "$now" != "$built" ]; then
        echo "quickstart: $db has changed since it was built (questions added or removed"
        echo "  through the daemon): keeping it; remove it to rebuild from $quora/questions.tsv"
    elif [ "$model" -nt "$db" ]; then
        rebuild=1
    else
        echo "quickstart: $db is already built (remove it to rebuild)"
    fi
else
    rebuild=1
fi
if [ "${rebuild:-0}" = 1 ]; then
    echo "quickstart: indexing $quora/questions.tsv into $db"
    "$bin"/qdup-index build --model "$model" --db "$db" "$quora/questions.tsv"
    store_seq >"$db.built-seq"
fi

echo "quickstart: starting the daemon on $sock (log: $logf)"
# Its own stdin, stdout and stderr: nothing of this script's pipes is kept open.
"$bin"/qdup-daemon --db "$db" --socket "$sock" </dev/null >"$logf" 2>&1 &
echo $! >"$pidf"
for _ in $(seq 1 300); do
    grep -q "listening on" "$logf" 2>/dev/null && break
    if ! kill -0 "$(cat "$pidf")" 2>/dev/null; then
        echo "quickstart: the daemon did not start:" >&2
        cat "$logf" >&2
        exit 1
    fi
    sleep 0.1
done

question="How can I learn to code in Python quickly?"
echo
echo "\$ $bin/qdup --socket $sock query -k 5 \"$question\""
"$bin"/qdup --socket "$sock" query -k 5 "$question"
echo
echo "The daemon is running (pid $(cat "$pidf"), log $logf). Try:"
echo "  $bin/qdup --socket $sock check my-1 \"How do I start learning Python?\""
echo "  $bin/qdup --socket $sock stats"
echo "Stop it with: kill \$(cat $pidf)"
