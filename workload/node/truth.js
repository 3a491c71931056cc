'use strict';
// Ground-truth log of one workload service (Node side).
//
// Appends one JSON object per line to $DEEPTRACE_WORKLOAD_TRUTH/<service>.jsonl;
// the format is a contract with the accuracy evaluator (docs/workload.md).
// Lines are buffered in memory and written every FLUSH_MS and on exit, so the
// event loop never waits for the disk on the request path.
//
// Timestamps are wall-clock nanoseconds (CLOCK_REALTIME, like the Go and
// Python services). Node offers a nanosecond monotonic clock (process.hrtime,
// CLOCK_MONOTONIC) but only a millisecond wall clock (Date.now), whose
// sub-millisecond phase was measured to be tens to hundreds of microseconds
// off, and performance.timeOrigin is some 20-40 us off too. The offset
// CLOCK_REALTIME - CLOCK_MONOTONIC is the same for every process, so it is
// asked of a helper (workload/go/cmd/clockoffset, path in
// $DEEPTRACE_WORKLOAD_CLOCKOFFSET) at start and every REFRESH_MS thereafter
// (NTP may slew the wall clock), and a timestamp is hrtime + offset.

const { execFile, execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { performance } = require('perf_hooks');

const FLUSH_MS = 200;
const REFRESH_MS = 5000;
const HELPER = process.env.DEEPTRACE_WORKLOAD_CLOCKOFFSET;

function parseOffset(out) {
  const m = /^(-?\d+)/.exec(String(out).trim());
  return m ? BigInt(m[1]) : null;
}

function initialOffset() {
  if (HELPER) {
    try {
      const off = parseOffset(execFileSync(HELPER, { timeout: 5000 }));
      if (off !== null) return off;
    } catch (e) {
      process.stderr.write(`truth: clock helper ${HELPER} failed (${e.message}); using performance.timeOrigin\n`);
    }
  } else {
    process.stderr.write('truth: DEEPTRACE_WORKLOAD_CLOCKOFFSET unset; timestamps may be off by tens of microseconds\n');
  }
  const h = process.hrtime.bigint();
  const p = performance.now();
  return BigInt(Math.round(performance.timeOrigin * 1000)) * 1000n - (h - BigInt(Math.round(p * 1e6)));
}

let OFFSET = initialOffset();
if (HELPER) {
  const t = setInterval(() => {
    execFile(HELPER, { timeout: 5000 }, (err, out) => {
      const off = err ? null : parseOffset(out);
      if (off !== null) OFFSET = off;
    });
  }, REFRESH_MS);
  t.unref();
}

/** Wall-clock time in ns since the Unix epoch, as a BigInt. */
function nowNs() {
  return process.hrtime.bigint() + OFFSET;
}

function addr(ip, port) {
  if (!ip || !port) return '';
  if (ip.startsWith('::ffff:')) ip = ip.slice(7);
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

class TruthLog {
  constructor(service, dir = process.env.DEEPTRACE_WORKLOAD_TRUTH) {
    this.service = service;
    this.pid = process.pid;
    this.req = 0;
    this.call = 0;
    this.buf = [];
    this.fd = null;
    if (dir) {
      fs.mkdirSync(dir, { recursive: true });
      this.fd = fs.openSync(path.join(dir, `${service}.jsonl`), 'a');
      this.timer = setInterval(() => this.flush(), FLUSH_MS);
      this.timer.unref();
      process.on('exit', () => this.close());
    }
  }

  nextReqId() { return `${this.pid}-${++this.req}`; }

  // start_ns/end_ns are BigInts beyond 2^53: they are appended as raw JSON
  // integers instead of going through JSON.stringify.
  _append(rec, startNs, endNs) {
    if (this.fd === null) return;
    const s = JSON.stringify(rec);
    this.buf.push(`${s.slice(0, -1)},"start_ns":${startNs},"end_ns":${endNs}}\n`);
  }

  writeIn(rec, startNs, endNs) {
    this._append({ kind: 'in', service: this.service, pid: this.pid, tid: this.pid, ...rec }, startNs, endNs);
  }

  writeOut(rec, startNs, endNs) {
    this._append({ kind: 'out', service: this.service, pid: this.pid, tid: this.pid,
      call_id: `${this.pid}-c${++this.call}`, ...rec }, startNs, endNs);
  }

  flush() {
    if (this.fd === null || this.buf.length === 0) return;
    const data = this.buf.join('');
    this.buf = [];
    fs.writeSync(this.fd, data);
  }

  close() {
    if (this.fd === null) return;
    this.flush();
    fs.closeSync(this.fd);
    this.fd = null;
  }
}

/**
 * Wraps a request handler: records one "in" line per request. The handler
 * answers with ctx.send(status, obj), which stamps end_ns right before the
 * response is handed to the socket (so it is always inside the caller's call).
 */
function serve(truth, handler) {
  return (req, res) => {
    const start = nowNs();
    const reqId = truth.nextReqId();
    const s = req.socket;
    const peer = addr(s.remoteAddress, s.remotePort);
    const local = addr(s.localAddress, s.localPort);
    let done = false;
    const ctx = {
      reqId,
      send(status, obj) {
        if (done) return;
        done = true;
        const body = JSON.stringify(obj);
        truth.writeIn({ req_id: reqId, proto: 'http', method: req.method, path: req.url,
          peer, local, status, ok: status < 400 }, start, nowNs());
        res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
        res.end(body);
      },
    };
    Promise.resolve()
      .then(() => handler(req, ctx))
      .catch((err) => ctx.send(500, { error: String(err && err.message || err) }));
  };
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseArgs(defaults) {
  const out = { ...defaults };
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a[i]);
    if (!m) throw new Error(`bad argument ${a[i]}`);
    out[m[1]] = m[2] !== undefined ? m[2] : a[++i];
  }
  return out;
}

function onSignals(fn) {
  for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, fn);
}

module.exports = { TruthLog, nowNs, addr, serve, readBody, parseArgs, onSignals };
