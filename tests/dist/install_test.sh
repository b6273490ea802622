#!/usr/bin/env bash
# `cmake --install` into a temporary prefix: everything issue 12 lists is there (the
# programs, man pages, units naming the installed daemon, the example config, the
# clients, the schema, the default model), both units pass `systemd-analyze verify`,
# and the installed programs build a store and the installed daemon, configured from
# the installed example config, answers a query.
#
#   install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
. "$src/tests/dist/common.sh"
p=$tmp/prefix

# The build has no trained model unless tools/quickstart.sh made one: install the
# test fixture in its place (the model's quality is not what is checked here).
export QDUP_MODEL=$src/tests/fixtures/fwd_pool.qdm
cmake --install "$build" --prefix "$p" >"$tmp/install.log" || { cat "$tmp/install.log"; fail "cmake --install"; }

progs="qdup qdup-daemon qdup-index qdup-train qdup-eval qdup-bench qdup-load"
for prog in $progs; do
    [ -x "$p/bin/$prog" ] || fail "$p/bin/$prog is not installed"
    need_file "$p/share/man/man1/$prog.1"
    grep -q "^\.SH NAME" "$p/share/man/man1/$prog.1" || fail "$prog.1 has no NAME section"
done
need_file "$p/share/man/man7/qdup-protocol.7" "$p/share/qdup/schema.sql" \
    "$p/share/qdup/qdup.conf.example" "$p/lib/systemd/system/qdup.service" \
    "$p/lib/systemd/system/qdup.socket" "$p/share/doc/qdup/LICENSE"
for c in py php rb js; do need_file "$p/share/qdup/clients/qdup_client.$c"; done
cmp "$QDUP_MODEL" "$p/share/qdup/default.qdm" || fail "share/qdup/default.qdm is not the model"
grep -qx "ExecStart=$p/bin/qdup-daemon --config $p/etc/qdup/qdup.conf" \
    "$p/lib/systemd/system/qdup.service" || fail "qdup.service does not start the installed daemon"
for prog in $progs; do
    if ldd "$p/bin/$prog" | grep -q "not found"; then
        ldd "$p/bin/$prog" >&2
        fail "$prog: a library it needs is not found once installed"
    fi
done
echo "installed files: ok"

if command -v systemd-analyze >/dev/null; then
    # verify also opens the units' Documentation= man pages: the installed ones.
    MANPATH=$p/share/man systemd-analyze verify "$p/lib/systemd/system/qdup.socket" \
        "$p/lib/systemd/system/qdup.service" || fail "systemd-analyze verify"
    echo "systemd-analyze verify: ok"
else
    echo "systemd-analyze is not installed (Debian: apt-get install systemd): units not verified"
fi

"$p/bin/qdup-index" build --model "$p/share/qdup/default.qdm" --db "$tmp/q.db" \
    "$src/tests/clients/questions.tsv" 2>"$tmp/build.log" || { cat "$tmp/build.log"; fail "qdup-index build"; }
# The example config with this test's store; the command line gives the socket.
sed "s|^db .*|db $tmp/q.db|" "$p/share/qdup/qdup.conf.example" >"$tmp/qdup.conf"
grep -q "^db $tmp/q.db" "$tmp/qdup.conf" || fail "the example config has no db line"
serve_and_query - "$p/bin" --config "$tmp/qdup.conf"
echo "PASS"
