import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { serviceColor } from '../colors';
import { fmtBytes, fmtDur, fmtTime } from '../format';
import { href } from '../router';
import type { Trace, TraceSpan } from '../types';

const ROW_H = 28;
const NAME_W = 380;

interface Row {
  span: TraceSpan;
  depth: number;
  children: number;
}

interface Tree {
  byId: Map<string, TraceSpan>;
  children: Map<string, TraceSpan[]>;
  roots: TraceSpan[];
  maxDepth: number;
}

// buildTree links spans by their assembled parent; children by start
// time, a client span before the server span it carries when both start
// in the same instant. Spans whose parent is missing become extra roots.
export function buildTree(t: Trace): Tree {
  const byId = new Map(t.spans.map((s) => [s.span_id, s]));
  const children = new Map<string, TraceSpan[]>();
  const roots: TraceSpan[] = [];
  let maxDepth = 0;
  for (const s of t.spans) {
    maxDepth = Math.max(maxDepth, s.depth ?? 0);
    const p = s.trace_parent_id;
    if (!p || p === s.span_id || !byId.has(p)) {
      roots.push(s);
      continue;
    }
    const l = children.get(p);
    if (l) l.push(s);
    else children.set(p, [s]);
  }
  const order = (a: TraceSpan, b: TraceSpan) =>
    a.start_ns - b.start_ns || (a.role === 'client' ? -1 : 0) - (b.role === 'client' ? -1 : 0);
  roots.sort((a, b) => (a.span_id === t.root_span_id ? -1 : b.span_id === t.root_span_id ? 1 : order(a, b)));
  children.forEach((l) => l.sort(order));
  return { byId, children, roots, maxDepth };
}

// visibleRows walks the tree depth-first, skipping collapsed subtrees.
function visibleRows(tree: Tree, collapsed: Set<string>): Row[] {
  const out: Row[] = [];
  const seen = new Set<string>();
  const stack: [TraceSpan, number][] = tree.roots.map((r) => [r, 0] as [TraceSpan, number]).reverse();
  while (stack.length) {
    const [s, d] = stack.pop()!;
    if (seen.has(s.span_id)) continue; // a cycle in bad data must not hang the page
    seen.add(s.span_id);
    const kids = tree.children.get(s.span_id) ?? [];
    out.push({ span: s, depth: s.depth ?? d, children: kids.length });
    if (!collapsed.has(s.span_id)) {
      for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], d + 1]);
    }
  }
  return out;
}

