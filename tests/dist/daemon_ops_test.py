"""Operations of qdup-daemon (issue 12) against a real daemon on a small store:

- log lines carry time and level ("2026-...Z info qdup-daemon: ..."); --log-time no
  leaves the time out; with stderr being the journal's stream (JOURNAL_STREAM) lines
  start with the syslog priority ("<6>") and no time;
- one line per refused or bad request, at most 10 a second, then a count of those left
  out (the lines written plus the count add up to the requests);
- {"op":"metrics"} and `qdup stats --prometheus` give the Prometheus text format, read
  here strictly (tests/dist/promtext.py), with the figures the traffic implies;
- SIGHUP re-reads the configuration file: a new limit takes effect, a broken file is
  refused and the old configuration kept, the daemon never stops;
- socket activation: given a listening socket the way systemd passes one (LISTEN_FDS,
  LISTEN_PID, fd 3), the daemon serves on it and leaves the socket file to its owner.

usage: daemon_ops_test.py BIN_DIR SOURCE_DIR
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

bin_dir, src = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(src, "tests", "dist"))
sys.path.insert(0, os.path.join(src, "tools", "clients"))
import promtext  # noqa: E402
from checks import check, finish  # noqa: E402
from qdup_client import Client, QdupError  # noqa: E402

tmp = tempfile.mkdtemp(prefix="qdup-ops.", dir="/tmp")
failures = 0
procs = []


def check(cond, what):
    global failures
    print("%s %s" % ("ok  " if cond else "FAIL", what), flush=True)
    if not cond:
        failures += 1


def wait_for(path, pattern, proc, timeout=30.0):
    """Waits until the log at path has a line matching pattern; returns the match."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path, encoding="utf-8", errors="replace") as f:
            m = re.search(pattern, f.read(), re.M)
        if m:
            return m
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    with open(path, encoding="utf-8", errors="replace") as f:
        sys.stderr.write(f.read())
    raise SystemExit("FAIL: no line matching %r in %s" % (pattern, path))


def start(args, log, env=None, **kw):
    f = open(log, "w")
    p = subprocess.Popen([os.path.join(bin_dir, "qdup-daemon")] + args, stdout=f,
                         stderr=f, env=env, **kw)
    procs.append(p)
    return p


def stop(p):
    p.send_signal(signal.SIGTERM)
    return p.wait(60)


