#!/usr/bin/env python3
"""Consistency check of the workload's ground-truth logs (docs/workload.md).

Usage: check_truth.py TRUTH_DIR [--json FILE] [--quiet]

Reads every <service>.jsonl in TRUTH_DIR and checks that
  * every line parses and has the fields of its kind, with start_ns <= end_ns;
  * req_id is unique within a service;
  * every "out" of a service (other than loadgen) has a parent "in" in the same
    service (parent_req_id == req_id) and lies inside it in time;
  * every "in" of a service that has a traced caller matches exactly one "out"
    of a caller: out.target == in.service, out.local == in.peer,
    out.start_ns <= in.start_ns and in.end_ns <= out.end_ns; when several
    calls on that connection span the request (gRPC multiplexing), the one with
    the same op and "key" (what travels on the wire) is taken;
    the matched pair must agree on the operation (method + path, or rpc) and
    on the status;
  * every "out" to a traced service that got a response matches exactly one
    "in" of that service;
and prints counts per service plus the shape of the call trees. Exits 1 when a
check fails. Standard library only.
"""

import argparse
import bisect
import collections
import glob
import json
import os
import sys

IN_FIELDS = {"kind": str, "service": str, "req_id": str, "proto": str, "method": str, "peer": str,
             "local": str, "start_ns": int, "end_ns": int, "pid": int, "status": int, "ok": bool}
OUT_FIELDS = {"kind": str, "service": str, "call_id": str, "parent_req_id": str, "target": str, "proto": str,
              "op": str, "local": str, "peer": str, "start_ns": int, "end_ns": int, "pid": int,
              "status": int, "ok": bool}
ROOT_CALLER = "loadgen"


def load(directory):
    recs, bad = [], []
    for path in sorted(glob.glob(os.path.join(directory, "*.jsonl"))):
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    bad.append("%s:%d: not JSON" % (os.path.basename(path), n))
                    continue
                fields = IN_FIELDS if r.get("kind") == "in" else OUT_FIELDS if r.get("kind") == "out" else None
                if fields is None:
                    bad.append("%s:%d: bad kind %r" % (os.path.basename(path), n, r.get("kind")))
                    continue
                missing = [k for k, t in fields.items() if not isinstance(r.get(k), t) or
                           (t is int and isinstance(r.get(k), bool))]
                if r["kind"] == "in" and not (r.get("path") or r.get("rpc")):
                    missing.append("path|rpc")
                if missing:
                    bad.append("%s:%d: missing/ill-typed %s" % (os.path.basename(path), n, ",".join(missing)))
                    continue
                if r["start_ns"] > r["end_ns"]:
                    bad.append("%s:%d: start_ns > end_ns" % (os.path.basename(path), n))
                    continue
                recs.append(r)
    return recs, bad


def in_op(r):
    return r["rpc"] if r.get("rpc") else "%s %s" % (r["method"], r["path"])


