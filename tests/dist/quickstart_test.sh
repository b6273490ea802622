#!/usr/bin/env bash
# tools/quickstart.sh on a three-question data set with the fixture model (no build,
# no packages, everything in a temporary directory):
#   - `quickstart.sh | tail` ends: the daemon it leaves running holds none of its pipes;
#   - a second run keeps the store it built;
#   - after a question is added through the daemon, a third run keeps the changed store
#     (says so) instead of rebuilding it, and the added question is still there.
#
#   quickstart_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
. "$src/tests/dist/common.sh"
mkdir -p "$tmp/data/quora" "$tmp/models"
cp "$src/tests/clients/questions.tsv" "$tmp/data/quora/questions.tsv"
cp "$src/tests/fixtures/fwd_pool.qdm" "$tmp/models/default.qdm"
export QDUP_SKIP_DEPS=1 QDUP_SKIP_BUILD=1 QDUP_BUILD=$build QDUP_DATA=$tmp/data \
    QDUP_MODELS=$tmp/models
stop_daemon() {
    if [ -f "$tmp/models/qdup.pid" ]; then kill "$(cat "$tmp/models/qdup.pid")" 2>/dev/null || true; fi
}
extra_cleanup=stop_daemon

run() { # the quickstart piped into tail, as a user would; fails if it does not end
    timeout 120 bash -c '"$0"/tools/quickstart.sh 2>&1 | tail -n 40' "$src" >"$tmp/out" ||
        { cat "$tmp/out"; fail "quickstart.sh | tail did not finish (status $?)"; }
    cat "$tmp/out"
}

run
grep -q "indexing .*questions.tsv" "$tmp/out" || fail "the first run did not build the store"
grep -q "q1" "$tmp/out" || fail "the first run's query did not answer"
echo "ok   quickstart.sh | tail ends, the daemon keeps running"
kill -0 "$(cat "$tmp/models/qdup.pid")" || fail "the daemon is not running after the run"

run
grep -q "is already built" "$tmp/out" || fail "the second run did not keep the store"
echo "ok   a second run keeps the store"

"$build/qdup" --socket "$tmp/models/qdup.sock" add new-1 "How do I keep my sourdough starter alive?"
run
grep -q "has changed since it was built" "$tmp/out" || fail "the changed store was not noticed"
if grep -q "indexing" "$tmp/out"; then fail "the changed store was rebuilt"; fi
"$build/qdup" --socket "$tmp/models/qdup.sock" get new-1 | grep -q sourdough ||
    fail "the question added through the daemon is gone"
echo "ok   a store changed through the daemon is kept, with its question"
echo "PASS"
