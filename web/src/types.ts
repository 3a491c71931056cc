// The API's documents, as the dashboard reads them. schemas/ (Go) is the
// source of truth: schemas/span.go, schemas/trace.go, store/traces.go
// (DependencyEdge) and jobs/reassembly.go (JobStatus).

export type Role = 'client' | 'server';

export interface Span {
  span_id: string;
  parent_span_id?: string;
  parent_confidence?: number;
  role: Role;
  protocol: string;
  operation: string;
  method?: string;
  path?: string;
  status_code: number;
  error: boolean;
  status_text?: string;
  timestamp: string;
  start_ns: number;
  end_ns: number;
  duration_ns: number;
  req_bytes: number;
  resp_bytes: number;
  pid: number;
  tid: number;
  goid?: number;
  process: string;
  service: string;
  host: string;
  netns?: number;
  client_ip: string;
  client_port: number;
  server_ip: string;
  server_port: number;
  seq: number;
  req_tcp_seq: number;
  resp_tcp_seq: number;
  tags?: Record<string, string>;
}

export interface TraceSpan extends Span {
  trace_parent_id?: string;
  depth: number;
  link_kind?: 'local' | 'tuple' | 'tcpseq' | string;
}

export interface Trace {
  trace_id: string;
  root_span_id: string;
  root_service: string;
  root_operation: string;
  timestamp: string;
  start_ns: number;
  end_ns: number;
  duration_ns: number;
  error: boolean;
  span_count: number;
  services: string[];
  operations: string[];
  hosts: string[];
  window: string;
  assembled_at: string;
  spans: TraceSpan[];
}

export interface TraceSummary {
  trace_id: string;
  root_service: string;
  root_operation: string;
  start: string;
  duration_ns: number;
  span_count: number;
  error: boolean;
  services: string[];
  hosts: string[];
}

export interface TraceSearch {
  traces: TraceSummary[];
  from: string;
  to: string;
  limit: number;
}

export interface DependencyEdge {
  parent: string;
  child: string;
  calls: number;
  errors: number;
  error_rate: number;
  p50_ns: number;
  p90_ns: number;
  p99_ns: number;
  max_ns: number;
}

export interface Dependencies {
  from: string;
  to: string;
  edges: DependencyEdge[];
  traces: number;
  sampled: boolean;
}

export interface Job {
  id: string;
  from: string;
  to: string;
  window: string;
  shards: number;
  services?: string[];
  total: number;
  done: number;
  failed: number;
  state: 'running' | 'done' | 'failed' | string;
  created: string;
  finished?: string;
}

export interface Session {
  name: string;
  role: 'viewer' | 'operator' | 'admin' | string;
  via: string;
  csrf_token?: string;
  expires?: string;
}

// One step of a RED series (worker/rollup.Point): rate is requests per
// second over the step; latencies are in nanoseconds.
export interface MetricPoint {
  t: string;
  count: number;
  errors: number;
  rate: number;
  error_rate: number;
  p50_ns: number;
  p90_ns: number;
  p99_ns: number;
  max_ns: number;
  mean_ns: number;
  exact: boolean;
}

export type MetricScope = 'service' | 'operation' | 'edge';

// GET /api/v1/metrics/series.
export interface MetricSeries {
  scope: MetricScope;
  service: string;
  operation?: string;
  peer?: string;
  from: string;
  to: string;
  step: string;
  points: MetricPoint[] | null;
}

// One caller→callee edge over a range (worker/rollup.EdgeSummary).
export interface MetricEdge extends MetricPoint {
  caller: string;
  callee: string;
}

// GET /api/v1/metrics/edges.
export interface MetricEdges {
  from: string;
  to: string;
  edges: MetricEdge[];
}

export type AlertMetric = 'p50' | 'p90' | 'p99' | 'max' | 'mean' | 'rate' | 'error_rate' | 'count';
export type AlertStatus = 'ok' | 'pending' | 'firing' | 'resolved';

// An alert rule as the API takes it (alerting.Rule); window and for are
// Go durations ("5m0s" on the way out).
export interface AlertRuleInput {
  name: string;
  description?: string;
  metric: AlertMetric | string;
  scope: MetricScope | string;
  service: string;
  operation?: string;
  peer?: string;
  op: string;
  threshold: number;
  window?: string;
  for?: string;
  webhook?: string;
  disabled?: boolean;
}

export interface AlertState {
  status: AlertStatus | string;
  since?: string;
  firing_since?: string;
  value: number | null;
  evaluated_at?: string;
}

export interface AlertRule extends AlertRuleInput {
  id: string;
  version: number;
  created_at?: string;
  updated_at?: string;
  state?: AlertState;
}

// One transition of a rule (alerting.Event), or, with error, the
// notification of the transition to `to` that a worker will not deliver
// (its destination refused, or its retries used up); from equals to then.
export interface AlertEvent {
  rule_id: string;
  rule_name: string;
  from: AlertStatus | string;
  to: AlertStatus | string;
  at: string;
  value: number | null;
  threshold: number;
  firing_since?: string;
  error?: string;
}
