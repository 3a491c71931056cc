import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, type Params } from '../api';
import { RedCharts } from '../charts';
import { serviceColor, isPeer } from '../colors';
import { fmtTime } from '../format';
import { href, navigate } from '../router';
import type { MetricSeries } from '../types';
import { statusClass } from './Alerts';

// The ranges and steps a page can pick. Steps are whole minutes, as the
// series API wants; a step that would give more than maxPoints points is
// not offered.
const ranges: [string, string][] = [
  ['15m', 'Last 15 minutes'],
  ['1h', 'Last hour'],
  ['6h', 'Last 6 hours'],
  ['24h', 'Last 24 hours'],
  ['7d', 'Last 7 days'],
];
const steps: [string, number][] = [
  ['1m', 60],
  ['5m', 300],
  ['15m', 900],
  ['1h', 3600],
  ['6h', 21600],
];
const maxPoints = 2000; // the API's bound
const autoPoints = 180; // auto picks the smallest step giving at most this many

function lookbackSecs(v: string): number {
  const m = v.match(/^(\d+)([mhd])$/);
  if (!m) return 3600;
  return Number(m[1]) * { m: 60, h: 3600, d: 86400 }[m[2] as 'm' | 'h' | 'd'];
}

// MetricsRange is the range and step of a metrics page, read from its URL:
// a lookback (default 1h), or from/to (set by dragging across a chart).
export interface MetricsRange {
  lookback: string;
  from: string;
  to: string;
  step: string; // '' is auto
  seconds: number;
  refresh: string; // '' is the default
}

export function readRange(params: URLSearchParams): MetricsRange {
  const from = params.get('from') ?? '';
  const to = params.get('to') ?? '';
  const lookback = params.get('lookback') ?? '1h';
  const seconds = from && to ? Math.max(60, (Date.parse(to) - Date.parse(from)) / 1000) : lookbackSecs(lookback);
  return { lookback, from, to, step: params.get('step') ?? '', seconds, refresh: params.get('refresh') ?? '' };
}

// How often a page over a range that ends now (a lookback, not a zoomed
// from/to) reads its series again (?refresh=, default 1m: the rollup
// writes a minute about a minute after it ends).
const refreshes: [string, number][] = [
  ['off', 0],
  ['10s', 10_000],
  ['30s', 30_000],
  ['1m', 60_000],
  ['5m', 300_000],
];

function refreshMs(r: MetricsRange): number {
  return refreshes.find(([v]) => v === r.refresh)?.[1] ?? 60_000;
}

// useRefresh counts refreshes of a range that ends now; a zoomed range
// does not move, so it never refreshes. The page keeps what it shows while
// a refresh loads.
function useRefresh(r: MetricsRange): number {
  const [n, setN] = useState(0);
  const every = r.from && r.to ? 0 : refreshMs(r);
  useEffect(() => {
    if (!every) return;
    const t = setInterval(() => setN((x) => x + 1), every);
    return () => clearInterval(t);
  }, [every]);
  return n;
}

// rangeParams are the API parameters of a range (without the step).
export function rangeParams(r: MetricsRange): Params {
  return r.from && r.to ? { from: r.from, to: r.to } : { lookback: r.lookback };
}

function effectiveStep(r: MetricsRange): string {
  if (r.step) return r.step;
  return (steps.find(([, s]) => r.seconds / s <= autoPoints) ?? steps[steps.length - 1])[0];
}

