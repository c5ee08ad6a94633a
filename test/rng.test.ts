import { describe, expect, it } from 'vitest';
import { Rng } from '../src/util/rng.ts';

describe('Rng', () => {
  it('replays the same stream from a saved state', () => {
    const a = new Rng(42);
    for (let i = 0; i < 7; i++) a.normal();
    const saved = a.state();
    const first = Array.from({ length: 9 }, () => a.normal());
    const b = Rng.fromState(saved);
    expect(Array.from({ length: 9 }, () => b.normal())).toEqual(first);
  });

  it('differs across seeds and has roughly standard moments', () => {
    const a = new Rng(1);
    const b = new Rng(2);
    expect(a.nextU32()).not.toBe(b.nextU32());
    const r = new Rng(3);
    const n = 200_000;
    let s = 0;
    let s2 = 0;
    for (let i = 0; i < n; i++) {
      const x = r.normal();
      s += x;
      s2 += x * x;
    }
    // Standard errors: mean 1/sqrt(n) = 0.0022, variance sqrt(2/n) = 0.0032; 5 sigma bounds.
    expect(Math.abs(s / n)).toBeLessThan(0.012);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.016);
  });

  it('uniform stays in [0, 1)', () => {
    const r = new Rng(9);
    for (let i = 0; i < 10_000; i++) {
      const u = r.uniform();
      expect(u >= 0 && u < 1).toBe(true);
    }
  });
});
