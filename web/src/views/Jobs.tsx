import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError } from '../api';
import { fmtAgo, fmtTime, fromLocalInput, toLocalInput } from '../format';
import type { Job, Session } from '../types';

const POLL_MS = 1000;

// Jobs starts reassembly jobs and follows them: a running job is polled
// (GET /api/v1/reassembly/:id) every second until every task is accounted
// for.
export function Jobs({ me }: { me: Session }) {
  const now = new Date();
  const [from, setFrom] = useState(toLocalInput(new Date(now.getTime() - 3600e3)));
  const [to, setTo] = useState(toLocalInput(new Date(now.getTime() - 60e3)));
  const [win, setWin] = useState('');
  const [services, setServices] = useState<string[]>([]);
  const [picked, setPicked] = useState<Set<string>>(new Set());
  const [jobs, setJobs] = useState<Job[] | null>(null);
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  const [, tick] = useState(0);
  const jobsRef = useRef<Job[]>([]);
  jobsRef.current = jobs ?? [];
  const canStart = me.role === 'operator' || me.role === 'admin';

  useEffect(() => {
    api.services().then((r) => setServices(r.services), () => undefined);
    api.jobs(20).then((r) => setJobs(r.jobs), (e) => setError(e instanceof ApiError ? e.message : String(e)));
  }, []);

  // Poll the running jobs, each by id, until they finish.
  useEffect(() => {
    let stopped = false;
    const timer = setInterval(async () => {
      tick((n) => n + 1); // refresh "ago" times
      const running = jobsRef.current.filter((j) => j.state === 'running').slice(0, 10);
      if (!running.length) return;
      const fresh = await Promise.all(running.map((j) => api.job(j.id).catch(() => j)));
      if (stopped) return;
      const byId = new Map(fresh.map((j) => [j.id, j]));
      setJobs((cur) => (cur ?? []).map((j) => byId.get(j.id) ?? j));
    }, POLL_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);

  const start = async (e: Event) => {
    e.preventDefault();
    setError('');
    const f = fromLocalInput(from);
    const t = fromLocalInput(to);
    if (!f || !t) return setError('Give both ends of the range.');
    if (t <= f) return setError('The end of the range must be after its start.');
    setBusy(true);
    try {
      const job = await api.startReassembly({
        from: f.toISOString(),
        to: t.toISOString(),
        services: picked.size ? [...picked] : undefined,
        window: win || undefined,
      });
      setJobs((cur) => [job, ...(cur ?? []).filter((j) => j.id !== job.id)]);
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const toggle = (s: string) => {
    const next = new Set(picked);
    if (next.has(s)) next.delete(s);
    else next.add(s);
    setPicked(next);
  };

  return (
    <div class="jobs-page">
      <form class="card job-form" onSubmit={start} aria-label="Start a reassembly">
        <h2>Reassemble a range</h2>
        <p class="muted small">
          Re-runs trace assembly over past windows — after late spans arrived, an assembler fix, or a restored span index. Traces are rewritten in
          place; nothing is duplicated.
        </p>
        <label>
          From
          <input type="datetime-local" name="from" value={from} onInput={(e) => setFrom((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          To
          <input type="datetime-local" name="to" value={to} onInput={(e) => setTo((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Window per task
          <select name="window" value={win} onChange={(e) => setWin((e.target as HTMLSelectElement).value)}>
            <option value="">server default</option>
            <option value="1m">1 minute</option>
            <option value="5m">5 minutes</option>
            <option value="15m">15 minutes</option>
            <option value="1h">1 hour</option>
          </select>
        </label>
        <fieldset>
          <legend>Services {picked.size === 0 && <span class="muted small">(none picked: all)</span>}</legend>
          <div class="chips pick">
            {services.map((s) => (
              <label class={'chip toggle' + (picked.has(s) ? ' on' : '')}>
                <input type="checkbox" checked={picked.has(s)} onChange={() => toggle(s)} />
                {s}
              </label>
            ))}
          </div>
        </fieldset>
        {error && <div class="error-box">{error}</div>}
        <button class="primary" type="submit" disabled={busy || !canStart} title={canStart ? '' : 'needs an operator or admin token'}>
          {busy ? 'Starting…' : 'Start reassembly'}
        </button>
        {!canStart && <p class="muted small">Your token is a {me.role}: starting a reassembly needs an operator.</p>}
      </form>

      <section class="card flush jobs-list">
        <div class="card-title">
          <h2>Jobs</h2>
        </div>
        {jobs === null ? (
          <div class="empty">Loading…</div>
        ) : jobs.length === 0 ? (
          <div class="empty">No reassembly jobs yet.</div>
        ) : (
          <table class="grid">
            <thead>
              <tr>
                <th>Job</th>
                <th>Range</th>
                <th>Services</th>
                <th style={{ width: '32%' }}>Progress</th>
                <th>State</th>
              </tr>
            </thead>
            <tbody>
              {jobs.map((j) => (
                <JobRow job={j} />
              ))}
            </tbody>
          </table>
        )}
      </section>
    </div>
  );
}

function JobRow({ job: j }: { job: Job }) {
  const accounted = j.done + j.failed;
  const pct = j.total ? Math.floor((accounted * 100) / j.total) : 100;
  const took = j.finished && !j.finished.startsWith('0001') ? (Date.parse(j.finished) - Date.parse(j.created)) / 1000 : null;
  return (
    <tr data-job-id={j.id} data-state={j.state}>
      <td>
        <div class="mono small">{j.id}</div>
        <div class="muted small">
          started {fmtAgo(j.created)}
          {took !== null && `, took ${took < 10 ? took.toFixed(1) : Math.round(took)}s`}
        </div>
      </td>
      <td class="small">
        {fmtTime(j.from)}
        <br />
        {fmtTime(j.to)}
        <div class="muted">
          window {j.window} · {j.shards} shards
        </div>
      </td>
      <td class="small">{j.services?.length ? j.services.join(', ') : <span class="muted">all</span>}</td>
      <td>
        <div class="progress" role="progressbar" aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
          <i class="done" style={{ width: `${(j.done / Math.max(j.total, 1)) * 100}%` }} />
          <i class="failed" style={{ width: `${(j.failed / Math.max(j.total, 1)) * 100}%` }} />
        </div>
        <div class="small progress-text">
          <b class="pct">{pct}%</b> · {j.done}/{j.total} tasks{j.failed ? `, ${j.failed} failed` : ''}
        </div>
      </td>
      <td>
        <span class={'badge ' + (j.state === 'done' ? 'ok' : j.state === 'failed' ? 'err' : 'run')}>{j.state}</span>
      </td>
    </tr>
  );
}
