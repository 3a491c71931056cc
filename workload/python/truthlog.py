"""Ground-truth log of one workload service (Python side).

Appends one JSON object per line to $DEEPTRACE_WORKLOAD_TRUTH/<service>.jsonl.
The format is a contract with the accuracy evaluator, described field by field
in docs/workload.md. Records are serialised by the calling thread, appended to
an in-memory list under a short lock and written by a background thread every
FLUSH_INTERVAL seconds (and on close), so the request path never waits for the
disk.
"""

import atexit
import itertools
import json
import os
import threading
import time

FLUSH_INTERVAL = 0.2

now_ns = time.time_ns
tid = threading.get_native_id


def addr(sockaddr):
    """Formats a socket address tuple as "ip:port" ("" when unknown)."""
    if not sockaddr:
        return ""
    host, port = sockaddr[0], sockaddr[1]
    if ":" in host:
        return "[%s]:%d" % (host, port)
    return "%s:%d" % (host, port)


class TruthLog:
    def __init__(self, service, directory=None):
        self.service = service
        self.pid = os.getpid()
        self._req = itertools.count(1)
        self._call = itertools.count(1)
        self._lock = threading.Lock()
        self._buf = []
        self._wlock = threading.Lock()
        self._f = None
        directory = os.environ.get("DEEPTRACE_WORKLOAD_TRUTH") if directory is None else directory
        if directory:
            os.makedirs(directory, exist_ok=True)
            self._f = open(os.path.join(directory, service + ".jsonl"), "ab", buffering=0)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop, name="truth-flush", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def next_req_id(self):
        """A fresh service-local request id; never sent on the wire."""
        return "%d-%d" % (self.pid, next(self._req))

    def write_in(self, **rec):
        rec["kind"] = "in"
        rec["service"] = self.service
        rec["pid"] = self.pid
        self._append(rec)

    def write_out(self, **rec):
        rec["kind"] = "out"
        rec["service"] = self.service
        rec["pid"] = self.pid
        rec.setdefault("call_id", "%d-c%d" % (self.pid, next(self._call)))
        self._append(rec)

    def _append(self, rec):
        if self._f is None:
            return
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        with self._lock:
            self._buf.append(line)

    def _loop(self):
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()

    def flush(self):
        if self._f is None:
            return
        with self._wlock:
            with self._lock:
                buf, self._buf = self._buf, []
            if buf and not self._f.closed:
                self._f.write("".join(buf).encode())

    def close(self):
        if self._f is None or self._f.closed:
            return
        self._stop.set()
        self.flush()
        with self._wlock:
            self._f.close()
