#!/usr/bin/env bash
# Builds qdup and runs the test suite twice: a normal build (build/), then one with
# AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/). Extra arguments go to
# ctest (e.g. -R test_tok).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-2}

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure "$@")

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQDUP_ASAN=ON -DQDUP_UBSAN=ON
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure "$@")
