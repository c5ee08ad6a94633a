import { describe, expect, it } from 'vitest';
import { alibiSlopes } from '../src/pe/alibi-slopes.ts';
import { HypeError } from '../src/errors.ts';
import { refusal } from './helpers/refusal.ts';

describe('alibiSlopes', () => {
  it('gives 1/2 ... 1/256 for 8 heads', () => {
    expect(Array.from(alibiSlopes(8))).toEqual([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]);
  });

  it('gives 2^-0.5 ... 2^-8 for 16 heads', () => {
    const s = alibiSlopes(16);
    for (let h = 0; h < 16; h++) expect(s[h]).toBeCloseTo(2 ** (-(h + 1) / 2), 15);
  });

  it('interleaves for 12 heads: the 8-head slopes, then odd powers of 2^-0.5', () => {
    const expected = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256];
    expected.push(2 ** -0.5, 2 ** -1.5, 2 ** -2.5, 2 ** -3.5);
    const s = alibiSlopes(12);
    expect(s.length).toBe(12);
    for (let h = 0; h < 12; h++) expect(s[h]).toBeCloseTo(expected[h]!, 15);
  });

  it('handles 1, 3 and 6 heads by the same recipe', () => {
    expect(Array.from(alibiSlopes(1))).toEqual([2 ** -8]);
    const three = alibiSlopes(3); // slopes(2) = [2^-4, 2^-8]; slopes(4)[0::2] = [2^-2, 2^-6] -> first one
    expect(Array.from(three)).toEqual([2 ** -4, 2 ** -8, 2 ** -2]);
    const six = alibiSlopes(6); // slopes(4) = 2^-2..2^-8; slopes(8)[0::2] = [2^-1, 2^-3, ...] -> first two
    expect(Array.from(six)).toEqual([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]);
  });

  it('refuses a non-positive or fractional head count', () => {
    expect(() => alibiSlopes(0)).toThrow(HypeError);
    expect(() => alibiSlopes(2.5)).toThrow(/positive integer head count, got 2.5/);
  });

  it('matches the reference recipe slopes(p) + slopes(2p)[0::2][:H-p] for every H up to 130', () => {
    const geometric = (n: number) => Array.from({ length: n }, (_, h) => 2 ** ((-8 * (h + 1)) / n));
    for (let H = 1; H <= 130; H++) {
      const p = 2 ** Math.floor(Math.log2(H));
      const want = [...geometric(p), ...geometric(2 * p).filter((_, i) => i % 2 === 0)].slice(0, H);
      expect(Array.from(alibiSlopes(H)), `H = ${H}`).toEqual(want);
    }
  });

  it('works for huge head counts (the list was once spread into push: a stack overflow at ~1e5 heads)', () => {
    const H = 300_001;
    const s = alibiSlopes(H);
    expect(s.length).toBe(H);
    const p = 2 ** 18;
    expect(s[p - 1]).toBe(2 ** -8);
    expect(s[p]).toBe(2 ** (-8 / (2 * p)));
    expect(s[H - 1]).toBe(2 ** ((-8 * (2 * (H - 1 - p) + 1)) / (2 * p)));
  });

  it('refuses a head count no array can hold, naming the size', () => {
    const caught = refusal(() => alibiSlopes(1e10), 'memory');
    expect(caught.message).toMatch(/ALiBi slopes for 10000000000 heads: 10000000000 elements \(74\.5 GiB\)/);
  });
});
