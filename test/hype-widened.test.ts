/**
 * HyPE's concat route over widened operands (PositionalEncoding.operandWidths, encoding.ts): q and k handed over in
 * rows of qk values, of which the caller wrote the first headDim, the encoding writing its eta columns (and the
 * zero padding) into the rest itself. It must give the plain route's numbers BIT FOR BIT (the kernel sees the same
 * operands: the same fp64 columns rounded once to the array type), forward and backward, with tau/mu gradients for
 * the learned preset; across geometries and encoding instances sharing buffers; and at model level, a training run
 * with widened buffers equals one with plain rows bit for bit, fp32 and bf16 mixed precision.
 */
import { describe, expect, it } from 'vitest';
import { withPrecision } from '../src/backend/autocast.ts';
import type { AttentionShape, Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import type { AttendContext, EncodingFactory, PositionalEncoding } from '../src/pe/encoding.ts';
import { hypeEncoding, type HypeOptions } from '../src/pe/hype/encoding.ts';
import type { FloatArray } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';
import { narrow, randomArray, threeSteps, widen } from './helpers/widened.ts';

const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq: 9, lk: 9, headDim: 6, valueDim: 6 };
const dims = { heads: 4, kvHeads: 2, headDim: 6, modelDim: 24, trainLength: 16 };
const native = loadBackend('native');
const backends: [string, Backend][] = [
  ['reference', new ReferenceBackend()],
  ['native', native],
  ['native bf16', withPrecision(native, 'bf16')],
];
const cases: Partial<HypeOptions>[] = [
  { preset: 'recency' },
  { preset: 'paper', multiple: 8 }, // v padded too
  { preset: 'recency', precision: 'bf16' }, // split columns
  { preset: 'learned', train: 'both' },
  { preset: 'learned', parametrisation: 'slope-curvature', precision: 'bf16', multiple: 4 },
];

function make(opts: Partial<HypeOptions>): PositionalEncoding {
  return hypeEncoding.create(dims, opts, new Rng(3));
}

/** One attend + backward through both layouts; the widened buffers start with garbage past the head dims. */
function compare(be: Backend, enc: PositionalEncoding, ctx: AttendContext, seed: number, buffers?: FloatArray[]) {
  const f64 = be.name === 'reference';
  const rng = new Rng(seed);
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
  const [rq, rk, rdo] = [B * H * lq, B * Hkv * lk, B * H * lq];
  const [q, k, v, dOut] = [rq * d, rk * d, rk * dv, rdo * dv].map((n) => randomArray(rng, n, f64)) as FloatArray[];
  const widths = enc.operandWidths!(f64 ? 'float64' : 'float32')!;
  const grads = () => enc.params.map((p) => Array.from(p.grad));
  for (const p of enc.params) p.grad.fill(0);
  const plain = enc.attend(ctx, { q: q!, k: k!, v: v! });
  const g0 = plain.backward(dOut!);
  const paramGrads = grads();
  for (const p of enc.params) p.grad.fill(0);
  const [qw, kw, vw] = buffers ?? [
    widen(q!, rq, d, widths.qk, NaN),
    widen(k!, rk, d, widths.qk, NaN),
    widen(v!, rk, dv, widths.v, NaN),
  ];
  for (const [src, dst, rows, from, to] of [
    [q!, qw!, rq, d, widths.qk],
    [k!, kw!, rk, d, widths.qk],
    [v!, vw!, rk, dv, widths.v],
  ] as const)
    be.copyRows(src, 0, from, dst, 0, to, rows, from);
  const wide = enc.attend(ctx, { q: qw!, k: kw!, v: vw!, widths });
  const g1 = wide.backward(widen(dOut!, rdo, dv, widths.v, 0));
  expect(narrow(wide.out, rq, widths.v, dv)).toEqual(Array.from(plain.out));
  expect(narrow(g1.dq, rq, widths.qk, d)).toEqual(Array.from(g0.dq));
  expect(narrow(g1.dk, rk, widths.qk, d)).toEqual(Array.from(g0.dk));
  expect(narrow(g1.dv, rk, widths.v, dv)).toEqual(Array.from(g0.dv));
  expect(grads()).toEqual(paramGrads);
  return [qw!, kw!, vw!];
}

describe('HyPE over widened operands', () => {
  for (const [name, be] of backends) {
    for (const opts of cases) {
      it(`${name}, ${JSON.stringify(opts)}: the plain route's out, dq, dk, dv and parameter gradients bit for bit`, () => {
        const enc = make(opts);
        if (opts.preset === 'learned') expect(enc.params.length).toBeGreaterThan(0);
        const ctx = { backend: be, shape, causal: true, queryOffset: 0 };
        const buffers = compare(be, enc, ctx, 1);
        // The same buffers again (columns kept), at another geometry (query offset: columns rewritten), and back
        // (rewritten again).
        compare(be, enc, ctx, 2, buffers);
        compare(be, enc, { ...ctx, queryOffset: 4 }, 3, buffers);
        compare(be, enc, ctx, 4, buffers);
      });
    }
  }

  it('a second instance with other columns writing into the same buffers gets its own columns', () => {
    const be = native;
    const ctx = { backend: be, shape, causal: true, queryOffset: 0 };
    const [a, b] = [make({ preset: 'recency' }), make({ preset: 'paper' })];
    expect(a.operandWidths!('float32')).toEqual(b.operandWidths!('float32'));
    const buffers = compare(be, a, ctx, 1);
    compare(be, b, ctx, 2, buffers);
    compare(be, a, ctx, 3, buffers);
  });

  it('refuses operands of other widths, and the kernel route and format emulation ask for none', () => {
    const enc = make({ preset: 'recency' });
    const ctx = { backend: native, shape, causal: true, queryOffset: 0 };
    const widths = enc.operandWidths!('float32')!;
    const n = (w: number, h: number) => shape.batch * h * shape.lq * w;
    const wrong = { qk: widths.qk + 1, v: widths.v };
    const [q, k, v] = [n(wrong.qk, 4), n(wrong.qk, 2), n(wrong.v, 2)].map((x) => new Float32Array(x));
    expect(() => enc.attend(ctx, { q: q!, k: k!, v: v!, widths: wrong })).toThrow(/asked for 8 and 6/);
    expect(make({ preset: 'recency', route: 'kernel' }).operandWidths!('float32')).toBeNull();
    expect(make({ preset: 'recency', format: 'bf16' }).operandWidths!('float32')).toBeNull();
  });
});

describe('a transformer over widened operands', () => {
  const runs: [string, 'fp32' | 'bf16', Partial<HypeOptions>][] = [
    ['fp32', 'fp32', { preset: 'recency' }],
    ['bf16', 'bf16', { preset: 'recency', precision: 'bf16' }],
    ['fp32, learned, v padded', 'fp32', { preset: 'learned', multiple: 8 }],
  ];
  for (const [name, precision, options] of runs) {
    it(`${name}: losses and parameters after three steps equal the plain-row run bit for bit`, () => {
      const base = hypeEncoding as unknown as EncodingFactory<object>;
      const [plain, wide] = [false, true].map((w) => threeSteps(base, 'hype', options, precision, w));
      expect(wide!.losses).toEqual(plain!.losses);
      expect(wide!.params).toEqual(plain!.params);
    });
  }
});
