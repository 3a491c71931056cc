import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError, api, logout, session, setUnauthorizedHandler } from './api';
import { setServices } from './colors';
import type { Session } from './types';
import { href, useRoute } from './router';
import { Login } from './views/Login';
import { Search } from './views/Search';
import { TraceView } from './views/TraceView';
import { ServiceMap } from './views/ServiceMap';
import { Jobs } from './views/Jobs';
import { Metrics } from './views/Metrics';
import { Alerts } from './views/Alerts';
import './style.css';

function App() {
  // undefined: still asking the API who we are; null: logged out.
  const [me, setMe] = useState<Session | null | undefined>(undefined);
  // Why the session cannot be checked now (the API or its Redis away): the
  // cookie may be good, so ask again rather than show the login page.
  const [unchecked, setUnchecked] = useState('');
  const route = useRoute();

  useEffect(() => {
    setUnauthorizedHandler(() => setMe(null));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const check = () =>
      session().then(
        (s) => {
          setUnchecked('');
          setMe(s);
        },
        (err) => {
          // Asked again: no answer at all, or the API (or a proxy)
          // saying it cannot answer now. Anything else is final.
          const transient = !(err instanceof ApiError) || err.status >= 500 || err.status === 429;
          if (!transient) {
            setUnchecked('');
            setMe(null);
            return;
          }
          setUnchecked(err instanceof Error ? err.message : String(err));
          timer = setTimeout(check, 5000);
        },
      );
    check();
    return () => clearTimeout(timer);
  }, []);
  // Colours follow the service list; fetch it once per session.
  const [colored, setColored] = useState(false);
  useEffect(() => {
    if (!me) return;
    api
      .services()
      .then((r) => setServices(r.services), () => undefined)
      .finally(() => setColored(true));
  }, [me]);

  // The Alerts tab shows how many rules fire; checked every 30 s.
  const [firing, setFiring] = useState(0);
  useEffect(() => {
    if (!me) return;
    let stopped = false;
    const load = () =>
      api.alerts().then(
        (r) => !stopped && setFiring(r.alerts.filter((a) => a.state?.status === 'firing').length),
        () => undefined,
      );
    load();
    const t = setInterval(load, 30000);
    return () => {
      stopped = true;
      clearInterval(t);
    };
  }, [me, route.path[0]]);

  if (me === undefined && unchecked)
    return (
      <div class="boot" data-boot="unchecked">
        <div class="error-box" role="alert">
          Your session cannot be checked now: {unchecked}
        </div>
        <p>It is not ended: this page tries again every 5 s and opens once the API can answer.</p>
      </div>
    );
  if (me === undefined) return <div class="boot">Loading…</div>;
  if (me === null) return <Login onLogin={setMe} />;
  if (!colored) return <div class="boot">Loading…</div>;

  const view = route.path[0] ?? 'traces';
  let body;
  switch (view) {
    case 'trace':
      body = <TraceView id={route.path[1] ?? ''} selected={route.params.get('span') ?? ''} />;
      break;
    case 'map':
      body = <ServiceMap params={route.params} />;
      break;
    case 'jobs':
      body = <Jobs me={me} />;
      break;
    case 'metrics':
      body = <Metrics service={route.path[1] ?? ''} params={route.params} />;
      break;
    case 'alerts':
      body = <Alerts me={me} path={route.path} params={route.params} />;
      break;
    default:
      body = <Search params={route.params} />;
  }
  const tab = (name: string, label: preact.ComponentChildren, active: boolean) => (
    <a class={active ? 'tab active' : 'tab'} href={href(name)}>
      {label}
    </a>
  );
  return (
    <div class="app">
      <header class="topbar">
        <a class="brand" href={href('traces')}>
          <svg width="22" height="22" viewBox="0 0 24 24" aria-hidden="true">
            <rect x="2" y="4" width="14" height="3.2" rx="1.6" fill="#60a5fa" />
            <rect x="6" y="10.4" width="12" height="3.2" rx="1.6" fill="#34d399" />
            <rect x="10" y="16.8" width="12" height="3.2" rx="1.6" fill="#fbbf24" />
          </svg>
          DeepTrace
        </a>
        <nav>
          {tab('traces', 'Traces', view === 'traces' || view === 'trace')}
          {tab('metrics', 'Metrics', view === 'metrics')}
          {tab('map', 'Service map', view === 'map')}
          {tab(
            'alerts',
            <>
              Alerts
              {firing > 0 && (
                <span class="tab-count" title={`${firing} firing`}>
                  {firing}
                </span>
              )}
            </>,
            view === 'alerts',
          )}
          {tab('jobs', 'Reassembly', view === 'jobs')}
        </nav>
        <div class="who">
          <span title={`signed in with token "${me.name}"`}>
            {me.name} <span class="role">{me.role}</span>
          </span>
          <button
            class="link"
            onClick={() =>
              logout()
                .catch(() => undefined)
                .finally(() => setMe(null))
            }
          >
            Log out
          </button>
        </div>
      </header>
      <main>{body}</main>
    </div>
  );
}

render(<App />, document.getElementById('app')!);
