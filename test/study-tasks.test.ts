import { describe, expect, it } from 'vitest';
import { formatInterval, meanInterval } from '../src/study/stats.ts';
import { FLIPFLOP_MIXES, flipFlopSequence } from '../src/study/tasks/flipflop.ts';
import { recallSequence } from '../src/study/tasks/recall.ts';
import { Rng } from '../src/util/rng.ts';

const text = (b: Uint8Array) => String.fromCharCode(...b);

describe('flip-flop language', () => {
  it('writes, reads and ignores as defined; graded reads return the last written bit', () => {
    const rng = new Rng(1);
    for (const p of Object.values(FLIPFLOP_MIXES)) {
      const { bytes, graded } = flipFlopSequence(rng, 512, p);
      const s = text(bytes);
      expect(s).toMatch(/^w[01]([wri][01])*r[01]$/);
      // Independent scan: every read must equal the latest write, and exactly the reads are graded.
      let last = '';
      const reads: number[] = [];
      for (let t = 0; t < s.length; t += 2) {
        if (s[t] === 'w') last = s[t + 1]!;
        if (s[t] === 'r') {
          expect(s[t + 1]).toBe(last);
          reads.push(t);
        }
      }
      expect(Array.from(graded)).toEqual(reads);
    }
  });

  it('follows the instruction mix (p_i) of each split', () => {
    const rng = new Rng(2);
    for (const p of Object.values(FLIPFLOP_MIXES)) {
      let ignores = 0;
      let inner = 0;
      for (let n = 0; n < 40; n++) {
        const s = text(flipFlopSequence(rng, 512, p).bytes);
        for (let t = 2; t < s.length - 2; t += 2, inner++) if (s[t] === 'i') ignores++;
      }
      // 10,160 Bernoulli draws: standard error <= 0.005; 5 sigma.
      expect(Math.abs(ignores / inner - p)).toBeLessThan(0.025);
    }
  });

  it('is reproducible from the seed and refuses bad lengths', () => {
    expect(flipFlopSequence(new Rng(5), 64, 0.8).bytes).toEqual(flipFlopSequence(new Rng(5), 64, 0.8).bytes);
    expect(() => flipFlopSequence(new Rng(5), 63, 0.8)).toThrow(/even integer/);
  });
});

describe('associative recall', () => {
  it('answers every query with the value stored under its key, at the exact length', () => {
    const rng = new Rng(3);
    for (const length of [128, 512, 2048]) {
      const { bytes, graded } = recallSequence(rng, { length, queries: 4 });
      expect(bytes.length).toBe(length);
      const s = text(bytes);
      const stored = new Map<string, string>();
      for (const m of s.matchAll(/([a-z]{3})=(\d);/g)) {
        expect(stored.has(m[1]!)).toBe(false); // keys are distinct
        stored.set(m[1]!, m[2]!);
      }
      expect(graded.length).toBe(4);
      for (const t of graded) {
        expect(s[t]).toBe('=');
        const key = s.slice(t - 3, t);
        expect(s[t - 4]).toBe('?');
        expect(s[t + 1]).toBe(stored.get(key));
      }
    }
  });

  it('refuses a length too short for its queries', () => {
    expect(() => recallSequence(new Rng(1), { length: 20, queries: 4 })).toThrow(/too short/);
  });
});

describe('mean and 95% interval', () => {
  it('uses the Student t quantile', () => {
    const m = meanInterval([1, 2, 3]);
    expect(m.mean).toBe(2);
    expect(m.halfWidth).toBeCloseTo((4.303 * 1) / Math.sqrt(3), 10);
    expect(formatInterval(m, 2)).toBe('2.00 ± 2.48');
    expect(Number.isNaN(meanInterval([4]).halfWidth)).toBe(true);
    expect(formatInterval(meanInterval([4]), 1)).toBe('4.0');
  });
});
