'use strict';
// catalog: Node.js http server (single-threaded event loop) of the DeepTrace
// demo workload, backed by Redis through ONE ioredis connection shared by all
// concurrent requests (commands from different requests are pipelined on it).
//
//   GET /items/<sku>?...      -> redis GET item:<sku> (+ SET on a cache miss)
//   GET /search?q=..&limit=.. -> redis ZREVRANGE search:<q>, then MGET item:...
//
// Designed failure: /items/<sku> answers 500 when sku % 101 == 0 (after the
// Redis read).

const http = require('http');
const Redis = require('ioredis');
const { TruthLog, nowNs, addr, serve, parseArgs, onSignals } = require('./truth');

const CATALOG_MOD = 101;
const args = parseArgs({ 'listen-port': '18082', redis: 'redis://127.0.0.1:6379/0' });
const truth = new TruthLog('catalog');
const redis = new Redis(args.redis, { maxRetriesPerRequest: 2, enableAutoPipelining: false });

function item(sku) {
  return { sku, name: `item-${sku}`, price_cents: 100 + (sku * 37) % 9900, tags: [`t${sku % 17}`] };
}

/** One Redis command, recorded as an "out" line with the socket's address. */
async function rcmd(ctx, name, ...cmdArgs) {
  const start = nowNs();
  const sock = redis.stream;
  let local = sock ? addr(sock.localAddress, sock.localPort) : '';
  let peer = sock ? addr(sock.remoteAddress, sock.remotePort) : '';
  let err = null;
  let result;
  try {
    result = await redis.call(name, ...cmdArgs);
  } catch (e) {
    err = e;
  }
  if (!local && redis.stream) {
    local = addr(redis.stream.localAddress, redis.stream.localPort);
    peer = addr(redis.stream.remoteAddress, redis.stream.remotePort);
  }
  const rec = { parent_req_id: ctx.reqId, target: 'redis', proto: 'redis',
    op: `${name} ${cmdArgs[0]}${cmdArgs.length > 1 ? ' ...' : ''}`, local, peer,
    status: err ? -1 : 0, ok: !err };
  if (err) rec.error = String(err.message || err);
  truth.writeOut(rec, start, nowNs());
  if (err) throw err;
  return result;
}

async function handler(req, ctx) {
  const url = new URL(req.url, 'http://catalog');
  let m;
  if (req.method === 'GET' && (m = /^\/items\/(\d+)$/.exec(url.pathname))) {
    const sku = Number(m[1]);
    let raw = await rcmd(ctx, 'GET', `item:${sku}`);
    if (raw === null) {
      raw = JSON.stringify(item(sku));
      await rcmd(ctx, 'SET', `item:${sku}`, raw, 'EX', '600');
    }
    if (sku % CATALOG_MOD === 0) return ctx.send(500, { error: `catalog shard for sku ${sku} unavailable` });
    const it = JSON.parse(raw);
    const currency = url.searchParams.get('currency') || 'EUR';
    return ctx.send(200, { ...it, currency });
  }
  if (req.method === 'GET' && url.pathname === '/search') {
    const q = (url.searchParams.get('q') || '').toLowerCase().replace(/[^a-z0-9]/g, '');
    const limit = Math.min(Math.max(Number(url.searchParams.get('limit')) || 10, 1), 50);
    const skus = await rcmd(ctx, 'ZREVRANGE', `search:${q}`, '0', String(limit - 1));
    let items = [];
    if (skus.length > 0) {
      const raws = await rcmd(ctx, 'MGET', ...skus.map((s) => `item:${s}`));
      items = raws.filter(Boolean).map((r) => JSON.parse(r));
    }
    return ctx.send(200, { q, count: items.length, items });
  }
  return ctx.send(404, { error: 'not found' });
}

const server = http.createServer(serve(truth, handler));
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;
server.listen(Number(args['listen-port']), '127.0.0.1', () => {
  console.log(`catalog listening on 127.0.0.1:${args['listen-port']} (pid ${process.pid})`);
});
onSignals(() => {
  truth.close();
  redis.disconnect();
  process.exit(0);
});
