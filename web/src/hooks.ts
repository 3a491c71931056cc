import { useEffect, useRef, useState } from 'preact/hooks';

// useWidth measures an element's content width and follows its changes,
// so SVG charts draw at the size they are shown (text stays undistorted).
export function useWidth<T extends HTMLElement>(initial = 800) {
  const ref = useRef<T>(null);
  const [width, setWidth] = useState(initial);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setWidth(Math.max(200, Math.floor(el.clientWidth))));
    ro.observe(el);
    setWidth(Math.max(200, Math.floor(el.clientWidth)));
    return () => ro.disconnect();
  }, []);
  return [ref, width] as const;
}
