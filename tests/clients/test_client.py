"""Tests tools/clients/qdup_client.py against a real qdup-daemon (tests/clients/run.sh
starts it on a store holding q1, q2, q3 of tests/clients/questions.tsv).

usage: python3 test_client.py SOCKET CLIENT_DIR TMPDIR
"""
import os
import socket
import sys

sock_path, client_dir, tmp = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, client_dir)
from qdup_client import Client, QdupError  # noqa: E402

failures = 0


def check(cond, what):
    global failures
    print("%s %s" % ("ok  " if cond else "FAIL", what))
    if not cond:
        failures += 1


def raises(code, fn):
    try:
        fn()
    except QdupError as e:
        return e.code == code
    return False


c = Client(sock_path, timeout=10)
c.ping()
check(True, "ping")

hits = c.query("How do I learn Python quickly?", k=3)
check(len(hits) == 3 and hits[0]["id"] == "q1" and hits[0]["score"] > 0.99,
      "query: the stored question itself comes first with score 1")
check(len(c.query("How do I learn Python quickly?", k=3, min_score=0.999)) == 1,
      "query: min_score cuts the list")

text = 'naïve café, "quotes", back\\slash\nand a newline 🙂'
row = c.add("c1", text)
check(isinstance(row, int), "add returns the row")
got = c.get("c1")
check(got["id"] == "c1" and got["text"] == text, "get returns the exact text (escaping, UTF-8)")
check(raises("duplicate_id", lambda: c.add("c1", "another text")), "add twice: duplicate_id")

r = c.check("c2", "What is the capital of France", min_score=0.9)
check(r["stored"] and r["duplicates"] and r["duplicates"][0]["id"] == "q2",
      "check finds the duplicate and stores the post")
check(c.get("c2")["id"] == "c2", "the checked post is stored")
r = c.check("c3", "How can I bake bread at home", store=False)
check(not r["stored"] and r["duplicates"][0]["id"] == "q3", "check with store=False")
check(raises("not_found", lambda: c.get("c3")), "... and does not store")

r = c.check("c4", "How can I bake bread at home?")
check(r["stored"] and r["duplicates"][0]["id"] == "q3" and r["duplicates"][0]["p_duplicate"] == 1
      and r["duplicate"] is True, "check of a stored text: a repost, stored, the original with p_duplicate 1")
c.remove("c4")

c.remove("c1")
check(raises("not_found", lambda: c.get("c1")), "remove, then get: not_found")
check(raises("not_found", lambda: c.remove("c1")), "remove twice: not_found")

many = c.query_many(["How do I learn Python quickly?", "How can I bake bread at home?"], k=1)
check([m[0]["id"] for m in many] == ["q1", "q3"], "query_many: one list per text")

st = c.stats()
check(st["questions"] == 4 and st["requests"]["add"] >= 2, "stats counts questions and requests")
# README ("What survives what"): a removed question stays as a tombstone row until
# qdup-index compact, whatever the index kind; a Flat index drops its vector at once.
# Two removed: c1 and the repost c4.
check(st["tombstones"] == 2 and st["index"]["spec"] == "Flat" and st["index"]["vectors"] == 4,
      "stats: removed questions are tombstone rows; Flat holds only live vectors")
check(raises("bad_request", lambda: c.request({"op": "query", "text": "x", "k": 0})),
      "a bad request raises bad_request; the connection stays usable")
c.ping()
c.close()

# A daemon that accepts and never answers: the call times out.
silent_path = os.path.join(tmp, "silent.sock")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(silent_path)
srv.listen(1)
check(raises("timeout", lambda: Client(silent_path, timeout=0.2).ping()), "timeout")
srv.close()
check(raises("connection", lambda: Client(os.path.join(tmp, "none.sock")).ping()),
      "no daemon: connection error")

print("%d failure(s)" % failures)
sys.exit(1 if failures else 0)
