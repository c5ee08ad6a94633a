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
      for (const length of [3, 4, 5, 64, 513]) {
        const { bytes, graded } = flipFlopSequence(rng, length, p);
        expect(bytes.length).toBe(length);
        const s = text(bytes);
        expect(s).toMatch(/^[wW]([wWiI]|r[01])*r[01]$/);
        // Independent scan: every read must equal the latest write, and exactly the reads are graded.
        let last = '';
        const reads: number[] = [];
        for (let t = 0; t < s.length; t++) {
          if (s[t] === 'w' || s[t] === 'W') last = s[t] === 'w' ? '0' : '1';
          if (s[t] === 'r') {
            expect(s[t + 1]).toBe(last);
            reads.push(t);
            t++; // the answer byte is not an instruction
          }
        }
        expect(Array.from(graded)).toEqual(reads);
      }
    }
  });

  it('follows the instruction mix (p_i) of each split, with both bits equally likely', () => {
    const rng = new Rng(2);
    for (const p of Object.values(FLIPFLOP_MIXES)) {
      let ignores = 0;
      let ones = 0;
      let inner = 0;
      for (let n = 0; n < 40; n++) {
        const s = text(flipFlopSequence(rng, 512, p).bytes);
        // Instructions strictly inside the sequence (the first write and the closing read are fixed).
        for (let t = 1; t < s.length - 2; t++, inner++) {
          if (s[t] === 'i' || s[t] === 'I') ignores++;
          if (s[t] === 'W' || s[t] === 'I' || (s[t] === 'r' && s[t + 1] === '1')) ones++;
          if (s[t] === 'r') t++;
        }
      }
      // >= 10,000 Bernoulli draws: standard error <= 0.005; 5 sigma.
      expect(Math.abs(ignores / inner - p)).toBeLessThan(0.025);
      // Each non-read instruction's bit is a fair coin; reads copy one, so the overall share of ones is 1/2 too.
      expect(Math.abs(ones / inner - 0.5)).toBeLessThan(0.025);
    }
  });

  it('is reproducible from the seed and refuses bad lengths', () => {
    expect(flipFlopSequence(new Rng(5), 64, 0.8).bytes).toEqual(flipFlopSequence(new Rng(5), 64, 0.8).bytes);
    expect(() => flipFlopSequence(new Rng(5), 2, 0.8)).toThrow(/integer >= 3/);
    expect(() => flipFlopSequence(new Rng(5), 64.5, 0.8)).toThrow(/integer >= 3/);
    expect(() => flipFlopSequence(new Rng(5), 64, 1)).toThrow(/p_i/);
  });
});

describe('associative recall', () => {
  it('answers every query with the value stored under its key, at the exact length', () => {
    const rng = new Rng(3);
    for (const length of [28, 128, 512, 2048]) {
      const { bytes, graded } = recallSequence(rng, { length, records: 8, queries: 4 });
      expect(bytes.length).toBe(length);
      const s = text(bytes);
      const prefix = s.slice(0, length - 12);
      expect(prefix).toMatch(/^(\.|[a-z]\d)*$/);
      const stored = new Map<string, string>();
      for (const m of prefix.matchAll(/([a-z])(\d)/g)) {
        expect(stored.has(m[1]!)).toBe(false); // keys are distinct
        stored.set(m[1]!, m[2]!);
      }
      expect(stored.size).toBe(8); // the record count does not grow with the length
      expect(s.slice(length - 12)).toMatch(/^(\?[a-z]\d){4}$/);
      expect(graded.length).toBe(4);
      for (const t of graded) {
        expect(s[t - 1]).toBe('?');
        expect(s[t + 1]).toBe(stored.get(s[t]!));
      }
    }
  });

  it('spreads records over the whole prefix as the length grows', () => {
    const rng = new Rng(4);
    let maxDistance = 0;
    for (let n = 0; n < 50; n++) {
      const { bytes, graded } = recallSequence(rng, { length: 1024 });
      const s = text(bytes);
      for (const t of graded) maxDistance = Math.max(maxDistance, t - s.indexOf(s[t]!));
    }
    expect(maxDistance).toBeGreaterThan(512);
  });

  it('refuses a length too short for its records and queries, and more records than keys', () => {
    expect(() => recallSequence(new Rng(1), { length: 27, records: 8, queries: 4 })).toThrow(/too short/);
    expect(() => recallSequence(new Rng(1), { length: 512, records: 27 })).toThrow(/\[1, 26\]/);
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
