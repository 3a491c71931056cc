import { useEffect, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { fmtAgo, fmtTime } from '../format';
import { href, navigate } from '../router';
import type { AlertEvent, AlertRule, AlertRuleInput, Session } from '../types';

const POLL_MS = 15000;

const isAdmin = (me: Session) => me.role === 'admin';

const errText = (e: unknown) => (e instanceof ApiError ? e.message : String(e));

// goDur shortens a Go duration as the API writes it: "1h0m0s" → "1h",
// "5m0s" → "5m", "0s" → "0".
export function goDur(d: string | undefined): string {
  const m = (d ?? '').match(/^(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?$/);
  if (!m) return d ?? '';
  const parts = ([
    [m[1], 'h'],
    [m[2], 'm'],
    [m[3], 's'],
  ] as const)
    .filter(([v]) => v && Number(v) !== 0)
    .map(([v, u]) => `${Number(v)}${u}`);
  return parts.length ? parts.join('') : '0';
}

// fmtValue writes a rule's value or threshold in the metric's unit:
// latencies in ms, rate per second, error rate in percent, count as is.
export function fmtValue(metric: string, v: number | null | undefined): string {
  if (v == null) return 'no data';
  const n = (x: number) => String(Math.round(x * 1000) / 1000);
  switch (metric) {
    case 'rate':
      return `${n(v)}/s`;
    case 'error_rate':
      return `${n(v * 100)}%`;
    case 'count':
      return `${n(v)} req`;
    default:
      return `${n(v)} ms`;
  }
}

// condition says what a rule watches: "p99 of gateway > 20 ms over 1h, for 5m".
function condition(r: AlertRule): string {
  const target = r.scope === 'operation' ? `${r.service} ${r.operation}` : r.scope === 'edge' ? `${r.service} → ${r.peer}` : r.service;
  const forPart = goDur(r.for) !== '0' ? `, for ${goDur(r.for)}` : '';
  return `${r.metric} of ${target} ${r.op} ${fmtValue(r.metric, r.threshold)} over ${r.window ? goDur(r.window) : '1m'}${forPart}`;
}

// statusClass is the badge colour of a rule's status.
export function statusClass(s: string): string {
  return s === 'firing' ? 'err' : s === 'pending' ? 'warn' : s === 'resolved' ? 'run' : 'ok';
}

// hostOf is the host a webhook notifies.
function hostOf(u: string): string {
  try {
    return new URL(u).host;
  } catch {
    return u;
  }
}

function StatusBadge({ s }: { s: string }) {
  return <span class={'badge ' + statusClass(s)}>{s}</span>;
}

// notified says whether a transition sends a notification: a rule with a
// webhook is notified when it fires and when a firing resolves.
const notified = (e: AlertEvent) => !e.error && (e.to === 'firing' || (e.to === 'resolved' && e.from === 'firing'));

// notificationKey names one notification: (rule, firing, status), as the
// worker's task id does.
const notificationKey = (e: AlertEvent) => `${e.rule_id} ${e.firing_since ? Date.parse(e.firing_since) : ''} ${e.to}`;

// undeliveredReason is an undelivered notification's error without the
// words the entry's badge already says.
export const undeliveredReason = (e: AlertEvent) => (e.error ?? '').replace(/^notification not delivered: /, '');

// lastUndelivered finds, per rule, the history entry saying that the rule's
// last notification was not delivered. events are newest first. The entry
// is written when a worker gives up, at once for a refused destination but
// only after the retries otherwise, maybe after a later notification was
// delivered: so it is matched to the rule's last notified transition by
// (firing, status), not taken for the last notification because it is the
// newest entry. When that transition is older than events, the rule's
// newest undelivered entry stands for it.
export function lastUndelivered(events: AlertEvent[]): Map<string, AlertEvent> {
  const lastSent = new Map<string, AlertEvent>();
  const failed = new Map<string, AlertEvent>();
  const newestFailed = new Map<string, AlertEvent>();
  for (const e of events) {
    if (e.error) {
      const k = notificationKey(e);
      if (!failed.has(k)) failed.set(k, e);
      if (!newestFailed.has(e.rule_id)) newestFailed.set(e.rule_id, e);
    } else if (notified(e) && !lastSent.has(e.rule_id)) {
      lastSent.set(e.rule_id, e);
    }
  }
  const out = new Map<string, AlertEvent>();
  for (const [rule, newest] of newestFailed) {
    const sent = lastSent.get(rule);
    const e = sent ? failed.get(notificationKey(sent)) : newest;
    if (e) out.set(rule, e);
  }
  return out;
}

// Undelivered tells a history row's notification was not delivered, and why.
function Undelivered({ e }: { e: AlertEvent }) {
  return (
    <div class="undelivered">
      <span class="badge err">not delivered</span> the <StatusBadge s={e.to} /> notification
      <div class="small undelivered-reason">{undeliveredReason(e)}</div>
    </div>
  );
}

// Alerts is #/alerts (firing, rules, history), #/alerts/new and
// #/alerts/edit/ID (the rule form, for an admin).
export function Alerts({ me, path, params }: { me: Session; path: string[]; params: URLSearchParams }) {
  if (path[1] === 'new' || path[1] === 'edit') return <RuleForm me={me} id={path[1] === 'edit' ? (path[2] ?? '') : ''} />;
  return <AlertsOverview me={me} rule={params.get('rule') ?? ''} />;
}

function AlertsOverview({ me, rule }: { me: Session; rule: string }) {
  const [rules, setRules] = useState<AlertRule[] | null>(null);
  const [active, setActive] = useState<AlertRule[] | null>(null);
  const [events, setEvents] = useState<AlertEvent[] | null>(null);
  const [undelivered, setUndelivered] = useState<Map<string, AlertEvent>>(new Map());
  // loadError is the last poll's (cleared by the next one that succeeds),
  // actionError a refused delete's (cleared by the next action).
  const [loadError, setLoadError] = useState('');
  const [actionError, setActionError] = useState('');
  const [confirm, setConfirm] = useState('');
  const [busy, setBusy] = useState(false);
  const [gen, setGen] = useState(0);

  useEffect(() => {
    // A poll aborts the one before it, still under way when the API is
    // slow, so an older answer never lands over a newer one.
    let inflight: AbortController | null = null;
    const load = () => {
      inflight?.abort();
      const ctl = new AbortController();
      inflight = ctl;
      const s = ctl.signal;
      // Every rule's recent history says whose last notification failed;
      // one rule's, when it is picked, is the list shown.
      const all = api.alertHistory({ limit: 200 }, s);
      Promise.all([api.alertRules(s), api.alerts(s), all, rule ? api.alertHistory({ rule, limit: 200 }, s) : all]).then(
        ([r, a, h, shown]) => {
          if (s.aborted) return;
          setRules(r.rules);
          setActive(a.alerts);
          setEvents(shown.events);
          // The picked rule's own list reaches further back than every rule's.
          setUndelivered(lastUndelivered(rule ? [...shown.events, ...h.events.filter((e) => e.rule_id !== rule)] : h.events));
          setLoadError('');
        },
        (e) => {
          if (!s.aborted) setLoadError(errText(e));
        },
      );
    };
    load();
    const t = setInterval(load, POLL_MS);
    return () => {
      clearInterval(t);
      inflight?.abort();
    };
  }, [rule, gen]);

  const remove = async (r: AlertRule) => {
    setBusy(true);
    setActionError('');
    try {
      await api.deleteAlertRule(r.id);
      setConfirm('');
      setGen((g) => g + 1);
    } catch (e) {
      setActionError(`Deleting "${r.name}" failed: ${errText(e)}`);
    } finally {
      setBusy(false);
    }
  };

  const picked = rules?.find((r) => r.id === rule);
  const pickedUndelivered = rule ? undelivered.get(rule) : undefined;
  return (
    <div class="alerts-page">
      <div class="card toolbar">
        <h2>Alerts</h2>
        {isAdmin(me) ? (
          <a class="button primary" href={href('alerts/new')} data-action="new-rule">
            New rule
          </a>
        ) : (
          <span class="muted small readonly-note">
            Your token is a {me.role}: you can read rules, alerts and history; creating, editing and deleting rules needs an admin token.
          </span>
        )}
      </div>
      {loadError && (
        <div class="error-box" data-error="load">
          Reading the alerts failed: {loadError}
        </div>
      )}
      {actionError && (
        <div class="error-box" data-error="action">
          {actionError}
        </div>
      )}

      <section class="card flush" aria-label="Firing and pending alerts">
        <div class="card-title">
          <h2>Firing and pending {active && <span class="muted">({active.length})</span>}</h2>
        </div>
        {active === null ? (
          <div class="empty">Loading…</div>
        ) : active.length === 0 ? (
          <div class="empty">Nothing is firing.</div>
        ) : (
          <table class="grid active-alerts">
            <thead>
              <tr>
                <th>State</th>
                <th>Rule</th>
                <th>Condition</th>
                <th class="num">Value</th>
                <th>Since</th>
              </tr>
            </thead>
            <tbody>
              {active.map((a) => (
                <tr data-alert-id={a.id} data-status={a.state?.status}>
                  <td>
                    <StatusBadge s={a.state?.status ?? 'ok'} />
                  </td>
                  <td>
                    <a href={href('alerts', { rule: a.id })}>{a.name}</a>
                  </td>
                  <td class="small">{condition(a)}</td>
                  <td class="num alert-value">{fmtValue(a.metric, a.state?.value)}</td>
                  <td class="small">
                    {(() => {
                      const since = a.state?.status === 'firing' ? a.state?.firing_since : a.state?.since;
                      return since ? `${fmtTime(since)} (${fmtAgo(since)})` : '–';
                    })()}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="card flush" aria-label="Alert rules">
        <div class="card-title">
          <h2>Rules {rules && <span class="muted">({rules.length})</span>}</h2>
        </div>
        {rules === null ? (
          <div class="empty">Loading…</div>
        ) : rules.length === 0 ? (
          <div class="empty">No alert rules yet.{isAdmin(me) ? ' "New rule" adds one.' : ''}</div>
        ) : (
          <table class="grid rules-table">
            <thead>
              <tr>
                <th>State</th>
                <th>Name</th>
                <th>Condition</th>
                <th class="num">Last value</th>
                <th>Notifies</th>
                <th>Version</th>
                {isAdmin(me) && <th />}
              </tr>
            </thead>
            <tbody>
              {rules.map((r) => (
                <tr data-rule-id={r.id} data-rule-name={r.name} class={r.id === rule ? 'selected' : ''}>
                  <td>{r.disabled ? <span class="badge plain">disabled</span> : <StatusBadge s={r.state?.status ?? 'ok'} />}</td>
                  <td>
                    <a href={href('alerts', { rule: r.id })} class="rule-name">
                      {r.name}
                    </a>
                    {r.description && <div class="muted small">{r.description}</div>}
                  </td>
                  <td class="small rule-condition">{condition(r)}</td>
                  <td class="num small">{r.state?.evaluated_at ? fmtValue(r.metric, r.state?.value) : '–'}</td>
                  <td class="small">
                    {r.webhook ? <span class="mono">{hostOf(r.webhook)}</span> : <span class="muted">no webhook</span>}
                    {undelivered.has(r.id) && (
                      <div class="notify-failed" title={undeliveredReason(undelivered.get(r.id)!)}>
                        ⚠ last notification not delivered
                      </div>
                    )}
                  </td>
                  <td class="small muted">
                    v{r.version}
                    {r.updated_at && <div>{fmtAgo(r.updated_at)}</div>}
                  </td>
                  {isAdmin(me) && (
                    <td class="rule-actions nowrap">
                      {confirm === r.id ? (
                        <span class="confirm">
                          Delete “{r.name}”?{' '}
                          <button class="danger" disabled={busy} onClick={() => remove(r)} data-action="confirm-delete">
                            Delete
                          </button>{' '}
                          <button class="link" onClick={() => setConfirm('')}>
                            Cancel
                          </button>
                        </span>
                      ) : (
                        <>
                          <a href={href('alerts/edit/' + encodeURIComponent(r.id))} data-action="edit">
                            Edit
                          </a>{' '}
                          <button class="link danger-link" onClick={() => setConfirm(r.id)} data-action="delete">
                            Delete
                          </button>
                        </>
                      )}
                    </td>
                  )}
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section class="card flush" aria-label="Alert history">
        <div class="card-title history-title">
          <h2>History {picked ? <>of “{picked.name}”</> : rule ? 'of a deleted rule' : ''}</h2>
          {rule && <a href={href('alerts')}>every rule</a>}
        </div>
        {pickedUndelivered && (
          <div class="warn-box" role="alert" data-undelivered-rule={rule}>
            <b>Last notification not delivered.</b> The notification that the rule {pickedUndelivered.to === 'firing' ? 'fired' : 'resolved'} was
            given up at {fmtTime(pickedUndelivered.at)}: <span class="undelivered-reason">{undeliveredReason(pickedUndelivered)}</span>
          </div>
        )}
        {events === null ? (
          <div class="empty">Loading…</div>
        ) : events.length === 0 ? (
          <div class="empty">No transitions yet.</div>
        ) : (
          <table class="grid history">
            <thead>
              <tr>
                <th>At</th>
                <th>Rule</th>
                <th>Transition</th>
                <th class="num">Value</th>
                <th class="num">Threshold</th>
              </tr>
            </thead>
            <tbody>
              {events.map((e) => {
                const metric = rules?.find((r) => r.id === e.rule_id)?.metric ?? '';
                return (
                  <tr
                    data-event-rule={e.rule_id}
                    data-transition={`${e.from}>${e.to}`}
                    data-undelivered={e.error ? e.to : undefined}
                    class={e.error ? 'undelivered-row' : undefined}
                  >
                    <td class="small nowrap">{fmtTime(e.at)}</td>
                    <td>
                      <a href={href('alerts', { rule: e.rule_id })}>{e.rule_name}</a>
                    </td>
                    <td>
                      {e.error ? (
                        <Undelivered e={e} />
                      ) : (
                        <>
                          <StatusBadge s={e.from} /> → <StatusBadge s={e.to} />
                        </>
                      )}
                    </td>
                    <td class="num small">{metric ? fmtValue(metric, e.value) : (e.value ?? 'no data')}</td>
                    <td class="num small">{metric ? fmtValue(metric, e.threshold) : e.threshold}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )}
      </section>
    </div>
  );
}

// The fields the API names in its refusals ("alert rule: threshold 2: …").
const fields = ['name', 'description', 'metric', 'scope', 'service', 'operation', 'peer', 'op', 'threshold', 'window', 'for', 'webhook'] as const;
type Field = (typeof fields)[number];

// refusedField finds the field an API refusal names.
export function refusedField(msg: string): Field | '' {
  const m = msg.match(/^alert rule: (\w+)/);
  return m && (fields as readonly string[]).includes(m[1]) ? (m[1] as Field) : '';
}

const metricHelp: Record<string, string> = {
  p50: 'milliseconds',
  p90: 'milliseconds',
  p99: 'milliseconds',
  max: 'milliseconds',
  mean: 'milliseconds',
  rate: 'requests per second',
  error_rate: 'a fraction: 0.02 is 2%',
  count: 'requests in the window',
};
const windows = ['1m', '5m', '10m', '15m', '30m', '1h', '6h', '24h'];
const fors = ['0', '1m', '2m', '5m', '10m', '15m', '30m', '1h'];

interface FormState {
  name: string;
  description: string;
  metric: string;
  scope: string;
  service: string;
  operation: string;
  peer: string;
  op: string;
  threshold: string;
  window: string;
  for: string;
  webhook: string;
  disabled: boolean;
}

const blank: FormState = {
  name: '',
  description: '',
  metric: 'p99',
  scope: 'service',
  service: '',
  operation: '',
  peer: '',
  op: '>',
  threshold: '',
  window: '5m',
  for: '0',
  webhook: '',
  disabled: false,
};

function toForm(r: AlertRule): FormState {
  return {
    name: r.name,
    description: r.description ?? '',
    metric: r.metric,
    scope: r.scope,
    service: r.service,
    operation: r.operation ?? '',
    peer: r.peer ?? '',
    op: r.op,
    threshold: String(r.threshold),
    window: r.window ? goDur(r.window) : '1m',
    for: goDur(r.for),
    webhook: r.webhook ?? '',
    disabled: !!r.disabled,
  };
}

// toRule builds the request body: only the fields the API knows (it
// refuses unknown ones), the scope's own fields only.
function toRule(f: FormState): AlertRuleInput {
  return {
    name: f.name,
    description: f.description || undefined,
    metric: f.metric,
    scope: f.scope,
    service: f.service.trim(),
    operation: f.scope === 'operation' ? f.operation : undefined,
    peer: f.scope === 'edge' ? f.peer.trim() : undefined,
    op: f.op,
    threshold: Number(f.threshold),
    window: f.window,
    for: f.for === '0' ? '0s' : f.for,
    webhook: f.webhook.trim() || undefined,
    disabled: f.disabled || undefined,
  };
}

function RuleForm({ me, id }: { me: Session; id: string }) {
  const [f, setF] = useState<FormState | null>(id ? null : blank);
  const [version, setVersion] = useState(0);
  const [error, setError] = useState('');
  const [bad, setBad] = useState<Field | ''>('');
  const [busy, setBusy] = useState(false);
  const [services, setServices] = useState<string[]>([]);
  const [ops, setOps] = useState<string[]>([]);

  useEffect(() => {
    api.services().then((r) => setServices(r.services), () => undefined);
    if (!id) return;
    api.alertRule(id).then(
      (r) => {
        setF(toForm(r));
        setVersion(r.version);
      },
      (e) => setError(errText(e)),
    );
  }, [id]);
  useEffect(() => {
    if (f?.scope === 'operation' && f.service && services.includes(f.service)) {
      api.operations(f.service).then((r) => setOps(r.operations), () => setOps([]));
    }
  }, [f?.scope, f?.service, services]);

  if (!isAdmin(me)) {
    return (
      <div class="card rule-form refused" role="alert">
        <h2>{id ? 'Edit alert rule' : 'New alert rule'}</h2>
        <p>
          Changing alert rules needs an admin token. You are signed in as <b>{me.name}</b>, a {me.role}: the API would refuse the change.
        </p>
        <a href={href('alerts')}>← back to the alerts</a>
      </div>
    );
  }
  if (!f) return <div class="card empty">{error ? <div class="error-box">{error}</div> : 'Loading the rule…'}</div>;

  const set = (k: keyof FormState) => (e: Event) => {
    const t = e.target as HTMLInputElement;
    const v = t.type === 'checkbox' ? t.checked : t.value;
    setF((cur) => cur && { ...cur, [k]: v });
    if (bad === k) setBad('');
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    setError('');
    setBad('');
    if (f.threshold.trim() === '' || !isFinite(Number(f.threshold))) {
      setBad('threshold');
      setError('threshold: give a number');
      return;
    }
    setBusy(true);
    try {
      const r = id ? await api.updateAlertRule(id, toRule(f)) : await api.createAlertRule(toRule(f));
      navigate('alerts', { rule: r.id });
    } catch (err) {
      const msg = errText(err);
      setError(msg);
      setBad(refusedField(msg));
    } finally {
      setBusy(false);
    }
  };
  // field wraps an input with its label, marking it when the API refused it.
  const field = (name: Field, label: string, input: preact.ComponentChildren, hint?: string) => (
    <label class={bad === name ? 'invalid' : ''} data-field={name}>
      {label}
      {input}
      {hint && <span class="field-hint">{hint}</span>}
      {bad === name && <span class="field-error">{error}</span>}
    </label>
  );
  const withCurrent = (list: string[], v: string) => (list.includes(v) ? list : [v, ...list]);

  return (
    <form class="card rule-form" onSubmit={submit} aria-label={id ? 'Edit alert rule' : 'New alert rule'} noValidate>
      <div class="form-head">
        <a href={href('alerts')} class="back" title="back to the alerts">
          ←
        </a>
        <h2>{id ? `Edit “${f.name}”` : 'New alert rule'}</h2>
        {id && <span class="muted small">version {version}</span>}
      </div>
      {error && (
        <div class="error-box" role="alert">
          The API refused the rule: {error}
        </div>
      )}
      {field('name', 'Name', <input name="name" value={f.name} onInput={set('name')} />)}
      {field('description', 'Description', <input name="description" value={f.description} onInput={set('description')} />, 'optional')}
      <div class="row3">
        {field(
          'metric',
          'Metric',
          <select name="metric" value={f.metric} onChange={set('metric')}>
            {withCurrent(Object.keys(metricHelp), f.metric).map((m) => (
              <option value={m}>{m}</option>
            ))}
          </select>,
        )}
        {field(
          'op',
          'Condition',
          <select name="op" value={f.op} onChange={set('op')}>
            {withCurrent(['>', '>=', '<', '<='], f.op).map((o) => (
              <option value={o}>{o}</option>
            ))}
          </select>,
        )}
        {field('threshold', 'Threshold', <input name="threshold" type="text" inputMode="decimal" value={f.threshold} onInput={set('threshold')} />, metricHelp[f.metric])}
      </div>
      <div class="row3">
        {field(
          'scope',
          'Scope',
          <select name="scope" value={f.scope} onChange={set('scope')}>
            <option value="service">a service</option>
            <option value="operation">an operation</option>
            <option value="edge">calls to a callee</option>
          </select>,
        )}
        {field(
          'service',
          f.scope === 'edge' ? 'Caller' : 'Service',
          <>
            <input name="service" list="rule-services" value={f.service} onInput={set('service')} />
            <datalist id="rule-services">
              {services.map((s) => (
                <option value={s} />
              ))}
            </datalist>
          </>,
        )}
        {f.scope === 'operation' &&
          field(
            'operation',
            'Operation',
            <>
              <input name="operation" list="rule-ops" value={f.operation} onInput={set('operation')} />
              <datalist id="rule-ops">
                {ops.map((o) => (
                  <option value={o} />
                ))}
              </datalist>
            </>,
          )}
        {f.scope === 'edge' && field('peer', 'Callee', <input name="peer" list="rule-services" value={f.peer} onInput={set('peer')} />, 'a service, or protocol://ip:port')}
      </div>
      <div class="row3">
        {field(
          'window',
          'Window',
          <select name="window" value={f.window} onChange={set('window')}>
            {withCurrent(windows, f.window).map((w) => (
              <option value={w}>{w}</option>
            ))}
          </select>,
          'the metrics one evaluation reads',
        )}
        {field(
          'for',
          'For',
          <select name="for" value={f.for} onChange={set('for')}>
            {withCurrent(fors, f.for).map((w) => (
              <option value={w}>{w === '0' ? 'fire at once' : w}</option>
            ))}
          </select>,
          'how long the breach lasts before it fires',
        )}
        {field('webhook', 'Webhook', <input name="webhook" value={f.webhook} onInput={set('webhook')} placeholder="https://…" />, 'optional')}
      </div>
      <label class="check">
        <input type="checkbox" name="disabled" checked={f.disabled} onChange={set('disabled')} />
        Disabled (kept, not evaluated)
      </label>
      <div class="form-actions">
        <button class="primary" type="submit" disabled={busy}>
          {busy ? 'Saving…' : id ? 'Save changes' : 'Create rule'}
        </button>
        <a href={href('alerts')}>Cancel</a>
      </div>
    </form>
  );
}
