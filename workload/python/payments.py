"""payments: aiohttp (asyncio) server of the DeepTrace demo workload.

  GET  /payments/<order_id> -> redis GET payment:<id>, then
                               ledger GET /entries?order_id=<id>     (sequential)
  POST /payments            -> redis SET idem:<order_id> NX, then
                               ledger POST /entries, then
                               redis SET payment:<order_id>          (sequential)

Designed failure: POST answers 402 (card declined) when customer_id % 71 == 0
(after the idempotency key is set, without calling ledger). GET answers 502
when ledger fails.

One event loop, one thread. Redis goes through a redis-py asyncio connection
pool, ledger through one aiohttp ClientSession (keep-alive pool); for each
command or request the local address of the connection actually used is
recorded.
"""

import argparse
import asyncio
import json
import os
import sys

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from truthlog import TruthLog, addr, now_ns, tid  # noqa: E402

DECLINE_MOD = 71

truth = TruthLog("payments")


@web.middleware
async def truth_middleware(request, handler):
    start, t = now_ns(), tid()
    rid = truth.next_req_id()
    request["req_id"] = rid
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        tr = request.transport
        truth.write_in(
            req_id=rid, proto="http", method=request.method, path=request.path_qs,
            peer=addr(tr.get_extra_info("peername")) if tr else "",
            local=addr(tr.get_extra_info("sockname")) if tr else "",
            start_ns=start, end_ns=now_ns(), tid=t, status=status, ok=status < 400,
        )


class AddrResponse(aiohttp.ClientResponse):
    """ClientResponse that remembers the addresses of the connection it came on.

    aiohttp hands a small response's connection back to the pool before the
    caller sees the response, so resp.connection is often None already; the
    connection is known here, when the response starts.
    """

    sockname = peername = None

    async def start(self, connection):
        tr = connection.transport
        if tr is not None:
            self.sockname, self.peername = tr.get_extra_info("sockname"), tr.get_extra_info("peername")
        return await super().start(connection)


def conn_trace():
    """Stamps trace_request_ctx["conn_ns"] when a request gets its connection."""

    async def got_conn(session, ctx, params):
        if isinstance(ctx.trace_request_ctx, dict):
            ctx.trace_request_ctx["conn_ns"] = now_ns()

    tc = aiohttp.TraceConfig()
    tc.on_connection_reuseconn.append(got_conn)
    tc.on_connection_create_end.append(got_conn)
    return tc


class Backends:
    def __init__(self, redis_url, ledger_url, redis_conns, http_conns):
        # Blocking pool: callers wait for a free connection instead of failing.
        self.pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=redis_conns, timeout=5)
        self.ledger_url = ledger_url
        self.http_conns = http_conns
        self.session = None

    async def start(self):
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.http_conns, keepalive_timeout=30),
            response_class=AddrResponse,
            trace_configs=[conn_trace()],
            timeout=aiohttp.ClientTimeout(total=10))

    async def close(self):
        await self.session.close()
        await self.pool.disconnect()

    async def redis(self, request, *args):
        """One Redis command on a pooled connection, recorded as an "out" line."""
        local = peer = ""
        err = None
        result = None
        conn = await self.pool.get_connection()
        start, t = now_ns(), tid()  # after the pool handed out the connection
        try:
            w = getattr(conn, "_writer", None)  # redis-py keeps the StreamWriter here
            if w is not None:
                local, peer = addr(w.get_extra_info("sockname")), addr(w.get_extra_info("peername"))
            await conn.send_command(*args)
            result = await conn.read_response()
        except Exception as e:
            err = "%s: %s" % (type(e).__name__, e)
        finally:
            await self.pool.release(conn)
        rec = dict(parent_req_id=request["req_id"], target="redis", proto="redis",
                   op=" ".join(str(a) for a in args[:2]) + (" ..." if len(args) > 2 else ""),
                   local=local, peer=peer, start_ns=start, end_ns=now_ns(), tid=t,
                   status=0 if err is None else -1, ok=err is None)
        if err:
            rec["error"] = err
        truth.write_out(**rec)
        if err:
            raise web.HTTPBadGateway(text="redis: " + err)
        return result

    async def ledger(self, request, method, url, payload=None):
        """One pooled HTTP call to ledger, recorded as an "out" line."""
        start, t = now_ns(), tid()
        local = peer = ""
        status, data, err = 0, None, None
        tctx = {}
        try:
            async with self.session.request(method, self.ledger_url + url, json=payload,
                                            trace_request_ctx=tctx) as resp:
                local, peer = addr(resp.sockname), addr(resp.peername)
                raw = await resp.read()
                status = resp.status
                try:
                    data = json.loads(raw) if raw else None
                except ValueError:
                    data = None
        except Exception as e:
            err = "%s: %s" % (type(e).__name__, e)
        start = tctx.get("conn_ns", start)  # when the pool handed out the connection
        rec = dict(parent_req_id=request["req_id"], target="ledger", proto="http",
                   op="%s %s" % (method, url), local=local, peer=peer, start_ns=start, end_ns=now_ns(),
                   tid=t, status=status, ok=err is None and status < 400)
        if err:
            rec["error"] = err
        truth.write_out(**rec)
        return status, data