def write_conf(path, lines):
    with open(path + ".new", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(path + ".new", path)


# The reader itself must refuse what a scraper would: a few malformed texts.
for bad, why in [
        ("# HELP a_total x\n# TYPE a_total counter\na_total 1", "no final newline"),
        ("a_total 1\n", "no TYPE"),
        ("# HELP g x\n# TYPE g gauge\ng{l=\"a\\qb\"} 1\n", "bad escape"),
        ("# HELP c x\n# TYPE c counter\nc 1\n", "counter without _total"),
        ("# HELP g x\n# TYPE g gauge\ng 1\ng 2\n", "a sample twice"),
        ("# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
         "h_sum 1\nh_count 1\n", "buckets decreasing")]:
    try:
        promtext.parse(bad)
        check(False, "promtext refuses: " + why)
    except ValueError:
        check(True, "promtext refuses: " + why)

try:
    db = os.path.join(tmp, "q.db")
    subprocess.run([os.path.join(bin_dir, "qdup-index"), "build", "--model",
                    os.path.join(src, "tests", "fixtures", "fwd_pool.qdm"), "--db", db,
                    os.path.join(src, "tests", "clients", "questions.tsv")],
                   check=True, stderr=subprocess.DEVNULL)
    sock = os.path.join(tmp, "qdup.sock")
    conf = os.path.join(tmp, "qdup.conf")
    base = ["db " + db, "socket " + sock]
    write_conf(conf, base + ["max-k 5", "log-time yes"])
    log = os.path.join(tmp, "daemon.log")
    d = start(["--config", conf], log)
    wait_for(log, r": listening on ", d)

    # --- log lines: time and level --------------------------------------------------
    with open(log) as f:
        lines = [l for l in f.read().splitlines() if l]
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (error|warn|info|debug) "
                       r"qdup-daemon: \S")
    check(lines and all(stamp.match(l) for l in lines),
          "every log line has a UTC time and a level (%d lines)" % len(lines))

    c = Client(sock, timeout=10)
    try:
        c.query("How do I learn Python quickly?", k=10)
        check(False, "k over max-k is refused")
    except QdupError as e:
        check(e.code == "bad_request", "k over max-k is refused (bad_request)")
    m = wait_for(log, r"^\S+ info qdup-daemon: bad_request: uid %d gid \d+ pid %d, op query: "
                 r"\{\"code\":\"bad_request\",\"message\":\"\\\"k\\\" must be from 1 to 5\"}"
                 % (os.getuid(), os.getpid()), d)
    check(bool(m), "the refused request is logged once, with the peer and the reason")

    # --- rate limit: 50 bad lines at once, one more after the window ------------------
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    s.sendall(b"not json\n" * 50)
    got = b""
    while got.count(b"\n") < 50:
        got += s.recv(65536)
    time.sleep(1.1)
    s.sendall(b"not json\n")
    while got.count(b"\n") < 51:
        got += s.recv(65536)
    s.close()
    wait_for(log, r"similar lines not logged", d)
    with open(log) as f:
        text = f.read()
    logged = len(re.findall(r"qdup-daemon: bad_json: ", text))
    left_out = sum(int(n) for n in re.findall(r"\((\d+) similar lines not logged", text))
    check(logged + left_out == 51 and left_out > 0 and logged <= 12,
          "bad lines: %d logged + %d counted as left out = 51" % (logged, left_out))

    # --- metrics ------------------------------------------------------------------------
    c.query("How do I learn Python quickly?", k=3)
    c.get("q2")
    c.add("m1", "A question added for the metrics")
    st = c.stats()
    fams = promtext.parse(c.metrics())
    check(True, "{\"op\":\"metrics\"} is valid Prometheus text (%d families)" % len(fams))
    req = fams["qdup_requests_total"]
    check(req.type == "counter", "qdup_requests_total is a counter")
    def val(fam, **labels):
        for name, lab, v in fams[fam].samples:
            if lab == labels:
                return v
        return None
    check(val("qdup_requests_total", op="query", code="ok") == 1 and
          val("qdup_requests_total", op="query", code="bad_request") == 1 and
          val("qdup_requests_total", op="none", code="bad_json") == 51 and
          val("qdup_requests_total", op="add", code="ok") == 1,
          "requests by op and code as sent")
    h = fams["qdup_request_duration_seconds"]
    # Reads: the refused query, the query, the get; writes: the add.
    check(h.type == "histogram" and val("qdup_request_duration_seconds", kind="read", le="+Inf") == 3
          and val("qdup_request_duration_seconds", kind="write", le="+Inf") == 1,
          "latency histogram: 3 reads, 1 write")
    check(val("qdup_questions") == 4 and val("qdup_clients") >= 1 and
          val("qdup_queue_depth") == 0, "questions, clients, queue depth")
    check(val("qdup_index_info", kind="Flat") == 1, "index kind")
    fp = st["model"]["fingerprint"]
    mi = fams["qdup_model_info"].samples
    check(len(mi) == 1 and mi[0][1]["fingerprint"] == fp and mi[0][2] == 1,
          "model fingerprint as in stats (%s)" % fp)
    out = subprocess.run([os.path.join(bin_dir, "qdup"), "--socket", sock, "stats",
                          "--prometheus"], check=True, capture_output=True, text=True).stdout
    fams2 = promtext.parse(out)
    check(set(fams2) == set(fams), "qdup stats --prometheus prints the same families")

    # --- SIGHUP -------------------------------------------------------------------------
    write_conf(conf, base + ["max-k 50", "log-time yes"])
    d.send_signal(signal.SIGHUP)
    wait_for(log, r"configuration reloaded", d)
    check(len(c.query("How do I learn Python quickly?", k=10)) == 4,
          "SIGHUP: the new max-k holds, the connection stayed open")
    write_conf(conf, base + ["max-k banana"])
    d.send_signal(signal.SIGHUP)
    wait_for(log, r"keeping the current configuration", d)
    check(d.poll() is None and len(c.query("How do I learn Python quickly?", k=10)) == 4,
          "SIGHUP with a broken file: refused, the daemon and the old limits stay")
    write_conf(conf, ["db " + db, "socket " + sock + "2", "max-k 50"])
    d.send_signal(signal.SIGHUP)
    wait_for(log, r"socket: changed in the configuration; takes effect at the next start", d)
    check(d.poll() is None and c.query("How do I learn Python quickly?", k=1),
          "SIGHUP: what cannot change live is said, and the rest still serves")
    c.close()
    check(stop(d) == 0, "SIGTERM after reloads: clean exit")

    # --- log time off, and journald ---------------------------------------------------
    write_conf(conf, base)
    log2 = os.path.join(tmp, "daemon2.log")
    d = start(["--config", conf, "--log-time", "no"], log2)
    wait_for(log2, r"listening on", d)
    check(stop(d) == 0, "--log-time no: clean exit")
    with open(log2) as f:
        lines = [l for l in f.read().splitlines() if l]
    check(all(re.match(r"^(error|warn|info|debug) qdup-daemon: ", l) for l in lines),
          "--log-time no: level, no time")
    log3 = os.path.join(tmp, "daemon3.log")
    with open(log3, "w") as f:
        stt = os.fstat(f.fileno())
    env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (stt.st_dev, stt.st_ino))
    f3 = open(log3, "a")
    p = subprocess.Popen([os.path.join(bin_dir, "qdup-daemon"), "--config", conf], stdout=f3,
                         stderr=f3, env=env)
    procs.append(p)
    wait_for(log3, r"listening on", p)
    check(stop(p) == 0, "under the journal: clean exit")
    with open(log3) as f:
        lines = [l for l in f.read().splitlines() if l]
    check(all(re.match(r"^<[3467]>qdup-daemon: ", l) for l in lines) and
          any(l.startswith("<6>qdup-daemon: listening on") for l in lines),
          "stderr is the journal's: priority prefixes, no time")

    # --- socket activation ----------------------------------------------------------------
    if os.environ.get("QDUP_NO_SYSTEMD") == "1":
        print("socket activation: not built with libsystemd (QDUP_NO_SYSTEMD=1): skipped")
    else:
        asock = os.path.join(tmp, "act.sock")
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ls.bind(asock)
        ls.listen(16)
        fd = ls.fileno()
        log4 = os.path.join(tmp, "daemon4.log")
        f4 = open(log4, "w")
        env = dict(os.environ, LISTEN_FDS="1")
        daemon = os.path.join(bin_dir, "qdup-daemon")
        # LISTEN_PID must be the daemon's pid: the shell exports its own, then execs.
        p = subprocess.Popen(["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', daemon,
                              "--db", db, "--socket", asock], stdout=f4, stderr=f4, env=env,
                             pass_fds=(fd, 3), preexec_fn=lambda: os.dup2(fd, 3))
        procs.append(p)
        wait_for(log4, r"listening on %s \(socket from systemd\)" % re.escape(asock), p)
        c = Client(asock, timeout=10)
        check(c.query("How do I learn Python quickly?", k=1)[0]["id"] == "q1",
              "socket activation: answers on the socket it was given")
        c.close()
        check(stop(p) == 0, "socket activation: clean exit")
        check(os.path.exists(asock), "the socket file is systemd's: left in place")
        ls.close()
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(tmp, ignore_errors=True)

finish()
