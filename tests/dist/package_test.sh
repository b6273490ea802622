#!/usr/bin/env bash
# `cpack -G DEB`: the package's control data (name, the runtime libraries as
# dependencies and no -dev package, the maintainer scripts) and contents (programs,
# units, man pages, model, clients, example config) are checked with dpkg-deb. With
# QDUP_DPKG_TEST=1, as root (CI, on a throwaway machine: .ci/run sets it), the package
# is also installed with dpkg -i (the qdup user and /var/lib/qdup appear), the
# installed qdup-index builds a store as user qdup, the installed daemon serves it and
# answers a query, and dpkg --purge leaves none of its files, user or directories.
#
#   package_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
. "$src/tests/dist/common.sh"

for tool in cpack dpkg-deb dpkg-shlibdeps; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIPPED: $tool is not installed (Debian: apt-get install dpkg-dev cmake)"
        exit 77
    fi
done
export QDUP_MODEL=$src/tests/fixtures/fwd_pool.qdm # as in install_test.sh
(cd "$tmp" && cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/pkg") >"$tmp/cpack.log" 2>&1 ||
    { cat "$tmp/cpack.log"; fail "cpack -G DEB"; }
deb=$(ls "$tmp"/pkg/qdup_*.deb)
echo "package: $(basename "$deb")"

dpkg-deb --info "$deb" >"$tmp/info"
dpkg-deb --field "$deb" Depends >"$tmp/depends"
echo "Depends: $(cat "$tmp/depends")"
echo
[ "$(dpkg-deb --field "$deb" Package)" = qdup ] || fail "package name"
for lib in libc6 libuv1 libsqlite3-0 libjansson4 libutf8proc2 libcsv3 libopenblas passwd; do
    grep -q "$lib" "$tmp/depends" || fail "Depends lacks $lib"
done
if grep -q -- "-dev" "$tmp/depends"; then fail "Depends names a -dev package"; fi
for script in postinst prerm postrm; do
    grep -q " $script " "$tmp/info" || fail "no $script in the control archive"
done

dpkg-deb --contents "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$tmp/contents"
for f in /usr/bin/qdup /usr/bin/qdup-daemon /usr/bin/qdup-index /usr/bin/qdup-train \
    /usr/lib/systemd/system/qdup.service /usr/lib/systemd/system/qdup.socket \
    /usr/share/man/man1/qdup-daemon.1 /usr/share/man/man1/qdup-index.1 \
    /usr/share/man/man1/qdup.1 /usr/share/man/man7/qdup-protocol.7 \
    /usr/share/qdup/default.qdm /usr/share/qdup/qdup.conf.example /usr/share/qdup/schema.sql \
    /usr/share/qdup/clients/qdup_client.py /usr/share/qdup/clients/qdup_client.php \
    /usr/share/qdup/clients/qdup_client.rb /usr/share/qdup/clients/qdup_client.js \
    /usr/share/doc/qdup/LICENSE; do
    grep -qx "$f" "$tmp/contents" || fail "the package lacks $f"
done
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - ./usr/lib/systemd/system/qdup.service >"$tmp/unit"
grep -qx "ExecStart=/usr/bin/qdup-daemon --config /etc/qdup/qdup.conf" "$tmp/unit" ||
    fail "the packaged qdup.service does not start /usr/bin/qdup-daemon"
echo "control data and contents: ok"

if [ "${QDUP_DPKG_TEST:-0}" != 1 ] || [ "$(id -u)" != 0 ]; then
    echo "dpkg -i / --purge not run: it installs on this machine (QDUP_DPKG_TEST=1, as root;"
    echo "CI does it)"
    echo "PASS"
    exit 0
fi
if dpkg-query -W qdup >/dev/null 2>&1 || getent passwd qdup >/dev/null; then
    fail "a qdup package or user is installed already: not touching it"
fi
purge() { dpkg --purge qdup >/dev/null 2>&1 || true; }
extra_cleanup=purge
dpkg -i "$deb" || fail "dpkg -i"
getent passwd qdup >/dev/null || fail "postinst made no qdup user"
[ "$(stat -c %U:%a /var/lib/qdup)" = qdup:750 ] || fail "/var/lib/qdup: $(stat -c %U:%a /var/lib/qdup)"
need_file /etc/qdup/qdup.conf
# The store as the service would have it: made by user qdup in /var/lib/qdup.
runuser -u qdup -- /usr/bin/qdup-index build --model /usr/share/qdup/default.qdm \
    --db /var/lib/qdup/questions.db - <"$src/tests/clients/questions.tsv" 2>"$tmp/build.log" ||
    { cat "$tmp/build.log"; fail "qdup-index build as qdup"; }
serve_and_query qdup /usr/bin --config /etc/qdup/qdup.conf
echo "installed package serves: ok"

dpkg --purge qdup || fail "dpkg --purge"
extra_cleanup=
while read -r f; do
    case "$f" in */) continue ;; esac
    [ ! -e "$f" ] || fail "$f is left after purge"
done <"$tmp/contents"
for d in /var/lib/qdup /etc/qdup /usr/share/qdup /usr/share/doc/qdup; do
    [ ! -e "$d" ] || fail "$d is left after purge"
done
if getent passwd qdup >/dev/null || getent group qdup >/dev/null; then
    fail "the qdup user or group is left after purge"
fi
echo "purge leaves nothing: ok"
echo "PASS"