BACKENDS = web.AppKey("backends", Backends)


async def get_payment(request):
    b = request.app[BACKENDS]
    order_id = int(request.match_info["order_id"])
    cached = await b.redis(request, "GET", "payment:%d" % order_id)
    status, entries = await b.ledger(request, "GET", "/entries?order_id=%d" % order_id)
    if status != 200:
        return web.json_response({"error": "ledger failed", "status": status}, status=502)
    payment = json.loads(cached) if cached else None
    return web.json_response({"order_id": order_id, "payment": payment, "entries": entries})


async def create_payment(request):
    b = request.app[BACKENDS]
    try:
        body = await request.json()
        order_id, customer, amount = int(body["order_id"]), int(body["customer_id"]), int(body["amount_cents"])
    except (ValueError, KeyError, TypeError):
        raise web.HTTPBadRequest(text="bad payment")
    fresh = await b.redis(request, "SET", "idem:%d" % order_id, "1", "NX", "EX", "600")
    if customer % DECLINE_MOD == 0:
        return web.json_response({"error": "card declined", "order_id": order_id}, status=402)
    await asyncio.sleep(0.001)  # talking to the card network
    status, entry = await b.ledger(request, "POST", "/entries",
                                   {"order_id": order_id, "customer_id": customer, "amount_cents": amount})
    if status != 201:
        return web.json_response({"error": "ledger failed", "status": status}, status=502)
    payment = {"order_id": order_id, "amount_cents": amount, "ledger_id": entry.get("id"), "replay": not fresh}
    await b.redis(request, "SET", "payment:%d" % order_id, json.dumps(payment), "EX", "3600")
    return web.json_response(payment, status=201)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen-port", type=int, default=18084)
    ap.add_argument("--ledger", default="http://127.0.0.1:18085")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--redis-conns", type=int, default=8)
    ap.add_argument("--http-conns", type=int, default=32)
    args = ap.parse_args()

    app = web.Application(middlewares=[truth_middleware])
    app[BACKENDS] = Backends(args.redis, args.ledger, args.redis_conns, args.http_conns)
    app.router.add_get("/payments/{order_id:\\d+}", get_payment)
    app.router.add_post("/payments", create_payment)

    async def on_startup(app):
        await app[BACKENDS].start()

    async def on_cleanup(app):
        await app[BACKENDS].close()
        truth.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    print("payments listening on 127.0.0.1:%d (pid %d)" % (args.listen_port, os.getpid()), flush=True)
    web.run_app(app, host="127.0.0.1", port=args.listen_port, access_log=None,
                keepalive_timeout=75, print=None)


if __name__ == "__main__":
    main()
