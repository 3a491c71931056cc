// A stable colour per service: the same service has the same colour in
// the waterfall, the result list and the service map.
const palette = [
  '#3b82f6', '#10b981', '#f59e0b', '#8b5cf6', '#ec4899', '#14b8a6',
  '#f97316', '#6366f1', '#84cc16', '#06b6d4', '#d946ef', '#0ea5e9',
];

// Known services get the palette in name order, so that the few services
// of a system never share a colour; others fall back to a hash.
let known = new Map<string, number>();

export function setServices(names: string[]) {
  known = new Map([...new Set(names)].sort().map((n, i) => [n, i]));
}

export function serviceColor(name: string): string {
  const i = known.get(name);
  if (i !== undefined) return palette[i % palette.length];
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 16777619);
  }
  return palette[(h >>> 0) % palette.length];
}

// peerColor is the grey of a callee with no agent (a database, a cache).
export const peerColor = '#94a3b8';

export const isPeer = (name: string) => name.includes('://');
