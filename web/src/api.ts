// The dashboard's client of DeepTrace's v1 API. Requests are same-origin
// and carry the session cookie; state-changing calls echo the session's
// CSRF token in X-CSRF-Token, as the API demands.
import type {
  AlertEvent,
  AlertRule,
  AlertRuleInput,
  Dependencies,
  Job,
  MetricEdges,
  MetricSeries,
  Session,
  Trace,
  TraceSearch,
} from './types';

// The API lives beside the dashboard: the API serves it under /ui/, so the
// API's root is what comes before /ui/ (/ itself, or a proxy's prefix).
// Anywhere else (npm run dev) it is /.
const m = location.pathname.match(/^(.*?\/)ui(?:\/|$)/);
export const apiRoot = m ? m[1] : '/';

const csrfHeader = 'X-CSRF-Token';
let csrfToken = '';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

// onUnauthorized is called when the API answers 401: the session ended.
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(fn: () => void) {
  onUnauthorized = fn;
}

function cookie(name: string): string {
  for (const part of document.cookie.split(';')) {
    const [k, v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v ?? '');
  }
  return '';
}

export type Params = Record<string, string | number | boolean | string[] | undefined>;

export function query(params: Params): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === '' || v === false) continue;
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else q.set(k, String(v));
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD') {
    headers[csrfHeader] = csrfToken || cookie('deeptrace_csrf');
  }
  const res = await fetch(apiRoot + path.replace(/^\//, ''), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin',
    signal,
  });
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  let data: unknown = undefined;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    // An answer that is not JSON (a proxy's error page) is reported as text.
  }
  if (!res.ok) {
    const msg = (data as { error?: string } | undefined)?.error || text.slice(0, 200) || res.statusText;
    if (res.status === 401 && !path.includes('/auth/login')) onUnauthorized();
    throw new ApiError(res.status, msg);
  }
  return data as T;
}

export async function login(token: string): Promise<Session> {
  const s = await call<Session>('POST', '/api/v1/auth/login', { token });
  csrfToken = s.csrf_token ?? '';
  return s;
}

export async function session(): Promise<Session> {
  const s = await call<Session>('GET', '/api/v1/auth/session');
  csrfToken = s.csrf_token ?? csrfToken;
  return s;
}

export async function logout(): Promise<void> {
  await call<void>('POST', '/api/v1/auth/logout');
  csrfToken = '';
}

export const api = {
  traces: (p: Params, signal?: AbortSignal) => call<TraceSearch>('GET', '/api/v1/traces' + query(p), undefined, signal),
  trace: (id: string, signal?: AbortSignal) => call<Trace>('GET', '/api/v1/traces/' + encodeURIComponent(id), undefined, signal),
  services: (p: Params = {}) => call<{ services: string[] }>('GET', '/api/v1/services' + query(p)),
  operations: (service: string, p: Params = {}) =>
    call<{ operations: string[] }>('GET', '/api/v1/services/' + encodeURIComponent(service) + '/operations' + query(p)),
  dependencies: (p: Params, signal?: AbortSignal) => call<Dependencies>('GET', '/api/v1/dependencies' + query(p), undefined, signal),
  jobs: (limit = 20) => call<{ jobs: Job[] }>('GET', '/api/v1/reassembly' + query({ limit })),
  job: (id: string) => call<Job>('GET', '/api/v1/reassembly/' + encodeURIComponent(id)),
  startReassembly: (req: { from: string; to: string; services?: string[]; window?: string }) =>
    call<Job>('POST', '/api/v1/reassembly', req),
  metricSeries: (p: Params, signal?: AbortSignal) => call<MetricSeries>('GET', '/api/v1/metrics/series' + query(p), undefined, signal),
  metricEdges: (p: Params, signal?: AbortSignal) => call<MetricEdges>('GET', '/api/v1/metrics/edges' + query(p), undefined, signal),
  alerts: (signal?: AbortSignal) => call<{ alerts: AlertRule[] }>('GET', '/api/v1/alerts', undefined, signal),
  alertRules: (signal?: AbortSignal) => call<{ rules: AlertRule[] }>('GET', '/api/v1/alerts/rules', undefined, signal),
  alertRule: (id: string) => call<AlertRule>('GET', '/api/v1/alerts/rules/' + encodeURIComponent(id)),
  alertHistory: (p: Params = {}, signal?: AbortSignal) =>
    call<{ events: AlertEvent[] }>('GET', '/api/v1/alerts/history' + query(p), undefined, signal),
  createAlertRule: (r: AlertRuleInput) => call<AlertRule>('POST', '/api/v1/alerts/rules', r),
  updateAlertRule: (id: string, r: AlertRuleInput) => call<AlertRule>('PUT', '/api/v1/alerts/rules/' + encodeURIComponent(id), r),
  deleteAlertRule: (id: string) => call<void>('DELETE', '/api/v1/alerts/rules/' + encodeURIComponent(id)),
};
