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

describe('needle retrieval (recall)', () => {
  it('hides exactly one digit among letters and asks for it at the end, at the exact length', () => {
    const rng = new Rng(3);
    for (const length of [3, 96, 512, 2048]) {
      const { bytes, graded } = recallSequence(rng, length);
      expect(bytes.length).toBe(length);
      const s = text(bytes);
      const haystack = s.slice(0, length - 2);
      expect(haystack).toMatch(/^[a-z]*\d[a-z]*$/);
      expect(Array.from(graded)).toEqual([length - 2]);
      expect(s[length - 2]).toBe('?');
      expect(s[length - 1]).toBe(haystack.match(/\d/)![0]);
    }
  });

  it('places the needle uniformly, so longer contexts put it further from the query', () => {
    const rng = new Rng(4);
    const length = 1024;
    let far = 0;
    const digits = new Array<number>(10).fill(0);
    const n = 2000;
    for (let i = 0; i < n; i++) {
      const s = text(recallSequence(rng, length).bytes);
      const at = s.search(/\d/);
      if (length - 2 - at > 511) far++;
      digits[Number(s[at])]!++;
    }
    // Half the needles should be more than 511 bytes back: binomial(2000, 1/2), sd 22; 5 sigma.
    expect(Math.abs(far - n / 2)).toBeLessThan(5 * Math.sqrt(n / 4));
    // Each digit 1/10 of the time: sd sqrt(2000 * 0.09) = 13.4; 5 sigma.
    for (const c of digits) expect(Math.abs(c - n / 10)).toBeLessThan(5 * Math.sqrt(n * 0.09));
  });

  it('refuses a length with no room for a needle, a query and its answer', () => {
    expect(() => recallSequence(new Rng(1), 2)).toThrow(/integer >= 3/);
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
