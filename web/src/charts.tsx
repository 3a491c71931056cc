// RED charts (rate, errors, latency) of one metrics series, drawn with
// uPlot on canvas. Every chart of a page shares one cursor: hovering a
// minute on one chart shows that minute's values in every chart's legend.
// Dragging across a chart selects a range to zoom into (onZoom).
import { useEffect, useRef } from 'preact/hooks';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { fmtDur, fmtRate, fmtTime } from './format';
import { useWidth } from './hooks';
import type { MetricPoint, MetricSeries } from './types';

// syncKey ties the cursors of every chart on the page together.
const syncKey = 'deeptrace-metrics';

export type ChartKind = 'rate' | 'errors' | 'latency';

const colors = { rate: '#2563eb', errors: '#dc2626', errorRate: '#9f1239', p50: '#10b981', p90: '#f59e0b', p99: '#8b5cf6' };

// seconds of the x axis (uPlot's unit for time).
const secs = (iso: string) => Date.parse(iso) / 1000;

const timeLabel = (_u: uPlot, v: number | null) => (v == null ? '–' : fmtTime(new Date(v * 1000)));

// orDash formats a value, or shows a dash where the step had no requests.
const orDash = (f: (v: number) => string) => (_u: uPlot, v: number | null) => (v == null ? '–' : f(v));

const pct = (v: number) => `${(v * 100).toFixed(1)}%`;

// rate is requests per second for people; no requests is "0", not "0/h".
const rate = (v: number) => (v === 0 ? '0' : fmtRate(v));

// data turns the API's points into uPlot's columns for one chart. Steps
// without requests have no latency or error rate: null leaves a gap rather
// than a drop to zero.
// Percentiles of merged steps come from sketches (within 1%) and may read
// a little above the step's exact maximum; no percentile is above it.
function data(kind: ChartKind, pts: MetricPoint[]): uPlot.AlignedData {
  const x = pts.map((p) => secs(p.t));
  const col = (f: (p: MetricPoint) => number) => pts.map((p) => (p.count > 0 ? Math.min(f(p), p.max_ns) : null));
  switch (kind) {
    case 'rate':
      return [x, pts.map((p) => p.rate)];
    case 'errors':
      return [x, pts.map((p) => p.errors), pts.map((p) => (p.count > 0 ? p.error_rate : null))];
    case 'latency':
      return [x, col((p) => p.p50_ns), col((p) => p.p90_ns), col((p) => p.p99_ns)];
  }
}

function series(kind: ChartKind): uPlot.Series[] {
  const x: uPlot.Series = { label: 'time', value: timeLabel };
  const line = (label: string, stroke: string, fmt: (v: number) => string, scale = 'y'): uPlot.Series => ({
    label,
    stroke,
    width: 1.6,
    scale,
    value: orDash(fmt),
    spanGaps: false,
  });
  switch (kind) {
    case 'rate':
      return [x, { ...line('requests', colors.rate, rate), fill: 'rgba(37, 99, 235, .08)' }];
    case 'errors':
      return [
        x,
        {
          label: 'errors',
          stroke: colors.errors,
          fill: 'rgba(220, 38, 38, .35)',
          width: 1,
          scale: 'n',
          value: orDash((v) => String(v)),
          paths: uPlot.paths.bars!({ size: [0.7, 24] }),
          points: { show: false },
        },
        { ...line('error %', colors.errorRate, pct, '%'), dash: [4, 3] },
      ];
    case 'latency':
      return [x, line('p50', colors.p50, fmtDur), line('p90', colors.p90, fmtDur), line('p99', colors.p99, fmtDur)];
  }
}

function axes(kind: ChartKind): uPlot.Axis[] {
  const grid = { stroke: '#eef2f6', width: 1 };
  const y = (fmt: (v: number) => string, scale = 'y', side: uPlot.Axis.Side = 3): uPlot.Axis => ({
    scale,
    side,
    grid: side === 3 ? grid : { show: false },
    ticks: { show: false },
    size: 58,
    font: '11px system-ui, sans-serif',
    stroke: '#64748b',
    values: (_u, splits) => splits.map((v) => (v == null ? '' : fmt(v))),
  });
  const x: uPlot.Axis = { grid, ticks: { show: false }, font: '11px system-ui, sans-serif', stroke: '#64748b', values: timeTicks };
  switch (kind) {
    case 'rate':
      return [x, y(rate)];
    case 'errors':
      return [x, { ...y((v) => String(v), 'n'), values: (_u, s) => s.map((v) => (Number.isInteger(v) ? String(v) : '')) }, y(pct, '%', 1)];
    case 'latency':
      return [x, y(fmtDur)];
  }
}

