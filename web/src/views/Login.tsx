import { useState } from 'preact/hooks';
import { ApiError, login } from '../api';
import type { Session } from '../types';

// Login trades a bearer token for a session: an HttpOnly cookie the page
// cannot read, and a CSRF token it sends back on every change.
export function Login({ onLogin }: { onLogin: (s: Session) => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      onLogin(await login(token.trim()));
    } catch (err) {
      setError(err instanceof ApiError ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="login">
      <form class="card login-card" onSubmit={submit}>
        <h1>DeepTrace</h1>
        <p class="muted">Distributed traces from the network, without touching the code.</p>
        <label for="token">API token</label>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="current-password"
          placeholder="dt_…"
          value={token}
          onInput={(e) => setToken((e.target as HTMLInputElement).value)}
          autofocus
        />
        {error && <div class="error-box">{error}</div>}
        <button class="primary" type="submit" disabled={busy || !token.trim()}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
        <p class="hint">
          Ask an admin for a token, or make one with <code>deeptrace api new-token --name you --role viewer</code>. The
          session lives in an HttpOnly cookie; the token is not stored in the browser.
        </p>
      </form>
    </div>
  );
}