export function TraceView({ id, selected }: { id: string; selected: string }) {
  const [trace, setTrace] = useState<Trace | null>(null);
  const [error, setError] = useState('');
  const [sel, setSel] = useState(selected);
  const [collapsed, setCollapsed] = useState<Set<string>>(new Set());

  useEffect(() => {
    const ctl = new AbortController();
    setTrace(null);
    setError('');
    api.trace(id, ctl.signal).then(setTrace, (e) => {
      if (!ctl.signal.aborted) setError(e instanceof ApiError ? e.message : String(e));
    });
    return () => ctl.abort();
  }, [id]);

  const select = (spanId: string) => {
    const next = spanId === sel ? '' : spanId;
    setSel(next);
    // Keep the selection in the address (linkable) without a new history
    // entry per click.
    history.replaceState(null, '', href('trace/' + id, next ? { span: next } : undefined));
  };

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === 'Escape' && sel && select('');
    addEventListener('keydown', onKey);
    return () => removeEventListener('keydown', onKey);
  });

  const tree = useMemo(() => (trace ? buildTree(trace) : null), [trace]);
  if (error) return <div class="error-box">{error}</div>;
  if (!trace || !tree) return <div class="card empty">Loading trace {id}…</div>;
  const span = sel ? tree.byId.get(sel) : undefined;
  const errors = trace.spans.filter((s) => s.error).length;

  return (
    <div class="trace-page">
      <div class="card trace-head">
        <div class="trace-title">
          <a class="back" href={href('traces')} title="Back to the search">
            ←
          </a>
          <h1>
            <span class="svc" style={{ color: serviceColor(trace.root_service) }}>
              {trace.root_service}
            </span>{' '}
            {trace.root_operation}
          </h1>
          {trace.error ? <span class="badge err">{errors} failed span{errors === 1 ? '' : 's'}</span> : <span class="badge ok">ok</span>}
        </div>
        <dl class="facts">
          <div>
            <dt>Trace ID</dt>
            <dd class="mono">{trace.trace_id}</dd>
          </div>
          <div>
            <dt>Start</dt>
            <dd>{fmtTime(trace.timestamp, true)}</dd>
          </div>
          <div>
            <dt>Duration</dt>
            <dd>{fmtDur(trace.duration_ns)}</dd>
          </div>
          <div>
            <dt>Spans</dt>
            <dd>{trace.spans.length}</dd>
          </div>
          <div>
            <dt>Depth</dt>
            <dd>{tree.maxDepth}</dd>
          </div>
          <div>
            <dt>Services</dt>
            <dd class="chips">
              {trace.services.map((s) => (
                <span class="chip" style={{ borderColor: serviceColor(s) }}>
                  <i style={{ background: serviceColor(s) }} />
                  {s}
                </span>
              ))}
            </dd>
          </div>
          <div>
            <dt>Assembled</dt>
            <dd>{fmtTime(trace.assembled_at)}</dd>
          </div>
        </dl>
      </div>
      <div class={span ? 'trace-body with-details' : 'trace-body'}>
        <Waterfall trace={trace} tree={tree} selected={sel} onSelect={select} collapsed={collapsed} setCollapsed={setCollapsed} />
        {span && <SpanDetails trace={trace} tree={tree} span={span} onSelect={select} />}
      </div>
    </div>
  );
}

