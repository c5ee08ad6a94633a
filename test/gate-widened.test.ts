/**
 * The concat-bias encodings over widened operands (PositionalEncoding.operandWidths, concat-bias.ts): fox and
 * hype-gated, and ALiBi's concat route (alibi, alibi-learned). q and k come in rows with room for the columns, which
 * the encoding writes at every call (they depend on the block input x, or on trained slopes). The kernel
 * sees the plain route's operands, so out, dq, dk, dv, dx and every parameter gradient must equal the plain route's
 * BIT FOR BIT, per encoding, option set and backend; and a training run with widened buffers equals one with plain
 * rows bit for bit.
 */
import { describe, expect, it } from 'vitest';
import { withPrecision } from '../src/backend/autocast.ts';
import type { AttentionShape, Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import type { AttendContext, EncodingFactory, PositionalEncoding } from '../src/pe/encoding.ts';
import { alibiEncoding } from '../src/pe/alibi.ts';
import { alibiLearnedEncoding } from '../src/pe/alibi-learned.ts';
import { foxFactory } from '../src/pe/fox.ts';
import { hypeGatedFactory } from '../src/pe/hype-gated.ts';
import type { FloatArray } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';
import { narrow, randomArray, threeSteps, widen } from './helpers/widened.ts';

const shape: AttentionShape = { batch: 2, heads: 4, kvHeads: 2, lq: 9, lk: 9, headDim: 6, valueDim: 6 };
const C = 10;
const dims = { heads: 4, kvHeads: 2, headDim: 6, modelDim: C, trainLength: 16 };
const native = loadBackend('native');
const backends: [string, Backend][] = [
  ['reference', new ReferenceBackend()],
  ['native', native],
  ['native bf16', withPrecision(native, 'bf16')],
];
const factories = {
  fox: foxFactory,
  'hype-gated': hypeGatedFactory,
  alibi: alibiEncoding,
  'alibi-learned': alibiLearnedEncoding,
} as Record<string, EncodingFactory<object>>;
const cases: [string, object][] = [
  ['fox', { initStd: 1, biasInit: 1 }],
  ['fox', { initStd: 1, multiple: 8 }], // v padded too
  ['fox', { initStd: 1, precision: 'bf16' }], // split columns
  ['hype-gated', {}],
  ['hype-gated', { preset: 'recency', multiple: 4, precision: 'bf16' }],
  ['alibi', { route: 'concat' }],
  ['alibi', { route: 'concat', multiple: 8, precision: 'bf16' }],
  ['alibi-learned', { route: 'concat' }],
];

function make(name: string, opts: object): PositionalEncoding {
  const enc = factories[name]!.create(dims, opts, new Rng(3));
  const w = enc.params.find((p) => p.name.endsWith('.w'));
  if (w) new Rng(4).fillNormal(w.data, 0.5); // gates that vary with x (hype-gated starts at w = 0)
  return enc;
}

describe('concat-bias encodings over widened operands', () => {
  for (const [beName, be] of backends)
    for (const [name, opts] of cases)
      it(`${beName}, ${name} ${JSON.stringify(opts)}: the plain route's numbers bit for bit`, () => {
        const enc = make(name, opts);
        const f64 = be.name === 'reference';
        const rng = new Rng(1);
        const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
        const [rq, rk] = [B * H * lq, B * Hkv * lk];
        const [q, k, v, dOut, x] = [rq * d, rk * d, rk * dv, rq * dv, B * lk * C].map((n) =>
          randomArray(rng, n, f64),
        ) as FloatArray[];
        const ctx: AttendContext = { backend: be, shape, causal: true, queryOffset: 0 };
        const widths = enc.operandWidths!(f64 ? 'float64' : 'float32')!;
        const grads = () => enc.params.map((p) => Array.from(p.grad));
        const plain = enc.attend(ctx, { q: q!, k: k!, v: v!, x: x! });
        const g0 = plain.backward(dOut!);
        const paramGrads = grads();
        for (let round = 0; round < 2; round++) {
          for (const p of enc.params) p.grad.fill(0);
          // Garbage past the head dims (NaN) the first time; the previous call's columns the second.
          const wide = enc.attend(ctx, {
            q: widen(q!, rq, d, widths.qk, NaN),
            k: widen(k!, rk, d, widths.qk, NaN),
            v: widen(v!, rk, dv, widths.v, NaN),
            x: x!,
            widths,
          });
          const g1 = wide.backward(widen(dOut!, rq, dv, widths.v, 0));
          expect(narrow(wide.out, rq, widths.v, dv)).toEqual(Array.from(plain.out));
          expect(narrow(g1.dq, rq, widths.qk, d)).toEqual(Array.from(g0.dq));
          expect(narrow(g1.dk, rk, widths.qk, d)).toEqual(Array.from(g0.dk));
          expect(narrow(g1.dv, rk, widths.v, dv)).toEqual(Array.from(g0.dv));
          expect(g1.dx && Array.from(g1.dx)).toEqual(g0.dx && Array.from(g0.dx));
          expect(grads()).toEqual(paramGrads);
        }
      });

  it('format emulation asks for plain rows', () => {
    expect(make('fox', { format: 'bf16' }).operandWidths!('float32')).toBeNull();
    expect(make('hype-gated', { format: 'bf16' }).operandWidths!('float32')).toBeNull();
    expect(make('fox', {}).operandWidths!('float32')).toEqual({ qk: 8, v: 6 });
    expect(make('alibi', { route: 'concat', format: 'bf16' }).operandWidths!('float32')).toBeNull();
    expect(make('alibi', { route: 'concat', precision: 'bf16' }).operandWidths!('float32')).toEqual({ qk: 12, v: 6 });
    expect(make('alibi', {}).operandWidths).toBeUndefined(); // the kernel route adds a table, not columns
  });
});

describe('a transformer over widened operands (fox, hype-gated, alibi-learned concat)', () => {
  for (const name of ['fox', 'hype-gated', 'alibi-learned'])
    for (const precision of ['fp32', 'bf16'] as const)
      it(`${name}, ${precision}: losses and parameters after three steps equal the plain-row run bit for bit`, () => {
        const route = name === 'alibi-learned' ? { route: 'concat' } : {};
        const options = precision === 'bf16' ? { ...route, precision: 'bf16' } : route;
        const [plain, wide] = [false, true].map((w) => threeSteps(factories[name]!, name, options, precision, w));
        expect(wide!.losses).toEqual(plain!.losses);
        expect(wide!.params).toEqual(plain!.params);
      });
});
