// Hash routing: #/traces?service=x, #/trace/ID, #/map, #/jobs. The hash
// keeps every view a plain link that works wherever the dashboard is
// mounted, with no server-side route to agree on.
import { useEffect, useState } from 'preact/hooks';

export interface Route {
  path: string[];
  params: URLSearchParams;
}

function parse(): Route {
  const h = location.hash.replace(/^#\/?/, '');
  const [p, q = ''] = h.split('?', 2);
  return { path: p.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q) };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(parse);
  useEffect(() => {
    const on = () => setRoute(parse());
    addEventListener('hashchange', on);
    return () => removeEventListener('hashchange', on);
  }, []);
  return route;
}

export function href(path: string, params?: URLSearchParams | Record<string, string>): string {
  const q = params ? new URLSearchParams(params as Record<string, string>).toString() : '';
  return '#/' + path + (q ? '?' + q : '');
}

export function navigate(path: string, params?: URLSearchParams | Record<string, string>) {
  location.hash = href(path, params).slice(1);
}
