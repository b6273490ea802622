#!/usr/bin/env bash
# Installs the Debian packages qdup needs to build and test (run as root or with sudo):
# the libraries, the interpreters the language clients are tested with, systemd-analyze
# and dpkg-dev for the unit and package checks.
# It also adds a deb-src entry for the Debian mirror this machine already uses, so that
# CMake's QDUP_FAISS=source (the default) can fetch FAISS's source package with
# `apt-get source faiss`, and installs what that build needs.
set -euo pipefail
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# Writes /etc/apt/sources.list.d/qdup-deb-src.sources: the deb-src twin of every Debian
# entry already configured (deb822 .sources files and one-line .list files), same URIs,
# suites, components and keyring. Nothing is written if deb-src entries already exist.
add_deb_src() {
    local out=/etc/apt/sources.list.d/qdup-deb-src.sources
    if [ -e "$out" ] || grep -rqsE '^(deb-src|Types:.*deb-src)' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return 0
    fi
    local tmp
    tmp=$(mktemp)
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        # One stanza per blank-line-separated block; keep Debian's own stanzas only.
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             /URIs:[^\n]*debian\.org/ && /Types:[^\n]*deb/ {
                 sub(/Types:[^\n]*/, "Types: deb-src"); print }' "$f" >>"$tmp"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        # "deb [opts] URI suite comp..." -> the same line as a deb822 stanza.
        awk '$1 == "deb" && $0 ~ /debian\.org/ {
                 signed = ""; i = 2
                 if ($2 ~ /^\[/) {
                     while (i <= NF) { if ($i ~ /^signed-by=/) { signed = substr($i, 11); sub(/\]$/, "", signed) }
                                       if ($i ~ /\]$/) { i++; break } i++ }
                 }
                 printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents:", $i, $(i + 1)
                 for (j = i + 2; j <= NF; j++) printf " %s", $j
                 printf "\n"
                 if (signed != "") printf "Signed-By: %s\n", signed
                 printf "\n" }' "$f" >>"$tmp"
    done
    if [ ! -s "$tmp" ]; then
        echo "install-deps: no Debian entry in /etc/apt/sources.list*: cannot add deb-src" >&2
        rm -f "$tmp"
        return 1
    fi
    $sudo install -m 644 "$tmp" "$out"
    rm -f "$tmp"
}

add_deb_src
# dpkg-dev: `apt-get source` unpacks with dpkg-source. FAISS's CPU library needs BLAS and
# LAPACK (libopenblas-dev, liblapack-dev); the rest of the Debian package's build
# dependencies (Python, SWIG, GTest) are for parts the build switches off.
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends \
    build-essential cmake pkg-config ca-certificates \
    libsqlite3-dev libfaiss-dev libopenblas-dev liblapack-dev libuv1-dev libcmocka-dev \
    libjansson-dev libutf8proc-dev libcsv-dev \
    clang libclang-rt-dev \
    python3 php-cli ruby nodejs libsystemd-dev systemd dpkg-dev file
