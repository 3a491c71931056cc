import { useEffect, useMemo, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { serviceColor } from '../colors';
import { fmtAgo, fmtClock, fmtDur, fmtTime, fromLocalInput, toLocalInput } from '../format';
import { useWidth } from '../hooks';
import { href, navigate } from '../router';
import type { TraceSearch, TraceSummary } from '../types';

const lookbacks = [
  ['15m', 'Last 15 minutes'],
  ['1h', 'Last hour'],
  ['6h', 'Last 6 hours'],
  ['24h', 'Last 24 hours'],
  ['2d', 'Last 2 days'],
  ['7d', 'Last 7 days'],
  ['custom', 'Custom range'],
];

// The search parameters, named as the API names them, so the page's URL
// is the query.
const searchKeys = ['service', 'operation', 'tag', 'min_duration', 'max_duration', 'error', 'lookback', 'from', 'to', 'limit'];

// parseTags reads logfmt-like "k=v k2="v w s"" into key=value filters.
export function parseTags(s: string): string[] {
  const out: string[] = [];
  const re = /([^\s=]+)=(?:"([^"]*)"|(\S*))/g;
  let m;
  while ((m = re.exec(s))) out.push(`${m[1]}=${m[2] ?? m[3] ?? ''}`);
  return out;
}

function formatTags(tags: string[]): string {
  return tags
    .map((t) => {
      const i = t.indexOf('=');
      const v = t.slice(i + 1);
      return /\s/.test(v) ? `${t.slice(0, i)}="${v}"` : t;
    })
    .join(' ');
}

type Sort = 'recent' | 'longest' | 'shortest' | 'spans';

