# Shared by install_test.sh and package_test.sh: a temporary directory removed at exit,
# failure reporting, and a daemon started, queried and stopped.

# Under /tmp, not $TMPDIR: the package test runs the daemon as user qdup, which must
# reach the socket directory (a checkout under /root would not do).
tmp=$(mktemp -d /tmp/qdup-dist.XXXXXX)
chmod 0755 "$tmp"
daemon_pid=
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -9 "$daemon_pid"; fi
    if [ -n "${extra_cleanup:-}" ]; then $extra_cleanup; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# need_file PATH...: each must exist.
need_file() {
    for f in "$@"; do
        [ -e "$f" ] || fail "missing $f"
    done
}

# serve_and_query RUNAS BINDIR DAEMON_ARGS...: starts BINDIR/qdup-daemon (as user RUNAS
# unless it is "-"), waits until it listens on $tmp/run/qdup.sock, asks BINDIR/qdup for
# the stored question q1, stops it with SIGTERM and checks that it exited with 0.
serve_and_query() {
    local runas=$1 bindir=$2
    shift 2
    local pre=()
    # setpriv execs the daemon (runuser would stay its parent and take the signal).
    if [ "$runas" != - ]; then pre=(setpriv --reuid="$runas" --regid="$runas" --init-groups); fi
    mkdir -p "$tmp/run"
    if [ "$runas" != - ]; then chown "$runas" "$tmp/run"; fi
    "${pre[@]}" "$bindir/qdup-daemon" "$@" --socket "$tmp/run/qdup.sock" >"$tmp/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 1 200); do
        grep -q "listening on" "$tmp/daemon.log" && break
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$tmp/daemon.log" >&2; fail "the daemon did not start"; }
        sleep 0.05
    done
    local out
    out=$("$bindir/qdup" --socket "$tmp/run/qdup.sock" --json query -k 1 "How do I learn Python quickly?") ||
        fail "query failed: $out"
    echo "query: $out"
    case "$out" in
    *'"id":"q1"'*) ;;
    *) fail "the installed daemon did not answer with q1" ;;
    esac
    kill -TERM "$daemon_pid"
    local st=0
    wait "$daemon_pid" || st=$?
    daemon_pid=
    [ "$st" = 0 ] || { cat "$tmp/daemon.log" >&2; fail "the daemon exited with status $st"; }
}
