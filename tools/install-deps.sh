#!/usr/bin/env bash
# Installs the Debian packages qdup needs to build and test (run as root or with sudo):
# the libraries, the interpreters the language clients are tested with, systemd-analyze
# and dpkg-dev for the unit and package checks.
set -euo pipefail
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends \
    build-essential cmake pkg-config ca-certificates \
    libsqlite3-dev libfaiss-dev libopenblas-dev libuv1-dev libcmocka-dev \
    libjansson-dev libutf8proc-dev libcsv-dev \
    clang libclang-rt-dev \
    python3 php-cli ruby nodejs libsystemd-dev systemd dpkg-dev file
