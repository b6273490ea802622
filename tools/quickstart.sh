#!/usr/bin/env bash
# qdup's main job, from a fresh clone: install the build dependencies, build, train the
# default model if there is none, index the shared Quora questions, start the daemon
# and ask it something. The daemon is left running; the script says how to stop it.
#
#   QDUP_DATA=DIR   where the shared data is (default ../shared/data; holds quora/)
#   QDUP_SKIP_DEPS=1  do not run tools/install-deps.sh (packages already installed)
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
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"${JOBS:-2}"

mkdir -p models
model=models/default.qdm
if [ ! -f "$model" ]; then
    echo "quickstart: training $model (default recipe; a few minutes)"
    build/qdup-train --train "$quora/train.tsv" --valid "$quora/valid.tsv" --out "$model"
fi

db=models/quora.db
sock=models/qdup.sock
# Stop a daemon a previous run left, so the index can be rebuilt.
if [ -f models/qdup.pid ] && kill -0 "$(cat models/qdup.pid)" 2>/dev/null; then
    kill "$(cat models/qdup.pid)"
    while kill -0 "$(cat models/qdup.pid)" 2>/dev/null; do sleep 0.1; done
fi
echo "quickstart: indexing $quora/questions.tsv into $db"
build/qdup-index build --model "$model" --db "$db" "$quora/questions.tsv"

echo "quickstart: starting the daemon on $sock"
build/qdup-daemon --db "$db" --socket "$sock" 2>models/qdup.log &
echo $! >models/qdup.pid
for _ in $(seq 1 300); do
    grep -q "listening on" models/qdup.log 2>/dev/null && break
    if ! kill -0 "$(cat models/qdup.pid)" 2>/dev/null; then
        echo "quickstart: the daemon did not start:" >&2
        cat models/qdup.log >&2
        exit 1
    fi
    sleep 0.1
done

question="How can I learn to code in Python quickly?"
echo
echo "\$ build/qdup --socket $sock query -k 5 \"$question\""
build/qdup --socket "$sock" query -k 5 "$question"
echo
echo "The daemon is running (pid $(cat models/qdup.pid), log models/qdup.log). Try:"
echo "  build/qdup --socket $sock check my-1 \"How do I start learning Python?\""
echo "  build/qdup --socket $sock stats"
echo "Stop it with: kill \$(cat models/qdup.pid)"
