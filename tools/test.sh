#!/usr/bin/env bash
# Builds qdup and runs the test suite (ctest) twice: a normal build (build/), then one
# with AddressSanitizer and UndefinedBehaviorSanitizer (build-asan/). Extra arguments go
# to ctest (e.g. -R test_tok). The steps are CI's (.ci/run), without installing packages.
set -euo pipefail
cd "$(dirname "$0")/.."
QDUP_SKIP_DEPS=1 exec .ci/run "$@"