// Toolbar picks the range and step; it keeps the rest of the URL.
function Toolbar({ path, params, title, r }: { path: string; params: URLSearchParams; title: preact.ComponentChildren; r: MetricsRange }) {
  const set = (changes: Record<string, string>) => {
    const q = new URLSearchParams(params);
    for (const [k, v] of Object.entries(changes)) {
      if (v) q.set(k, v);
      else q.delete(k);
    }
    navigate(path, q);
  };
  const zoomed = !!(r.from && r.to);
  return (
    <div class="card toolbar metrics-toolbar">
      <h2>{title}</h2>
      <label class="inline">
        Range
        <select name="range" value={zoomed ? 'custom' : r.lookback} onChange={(e) => set({ lookback: (e.target as HTMLSelectElement).value, from: '', to: '' })}>
          {zoomed && <option value="custom">{`${fmtTime(r.from)} – ${fmtTime(r.to)}`}</option>}
          {ranges.map(([v, l]) => (
            <option value={v}>{l}</option>
          ))}
        </select>
      </label>
      <label class="inline">
        Step
        <select name="step" value={r.step} onChange={(e) => set({ step: (e.target as HTMLSelectElement).value })}>
          <option value="">auto ({effectiveStep({ ...r, step: '' })})</option>
          {steps.map(([v, s]) => (
            <option value={v} disabled={r.seconds / s > maxPoints}>
              {v}
            </option>
          ))}
        </select>
      </label>
      <label class="inline">
        Refresh
        <select name="refresh" value={r.refresh || '1m'} disabled={zoomed} title={zoomed ? 'a zoomed range does not move' : ''}
          onChange={(e) => set({ refresh: (e.target as HTMLSelectElement).value })}>
          {refreshes.map(([v]) => (
            <option value={v}>{v}</option>
          ))}
        </select>
      </label>
      {zoomed && (
        <button class="link" onClick={() => set({ from: '', to: '' })}>
          Reset zoom
        </button>
      )}
      <span class="muted small">Drag across a chart to zoom in; hover to read a step's values in every chart.</span>
    </div>
  );
}

// zoomTo sets the page's range to [from, to] (from a drag on a chart).
function zoomTo(path: string, params: URLSearchParams) {
  return (from: Date, to: Date) => {
    if (to.getTime() - from.getTime() < 60e3) return;
    const q = new URLSearchParams(params);
    q.delete('lookback');
    q.set('from', from.toISOString());
    q.set('to', to.toISOString());
    navigate(path, q);
  };
}

type Loaded<T> = { state: 'loading' } | { state: 'error'; message: string } | { state: 'done'; value: T };

const errText = (e: unknown) => (e instanceof ApiError ? e.message : String(e));

// Metrics is #/metrics (every service) and #/metrics/SERVICE (one service,
// its operations and the calls it makes).
export function Metrics({ service, params }: { service: string; params: URLSearchParams }) {
  return service ? <ServiceMetrics service={service} params={params} /> : <AllServices params={params} />;
}

function AllServices({ params }: { params: URLSearchParams }) {
  const r = readRange(params);
  const step = effectiveStep(r);
  const key = JSON.stringify([rangeParams(r), step]);
  const [services, setServices] = useState<Loaded<string[]>>({ state: 'loading' });
  const [series, setSeries] = useState<Record<string, Loaded<MetricSeries>>>({});
  const [refreshErr, setRefreshErr] = useState('');
  const refresh = useRefresh(r);
  const shown = useRef('');

  useEffect(() => {
    const ctl = new AbortController();
    const first = shown.current !== key;
    if (first) {
      // A new range starts empty; a refresh of the same one keeps what
      // is shown until the new figures come, and when they fail.
      shown.current = key;
      setServices({ state: 'loading' });
      setSeries({});
    }
    const failed = (e: unknown) => !ctl.signal.aborted && !first && setRefreshErr(errText(e));
    api.services(rangeParams(r)).then(
      (res) => {
        if (ctl.signal.aborted) return;
        const names = res.services.filter((s) => !isPeer(s)).sort();
        setServices({ state: 'done', value: names });
        setRefreshErr('');
        for (const s of names) {
          api.metricSeries({ service: s, step, ...rangeParams(r) }, ctl.signal).then(
            (v) => setSeries((cur) => ({ ...cur, [s]: { state: 'done', value: v } })),
            (e) => {
              if (ctl.signal.aborted) return;
              // On a refresh what is shown stays, with the reason above.
              setSeries((cur) => (!first && cur[s] ? cur : { ...cur, [s]: { state: 'error', message: errText(e) } }));
              failed(e);
            },
          );
        }
      },
      (e) => (first ? !ctl.signal.aborted && setServices({ state: 'error', message: errText(e) }) : failed(e)),
    );
    return () => ctl.abort();
  }, [key, refresh]);

  const onZoom = zoomTo('metrics', params);
  return (
    <div class="metrics-page">
      <Toolbar path="metrics" params={params} title="Service metrics" r={r} />
      {services.state === 'error' && <div class="error-box">{services.message}</div>}
      {refreshErr && <div class="error-box" data-error="refresh">Not refreshed: {refreshErr}</div>}
      {services.state === 'loading' && <div class="card empty">Loading services…</div>}
      {services.state === 'done' && services.value.length === 0 && <div class="card empty">No services in this range.</div>}
      {services.state === 'done' &&
        services.value.map((s) => (
          <section class="card metrics-card" data-service={s}>
            <div class="metrics-card-head">
              <i class="svc-swatch" style={{ background: serviceColor(s) }} />
              <a class="svc" href={href('metrics/' + encodeURIComponent(s), params)}>
                {s}
              </a>
              <span class="muted small">operations, calls and alert rules →</span>
            </div>
            <SeriesBody l={series[s] ?? { state: 'loading' }} onZoom={onZoom} />
          </section>
        ))}
    </div>
  );
}

