import { useEffect, useMemo, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { isPeer, peerColor, serviceColor } from '../colors';
import { fmtDur, fmtRate, fmtTime } from '../format';
import { navigate } from '../router';
import type { Dependencies, DependencyEdge, MetricEdge, MetricEdges } from '../types';

const NODE_W = 176;
const NODE_H = 46;
const COL_GAP = 200;
const PITCH = NODE_H + 34; // vertical distance between slots of a column
const PAD = 24;

// MapEdge is an edge of the map with the figures its label shows: from the
// metrics index (the rollup's per-minute RED metrics) where it has the
// edge, else from the traces of the range.
export interface MapEdge extends DependencyEdge {
  rate: number; // calls per second over the range
  source: 'metrics' | 'traces';
}

// mergeEdges takes each edge's figures from the metrics index when it has
// them, and keeps the edges only the traces know (a range the rollup has
// not reached, a rollup that is not running).
export function mergeEdges(deps: Dependencies | null, metrics: MetricEdges | null): MapEdge[] {
  const out = new Map<string, MapEdge>();
  if (deps) {
    const secs = Math.max(1, (Date.parse(deps.to) - Date.parse(deps.from)) / 1000);
    for (const e of deps.edges) out.set(`${e.parent}>${e.child}`, { ...e, rate: e.calls / secs, source: 'traces' });
  }
  // Percentiles of a range come from merged sketches (within 1%); none is
  // above the exact maximum.
  const cap = (v: number, m: MetricEdge) => Math.min(v, m.max_ns);
  for (const m of metrics?.edges ?? []) {
    if (m.count === 0) continue;
    out.set(`${m.caller}>${m.callee}`, {
      parent: m.caller,
      child: m.callee,
      calls: m.count,
      errors: m.errors,
      error_rate: m.error_rate,
      p50_ns: cap(m.p50_ns, m),
      p90_ns: cap(m.p90_ns, m),
      p99_ns: cap(m.p99_ns, m),
      max_ns: m.max_ns,
      rate: m.rate,
      source: 'metrics',
    });
  }
  return [...out.values()].sort((a, b) => a.parent.localeCompare(b.parent) || a.child.localeCompare(b.child));
}

interface Node {
  name: string;
  layer: number;
  callsIn: number;
  callsOut: number;
  errorsIn: number;
  rateIn: number;
  rateOut: number;
  x: number;
  y: number;
}

// A slot is a place in a column: a service, or a waypoint of an edge that
// crosses the column (so that long edges run between nodes, not over them).
interface Slot {
  id: string;
  layer: number;
  order: number;
  y: number;
}

export interface MapLayout {
  nodes: Map<string, Node>;
  // Points of each edge (by "parent>child"), source to target, through the
  // waypoints of the columns it crosses. Back edges (calls to an earlier
  // column, loops) have none and are routed below.
  routes: Map<string, { x: number; y: number }[]>;
  width: number;
  height: number;
}

// layout is a small layered (Sugiyama-style) drawing: services in columns
// by call depth (the longest chain of calls from a service nobody calls),
// long edges broken into waypoints, each column ordered by the mean
// position of its neighbours over a few sweeps to cut crossings. Cycles are
// broken by ignoring the edge that closes them.
export function layout(edges: MapEdge[]): MapLayout {
  const nodes = new Map<string, Node>();
  const node = (n: string) => {
    let v = nodes.get(n);
    if (!v) nodes.set(n, (v = { name: n, layer: 0, callsIn: 0, callsOut: 0, errorsIn: 0, rateIn: 0, rateOut: 0, x: 0, y: 0 }));
    return v;
  };
  const out = new Map<string, string[]>();
  for (const e of edges) {
    const p = node(e.parent);
    p.callsOut += e.calls;
    p.rateOut += e.rate;
    const c = node(e.child);
    c.callsIn += e.calls;
    c.rateIn += e.rate;
    c.errorsIn += e.errors;
    if (e.parent !== e.child) out.set(e.parent, [...(out.get(e.parent) ?? []), e.child]);
  }
  const onStack = new Set<string>();
  const depth = new Map<string, number>();
  const visit = (n: string, d: number) => {
    if (onStack.has(n) || (depth.get(n) ?? -1) >= d) return;
    depth.set(n, d);
    onStack.add(n);
    for (const c of out.get(n) ?? []) visit(c, d + 1);
    onStack.delete(n);
  };
  const hasCaller = new Set(edges.filter((e) => e.parent !== e.child).map((e) => e.child));
  for (const s of [...nodes.keys()].filter((n) => !hasCaller.has(n)).sort()) visit(s, 0);
  for (const n of [...nodes.keys()].sort()) if (!depth.has(n)) visit(n, 0);
  for (const v of nodes.values()) v.layer = depth.get(v.name) ?? 0;

  // Slots: the nodes, and a waypoint per column a forward edge crosses.
  const slots = new Map<string, Slot>();
  const cols: Slot[][] = [];
  const addSlot = (id: string, layer: number) => {
    const sl = { id, layer, order: 0, y: 0 };
    slots.set(id, sl);
    (cols[layer] ??= []).push(sl);
  };
  for (const v of [...nodes.values()].sort((a, b) => a.name.localeCompare(b.name))) addSlot(v.name, v.layer);
  const pred = new Map<string, string[]>();
  const succ = new Map<string, string[]>();
  const link = (a: string, b: string) => {
    pred.set(b, [...(pred.get(b) ?? []), a]);
    succ.set(a, [...(succ.get(a) ?? []), b]);
  };
  const chains = new Map<string, string[]>();
  for (const e of edges) {
    const a = nodes.get(e.parent)!;
    const b = nodes.get(e.child)!;
    if (b.layer <= a.layer) continue;
    const chain = [a.name];
    for (let l = a.layer + 1; l < b.layer; l++) {
      const id = `${e.parent}>${e.child}#${l}`;
      addSlot(id, l);
      chain.push(id);
    }
    chain.push(b.name);
    for (let i = 1; i < chain.length; i++) link(chain[i - 1], chain[i]);
    chains.set(`${e.parent}>${e.child}`, chain);
  }
  // Order the columns: the first by outgoing calls, then sweeps by the
  // mean order of the neighbours on the other side.
  const first = cols[0] ?? [];
  first.sort((a, b) => (nodes.get(b.id)?.callsOut ?? 0) - (nodes.get(a.id)?.callsOut ?? 0) || a.id.localeCompare(b.id));
  cols.forEach((c) => c?.forEach((sl, k) => (sl.order = k)));
  const sweep = (layers: number[], nb: Map<string, string[]>) => {
    for (const l of layers) {
      const col = cols[l];
      if (!col) continue;
      const bary = (sl: Slot) => {
        const ns = (nb.get(sl.id) ?? []).map((id) => slots.get(id)!);
        return ns.length ? ns.reduce((s, n) => s + n.order, 0) / ns.length : sl.order;
      };
      const key = new Map(col.map((sl) => [sl.id, bary(sl)]));
      col.sort((a, b) => key.get(a.id)! - key.get(b.id)! || Number(isPeer(a.id)) - Number(isPeer(b.id)) || a.id.localeCompare(b.id));
      col.forEach((sl, k) => (sl.order = k));
    }
  };
  const fwd = cols.map((_, i) => i).slice(1);
  const back = cols.map((_, i) => i).reverse().slice(1);
  for (let i = 0; i < 3; i++) {
    sweep(fwd, pred);
    sweep(back, succ);
  }
  sweep(fwd, pred);

  const tallest = Math.max(1, ...cols.map((c) => c?.length ?? 0));
  const height = PAD * 2 + (tallest - 1) * PITCH + NODE_H + 40; // room for back edges below
  cols.forEach((col) => {
    if (!col) return;
    const top = (height - 40 - ((col.length - 1) * PITCH + NODE_H)) / 2;
    col.forEach((sl, k) => (sl.y = top + k * PITCH));
  });
  const colX = (l: number) => PAD + l * (NODE_W + COL_GAP);
  for (const v of nodes.values()) {
    v.x = colX(v.layer);
    v.y = slots.get(v.name)!.y;
  }
  const routes = new Map<string, { x: number; y: number }[]>();
  chains.forEach((chain, key) => {
    const pts = [];
    for (let i = 0; i < chain.length; i++) {
      const sl = slots.get(chain[i])!;
      const x = colX(sl.layer);
      const y = sl.y + NODE_H / 2;
      if (i > 0) pts.push({ x: i === chain.length - 1 ? x - 2 : x, y });
      if (i < chain.length - 1) pts.push({ x: x + NODE_W, y });
    }
    routes.set(key, pts);
  });
  const width = PAD * 2 + cols.length * NODE_W + (cols.length - 1) * COL_GAP;
  return { nodes, routes, width, height };
}

const ranges = [
  ['15m', 'Last 15 minutes'],
  ['1h', 'Last hour'],
  ['6h', 'Last 6 hours'],
  ['24h', 'Last 24 hours'],
  ['7d', 'Last 7 days'],
];

export function ServiceMap({ params }: { params: URLSearchParams }) {
  const lookback = params.get('lookback') ?? '1h';
  const service = params.get('service') ?? '';
  const [deps, setDeps] = useState<Dependencies | null>(null);
  const [metrics, setMetrics] = useState<MetricEdges | null>(null);
  const [metricsError, setMetricsError] = useState('');
  const [error, setError] = useState('');
  const [hover, setHover] = useState('');

  // The graph comes from the traces of the range, the edge figures from
  // the metrics index; both are asked at once. The metrics answer only
  // for callers, so "Around" keeps the edges that touch the service.
  useEffect(() => {
    const ctl = new AbortController();
    setError('');
    setMetricsError('');
    const msg = (e: unknown) => (e instanceof ApiError ? e.message : String(e));
    Promise.all([
      api.dependencies({ lookback, service }, ctl.signal),
      api.metricEdges({ lookback }, ctl.signal).catch((e) => {
        if (!ctl.signal.aborted) setMetricsError(msg(e));
        return null;
      }),
    ]).then(
      ([d, m]) => {
        if (m && service) m = { ...m, edges: m.edges.filter((e) => e.caller === service || e.callee === service) };
        setMetrics(m);
        setDeps(d);
      },
      (e) => {
        if (!ctl.signal.aborted) setError(msg(e));
      },
    );
    return () => ctl.abort();
  }, [lookback, service]);

  const edges = useMemo(() => mergeEdges(deps, metrics), [deps, metrics]);
  const g = useMemo(() => (deps ? layout(edges) : null), [edges]);
  const fromMetrics = edges.filter((e) => e.source === 'metrics').length;
  const openEdge = (e: MapEdge) => navigate('metrics/' + encodeURIComponent(e.parent), { lookback, peer: e.child });
  const set = (k: string, v: string) => {
    const q = new URLSearchParams(params);
    if (v) q.set(k, v);
    else q.delete(k);
    navigate('map', q);
  };
  const services = g ? [...g.nodes.keys()].filter((n) => !isPeer(n)).sort() : [];

  return (
    <div class="map-page">
      <div class="card toolbar">
        <h2>Service map</h2>
        <label class="inline">
          Range
          <select value={lookback} onChange={(e) => set('lookback', (e.target as HTMLSelectElement).value)}>
            {ranges.map(([v, l]) => (
              <option value={v}>{l}</option>
            ))}
          </select>
        </label>
        <label class="inline">
          Around
          <select value={service} onChange={(e) => set('service', (e.target as HTMLSelectElement).value)}>
            <option value="">every service</option>
            {(service && !services.includes(service) ? [service, ...services] : services).map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </label>
        {deps && (
          <span class="muted small map-source">
            {edges.length} edges: {fromMetrics} with figures from the metrics index
            {fromMetrics < edges.length ? `, ${edges.length - fromMetrics} from the traces only (grey labels)` : ''}; {deps.traces} traces
            {deps.sampled ? ' (newest only)' : ''}; {fmtTime(deps.from)} – {fmtTime(deps.to)}
          </span>
        )}
      </div>
      {error && <div class="error-box">{error}</div>}
      {metricsError && <div class="error-box">The metrics index did not answer ({metricsError}): edge figures come from the traces.</div>}
      {deps && g && edges.length === 0 && <div class="card empty">No calls in this range.</div>}
      {deps && g && edges.length > 0 && (
        <>
          <div class="card flush map-canvas">
            <svg width={g.width} height={g.height} class="service-map" role="img" aria-label="Service map">
              <defs>
                <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse">
                  <path d="M 0 0 L 10 5 L 0 10 z" fill="#64748b" />
                </marker>
                <marker id="arrow-err" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="10" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse">
                  <path d="M 0 0 L 10 5 L 0 10 z" fill="#dc2626" />
                </marker>
              </defs>
              {edges.map((e) => (
                <Edge part="path" e={e} g={g} dim={!!hover && hover !== e.parent && hover !== e.child} />
              ))}
              {edges.map((e) => (
                <Edge part="label" e={e} g={g} dim={!!hover && hover !== e.parent && hover !== e.child} onOpen={openEdge} />
              ))}
              {[...g.nodes.values()].map((n) => (
                <g
                  class={'map-node' + (isPeer(n.name) ? ' peer' : '')}
                  transform={`translate(${n.x},${n.y})`}
                  onMouseEnter={() => setHover(n.name)}
                  onMouseLeave={() => setHover('')}
                  onClick={() => !isPeer(n.name) && navigate('traces', { service: n.name, lookback })}
                  data-node={n.name}
                >
                  <title>
                    {n.name}: {n.callsIn} calls in, {n.callsOut} calls out{isPeer(n.name) ? ' (no agent: seen from its callers)' : ' — click for its traces'}
                  </title>
                  <rect width={NODE_W} height={NODE_H} rx="8" class="node-box" />
                  <rect width="6" height={NODE_H} rx="3" fill={isPeer(n.name) ? peerColor : serviceColor(n.name)} />
                  <text x="16" y="20" class="node-name">
                    {nodeLabel(n.name)}
                  </text>
                  <text x="16" y="36" class="node-sub">
                    {nodeSub(n)}
                  </text>
                </g>
              ))}
            </svg>
          </div>
          <div class="card flush">
            <table class="grid">
              <thead>
                <tr>
                  <th>Caller</th>
                  <th>Callee</th>
                  <th class="num">Calls</th>
                  <th class="num">Rate</th>
                  <th class="num">Errors</th>
                  <th class="num">p50</th>
                  <th class="num">p90</th>
                  <th class="num">p99</th>
                  <th class="num">max</th>
                  <th>Figures from</th>
                </tr>
              </thead>
              <tbody>
                {edges.map((e) => (
                  <tr class="clickable" data-edge-row={`${e.parent}>${e.child}`} onClick={() => openEdge(e)} title="open this edge's charts">
                    <td>{e.parent}</td>
                    <td>{e.child}</td>
                    <td class="num">{e.calls}</td>
                    <td class="num">{fmtRate(e.rate)}</td>
                    <td class={'num' + (e.errors ? ' err-text' : '')}>
                      {e.errors} ({(e.error_rate * 100).toFixed(1)}%)
                    </td>
                    <td class="num">{fmtDur(e.p50_ns)}</td>
                    <td class="num">{fmtDur(e.p90_ns)}</td>
                    <td class="num">{fmtDur(e.p99_ns)}</td>
                    <td class="num">{fmtDur(e.max_ns)}</td>
                    <td class="small muted">{e.source === 'metrics' ? 'metrics index' : 'traces'}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      {!deps && !error && <div class="card empty">Loading the service map…</div>}
    </div>
  );
}

// nodeLabel shortens "redis://10.1.0.7:6379" to "redis 10.1.0.7:6379".
function nodeLabel(name: string): string {
  const m = name.match(/^(\w+):\/\/(.*)$/);
  const s = m ? `${m[1]} ${m[2]}` : name;
  return s.length > 24 ? s.slice(0, 23) + '…' : s;
}

function nodeSub(n: Node): string {
  if (n.callsIn === 0) return `${fmtRate(n.rateOut)} out`;
  const err = n.errorsIn ? ` · ${((n.errorsIn / n.callsIn) * 100).toFixed(1)}% err` : '';
  return `${fmtRate(n.rateIn)} in${err}`;
}

interface EdgeProps {
  e: MapEdge;
  g: MapLayout;
  dim: boolean;
  part: 'path' | 'label';
  onOpen?: (e: MapEdge) => void;
}

function Edge({ e, g, dim, part, onOpen }: EdgeProps) {
  const a = g.nodes.get(e.parent)!;
  const b = g.nodes.get(e.child)!;
  const failing = e.errors > 0;
  const stroke = failing ? '#dc2626' : '#94a3b8';
  const w = Math.min(6, 1.2 + Math.log10(1 + e.calls));
  const route = g.routes.get(`${e.parent}>${e.child}`);
  let d: string;
  let lx: number;
  let ly: number;
  if (route) {
    // Gaps between columns are curves with level ends; inside a column
    // the edge runs straight between the slots.
    d = `M ${route[0].x} ${route[0].y}`;
    for (let i = 1; i < route.length; i++) {
      const p = route[i - 1];
      const q = route[i];
      if (i % 2 === 1) {
        const mx = (p.x + q.x) / 2;
        d += ` C ${mx} ${p.y}, ${mx} ${q.y}, ${q.x} ${q.y}`;
      } else {
        d += ` L ${q.x} ${q.y}`;
      }
    }
    // The label sits in the middle of the first gap.
    lx = (route[0].x + route[1].x) / 2;
    ly = (route[0].y + route[1].y) / 2;
  } else if (a === b) {
    // A service calling itself: a loop above the node.
    d = `M ${a.x + NODE_W - 30} ${a.y} C ${a.x + NODE_W - 30} ${a.y - 40}, ${a.x + NODE_W + 20} ${a.y - 10}, ${a.x + NODE_W} ${a.y + 12}`;
    lx = a.x + NODE_W;
    ly = a.y - 34;
  } else {
    // A call back to an earlier (or the same) column: routed below.
    const x1 = a.x + NODE_W / 2;
    const y1 = a.y + NODE_H;
    const x2 = b.x + NODE_W / 2;
    const y2 = b.y + NODE_H + 2;
    const low = Math.max(y1, y2) + 36;
    d = `M ${x1} ${y1} C ${x1} ${low}, ${x2} ${low}, ${x2} ${y2}`;
    lx = (x1 + x2) / 2;
    ly = low - 8;
  }
  const l1 = `${fmtRate(e.rate)} · ${(e.error_rate * 100).toFixed(1)}% err`;
  const l2 = `p50 ${fmtDur(e.p50_ns)} · p99 ${fmtDur(e.p99_ns)}`;
  const lw = Math.max(l1.length, l2.length) * 6.2 + 12;
  const src = e.source === 'metrics' ? 'from the metrics index' : 'from the traces (the metrics index has no data for this edge)';
  const title = (
    <title>
      {e.parent} → {e.child}: {e.calls} calls, {e.errors} errors, p50 {fmtDur(e.p50_ns)}, p90 {fmtDur(e.p90_ns)}, p99 {fmtDur(e.p99_ns)} — {src}
      {part === 'label' ? '; click for its charts' : ''}
    </title>
  );
  if (part === 'path') {
    return (
      <g class={'map-edge' + (dim ? ' dim' : '')} data-edge={`${e.parent}>${e.child}`}>
        {title}
        <path d={d} fill="none" stroke={stroke} stroke-width={w} marker-end={failing ? 'url(#arrow-err)' : 'url(#arrow)'} />
      </g>
    );
  }
  return (
    <g
      class={'map-edge' + (dim ? ' dim' : '')}
      data-edge-label={`${e.parent}>${e.child}`}
      data-source={e.source}
      onClick={() => onOpen?.(e)}
    >
      {title}
      <g transform={`translate(${lx - lw / 2},${ly - 15})`} class={'edge-label ' + e.source}>
        <rect width={lw} height="30" rx="4" />
        <text x={lw / 2} y="12" text-anchor="middle" class={failing ? 'err' : ''}>
          {l1}
        </text>
        <text x={lw / 2} y="25" text-anchor="middle">
          {l2}
        </text>
      </g>
    </g>
  );
}