function Waterfall(props: {
  trace: Trace;
  tree: Tree;
  selected: string;
  onSelect: (id: string) => void;
  collapsed: Set<string>;
  setCollapsed: (s: Set<string>) => void;
}) {
  const { trace, tree, selected, onSelect, collapsed, setCollapsed } = props;
  const rows = useMemo(() => visibleRows(tree, collapsed), [tree, collapsed]);
  const scroller = useRef<HTMLDivElement>(null);
  const [top, setTop] = useState(0);
  const [height, setHeight] = useState(600);
  useEffect(() => {
    const el = scroller.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);
  const total = Math.max(trace.duration_ns, 1);
  const first = Math.max(0, Math.floor(top / ROW_H) - 10);
  const last = Math.min(rows.length, Math.ceil((top + height) / ROW_H) + 10);
  const toggle = (id: string) => {
    const next = new Set(collapsed);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setCollapsed(next);
  };
  const ticks = [0, 0.25, 0.5, 0.75, 1];

  return (
    <div class="card flush waterfall" role="tree" aria-label="Spans on the trace's time axis">
      <div class="wf-head" style={{ gridTemplateColumns: `${NAME_W}px 1fr` }}>
        <div class="wf-name-head">
          <span>Service &amp; operation</span>
          <span class="wf-tools">
            <button class="link" onClick={() => setCollapsed(new Set())}>
              Expand all
            </button>
            <button
              class="link"
              onClick={() => setCollapsed(new Set(trace.spans.filter((s) => s.role === 'client' && tree.children.has(s.span_id)).map((s) => s.span_id)))}
            >
              Collapse calls
            </button>
          </span>
        </div>
        <div class="wf-ticks">
          {ticks.map((f) => (
            <span style={{ left: `${f * 100}%` }} class={f === 1 ? 'last' : f === 0 ? 'first' : ''}>
              {fmtDur(total * f)}
            </span>
          ))}
        </div>
      </div>
      <div class="wf-rows" ref={scroller} onScroll={(e) => setTop((e.target as HTMLDivElement).scrollTop)}>
        <div style={{ height: `${rows.length * ROW_H}px`, position: 'relative' }}>
          {rows.slice(first, last).map((r, k) => {
            const s = r.span;
            const i = first + k;
            const left = ((s.start_ns - trace.start_ns) / total) * 100;
            const width = Math.max((s.duration_ns / total) * 100, 0.15);
            const color = serviceColor(s.service);
            // The duration goes right of the bar, inside a long bar that
            // reaches the end, or left of a short one there.
            const place = left + width < 82 ? 'right' : width > 14 ? 'inside' : 'left';
            return (
              <div
                class={'wf-row' + (s.span_id === selected ? ' selected' : '') + (s.error ? ' failed' : '')}
                style={{ top: `${i * ROW_H}px`, height: `${ROW_H}px`, gridTemplateColumns: `${NAME_W}px 1fr` }}
                onClick={() => onSelect(s.span_id)}
                role="treeitem"
                aria-level={r.depth + 1}
                aria-selected={s.span_id === selected}
                data-span-id={s.span_id}
              >
                <div class="wf-name" style={{ paddingLeft: `${8 + r.depth * 14}px` }}>
                  {r.children > 0 ? (
                    <button
                      class="caret"
                      aria-label={collapsed.has(s.span_id) ? 'Expand' : 'Collapse'}
                      onClick={(e) => {
                        e.stopPropagation();
                        toggle(s.span_id);
                      }}
                    >
                      {collapsed.has(s.span_id) ? '▸' : '▾'}
                    </button>
                  ) : (
                    <span class="caret-space" />
                  )}
                  <i class="swatch" style={{ background: color }} />
                  <span class="svc">{s.service}</span>
                  <span class={'role ' + s.role} title={s.role === 'client' ? 'seen at the caller (outgoing call)' : 'seen at the callee (incoming request)'}>
                    {s.role === 'client' ? '→' : '←'}
                  </span>
                  <span class="op" title={s.operation}>
                    {s.operation}
                  </span>
                  {s.error && <span class="err-dot" title="failed" />}
                </div>
                <div class="wf-track">
                  <div
                    class="wf-bar"
                    style={{ left: `${left}%`, width: `${width}%`, background: color }}
                    title={`${s.service} ${s.operation}: ${fmtDur(s.duration_ns)} at +${fmtDur(s.start_ns - trace.start_ns)}`}
                  />
                  <span
                    class={'wf-label ' + place}
                    style={
                      place === 'right'
                        ? { left: `calc(${left + width}% + 6px)` }
                        : place === 'inside'
                          ? { right: `calc(${100 - left - width}% + 6px)` }
                          : { right: `calc(${100 - left}% + 6px)` }
                    }
                  >
                    {fmtDur(s.duration_ns)}
                  </span>
                </div>
              </div>
            );
          })}
        </div>
      </div>
    </div>
  );
}

const linkKinds: Record<string, string> = {
  local: 'local correlation in the calling process',
  tuple: 'same connection and exchange, seen at both ends',
  tcpseq: 'same TCP byte positions through an address translation',
};

function SpanDetails({ trace, tree, span: s, onSelect }: { trace: Trace; tree: Tree; span: TraceSpan; onSelect: (id: string) => void }) {
  const parent = s.trace_parent_id ? tree.byId.get(s.trace_parent_id) : undefined;
  const agentParent = s.parent_span_id ? tree.byId.get(s.parent_span_id) : undefined;
  const endpoint = s.method ? `${s.method} ${s.path ?? ''}` : s.path || s.operation;
  const conf = s.parent_confidence;
  const tags = Object.entries(s.tags ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const spanLink = (x: TraceSpan | undefined, id?: string) =>
    x ? (
      <button class="link" onClick={() => onSelect(x.span_id)}>
        {x.service} {x.operation} <span class="mono muted">{x.span_id}</span>
      </button>
    ) : (
      <span class="mono">{id}</span>
    );
  return (
    <aside class="card details" aria-label="Span details">
      <div class="details-head">
        <div>
          <div class="svc" style={{ color: serviceColor(s.service) }}>
            {s.service}
          </div>
          <h3>{s.operation}</h3>
        </div>
        <button class="close" aria-label="Close details" onClick={() => onSelect('')}>
          ×
        </button>
      </div>
      <section>
        <h4>Exchange</h4>
        <table class="kv">
          <tbody>
            <tr>
              <th>Protocol</th>
              <td>
                <span class="badge plain">{s.protocol}</span> seen at the <b>{s.role}</b>
              </td>
            </tr>
            <tr>
              <th>Endpoint</th>
              <td class="mono">{endpoint}</td>
            </tr>
            <tr>
              <th>Status</th>
              <td>
                {s.error ? <span class="badge err">{s.status_code}</span> : <span class="badge ok">{s.status_code}</span>} {s.status_text}
              </td>
            </tr>
            <tr>
              <th>Start</th>
              <td>
                +{fmtDur(s.start_ns - trace.start_ns)} <span class="muted">({fmtTime(s.timestamp, true)})</span>
              </td>
            </tr>
            <tr>
              <th>Duration</th>
              <td>{fmtDur(s.duration_ns)}</td>
            </tr>
            <tr>
              <th>Bytes</th>
              <td>
                {fmtBytes(s.req_bytes)} sent, {fmtBytes(s.resp_bytes)} received
              </td>
            </tr>
          </tbody>
        </table>
      </section>
      <section>
        <h4>Connection</h4>
        <table class="kv">
          <tbody>
            <tr>
              <th>Tuple</th>
              <td class="mono">
                {s.client_ip}:{s.client_port} → {s.server_ip}:{s.server_port}
              </td>
            </tr>
            <tr>
              <th>Exchange #</th>
              <td>{s.seq}</td>
            </tr>
            <tr>
              <th>TCP seq</th>
              <td class="mono">
                req {s.req_tcp_seq} · resp {s.resp_tcp_seq}
              </td>
            </tr>
          </tbody>
        </table>
      </section>
      <section>
        <h4>Process</h4>
        <table class="kv">
          <tbody>
            <tr>
              <th>Process</th>
              <td>
                {s.process} <span class="muted">pid {s.pid} · tid {s.tid}{s.goid ? ` · goroutine ${s.goid}` : ''}</span>
              </td>
            </tr>
            <tr>
              <th>Service</th>
              <td>{s.service}</td>
            </tr>
            <tr>
              <th>Host</th>
              <td>
                {s.host}
                {s.netns ? <span class="muted"> · netns {s.netns}</span> : null}
              </td>
            </tr>
          </tbody>
        </table>
      </section>
      <section>
        <h4>Correlation</h4>
        <table class="kv">
          <tbody>
            <tr>
              <th>Parent</th>
              <td>{s.trace_parent_id ? spanLink(parent, s.trace_parent_id) : <span class="muted">none: the trace's root</span>}</td>
            </tr>
            {s.link_kind && (
              <tr>
                <th>Linked by</th>
                <td>
                  <span class="badge plain">{s.link_kind}</span> {linkKinds[s.link_kind] ?? ''}
                </td>
              </tr>
            )}
            {s.parent_span_id && (
              <tr>
                <th>Agent's parent</th>
                <td>
                  {spanLink(agentParent, s.parent_span_id)}
                  {s.parent_span_id !== s.trace_parent_id && <div class="muted small">differs from the assembled parent</div>}
                </td>
              </tr>
            )}
            {conf !== undefined && conf > 0 && (
              <tr>
                <th>Confidence</th>
                <td>
                  <div class="meter" title={`local correlation's confidence in the parent: ${(conf * 100).toFixed(0)}%`}>
                    <i style={{ width: `${conf * 100}%`, background: conf >= 0.8 ? '#10b981' : conf >= 0.5 ? '#f59e0b' : '#ef4444' }} />
                  </div>
                  <span class="conf">{(conf * 100).toFixed(0)}%</span>
                </td>
              </tr>
            )}
            <tr>
              <th>Span ID</th>
              <td class="mono">{s.span_id}</td>
            </tr>
          </tbody>
        </table>
      </section>
      {tags.length > 0 && (
        <section>
          <h4>Tags</h4>
          <table class="kv tags">
            <tbody>
              {tags.map(([k, v]) => (
                <tr>
                  <th class="mono">{k}</th>
                  <td class="mono">{v}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </section>
      )}
    </aside>
  );
}