export function Search({ params }: { params: URLSearchParams }) {
  const [services, setServices] = useState<string[]>([]);
  const [operations, setOperations] = useState<string[]>([]);
  const [form, setForm] = useState(() => formFrom(params));
  const [result, setResult] = useState<TraceSearch | null>(null);
  const [error, setError] = useState('');
  const [loading, setLoading] = useState(false);
  const [sort, setSort] = useState<Sort>('recent');
  const [nonce, setNonce] = useState(0);
  const qs = params.toString();

  useEffect(() => {
    api.services().then((r) => setServices(r.services), () => undefined);
  }, []);
  useEffect(() => {
    setOperations([]);
    if (form.service) api.operations(form.service).then((r) => setOperations(r.operations), () => undefined);
  }, [form.service]);

  // The URL is the query: search whenever it changes.
  useEffect(() => {
    setForm(formFrom(params));
    const ctl = new AbortController();
    const p: Record<string, string | string[]> = {};
    for (const k of searchKeys) {
      const v = params.getAll(k);
      if (v.length) p[k] = k === 'tag' ? v : v[0];
    }
    if (!p.lookback && !p.from) p.lookback = '1h';
    if (p.lookback === 'custom') delete p.lookback;
    setLoading(true);
    setError('');
    api
      .traces(p, ctl.signal)
      .then(setResult, (e) => {
        if (ctl.signal.aborted) return;
        setResult(null);
        setError(e instanceof ApiError ? e.message : String(e));
      })
      .finally(() => !ctl.signal.aborted && setLoading(false));
    return () => ctl.abort();
  }, [qs, nonce]);

  const submit = (e: Event) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (form.service) q.set('service', form.service);
    if (form.service && form.operation) q.set('operation', form.operation);
    for (const t of parseTags(form.tags)) q.append('tag', t);
    if (form.minDuration.trim()) q.set('min_duration', form.minDuration.trim());
    if (form.maxDuration.trim()) q.set('max_duration', form.maxDuration.trim());
    if (form.error) q.set('error', 'true');
    if (form.lookback === 'custom') {
      const f = fromLocalInput(form.from);
      const t = fromLocalInput(form.to);
      if (f) q.set('from', f.toISOString());
      if (t) q.set('to', t.toISOString());
    } else {
      q.set('lookback', form.lookback);
    }
    q.set('limit', form.limit);
    // Searching the same query again runs it again (new traces arrive).
    if (q.toString() === qs) setNonce(nonce + 1);
    else navigate('traces', q);
  };

  const set = (k: keyof typeof form) => (e: Event) => {
    const t = e.target as HTMLInputElement;
    setForm({ ...form, [k]: t.type === 'checkbox' ? t.checked : t.value });
  };

  const traces = useMemo(() => sortTraces(result?.traces ?? [], sort), [result, sort]);

  return (
    <div class="search-page">
      <form class="card search-form" onSubmit={submit} aria-label="Search traces">
        <h2>Search</h2>
        <label>
          Service
          <select name="service" value={form.service} onChange={(e) => setForm({ ...form, service: (e.target as HTMLSelectElement).value, operation: '' })}>
            <option value="">All services</option>
            {services.map((s) => (
              <option value={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Operation
          <select name="operation" value={form.operation} onChange={set('operation')} disabled={!form.service}>
            <option value="">All operations</option>
            {operations.map((o) => (
              <option value={o}>{o}</option>
            ))}
          </select>
        </label>
        <label>
          Tags
          <input name="tags" placeholder='http.status_code=500 db.system=redis' value={form.tags} onInput={set('tags')} />
          <span class="field-hint">key=value, space separated; all must match</span>
        </label>
        <div class="row2">
          <label>
            Min duration
            <input name="min_duration" placeholder="e.g. 100ms" value={form.minDuration} onInput={set('minDuration')} />
          </label>
          <label>
            Max duration
            <input name="max_duration" placeholder="e.g. 2s" value={form.maxDuration} onInput={set('maxDuration')} />
          </label>
        </div>
        <label>
          Time range
          <select name="lookback" value={form.lookback} onChange={set('lookback')}>
            {lookbacks.map(([v, l]) => (
              <option value={v}>{l}</option>
            ))}
          </select>
        </label>
        {form.lookback === 'custom' && (
          <>
            <label>
              From
              <input type="datetime-local" name="from" value={form.from} onInput={set('from')} />
            </label>
            <label>
              To
              <input type="datetime-local" name="to" value={form.to} onInput={set('to')} />
            </label>
          </>
        )}
        <div class="row2">
          <label>
            Limit
            <select name="limit" value={form.limit} onChange={set('limit')}>
              {['20', '50', '100', '500', '1500'].map((n) => (
                <option value={n}>{n}</option>
              ))}
            </select>
          </label>
          <label class="check">
            <input type="checkbox" name="error" checked={form.error} onChange={set('error')} />
            Errors only
          </label>
        </div>
        <button class="primary" type="submit">
          Find traces
        </button>
      </form>

      <section class="results stack">
        {error && <div class="error-box">{error}</div>}
        {result && (
          <>
            <div class="card">
              <div class="results-head">
                <h2>
                  {result.traces.length} trace{result.traces.length === 1 ? '' : 's'}
                  {result.traces.length === result.limit && <span class="muted small"> (limit reached)</span>}
                </h2>
                <span class="muted small">
                  {fmtTime(result.from)} – {fmtTime(result.to)}
                </span>
                <label class="inline">
                  Sort
                  <select value={sort} onChange={(e) => setSort((e.target as HTMLSelectElement).value as Sort)}>
                    <option value="recent">Most recent</option>
                    <option value="longest">Longest first</option>
                    <option value="shortest">Shortest first</option>
                    <option value="spans">Most spans</option>
                  </select>
                </label>
              </div>
              {result.traces.length > 0 && <Scatter traces={result.traces} from={result.from} to={result.to} />}
            </div>
            {traces.length > 0 ? <ResultTable traces={traces} /> : <div class="card empty">No traces match. Widen the time range or drop a filter.</div>}
          </>
        )}
        {loading && !result && <div class="card empty">Searching…</div>}
      </section>
    </div>
  );
}

function formFrom(p: URLSearchParams) {
  const now = new Date();
  const lookback = p.get('from') ? 'custom' : (p.get('lookback') ?? '1h');
  return {
    service: p.get('service') ?? '',
    operation: p.get('operation') ?? '',
    tags: formatTags(p.getAll('tag')),
    minDuration: p.get('min_duration') ?? '',
    maxDuration: p.get('max_duration') ?? '',
    error: p.get('error') === 'true',
    lookback,
    from: p.get('from') ? toLocalInput(new Date(p.get('from')!)) : toLocalInput(new Date(now.getTime() - 3600e3)),
    to: p.get('to') ? toLocalInput(new Date(p.get('to')!)) : toLocalInput(now),
    limit: p.get('limit') ?? '20',
  };
}

function sortTraces(t: TraceSummary[], s: Sort): TraceSummary[] {
  const out = [...t];
  switch (s) {
    case 'longest':
      return out.sort((a, b) => b.duration_ns - a.duration_ns);
    case 'shortest':
      return out.sort((a, b) => a.duration_ns - b.duration_ns);
    case 'spans':
      return out.sort((a, b) => b.span_count - a.span_count);
  }
  return out.sort((a, b) => Date.parse(b.start) - Date.parse(a.start));
}

function ResultTable({ traces }: { traces: TraceSummary[] }) {
  const maxDur = Math.max(...traces.map((t) => t.duration_ns), 1);
  const now = Date.now();
  return (
    <div class="card flush">
      <table class="grid traces-table">
        <thead>
          <tr>
            <th>Start</th>
            <th>Trace</th>
            <th>Services</th>
            <th class="num">Duration</th>
            <th class="num">Spans</th>
            <th>Status</th>
          </tr>
        </thead>
        <tbody>
          {traces.map((t) => (
            <tr class="clickable" data-trace-id={t.trace_id} onClick={() => navigate('trace/' + t.trace_id)}>
              <td class="nowrap">
                <div>{fmtTime(t.start)}</div>
                <div class="muted small">{fmtAgo(t.start, now)}</div>
              </td>
              <td>
                <a class="trace-name" href={href('trace/' + t.trace_id)} onClick={(e) => e.stopPropagation()}>
                  <span class="svc" style={{ color: serviceColor(t.root_service) }}>
                    {t.root_service}
                  </span>{' '}
                  {t.root_operation}
                </a>
                <div class="mono muted small">{t.trace_id}</div>
              </td>
              <td>
                <div class="chips">
                  {t.services.map((s) => (
                    <span class="chip" style={{ borderColor: serviceColor(s) }}>
                      <i style={{ background: serviceColor(s) }} />
                      {s}
                    </span>
                  ))}
                </div>
              </td>
              <td class="num duration-cell">
                <div>{fmtDur(t.duration_ns)}</div>
                <div class="durbar">
                  <i style={{ width: `${Math.max(2, (t.duration_ns / maxDur) * 100)}%` }} />
                </div>
              </td>
              <td class="num">{t.span_count}</td>
              <td>{t.error ? <span class="badge err">error</span> : <span class="badge ok">ok</span>}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

// Scatter plots the results: start time across, duration up, errors red,
// as Jaeger's search page does. A dot opens its trace.
function Scatter({ traces, from, to }: { traces: TraceSummary[]; from: string; to: string }) {
  const [ref, W] = useWidth<HTMLDivElement>();
  const H = 150;
  const pad = { l: 56, r: 12, t: 10, b: 24 };
  const t0 = Date.parse(from);
  const t1 = Math.max(Date.parse(to), t0 + 1);
  const maxDur = Math.max(...traces.map((t) => t.duration_ns), 1);
  const x = (ms: number) => pad.l + ((ms - t0) / (t1 - t0)) * (W - pad.l - pad.r);
  const y = (ns: number) => H - pad.b - (ns / maxDur) * (H - pad.t - pad.b);
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return (
    <div ref={ref} class="scatter-wrap">
    <svg class="scatter" width={W} height={H} role="img" aria-label="Durations of the traces found over time">
      {ticks.map((f) => (
        <g>
          <line x1={pad.l} x2={W - pad.r} y1={y(maxDur * f)} y2={y(maxDur * f)} class="gridline" />
          <text x={pad.l - 6} y={y(maxDur * f) + 4} text-anchor="end" class="axis">
            {fmtDur(maxDur * f)}
          </text>
          <text x={x(t0 + (t1 - t0) * f)} y={H - 6} text-anchor={f === 0 ? 'start' : f === 1 ? 'end' : 'middle'} class="axis">
            {fmtClock(new Date(t0 + (t1 - t0) * f))}
          </text>
        </g>
      ))}
      {traces.map((t) => (
        <circle
          cx={x(Date.parse(t.start))}
          cy={y(t.duration_ns)}
          r={Math.min(9, 3 + Math.sqrt(t.span_count))}
          fill={t.error ? '#ef4444' : serviceColor(t.root_service)}
          fill-opacity="0.55"
          stroke={t.error ? '#b91c1c' : serviceColor(t.root_service)}
          class="dot"
          onClick={() => navigate('trace/' + t.trace_id)}
        >
          <title>
            {t.root_service} {t.root_operation} · {fmtDur(t.duration_ns)} · {t.span_count} spans
          </title>
        </circle>
      ))}
    </svg>
    </div>
  );
}