def check(directory):
    recs, bad = load(directory)
    ins = [r for r in recs if r["kind"] == "in"]
    outs = [r for r in recs if r["kind"] == "out"]
    traced = {r["service"] for r in ins}
    problems = collections.Counter()
    examples = collections.defaultdict(list)

    def problem(kind, msg):
        problems[kind] += 1
        if len(examples[kind]) < 5:
            examples[kind].append(msg)

    for b in bad:
        problem("malformed line", b)

    # req_id uniqueness and parent lookup.
    by_req = {}
    for r in ins:
        k = (r["service"], r["req_id"])
        if k in by_req:
            problem("duplicate req_id", "%s %s" % k)
        by_req[k] = r

    stats = collections.defaultdict(lambda: collections.Counter())
    for r in ins:
        s = stats[r["service"]]
        s["in"] += 1
        s["in failed"] += 0 if r["ok"] else 1
    children = collections.defaultdict(list)  # (service, req_id) -> outs
    for o in outs:
        s = stats[o["service"]]
        s["out"] += 1
        s["out -> " + o["target"]] += 1
        if not o["ok"]:
            s["out failed"] += 1
        if o["service"] == ROOT_CALLER:
            continue
        p = by_req.get((o["service"], o["parent_req_id"]))
        if p is None:
            problem("out without parent in", "%s %s parent=%s" % (o["service"], o["call_id"], o["parent_req_id"]))
            continue
        if not (p["start_ns"] <= o["start_ns"] and o["end_ns"] <= p["end_ns"]):
            problem("out outside its parent in", "%s %s" % (o["service"], o["call_id"]))
        children[(o["service"], o["parent_req_id"])].append(o)
    for o in outs:
        if not o["local"] and not (o["status"] == 0 and not o["ok"]):  # a failed dial has no socket
            problem("out without local address", "%s %s %s" % (o["service"], o["call_id"], o.get("error", "")))

    # Index outs to traced services by (target, local), sorted by start.
    index = collections.defaultdict(list)
    for o in outs:
        if o["target"] in traced and o["local"]:
            index[(o["target"], o["local"])].append(o)
    starts, maxdur = {}, {}
    for k, lst in index.items():
        lst.sort(key=lambda o: o["start_ns"])
        starts[k] = [o["start_ns"] for o in lst]
        maxdur[k] = max(o["end_ns"] - o["start_ns"] for o in lst)

    callers = {o["service"] for o in outs if o["target"] in traced}
    matched_out = collections.Counter()  # id(out) -> number of ins matched
    in_parent = {}  # (service, req_id) -> out
    key_used = collections.Counter()
    for r in ins:
        k = (r["service"], r["peer"])
        lst = index.get(k)
        if lst is None:
            if r["service"] == "gateway" and ROOT_CALLER not in callers:
                continue  # root service without loadgen truth
            problem("in without caller out", "%s %s peer=%s %s" % (r["service"], r["req_id"], r["peer"], in_op(r)))
            continue
        i = bisect.bisect_right(starts[k], r["start_ns"])
        lo = r["start_ns"] - maxdur[k]
        cands = []
        while i > 0 and lst[i - 1]["start_ns"] >= lo:
            o = lst[i - 1]
            if o["end_ns"] >= r["end_ns"]:
                cands.append(o)
            i -= 1
        if len(cands) > 1:
            # Several calls on this connection span the request: on HTTP/2
            # (gRPC) that is multiplexing; on HTTP/1.1 it only happens when a
            # caller's end stamp lags its release of the connection. What the
            # request carries on the wire (op, and the gRPC message key) decides.
            same = [o for o in cands if o["op"] == in_op(r) and o.get("key") == r.get("key")]
            key_used[r["proto"]] += 1
            cands = same
        if not cands:
            problem("in without caller out", "%s %s peer=%s %s" % (r["service"], r["req_id"], r["peer"], in_op(r)))
            continue
        if len(cands) > 1:
            problem("in matching several outs", "%s %s peer=%s: %d candidates" % (r["service"], r["req_id"], r["peer"], len(cands)))
            continue
        o = cands[0]
        matched_out[id(o)] += 1
        in_parent[(r["service"], r["req_id"])] = o
        if o["op"] != in_op(r):
            problem("matched pair disagrees on op", "%s %r vs %s %r" % (o["service"], o["op"], r["service"], in_op(r)))
        if r.get("key") and o.get("key") and r["key"] != o["key"]:
            problem("matched pair disagrees on key", "%s %s" % (r["service"], r["req_id"]))
        if o["status"] != r["status"]:
            problem("matched pair disagrees on status", "%s %s: out %d in %d" % (r["service"], r["req_id"], o["status"], r["status"]))

    out_to_traced = 0
    for o in outs:
        if o["target"] not in traced:
            continue
        out_to_traced += 1
        n = matched_out.get(id(o), 0)
        if n == 0:
            if o["status"] == 0 and not o["ok"]:
                stats[o["service"]]["out transport error"] += 1
                continue  # no response: the callee may never have seen it
            problem("out without callee in", "%s %s -> %s local=%s %s" % (o["service"], o["call_id"], o["target"], o["local"], o["op"]))
        elif n > 1:
            problem("out matching several ins", "%s %s" % (o["service"], o["call_id"]))

    # Trees: from each root in (gateway in matched to loadgen, or any gateway in).
    depth_hist = collections.Counter()
    size_hist = collections.Counter()
    roots = [r for r in ins if r["service"] == "gateway"]
    in_by_out = {id(o): r for (svc, rid), o in in_parent.items() for r in [by_req[(svc, rid)]]}

    def walk(r, depth):
        n, d = 1, depth
        for o in children.get((r["service"], r["req_id"]), ()):
            n += 1
            d = max(d, depth + 1)
            c = in_by_out.get(id(o))
            if c is not None:
                cn, cd = walk(c, depth + 1)
                n, d = n + cn - 1, max(d, cd)
        return n, d

    for r in roots:
        n, d = walk(r, 1)
        depth_hist[d] += 1
        size_hist[n] += 1

    if not ins:
        problem("no incoming request recorded", directory)

    report = {
        "dir": directory,
        "lines": len(recs) + len(bad),
        "in": len(ins),
        "out": len(outs),
        "out_to_traced_services": out_to_traced,
        "matched_in_out_pairs": len(in_parent),
        "wire_disambiguations": dict(key_used),
        "root_requests": sum(depth_hist.values()),
        "tree_depth_histogram": dict(sorted(depth_hist.items())),
        "max_tree_size": max(size_hist) if size_hist else 0,
        "services": {k: dict(v) for k, v in sorted(stats.items())},
        "problems": dict(problems),
        "problem_examples": {k: v for k, v in examples.items()},
        "ok": not problems,
    }
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--json", help="write the report as JSON to this file")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    rep = check(a.dir)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep, f, indent=2)
            f.write("\n")
    if not a.quiet:
        print("truth: %s: %d lines, %d in, %d out (%d to traced services), %d in<-out pairs matched"
              " (by connection+time alone, except %s decided by op/key)" % (
                  rep["dir"], rep["lines"], rep["in"], rep["out"], rep["out_to_traced_services"],
                  rep["matched_in_out_pairs"], rep["wire_disambiguations"] or "none"))
        for svc, c in rep["services"].items():
            print("  %-10s %s" % (svc, " ".join("%s=%d" % (k.replace(" ", "_"), v) for k, v in sorted(c.items()) if v)))
        print("  trees from gateway: %d, depth histogram %s, largest %d lines" % (
            rep["root_requests"], rep["tree_depth_histogram"], rep["max_tree_size"]))
        if rep["ok"]:
            print("consistency: OK")
        else:
            print("consistency: FAILED")
            for k, n in rep["problems"].items():
                print("  %s: %d" % (k, n))
                for e in rep["problem_examples"].get(k, []):
                    print("      e.g. %s" % e)
    sys.exit(0 if rep["ok"] else 1)


if __name__ == "__main__":
    main()
