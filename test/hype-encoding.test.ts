/**
 * The 'hype' PositionalEncoding: concat route == kernel route == softmax of the fp64 dense logits, and the learned
 * preset's tau/mu gradients (plus dq, dk, dv) through both routes against central finite differences.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import type { AttendContext, PositionalEncoding } from '../src/pe/encoding.ts';
import { floatFormat, roundTo } from '../src/numerics/float-formats.ts';
import { hypeEncoding, type HypeOptions } from '../src/pe/hype/encoding.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';

const backend = new ReferenceBackend();
const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq: 10, lk: 13, headDim: 5, valueDim: 3 };
const dims = { heads: 4, kvHeads: 2, headDim: 5, modelDim: 20, trainLength: 13 };

function inputs(seed: number, f64 = true) {
  const rng = new Rng(seed);
  const make = (n: number) => {
    const a = f64 ? new Float64Array(n) : new Float32Array(n);
    rng.fillNormal(a);
    return a;
  };
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  return { q: make(B * H * lq * d), k: make(B * Hkv * lk * d), v: make(B * Hkv * lk * dv), w: make(B * H * lq * dv) };
}

/** softmax(logits) V in fp64, the plain definition. */
function attentionFromLogits(logits: Float64Array, v: ArrayLike<number>): Float64Array {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, valueDim: dv } = shape;
  const out = new Float64Array(B * H * lq * dv);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / (H / Hkv));
      for (let i = 0; i < lq; i++) {
        const row = logits.subarray(((b * H + h) * lq + i) * lk, ((b * H + h) * lq + i + 1) * lk);
        const mx = Math.max(...row);
        let z = 0;
        for (const x of row) z += Math.exp(x - mx);
        for (let l = 0; l < lk; l++) {
          const p = Math.exp(row[l]! - mx) / z;
          for (let c = 0; c < dv; c++)
            out[((b * H + h) * lq + i) * dv + c] += p * v[((b * Hkv + g) * lk + l) * dv + c]!;
        }
      }
    }
  }
  return out;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const ctx: AttendContext = { backend, shape, causal: true, queryOffset: 3 };

function make(options: Partial<HypeOptions>): PositionalEncoding {
  // lengthExtra = 13 with curvature 1: mu (L-1) ~ 1, so the sinh curvature is visible in every check.
  return hypeEncoding.create(dims, { lengthExtra: 13, curvature: 1, ...options }, new Rng(5));
}

describe('hype encoding: routes agree with the dense fp64 reference', () => {
  for (const preset of ['paper', 'recency', 'learned'] as const) {
    for (const causal of [true, false]) {
      it(`${preset}, ${causal ? 'causal' : 'bidirectional'}, GQA, queries at an offset`, () => {
        const { q, k, v } = inputs(1);
        const c = { ...ctx, causal };
        const concat = make({ preset, route: 'concat', multiple: 8 });
        const kernel = make({ preset, route: 'kernel' });
        const reference = attentionFromLogits(concat.denseLogits(c, { q, k, v }, 1 / Math.sqrt(5)), v);
        expect(maxDiff(concat.attend(c, { q, k, v }).out, reference)).toBeLessThan(1e-13);
        expect(maxDiff(kernel.attend(c, { q, k, v }).out, reference)).toBeLessThan(1e-13);
      });
    }
  }

  it('fp32 arrays stay within fp32 rounding of the fp64 reference; fp16 operands within fp16 resolution', () => {
    const x = inputs(2, false);
    const x64 = { q: Float64Array.from(x.q), k: Float64Array.from(x.k), v: Float64Array.from(x.v) };
    const enc = make({ preset: 'recency' });
    const reference = attentionFromLogits(enc.denseLogits(ctx, x64, 1 / Math.sqrt(5)), x64.v);
    const fp32 = maxDiff(enc.attend(ctx, x).out, reference);
    const fp16 = maxDiff(make({ preset: 'recency', format: 'fp16' }).attend(ctx, x).out, reference);
    // Logit errors ~ |tau| u cosh(x) (tau ~ 6.5 here) move outputs of size ~2 by a few times that.
    expect(fp32).toBeLessThan(1e-5);
    expect(fp32).toBeGreaterThan(0); // it really ran in fp32
    expect(fp16).toBeLessThan(0.05);
    expect(fp16).toBeGreaterThan(10 * fp32);
  });
});

