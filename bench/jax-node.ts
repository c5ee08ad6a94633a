/**
 * Loading @jax-js/jax on Node 20 for the benchmarks: its einsum (inside nn.dotProductAttention) maps over
 * String.matchAll's iterator with the ES2025 iterator helpers, which Node 20's V8 lacks. Lazy map/filter on the
 * shared iterator prototype, installed only when missing, are all it uses.
 */
export async function importJax(): Promise<typeof import('@jax-js/jax')> {
  const proto = Object.getPrototypeOf(Object.getPrototypeOf([][Symbol.iterator]())) as Record<string, unknown>;
  if (typeof proto.map !== 'function') {
    proto.map = function* (this: Iterable<unknown>, f: (x: unknown, i: number) => unknown) {
      let i = 0;
      for (const x of this) yield f(x, i++);
    };
    proto.filter = function* (this: Iterable<unknown>, f: (x: unknown, i: number) => boolean) {
      let i = 0;
      for (const x of this) if (f(x, i++)) yield x;
    };
  }
  return import('@jax-js/jax');
}