const pad2 = (n: number) => String(n).padStart(2, '0');

// timeTicks labels the time axis in the page's 24-hour local time, with
// the date under the first tick and wherever the day changes.
function timeTicks(_u: uPlot, splits: number[], _axis: number, _space: number, incr: number): string[] {
  return splits.map((v, i) => {
    const d = new Date(v * 1000);
    const day = `${d.getMonth() + 1}/${d.getDate()}`;
    if (incr >= 86400) return day;
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    const newDay = i === 0 || new Date(splits[i - 1] * 1000).getDate() !== d.getDate();
    return newDay ? `${hm}\n${day}` : hm;
  });
}

interface ChartProps {
  kind: ChartKind;
  points: MetricPoint[];
  from: number;
  to: number;
  height: number;
  onZoom?: (from: Date, to: Date) => void;
}

// Chart is one uPlot chart. It is rebuilt when its data changes (cheap at
// the few hundred points a series has) and resized with its container.
function Chart({ kind, points, from, to, height, onZoom }: ChartProps) {
  const [ref, width] = useWidth<HTMLDivElement>(400);
  const plot = useRef<uPlot | null>(null);
  const zoom = useRef(onZoom);
  zoom.current = onZoom;

  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const opts: uPlot.Options = {
      width,
      height,
      series: series(kind),
      axes: axes(kind),
      scales: {
        x: { time: true, auto: false, range: [from, to] },
        y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
        n: { range: (_u, _min, max) => [0, Math.max(1, max * 1.15)] },
        '%': { range: (_u, _min, max) => [0, Math.max(0.01, Math.min(1, max * 1.15))] },
      },
      cursor: {
        y: false,
        sync: { key: syncKey, setSeries: false },
        drag: { x: true, y: false, setScale: false },
        points: { size: 7 },
      },
      legend: { live: true },
      hooks: {
        setSelect: [
          (u) => {
            if (u.select.width > 4 && zoom.current) {
              const a = u.posToVal(u.select.left, 'x');
              const b = u.posToVal(u.select.left + u.select.width, 'x');
              zoom.current(new Date(a * 1000), new Date(b * 1000));
            }
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          },
        ],
      },
    };
    const u = new uPlot(opts, data(kind, points), el);
    plot.current = u;
    return () => {
      u.destroy();
      plot.current = null;
    };
  }, [kind, points, from, to, height]);

  useEffect(() => {
    plot.current?.setSize({ width, height });
  }, [width]);

  return <div class="chart" ref={ref} data-chart={kind} data-from={from} data-to={to} />;
}

// summary is the headline of a chart: what the whole range adds up to.
function summary(kind: ChartKind, pts: MetricPoint[], seconds: number): string {
  const total = pts.reduce((s, p) => s + p.count, 0);
  switch (kind) {
    case 'rate': {
      const peak = Math.max(0, ...pts.map((p) => p.rate));
      return `${total} requests · ${rate(total / Math.max(1, seconds))} avg · ${rate(peak)} peak`;
    }
    case 'errors': {
      const errs = pts.reduce((s, p) => s + p.errors, 0);
      return `${errs} errors (${total ? pct(errs / total) : '–'})`;
    }
    case 'latency': {
      const peak = Math.max(0, ...pts.filter((p) => p.count > 0).map((p) => p.p99_ns));
      return total ? `p99 up to ${fmtDur(peak)}` : 'no requests';
    }
  }
}

const titles: Record<ChartKind, string> = { rate: 'Rate', errors: 'Errors', latency: 'Latency' };

// RedCharts draws the three charts of one series side by side.
export function RedCharts({ s, height = 150, onZoom }: { s: MetricSeries; height?: number; onZoom?: (from: Date, to: Date) => void }) {
  const pts = s.points ?? [];
  const from = secs(s.from);
  const to = secs(s.to);
  return (
    <div class="red-charts" data-step={s.step}>
      {(['rate', 'errors', 'latency'] as ChartKind[]).map((k) => (
        <figure class="red-chart" data-kind={k}>
          <figcaption>
            <b>{titles[k]}</b> <span class="muted small chart-summary">{summary(k, pts, to - from)}</span>
          </figcaption>
          <Chart kind={k} points={pts} from={from} to={to} height={height} onZoom={onZoom} />
        </figure>
      ))}
    </div>
  );
}