describe('hype encoding: operand rounding on each route', () => {
  const bf16 = floatFormat('bf16');
  const rounded = (x: ArrayLike<number>) => Float64Array.from(x, (value) => roundTo(bf16, value));

  it('kernel route, bf16: exactly attention of the bf16-rounded Q, K, V with the exact fp64 bias', () => {
    const { q, k, v } = inputs(3);
    const exact = make({ preset: 'recency' });
    const reference = attentionFromLogits(
      exact.denseLogits(ctx, { q: rounded(q), k: rounded(k), v }, 1 / Math.sqrt(5)),
      rounded(v),
    );
    const kernel = make({ preset: 'recency', route: 'kernel', format: 'bf16' });
    expect(maxDiff(kernel.attend(ctx, { q, k, v }).out, reference)).toBeLessThan(1e-13);
  });

  it('with |tau| ~ 10^3 (recency, L_extra = 2048) bf16 blurs the concat route far more than the kernel route', () => {
    // SPEC section 4: the concat route recovers the bias from products of size ~|tau|, so its logit error is
    // ~|tau| u = 1024 * 2^-8 = 4; the kernel route's comes only from rounding Q and K (|q.k| u / sqrt(d) ~ 0.01).
    const x = inputs(4);
    const options = { preset: 'recency', lengthExtra: 2048, curvature: 0.5 } as const;
    const reference = attentionFromLogits(make(options).denseLogits(ctx, x, 1 / Math.sqrt(5)), x.v);
    const concat = maxDiff(make({ ...options, format: 'bf16', columns: 'plain' }).attend(ctx, x).out, reference);
    const kernel = maxDiff(make({ ...options, route: 'kernel', format: 'bf16' }).attend(ctx, x).out, reference);
    expect(kernel).toBeLessThan(0.05);
    expect(concat).toBeGreaterThan(10 * kernel);
    // Split columns (SPEC section 8, the default for bf16) leave ~|tau| u^2 = 0.016 logits: as good as the kernel
    // route, whose error is the Q, K, V rounding both share.
    const split = maxDiff(make({ ...options, format: 'bf16' }).attend(ctx, x).out, reference);
    expect(split).toBeLessThan(0.05);
    expect(concat).toBeGreaterThan(10 * split);
  });
});

