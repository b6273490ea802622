"""qdup_client.py - a qdup-daemon client for Python 3, standard library only.

Copy this one file into your project. The daemon speaks one JSON object per line each
way over a Unix socket (see `man qdup-protocol`); this client keeps one connection
open, sends one request at a time and waits for its reply, with a timeout on every
step. A reply with "ok": false raises QdupError carrying the daemon's stable code
("not_found", "duplicate_id", "busy", ...); a connection that fails or a reply that
does not arrive in time raises QdupError with the code "connection" or "timeout", and
the connection is dropped (the next call opens a new one).

    from qdup_client import Client
    qdup = Client("/run/qdup/qdup.sock")
    dups = qdup.check("post-42", "How do I learn Python quickly?")["duplicates"]
    if dups:
        print("possible duplicate of", dups[0]["id"], dups[0]["score"])
"""
import json
import socket

__all__ = ["Client", "QdupError"]


class QdupError(Exception):
    """An error reply of the daemon (code is its "code"), or "connection"/"timeout"."""

    def __init__(self, code, message):
        super().__init__("%s: %s" % (code, message))
        self.code = code
        self.message = message


class Client:
    """One connection to qdup-daemon at a Unix socket path; timeout in seconds."""

    def __init__(self, path="/run/qdup/qdup.sock", timeout=10.0):
        self.path = path
        self.timeout = timeout
        self._sock = None
        self._buf = b""

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, req):
        """Sends one request object and returns the reply object (ok is true)."""
        line = json.dumps(req, ensure_ascii=False).encode("utf-8") + b"\n"
        try:
            if self._sock is None:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(self.timeout)
                try:
                    s.connect(self.path)
                except BaseException:
                    s.close()
                    raise
                self._sock = s
            self._sock.sendall(line)
            while b"\n" not in self._buf:
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the daemon closed the connection")
                self._buf += chunk
        except socket.timeout:
            self.close()
            raise QdupError("timeout", "no reply from %s within %gs" % (self.path, self.timeout))
        except OSError as e:
            self.close()
            raise QdupError("connection", "%s: %s" % (self.path, e))
        reply, self._buf = self._buf.split(b"\n", 1)
        try:
            obj = json.loads(reply.decode("utf-8"))
        except ValueError as e:
            self.close()
            raise QdupError("protocol", "reply is not JSON: %s" % e)
        if not obj.get("ok"):
            err = obj.get("error") or {}
            raise QdupError(err.get("code", "internal"), err.get("message", ""))
        return obj

    @staticmethod
    def _opts(req, k, min_score):
        if k is not None:
            req["k"] = k
        if min_score is not None:
            req["min_score"] = min_score
        return req

    def query(self, text, k=None, min_score=None):
        """The stored questions most like text: a list of {"id","text","score"}."""
        return self.request(self._opts({"op": "query", "text": text}, k, min_score))["results"]

    def query_many(self, texts, k=None, min_score=None):
        """One result list per text, searched in one batch."""
        return self.request(self._opts({"op": "query", "texts": list(texts)}, k, min_score))["results"]

    def check(self, id, text, k=None, min_score=None, store=True):
        """Duplicates of a new post, then stores it unless store is False:
        {"duplicates": [...], "stored": bool, ...}."""
        req = self._opts({"op": "check", "id": id, "text": text}, k, min_score)
        if not store:
            req["store"] = False
        return self.request(req)

    def add(self, id, text):
        """Stores a question; returns its row number."""
        return self.request({"op": "add", "id": id, "text": text})["row"]

    def remove(self, id):
        self.request({"op": "remove", "id": id})

    def get(self, id):
        """{"id","text","row","created"}; QdupError "not_found" if there is none."""
        return self.request({"op": "get", "id": id})

    def stats(self):
        return self.request({"op": "stats"})["stats"]

    def ping(self):
        self.request({"op": "ping"})

    def metrics(self):
        """The daemon's figures in the Prometheus text format (a str)."""
        return self.request({"op": "metrics"})["metrics"]
