/**
 * Every refusal HyPE makes: one HypeError with the right code and a message naming the problem and the fix.
 * The overflow limits are also shown to be tight (just inside: finite operands; just outside: fp16 would give inf).
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { FP16, roundToFp16 } from '../src/numerics/float-formats.ts';
import { concatMuLimit, concatNanX, concatXLimit, sequenceReach } from '../src/numerics/overflow.ts';
import { augment, type HypeSpec } from '../src/pe/hype/core.ts';
import { hypeEncoding, presetSpec } from '../src/pe/hype/encoding.ts';
import { Rng } from '../src/util/rng.ts';

function spec(mu: number, tau = 1, d = 64, H = 1, Hkv = 1): HypeSpec {
  return {
    heads: H,
    kvHeads: Hkv,
    headDim: d,
    grid: [],
    termAxis: [0],
    tau: new Float64Array(H).fill(tau),
    mu: new Float64Array(H).fill(mu),
  };
}

function shapeOf(L: number, d = 64, H = 1, Hkv = 1): AttentionShape {
  return { batch: 1, heads: H, kvHeads: Hkv, lq: L, lk: L, headDim: d, valueDim: d };
}

/** Runs f, expects exactly one HypeError with `code`, and returns its message. */
function refusal(f: () => unknown, code: string): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(HypeError);
    expect((e as HypeError).code).toBe(code);
    return (e as HypeError).message;
  }
  throw new Error('expected a HypeError, got none');
}

const L = 2048;
const zeros = (n: number) => new Float32Array(n);

describe('overflow limits (SPEC section 4)', () => {
  it('match the SPEC figures: fp16 9.70 (d=64), 9.36 (d=128), NaN at 11.09, 19.4 centred; bf16 and fp32 ~87', () => {
    expect(concatXLimit(FP16, 4, false).muMax).toBeCloseTo(Math.log(65504 / 4), 12);
    expect(concatXLimit(FP16, 4, false).muMax).toBeCloseTo(9.7, 2);
    expect(concatXLimit(FP16, Math.sqrt(128) / 2, false).muMax).toBeCloseTo(9.36, 2);
    expect(concatNanX(FP16)).toBeCloseTo(11.09, 2);
    expect(concatXLimit(FP16, 4, true).muMax).toBeCloseTo(19.41, 2);
    const fp32 = concatXLimit({ ...FP16, name: 'fp32', max: 3.4028234663852886e38 }, 4, true);
    expect(fp32.muMax).toBeCloseTo(87.34, 2);
    expect(fp32.binding).toBe('accumulator'); // centring cannot help fp32: the products bind
  });

  it('is tight: just inside, every fp16 operand is finite; just outside, the largest one rounds to inf', () => {
    const d = 64;
    const amp = Math.sqrt(d) / 2;
    const { muMax } = concatMuLimit(FP16, amp, sequenceReach(L, true));
    const inside = augment(spec(muMax * (1 - 1e-9)), shapeOf(L), zeros(L * d), zeros(L * d), { format: 'fp16' });
    expect(inside.qHat.every(Number.isFinite) && inside.kHat.every(Number.isFinite)).toBe(true);
    let largest = 0;
    for (const x of inside.qHat) largest = Math.max(largest, x);
    expect(largest).toBeGreaterThan(0.99 * 65504); // the limit is really reached
    const outside = muMax * (1 + 1e-3);
    expect(roundToFp16(amp * Math.exp(outside * ((L - 1) / 2)))).toBe(Infinity);
    const msg = refusal(
      () => augment(spec(outside), shapeOf(L), zeros(L * d), zeros(L * d), { format: 'fp16' }),
      'overflow',
    );
    expect(msg).toContain('overflow fp16');
  });
});

