// Formatting of durations, times and sizes for people.

export function fmtDur(ns: number): string {
  if (!isFinite(ns)) return '–';
  if (ns === 0) return '0';
  if (ns < 0) return '-' + fmtDur(-ns);
  if (ns < 1e3) return `${Math.round(ns)}ns`;
  if (ns < 1e6) return `${trim((ns / 1e3).toFixed(1))}µs`;
  if (ns < 1e9) return `${trim((ns / 1e6).toFixed(ns < 1e7 ? 2 : 1))}ms`;
  if (ns < 60e9) return `${trim((ns / 1e9).toFixed(2))}s`;
  const s = Math.round(ns / 1e9);
  const h = Math.floor(s / 3600);
  const mnt = Math.floor((s % 3600) / 60);
  return h ? `${h}h${mnt}m` : `${mnt}m${s % 60}s`;
}

function trim(s: string): string {
  return s.includes('.') ? s.replace(/0+$/, '').replace(/\.$/, '') : s;
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

// fmtTime is a local time to the second (and millisecond with ms).
export function fmtTime(iso: string | Date, ms = false): string {
  const d = typeof iso === 'string' ? new Date(iso) : iso;
  if (isNaN(d.getTime())) return '–';
  const s = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return ms ? `${s}.${pad(d.getMilliseconds(), 3)}` : s;
}

export function fmtClock(d: Date): string {
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// fmtAgo says how long ago a time was: "12s ago", "5m ago", "3h ago".
export function fmtAgo(iso: string, now = Date.now()): string {
  const s = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${trim((n / 1024).toFixed(1))} KiB`;
  return `${trim((n / (1 << 20)).toFixed(1))} MiB`;
}

export function fmtRate(perSec: number): string {
  if (perSec >= 100) return `${Math.round(perSec)}/s`;
  if (perSec >= 1) return `${trim(perSec.toFixed(1))}/s`;
  if (perSec * 60 >= 1) return `${trim((perSec * 60).toFixed(1))}/min`;
  return `${trim((perSec * 3600).toFixed(1))}/h`;
}

// toLocalInput and fromLocalInput convert between instants and the value
// of an <input type="datetime-local">.
export function toLocalInput(d: Date): string {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fromLocalInput(v: string): Date | null {
  if (!v) return null;
  const d = new Date(v);
  return isNaN(d.getTime()) ? null : d;
}

// shortId is the first characters of an id, for tight places.
export const shortId = (id: string) => id.slice(0, 8);
