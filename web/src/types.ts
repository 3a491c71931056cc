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
