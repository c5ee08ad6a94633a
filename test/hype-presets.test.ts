/**
 * The sign of HyPE's bias per preset (SPEC section 2) and how close `recency` comes to ALiBi (section 3).
 */
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { alibiSlopes } from '../src/pe/alibi-slopes.ts';
import { augment, exactBias } from '../src/pe/hype/core.ts';
import { hype, hypeEncoding, presetSpec } from '../src/pe/hype/encoding.ts';
import { Rng } from '../src/util/rng.ts';

describe('sign of the presets', () => {
  it('paper (tau = +1, mu = 1/L_extra) rewards distance: a > 0 and growing with D', () => {
    const s = presetSpec({ preset: 'paper', heads: 4, kvHeads: 4, headDim: 8, lengthExtra: 512 });
    expect(Array.from(s.tau)).toEqual([1, 1, 1, 1]);
    expect(Array.from(s.mu)).toEqual([1 / 512, 1 / 512, 1 / 512, 1 / 512]);
    for (let D = 1; D < 512; D++) {
      expect(exactBias(s, 2, 600, 600 - D)).toBeGreaterThan(exactBias(s, 2, 600, 601 - D));
    }
    expect(exactBias(s, 0, 511, 0)).toBeCloseTo(Math.sinh(511 / 512), 14);
  });

  it('recency (tau = -m/mu) penalises distance: a < 0 and falling with D', () => {
    const s = presetSpec({ preset: 'recency', heads: 4, kvHeads: 2, headDim: 8, lengthExtra: 512 });
    const m = alibiSlopes(4);
    for (let h = 0; h < 4; h++) {
      expect(s.mu[h]).toBe(0.5 / 512);
      expect(s.tau[h]).toBe(-m[h]! / (0.5 / 512));
      for (let D = 1; D < 512; D++) expect(exactBias(s, h, 600, 600 - D)).toBeLessThan(exactBias(s, h, 600, 601 - D));
    }
  });

  it('content-free attention (head 0): paper looks further back than uniform, recency much closer', () => {
    const L = 64;
    const backend = new ReferenceBackend();
    const meanDistance = (preset: 'paper' | 'recency') => {
      const enc = hypeEncoding.create(
        { heads: 2, kvHeads: 2, headDim: 4, modelDim: 8, trainLength: L },
        { preset, lengthExtra: L },
        new Rng(1),
      );
      const v = new Float64Array(2 * L * 4);
      for (let l = 0; l < L; l++) v[l * 4] = L - 1 - l; // head 0, column 0 = distance from the last query
      const shape = { batch: 1, heads: 2, kvHeads: 2, lq: L, lk: L, headDim: 4, valueDim: 4 };
      const r = enc.attend(
        { backend, shape, causal: true, queryOffset: 0 },
        {
          q: new Float64Array(2 * L * 4),
          k: new Float64Array(2 * L * 4),
          v,
        },
      );
      return r.out[(L - 1) * 4]!; // head 0 (ALiBi slope 1/16), last query
    };
    const uniform = (L - 1) / 2;
    expect(meanDistance('paper')).toBeGreaterThan(uniform + 1);
    expect(meanDistance('recency')).toBeLessThan(uniform - 10);
  });
});

describe('recency vs ALiBi (SPEC section 3)', () => {
  it('deviates from -m D by exactly (m/mu)(sinh(x) - x), x = mu (L-1): 1% at x = 0.245, 10% at 0.763, 100% at 2.18', () => {
    const Lx = 2048;
    for (const [curvature, relative] of [
      [0.245, 0.01],
      [0.763, 0.1],
      [2.18, 1.0],
      [0.5, Math.sinh((0.5 * (Lx - 1)) / Lx) / ((0.5 * (Lx - 1)) / Lx) - 1],
    ] as const) {
      const s = presetSpec({ preset: 'recency', heads: 12, kvHeads: 12, headDim: 64, lengthExtra: Lx, curvature });
      const m = alibiSlopes(12);
      for (let h = 0; h < 12; h++) {
        let worstAbs = 0;
        let worstRel = 0;
        for (let D = 1; D < Lx; D++) {
          const a = exactBias(s, h, Lx - 1, Lx - 1 - D);
          const alibi = -m[h]! * D;
          worstAbs = Math.max(worstAbs, Math.abs(a - alibi));
          worstRel = Math.max(worstRel, Math.abs(a / alibi - 1));
        }
        const x = s.mu[h]! * (Lx - 1);
        expect(worstAbs).toBeCloseTo((m[h]! / s.mu[h]!) * (Math.sinh(x) - x), 9);
        // SPEC's rounded x values give these relative deviations to within 2% of themselves (x^2/6 + ...).
        expect(Math.abs(worstRel - relative)).toBeLessThan(0.02 * relative);
      }
    }
  });

  it('the default curvature 0.5 keeps recency within 4.3% of ALiBi over the whole L_extra window', () => {
    const s = presetSpec({ preset: 'recency', heads: 8, kvHeads: 8, headDim: 64, lengthExtra: 4096 });
    const m = alibiSlopes(8);
    for (let h = 0; h < 8; h++) {
      for (const D of [1, 100, 1000, 4095]) {
        expect(Math.abs(exactBias(s, h, 5000, 5000 - D) / (-m[h]! * D) - 1)).toBeLessThan(0.043);
      }
    }
  });
});

describe('hype() entry point', () => {
  it('binds a preset spec to augment, backward and the exact bias', () => {
    const p = { preset: 'recency', heads: 2, kvHeads: 1, headDim: 4, lengthExtra: 32 } as const;
    const h = hype(p);
    const shape = { batch: 1, heads: 2, kvHeads: 1, lq: 8, lk: 8, headDim: 4, valueDim: 4 };
    const rng = new Rng(3);
    const q = new Float64Array(64);
    const k = new Float64Array(32);
    rng.fillNormal(q);
    rng.fillNormal(k);
    const a = h.augment(shape, q, k, { multiple: 8 });
    const b = augment(presetSpec(p), shape, q, k, { multiple: 8 });
    expect(Array.from(a.qHat)).toEqual(Array.from(b.qHat));
    expect(Array.from(a.kHat)).toEqual(Array.from(b.kHat));
    expect(a.scale).toBe(0.5);
    expect(h.bias(1, 7, 2)).toBe(exactBias(h.spec, 1, 7, 2));
    expect(h.bias(1, 7, 2)).toBeLessThan(0);
    expect(h.backward(a, a.qHat, a.kHat).dq.length).toBe(64);
  });
});