function SeriesBody({ l, height, onZoom }: { l: Loaded<MetricSeries>; height?: number; onZoom: (a: Date, b: Date) => void }) {
  if (l.state === 'loading') return <div class="empty small">Loading…</div>;
  if (l.state === 'error') return <div class="error-box">{l.message}</div>;
  return <RedCharts s={l.value} height={height} onZoom={onZoom} />;
}

interface Detail {
  service: MetricSeries;
  operations: MetricSeries[];
  edges: MetricSeries[];
  // operations of the service's traces that have no server requests in the
  // metrics (calls it makes, named by the client side).
  hidden: number;
}

function ServiceMetrics({ service, params }: { service: string; params: URLSearchParams }) {
  const r = readRange(params);
  const step = effectiveStep(r);
  const focus = params.get('peer') ?? '';
  const key = JSON.stringify([service, rangeParams(r), step]);
  const [d, setD] = useState<Loaded<Detail>>({ state: 'loading' });
  const [refreshErr, setRefreshErr] = useState('');
  const refresh = useRefresh(r);
  const shown = useRef('');
  const scrolled = useRef('');

  useEffect(() => {
    const ctl = new AbortController();
    const rp = { ...rangeParams(r), step };
    const sig = ctl.signal;
    const first = shown.current !== key;
    if (first) {
      shown.current = key;
      setD({ state: 'loading' });
    }
    (async () => {
      const [svc, ops, edges] = await Promise.all([
        api.metricSeries({ service, ...rp }, sig),
        api.operations(service, rangeParams(r)).then((x) => x.operations, () => [] as string[]),
        api.metricEdges({ service, ...rangeParams(r) }, sig),
      ]);
      const opSeries = await Promise.all(ops.slice(0, 50).map((op) => api.metricSeries({ service, operation: op, ...rp }, sig)));
      const callees = edges.edges.filter((e) => e.caller === service).map((e) => e.callee);
      const edgeSeries = await Promise.all(callees.map((peer) => api.metricSeries({ service, peer, ...rp }, sig)));
      const served = opSeries.filter((s) => (s.points ?? []).some((p) => p.count > 0));
      return { service: svc, operations: served, edges: edgeSeries, hidden: opSeries.length - served.length };
    })().then(
      (v) => {
        if (sig.aborted) return;
        setD({ state: 'done', value: v });
        setRefreshErr('');
      },
      (e) => {
        if (sig.aborted) return;
        // A failed refresh keeps the charts shown, with the reason.
        if (first) setD({ state: 'error', message: errText(e) });
        else setRefreshErr(errText(e));
      },
    );
    return () => ctl.abort();
  }, [key, refresh]);

  useEffect(() => {
    // Scroll to the focused callee once, not at every refresh.
    const at = key + '|' + focus;
    if (d.state === 'done' && focus && scrolled.current !== at) {
      scrolled.current = at;
      document.querySelector(`[data-peer="${CSS.escape(focus)}"]`)?.scrollIntoView({ block: 'center' });
    }
  }, [d, focus]);

  const path = 'metrics/' + encodeURIComponent(service);
  const onZoom = zoomTo(path, params);
  const back = new URLSearchParams(params);
  back.delete('peer');
  const title = (
    <>
      <a href={href('metrics', back)} class="back" title="every service">
        ←
      </a>{' '}
      <i class="svc-swatch" style={{ background: serviceColor(service) }} /> {service}
    </>
  );
  return (
    <div class="metrics-page" data-service-detail={service}>
      <Toolbar path={path} params={params} title={title} r={r} />
      <AlertRulesOf service={service} />
      {d.state === 'loading' && <div class="card empty">Loading {service}'s metrics…</div>}
      {d.state === 'error' && <div class="error-box">{d.message}</div>}
      {refreshErr && <div class="error-box" data-error="refresh">Not refreshed: {refreshErr}</div>}
      {d.state === 'done' && (
        <>
          <section class="card metrics-card" data-service={service}>
            <div class="metrics-card-head">
              <h3>Requests to {service}</h3>
              <a class="small" href={href('traces', { service, ...(r.from ? { from: r.from, to: r.to } : { lookback: r.lookback }) })}>
                its traces →
              </a>
            </div>
            <RedCharts s={d.value.service} height={190} onZoom={onZoom} />
          </section>
          <h3 class="section-title">Operations</h3>
          {d.value.operations.length === 0 && <div class="card empty small">No operation of {service} served requests in this range.</div>}
          {d.value.operations.map((s) => (
            <section class="card metrics-card" data-operation={s.operation}>
              <div class="metrics-card-head">
                <span class="mono">{s.operation}</span>
              </div>
              <RedCharts s={s} height={120} onZoom={onZoom} />
            </section>
          ))}
          {d.value.hidden > 0 && (
            <p class="muted small">
              {d.value.hidden} more operation{d.value.hidden > 1 ? 's' : ''} of {service}'s traces served no requests in this range (the names of
              calls it makes).
            </p>
          )}
          <h3 class="section-title">Calls from {service}</h3>
          {d.value.edges.length === 0 && <div class="card empty small">{service} called nothing in this range.</div>}
          {d.value.edges.map((s) => (
            <section class={'card metrics-card' + (s.peer === focus ? ' focused' : '')} data-peer={s.peer}>
              <div class="metrics-card-head">
                <span>
                  {service} → <b>{s.peer}</b>
                </span>
                {!isPeer(s.peer ?? '') && (
                  <a class="small" href={href('metrics/' + encodeURIComponent(s.peer ?? ''), back)}>
                    {s.peer}'s metrics →
                  </a>
                )}
              </div>
              <RedCharts s={s} height={120} onZoom={onZoom} />
            </section>
          ))}
        </>
      )}
    </div>
  );
}

// AlertRulesOf lists the alert rules that watch a service, with their
// state.
function AlertRulesOf({ service }: { service: string }) {
  const [rules, setRules] = useState<{ id: string; name: string; status: string }[]>([]);
  useEffect(() => {
    api.alertRules().then(
      (r) => setRules(r.rules.filter((x) => x.service === service).map((x) => ({ id: x.id, name: x.name, status: x.state?.status ?? 'ok' }))),
      () => setRules([]),
    );
  }, [service]);
  if (!rules.length) return null;
  return (
    <div class="card alert-strip">
      <span class="muted small">Alert rules on {service}:</span>
      {rules.map((x) => (
        <a class="chip" href={href('alerts', { rule: x.id })}>
          <span class={'badge ' + statusClass(x.status)}>{x.status}</span> {x.name}
        </a>
      ))}
    </div>
  );
}