describe('overflow refusals name mu, L, dtype, the limit and the fixes', () => {
  it('fp16 uncentred: suggests a smaller mu, centring, fp32 and the kernel route', () => {
    const msg = refusal(
      () => augment(spec(10 / (L - 1)), shapeOf(L), zeros(L * 64), zeros(L * 64), { format: 'fp16', shift: 'none' }),
      'overflow',
    );
    expect(msg).toContain('|mu| = 0.004885');
    expect(msg).toContain('L = 2048');
    expect(msg).toContain('overflow fp16');
    expect(msg).toContain('limit |mu| <= 0.004740, x <= 9.704');
    expect(msg).toContain('use |mu| <= 0.004740');
    expect(msg).toContain("centre the positions (shift 'centre', c = (L-1)/2: the limit becomes x <= 19.41)");
    expect(msg).toContain('use fp32 operands (limit x <= 87.34)');
    expect(msg).toContain("route 'kernel'");
  });

  it('fp16 centred past 19.4: no centring advice (already centred)', () => {
    const msg = refusal(
      () => augment(spec(20 / (L - 1)), shapeOf(L), zeros(L * 64), zeros(L * 64), { format: 'fp16' }),
      'overflow',
    );
    expect(msg).toContain('x <= 19.41');
    expect(msg).not.toContain('centre the positions');
    expect(msg).toContain('use fp32 operands');
  });

  it('fp32 past x = 87.3: the fp32 accumulator binds and only a smaller mu or the kernel route help', () => {
    const msg = refusal(() => augment(spec(88 / (L - 1)), shapeOf(L), zeros(L * 64), zeros(L * 64)), 'overflow');
    expect(msg).toContain('overflow fp32');
    expect(msg).toContain('accumulator');
    expect(msg).toContain('x <= 87.34');
    expect(msg).not.toContain('centre the positions');
    expect(msg).not.toContain('use fp32 operands');
    expect(msg).toContain("route 'kernel'");
  });

  it('bf16 past x = 87.3 is refused as well', () => {
    const msg = refusal(
      () => augment(spec(88 / (L - 1)), shapeOf(L), zeros(L * 64), zeros(L * 64), { format: 'bf16', shift: 'none' }),
      'overflow',
    );
    expect(msg).toContain('overflow bf16');
    expect(msg).toContain('x <= 87.33');
  });

  it('an amplitude that alone exceeds fp16 (recency at L_extra = 65536): lower |tau|, fp32 or the kernel', () => {
    const s = presetSpec({ preset: 'recency', heads: 8, kvHeads: 8, headDim: 64, lengthExtra: 65536 });
    const msg = refusal(
      () => augment(s, shapeOf(256, 64, 8, 8), zeros(8 * 256 * 64), zeros(8 * 256 * 64), { format: 'fp16' }),
      'overflow',
    );
    expect(msg).toContain('head 0');
    expect(msg).toContain('limit for every mu');
    expect(msg).toContain('lower |tau| (|tau| sqrt(d)/2 = 2.621e+5 alone exceeds the fp16 max)');
    expect(msg).toContain('use fp32 operands');
  });

  it('the kernel route refuses a bias that itself leaves the fp32 logit range (checked by the backend)', () => {
    // paper preset with L_extra = 1: tau = 1, mu = 1, so sinh(D) passes the kernels' fp32 bias limit 1e30 at
    // D = ln(2e30) = 69.8.
    const dims = { heads: 1, kvHeads: 1, headDim: 4, modelDim: 4, trainLength: 8 };
    const enc = hypeEncoding.create(dims, { preset: 'paper', lengthExtra: 1, route: 'kernel' }, new Rng(1));
    const ctx = (n: number) => ({
      backend: new ReferenceBackend(),
      shape: { batch: 1, heads: 1, kvHeads: 1, lq: n, lk: n, headDim: 4, valueDim: 4 },
      causal: true,
      queryOffset: 0,
    });
    const ok = enc.attend(ctx(70), { q: zeros(280), k: zeros(280), v: zeros(280) });
    expect(ok.out.every(Number.isFinite)).toBe(true);
    const msg = refusal(() => enc.attend(ctx(71), { q: zeros(284), k: zeros(284), v: zeros(284) }), 'overflow');
    expect(msg).toContain('the hype bias leaves the float32 range');
    expect(msg).toContain('mu = 1, tau = 1');
    expect(msg).toContain('at distance 70');
  });
});

