#!/usr/bin/env bash
# Runs one language client's test (tests/clients/test_client.EXT) against a real
# qdup-daemon: builds a store of tests/clients/questions.tsv with the tiny fixture model,
# starts the daemon on it, runs the test, stops the daemon and checks it exited cleanly.
# Exits 77 (ctest: skipped) when the language's interpreter is not installed.
#
#   run.sh BIN_DIR SOURCE_DIR INTERPRETER EXT
set -euo pipefail
bin=$1 src=$2 interp=$3 ext=$4
if ! command -v "$interp" >/dev/null 2>&1; then
    echo "SKIPPED: $interp is not installed (Debian: apt-get install $interp)"
    exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qdup-client-$ext.XXXXXX")
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

"$bin/qdup-index" build --model "$src/tests/fixtures/fwd_pool.qdm" --db "$tmp/q.db" \
    "$src/tests/clients/questions.tsv" >"$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
"$bin/qdup-daemon" --db "$tmp/q.db" --socket "$tmp/qdup.sock" >"$tmp/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do
    grep -q "listening on" "$tmp/daemon.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/daemon.log"; exit 1; }
    sleep 0.05
done

status=0
"$interp" "$src/tests/clients/test_client.$ext" "$tmp/qdup.sock" "$src/tools/clients" "$tmp" || status=$?
kill -TERM "$pid"
wait "$pid" || { echo "qdup-daemon exited with status $?"; cat "$tmp/daemon.log"; status=1; }
pid=
exit $status