describe('hype encoding: backward vs central differences (fp64)', () => {
  for (const route of ['concat', 'kernel'] as const) {
    for (const [train, units, parametrisation] of [
      ['both', 'relative', 'tau-mu'],
      ['both', 'raw', 'tau-mu'],
      ['tau', 'relative', 'tau-mu'],
      ['mu', 'raw', 'tau-mu'],
      ['both', 'relative', 'slope-curvature'],
      ['both', 'raw', 'slope-curvature'],
      ['mu', 'relative', 'slope-curvature'],
    ] as const) {
      it(`learned preset, ${route} route, training ${train} in ${units} units, ${parametrisation}`, () => {
        const { q, k, v, w } = inputs(3);
        const enc = make({ preset: 'learned', route, train, units, parametrisation, multiple: 4 });
        const first = parametrisation === 'tau-mu' ? 'hype.tau' : 'hype.slope';
        expect(enc.params.map((p) => p.name)).toEqual(
          train === 'both' ? [first, 'hype.mu'] : train === 'tau' ? [first] : ['hype.mu'],
        );
        if (parametrisation === 'slope-curvature') {
          // Move mu off its start so the slope-curvature chain rule is checked away from the initial point too.
          const mu = enc.params.find((p) => p.name === 'hype.mu')!;
          mu.data.forEach((x, j, a) => (a[j] = x * (1.3 + 0.2 * j)));
        }
        const loss = () => {
          const out = enc.attend(ctx, { q, k, v }).out;
          let s = 0;
          for (let i = 0; i < out.length; i++) s += w[i]! * out[i]!;
          return s;
        };
        const r = enc.attend(ctx, { q, k, v });
        const g = r.backward(w);
        expect(maxRelativeGradError(loss, q, g.dq, sampleIndices(q.length, 30))).toBeLessThan(1e-6);
        expect(maxRelativeGradError(loss, k, g.dk, sampleIndices(k.length, 30))).toBeLessThan(1e-6);
        expect(maxRelativeGradError(loss, v, g.dv, sampleIndices(v.length, 30))).toBeLessThan(1e-6);
        const analytic = enc.params.map((p) => Float64Array.from(p.grad));
        enc.params.forEach((p, j) => {
          expect(p.shape).toEqual(p.name === 'hype.mu' ? [2, 1] : [4, 1]); // mu: one per KV group
          // Raw mu ~ 0.08 moves the loss far faster than tau ~ 6; relative units are ~1 for both. Raw slopes are
          // 1/2 .. 1/256, so their step is 1e-5 of the smallest (1e-7 absolute) as well.
          const h =
            p.name === 'hype.mu' && units === 'raw' ? 1e-8 : p.name === 'hype.slope' && units === 'raw' ? 1e-7 : 1e-5;
          if (units === 'relative' && p.name !== 'hype.mu')
            expect(Math.abs(Math.abs(p.data[0]!) - 1)).toBeLessThan(1e-15);
          expect(maxRelativeGradError(loss, p.data, analytic[j]!, undefined, h)).toBeLessThan(1e-6);
        });
        // A second backward accumulates (+=) into the same grads.
        r.backward(w);
        enc.params.forEach((p, j) => {
          for (let i = 0; i < p.grad.length; i++) expect(p.grad[i]).toBeCloseTo(2 * analytic[j]![i]!, 12);
        });
      });
    }
  }

  it('slope-curvature: the same bias as tau-mu at the start; mu moves the curvature at a fixed slope', () => {
    const x = inputs(5);
    const gentle = { preset: 'learned', lengthExtra: 208, curvature: 0.5 } as const; // mu = 0.5 / 208
    const a = make(gentle);
    const b = make({ ...gentle, parametrisation: 'slope-curvature' });
    expect(maxDiff(a.attend(ctx, x).out, b.attend(ctx, x).out)).toBeLessThan(1e-14);
    // Doubling mu: at a fixed slope m (slope-curvature) the bias -(m / mu) sinh(mu D) only bends, by a relative
    // ~(mu D)^2 / 2 < 1e-3 here (mu = 0.5 / 208, D <= 12); at a fixed tau (tau-mu) the slope doubles, so the bias
    // changes by itself (~m D).
    const doubleMu = (e: PositionalEncoding): number => {
      const before = e.denseLogits(ctx, x, 1 / Math.sqrt(5));
      e.params.find((p) => p.name === 'hype.mu')!.data.forEach((v, j, arr) => (arr[j] = 2 * v));
      const after = e.denseLogits(ctx, x, 1 / Math.sqrt(5));
      let changed = 0;
      for (let j = 0; j < before.length; j++)
        if (Number.isFinite(before[j]!)) changed = Math.max(changed, Math.abs(after[j]! - before[j]!));
      return changed;
    };
    const bend = doubleMu(b);
    const slope = doubleMu(a);
    expect(bend).toBeGreaterThan(0);
    expect(bend).toBeLessThan(1e-2 * slope);
    expect(() => make({ preset: 'learned', parametrisation: 'slope-curvature', train: 'tau' })).toThrow(
      /alibi-learned/,
    );
    expect(() => make({ preset: 'learned', parametrisation: 'slope' as 'tau-mu' })).toThrow(/parametrisation/);
  });

  it('fixed presets have no parameters', () => {
    expect(make({ preset: 'paper' }).params).toEqual([]);
    expect(make({ preset: 'recency' }).params).toEqual([]);
  });
});
