#!/usr/bin/env bash
# Builds qdup's libFuzzer harnesses (tests/fuzz) with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer in build-fuzz/, and runs each for a given time.
#
#   tools/fuzz.sh [-t SECONDS] [-p PARALLEL] [-B BUILD_DIR] [HARNESS...]
#
#   -t SECONDS   run time per harness (default 600)
#   -p N         harnesses running at once (default 1; this is a shared machine)
#   -B DIR       build directory (default build-fuzz)
#   HARNESS      fuzz_proto, fuzz_dump, fuzz_model (default: all three)
#   FUZZ_FLAGS   (environment) more libFuzzer flags, e.g. "-len_control=0" to try
#                long inputs at once
#
# Each harness starts from its seed corpus (tests/fuzz/corpus/NAME) and grows a working
# corpus in DIR/fuzz-corpus/NAME, kept between runs; the repository's corpus is never
# written. A crashing input lands in DIR/fuzz-artifacts/NAME/ (crash-*, leak-*,
# timeout-*); to keep it as a regression test, fix the bug and copy the file into
# tests/fuzz/corpus/NAME/, which ctest replays (NAME_replay). The full libFuzzer output
# is in DIR/fuzz-logs/NAME.log; the last lines printed are a summary per harness:
#   FUZZ fuzz_proto seconds=600 execs=1234567 cov=2345 ft=6789 corpus=321 crashes=0
# Exit status 1 if any harness found something.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=600
par=1
build=build-fuzz
while getopts "t:p:B:h" o; do
    case $o in
    t) secs=$OPTARG ;;
    p) par=$OPTARG ;;
    B) build=$OPTARG ;;
    *) sed -n "2,21p" "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(fuzz_proto fuzz_dump fuzz_model)

CC=${CC:-clang} CXX=${CXX:-clang++} cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DQDUP_FUZZ=ON -DQDUP_ASAN=ON -DQDUP_UBSAN=ON >/dev/null
nice -n 10 cmake --build "$build" -j2 --target "${harnesses[@]}"

# Inputs large enough for a batch of long texts, a model fixture or a dump crossing a
# read boundary (fuzz_dump pads itself for that), small enough to stay fast.
declare -A maxlen=([fuzz_proto]=16384 [fuzz_dump]=16384 [fuzz_model]=16384)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
    local h=$1
    local corpus=$build/fuzz-corpus/$h arts=$build/fuzz-artifacts/$h log=$build/fuzz-logs/$h.log
    mkdir -p "$corpus" "$arts" "$(dirname "$log")"
    # -timeout: an input running 10 s is a hang; -rss_limit_mb: a leak or a runaway
    # allocation is a finding, not a swap storm.
    nice -n 10 "$build/$h" "$corpus" tests/fuzz/corpus/"$h" \
        -max_total_time="$secs" -max_len="${maxlen[$h]:-16384}" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$arts/" ${FUZZ_FLAGS:-} \
        >"$log" 2>&1 || true
}

summary() {
    local h=$1 log=$build/fuzz-logs/$h.log
    local execs cov ft crashes
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    crashes=$(find "$build/fuzz-artifacts/$h" -type f | wc -l)
    echo "FUZZ $h seconds=$secs execs=${execs:-?} cov=${cov:-?} ft=${ft:-?}" \
        "corpus=$(find "$build/fuzz-corpus/$h" -type f | wc -l) crashes=$crashes"
    [ "$crashes" -eq 0 ] && ! grep -q 'ERROR: \(libFuzzer\|AddressSanitizer\)\|runtime error' "$log"
}

running=0
for h in "${harnesses[@]}"; do
    echo "fuzzing $h for $secs s (log $build/fuzz-logs/$h.log)"
    run_one "$h" &
    running=$((running + 1))
    if [ "$running" -ge "$par" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

status=0
for h in "${harnesses[@]}"; do
    summary "$h" || status=1
done
exit $status