describe('bad parameters and shapes', () => {
  it('NaN tau and infinite mu are refused, naming the entry', () => {
    const s = spec(0.01, 1, 8, 2, 2);
    s.tau[1] = NaN;
    expect(refusal(() => augment(s, shapeOf(8, 8, 2, 2), zeros(128), zeros(128)), 'non-finite')).toContain(
      'tau[head 1, pair 0] is NaN',
    );
    const s2 = spec(0.01, 1, 8, 2, 2);
    s2.mu.fill(Infinity);
    expect(refusal(() => augment(s2, shapeOf(8, 8, 2, 2), zeros(128), zeros(128)), 'non-finite')).toContain(
      'mu[head 0, pair 0] is Infinity',
    );
  });

  it('GQA: query heads of one KV group with different mu are refused', () => {
    const s = spec(0.01, 1, 8, 4, 2);
    s.mu[3] = 0.02;
    const msg = refusal(() => augment(s, shapeOf(8, 8, 4, 2), zeros(4 * 64), zeros(2 * 64)), 'argument');
    expect(msg).toBe(
      'HyPE with grouped-query attention: query heads 2 and 3 share KV head 1 but have mu 0.01 and 0.02 (pair 0); ' +
        'eta^K depends on mu, so give every query head of a KV group the same mu (tau may differ)',
    );
  });

  it('shape mismatches: q length, head counts, tau length, grid too small, bad multiple', () => {
    expect(refusal(() => augment(spec(0.01, 1, 8), shapeOf(8, 8), zeros(63), zeros(64)), 'shape')).toContain(
      'q has 63 elements, expected B*H*Lq*D = 64',
    );
    expect(refusal(() => augment(spec(0.01, 1, 8), shapeOf(8, 8, 2, 2), zeros(128), zeros(128)), 'shape')).toContain(
      'HyPE was built for heads=1, kvHeads=1, headDim=8 but the attention has heads=2',
    );
    const s = spec(0.01, 1, 8);
    s.tau = new Float64Array(2);
    expect(refusal(() => augment(s, shapeOf(8, 8), zeros(64), zeros(64)), 'shape')).toContain(
      'tau has 2 entries but heads * pairs = 1 * 1 = 1 are needed',
    );
    const g: HypeSpec = {
      ...spec(0.01, 1, 8),
      grid: [2, 3],
      termAxis: [0, 1],
      tau: new Float64Array(2),
      mu: new Float64Array(2),
    };
    expect(refusal(() => augment(g, shapeOf(8, 8), zeros(64), zeros(64)), 'shape')).toContain(
      'positions reach 7 but grid [2,3] holds only 6 tokens',
    );
    expect(
      refusal(() => augment(spec(0.01, 1, 8), shapeOf(8, 8), zeros(64), zeros(64), { multiple: 0 }), 'argument'),
    ).toContain('multiple must be a positive integer');
    // A padding multiple past any kernel's head dim is refused before anything is allocated (1e9 asked for gigabytes).
    expect(
      refusal(() => augment(spec(0.01, 1, 8), shapeOf(8, 8), zeros(64), zeros(64), { multiple: 1e9 }), 'argument'),
    ).toContain('up to 256');
    const axisBad: HypeSpec = { ...spec(0.01), termAxis: [1] };
    expect(refusal(() => augment(axisBad, shapeOf(8), zeros(8 * 64), zeros(8 * 64)), 'argument')).toContain(
      'term axis 1 does not exist',
    );
  });

  it('preset and encoding options are checked', () => {
    const dims = { heads: 2, kvHeads: 2, headDim: 4, modelDim: 8, trainLength: 16 };
    expect(refusal(() => hypeEncoding.create(dims, { preset: 'alibi' as never }, new Rng(1)), 'argument')).toContain(
      "unknown preset 'alibi'; choose paper, recency or learned",
    );
    expect(refusal(() => hypeEncoding.create(dims, { lengthExtra: NaN }, new Rng(1)), 'argument')).toContain(
      'lengthExtra must be a finite length >= 1',
    );
    expect(refusal(() => hypeEncoding.create(dims, { curvature: -1 }, new Rng(1)), 'argument')).toContain(
      'curvature (mu * lengthExtra) must be a finite positive number, got -1',
    );
    expect(refusal(() => hypeEncoding.create(dims, { route: 'fused' as never }, new Rng(1)), 'argument')).toContain(
      "unknown route 'fused'",
    );
    expect(refusal(() => hypeEncoding.create(dims, { units: 'log' as never }, new Rng(1)), 'argument')).toContain(
      "units must be relative or raw, got 'log'",
    );
    expect(refusal(() => hypeEncoding.create(dims, { format: 'fp8' as never }, new Rng(1)), 'argument')).toContain(
      "format must be fp64, fp32, fp16 or bf16, got 'fp8'",
    );
  });
});

describe('kernel-route refusals', () => {
  const ctx = {
    backend: new ReferenceBackend(),
    shape: { batch: 1, heads: 1, kvHeads: 1, lq: 6, lk: 6, headDim: 4, valueDim: 4 },
    causal: false,
    queryOffset: 0,
  };
  const x = { q: zeros(24), k: zeros(24), v: zeros(24) };
  const dims = { heads: 1, kvHeads: 1, headDim: 4, modelDim: 4, trainLength: 6 };

  it('a 2-D grid cannot go through the kernel bias (a function of the flat distance)', () => {
    const enc = hypeEncoding.create(dims, { route: 'kernel', grid: [2, 3] }, new Rng(1));
    expect(refusal(() => enc.attend(ctx, x), 'argument')).toContain("use route 'concat'");
    const viaConcat = hypeEncoding.create(dims, { route: 'concat', grid: [2, 3] }, new Rng(1));
    expect(viaConcat.attend(ctx, x).out.every(Number.isFinite)).toBe(true);
    expect(viaConcat.maxLength).toBe(6);
  });
});
