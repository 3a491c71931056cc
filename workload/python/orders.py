"""orders: Flask app under waitress (threaded WSGI server) of the DeepTrace
demo workload.

  GET  /orders/<id>  -> payments GET /payments/<id>            (one call)
  POST /orders       -> catalog GET /items/<sku>?fields=price,
                        then payments POST /payments             (sequential)

Designed failure: GET /orders/<id> answers 500 when id % 97 == 0 (after its
downstream call). Outgoing HTTP goes through one shared urllib3 PoolManager
(keep-alive connections shared by the worker threads); the local address of
the socket actually used is read from the response's connection.

Note that waitress reads and writes sockets on its main (asyncore) thread and
runs the application on worker threads.
"""

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import time

import urllib3
import waitress
from flask import Flask, abort, g, jsonify, request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from truthlog import TruthLog, addr, now_ns, tid  # noqa: E402

ORDERS_GET_MOD = 97

truth = TruthLog("orders")
app = Flask("orders")
http = None  # urllib3.PoolManager, set in main()
CFG = {}
# Order numbers: like a database sequence, unique per process start.
order_seq = itertools.count(1_000_000 + (time.time_ns() // 1000) % 900_000_000)


class TruthMiddleware:
    """WSGI middleware recording one "in" line per request."""

    def __init__(self, wsgi_app, local):
        self.app = wsgi_app
        self.local = local

    def __call__(self, environ, start_response):
        start = now_ns()
        t = tid()
        rid = truth.next_req_id()
        environ["workload.req_id"] = rid
        status = [0]

        def sr(st, headers, exc_info=None):
            status[0] = int(st.split(" ", 1)[0])
            return start_response(st, headers, exc_info)

        body = self.app(environ, sr)
        try:
            chunks = list(body)
        finally:
            if hasattr(body, "close"):
                body.close()
        path = environ.get("PATH_INFO", "")
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        truth.write_in(
            req_id=rid, proto="http", method=environ["REQUEST_METHOD"], path=path,
            peer="%s:%s" % (environ.get("REMOTE_ADDR"), environ.get("REMOTE_PORT")),
            local=self.local, start_ns=start, end_ns=now_ns(), tid=t,
            status=status[0], ok=status[0] < 400,
        )
        return chunks


def call(target, method, url, payload=None):
    """One pooled HTTP call, recorded as an "out" line. Returns (status, json)."""
    base = CFG[target]
    body = None
    headers = {}
    if payload is not None:
        body = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    start, t = now_ns(), tid()
    status, data, err, local, peer = 0, None, None, "", ""
    try:
        resp = http.request(method, base + url, body=body, headers=headers,
                            preload_content=False, timeout=urllib3.Timeout(connect=2, read=10))
        conn = resp.connection
        if conn is not None and conn.sock is not None:
            local, peer = addr(conn.sock.getsockname()), addr(conn.sock.getpeername())
        raw = resp.read()
        resp.release_conn()
        status = resp.status
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
    except Exception as e:  # transport failure
        err = "%s: %s" % (type(e).__name__, e)
    rec = dict(parent_req_id=request.environ["workload.req_id"], target=target, proto="http",
               op="%s %s" % (method, url), local=local, peer=peer, start_ns=start, end_ns=now_ns(),
               tid=t, status=status, ok=err is None and status < 400)
    if err:
        rec["error"] = err
    truth.write_out(**rec)
    return status, data


class CorruptOrder(Exception):
    pass


@app.errorhandler(CorruptOrder)
def corrupt_order(e):  # designed failure: a plain 500, without a traceback in the log
    return jsonify(error=str(e)), 500


@app.get("/orders/<int:order_id>")
def get_order(order_id):
    status, payment = call("payments", "GET", "/payments/%d" % order_id)
    if status != 200:
        return jsonify(error="payments failed", status=status), 502
    if order_id % ORDERS_GET_MOD == 0:
        raise CorruptOrder("order %d: corrupt record" % order_id)  # designed failure -> 500
    return jsonify(order_id=order_id, state="shipped" if order_id % 3 else "pending", payment=payment)


@app.post("/orders")
def create_order():
    body = request.get_json(silent=True) or {}
    try:
        customer, sku, qty = int(body["customer_id"]), int(body["sku"]), int(body["qty"])
    except (KeyError, TypeError, ValueError):
        abort(400)
    order_id = next(order_seq)
    status, item = call("catalog", "GET", "/items/%d?fields=price" % sku)
    if status != 200 or not item:
        return jsonify(error="catalog failed", status=status), 502
    amount = int(item["price_cents"]) * qty
    status, pay = call("payments", "POST", "/payments",
                       {"order_id": order_id, "customer_id": customer, "amount_cents": amount})
    if status == 402:
        return jsonify(error="payment declined", order_id=order_id), 402
    if status != 201:
        return jsonify(error="payments failed", status=status), 502
    return jsonify(order_id=order_id, amount_cents=amount, reservation_id=body.get("reservation_id"),
                   payment=pay), 201


def main():
    global http
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-port", type=int, default=18081)
    ap.add_argument("--payments", default="http://127.0.0.1:18084")
    ap.add_argument("--catalog", default="http://127.0.0.1:18082")
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    CFG["payments"], CFG["catalog"] = args.payments, args.catalog
    http = urllib3.PoolManager(num_pools=4, maxsize=args.threads, block=False,
                               retries=urllib3.Retry(total=2, connect=2, read=1, redirect=0, status=0))

    def stop(signum, frame):
        truth.close()
        os._exit(0)

    # waitress warns on every queued task once the 8 threads are busy
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("orders listening on 127.0.0.1:%d (pid %d)" % (args.listen_port, os.getpid()), flush=True)
    waitress.serve(TruthMiddleware(app.wsgi_app, "127.0.0.1:%d" % args.listen_port),
                   host="127.0.0.1", port=args.listen_port, threads=args.threads,
                   connection_limit=512, channel_timeout=300, asyncore_use_poll=True,
                   _quiet=True)


if __name__ == "__main__":
    main()
