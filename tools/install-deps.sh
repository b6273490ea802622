#!/usr/bin/env bash
# Installs the Debian packages qdup needs to build and test (run as root or with sudo).
set -euo pipefail
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends \
    build-essential cmake pkg-config ca-certificates \
    libsqlite3-dev libfaiss-dev libopenblas-dev libuv1-dev libcmocka-dev \
    libjansson-dev libutf8proc-dev libcsv-dev \
    clang libclang-rt-dev
