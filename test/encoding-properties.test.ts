/**
 * Property-based tests (fast-check) of every registered positional encoding through the public factory path
 * (getEncodingFactory(name).create(dims, options, rng) then attend), on both backends: random dims, grouped-query
 * ratios, lengths, query offsets, causal or not, fp32 or fp64 tensors, and option values drawn from the defaults,
 * plausible values and hostile ones (0, negative, fractional, 1e9, 1e300, unknown strings). Every draw ends in one
 * HypeError naming the problem, or in an output that matches softmax(denseLogits) V computed in fp64 from the
 * encoding's own dense reference, within the rounding budget below, with finite gradients — never a plain
 * TypeError/RangeError, a hang, or NaN.
 *
 * Budget: a logit the kernel forms in a format with unit roundoff u is off by at most (d + 8) u Lambda_il, where
 * Lambda_il = |logit_il| + |scale| |q_i| |k_l| (the dot product's terms are bounded by |q_i| |k_l| whatever rotation
 * or transform the encoding applies; d + 8 covers the dot product, the position terms and the transform's own
 * rounding). As in attention-oracle.ts, only keys whose probability can reach 2^-60 count, and the output is off by
 * at most 2 (2 eps + (Lk + 8) u) max |v|; the check allows twice that.
 *
 * `npm test` runs a fixed-seed sample; `npm run fuzz` also runs this file with HYPE_FUZZ_RUNS draws.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AttentionShape, Backend } from '../src/backend/backend.ts';
import { loadNativeAddon, NativeBackend } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { floatFormat, isFloatFormatName } from '../src/numerics/float-formats.ts';
import type { AttendContext, AttendInputs, EncodingDims } from '../src/pe/encoding.ts';
import { encodingNames, getEncodingFactory } from '../src/pe/registry.ts';
import type { DType, FloatArray } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';

const FUZZ = process.env.HYPE_FUZZ_RUNS !== undefined;
const FUZZ_RUNS = Number(process.env.HYPE_FUZZ_RUNS) || 2000;
const U = { float32: 2 ** -24, float64: 2 ** -53 } as const;

const BACKENDS: Backend[] = [new ReferenceBackend(), ...(loadNativeAddon() ? [new NativeBackend({ threads: 2 })] : [])];

/** Values tried for an option, by the type of its default. */
const NUMBERS = [0, -1, 0.5, 1, 2, 3, 4, 8, 1e-9, 1e9, 1e300, 2.5, 0.25, 100];
const STRINGS = ['auto', 'causal', 'bidirectional', 'concat', 'kernel', 'paper', 'recency', 'learned', 'both', 'tau'];
const MORE_STRINGS = ['mu', 'relative', 'raw', 'centre', 'none', 'fp32', 'bf16', 'fp16', 'fp8', 'bogus'];
/**
 * HyPE accepts options without defaults; drawn too, with the values they take. `multiple` (head-dim padding) is
 * capped at 256, so 257 and 1e9 must be refused rather than pad every row to gigabytes.
 */
const OPTIONAL: Record<string, fc.Arbitrary<unknown>> = {
  multiple: fc.constantFrom(0, -1, 0.5, 1, 2, 3, 8, 64, 2.5, 256, 257, 1e9),
  lengthExtra: fc.constantFrom(1, 16, 64, 4096, 1e9, 0, -5, 1.5),
  format: fc.constantFrom('fp32', 'fp16', 'bf16', 'fp64', 'fp8'),
  grid: fc.constantFrom([2, 2], [3], [0, 2], [1, 1, 1]),
};

function valueArb(def: unknown): fc.Arbitrary<unknown> {
  if (typeof def === 'number') return fc.oneof(fc.constant(def), fc.constantFrom(...NUMBERS));
  if (typeof def === 'boolean') return fc.boolean();
  if (typeof def === 'string') return fc.oneof(fc.constant(def), fc.constantFrom(...STRINGS, ...MORE_STRINGS));
  return fc.constant(def);
}

interface EncodingDraw {
  name: string;
  options: Record<string, unknown>;
  kvHeads: number;
  group: number;
  headDim: number;
  trainLength: number;
  batch: number;
  lq: number;
  lk: number;
  queryOffset: number | undefined;
  causal: boolean;
  dtype: DType;
  backend: number;
  seed: number;
}

const encodingDrawArb: fc.Arbitrary<EncodingDraw> = fc.constantFrom(...encodingNames()).chain((name) => {
  const factory = getEncodingFactory(name);
  const keys = Object.entries(factory.defaults as Record<string, unknown>);
  const options = fc.record(
    {
      ...Object.fromEntries(keys.map(([k, def]) => [k, valueArb(def)])),
      ...(name === 'hype' ? OPTIONAL : {}),
    },
    { requiredKeys: [] },
  );
  return fc.record({
    name: fc.constant(name),
    options: fc.oneof({ weight: 1, arbitrary: fc.constant({}) }, { weight: 3, arbitrary: options }),
    kvHeads: fc.integer({ min: 1, max: 2 }),
    group: fc.integer({ min: 1, max: 2 }),
    headDim: fc.oneof(fc.constantFrom(2, 4, 6, 8), fc.integer({ min: 1, max: 9 })),
    trainLength: fc.integer({ min: 2, max: 24 }),
    batch: fc.integer({ min: 1, max: 2 }),
    lq: fc.integer({ min: 1, max: 9 }),
    lk: fc.integer({ min: 1, max: 9 }),
    queryOffset: fc.option(fc.integer({ min: 0, max: 12 }), { nil: undefined }),
    causal: fc.boolean(),
    dtype: fc.constantFrom<DType>('float32', 'float64'),
    backend: fc.nat(),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  });
});

function norm(a: FloatArray, at: number, n: number): number {
  let s = 0;
  for (let x = 0; x < n; x++) s += a[at + x]! ** 2;
  return Math.sqrt(s);
}

/** The largest |got - want| allowed per the header, and the fp64 reference output. */
function reference(
  logits: Float64Array,
  shape: AttentionShape,
  inputs: AttendInputs,
  scale: number,
  u: number,
  valueTerm: { max: number; add: (probs: Float64Array) => Float64Array } | null,
): { want: Float64Array; budget: number } {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  const group = H / Hkv;
  const want = new Float64Array(B * H * lq * dv);
  const probs = new Float64Array(logits.length);
  let budget = 0;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      for (let i = 0; i < lq; i++) {
        const r = (b * H + h) * lq + i;
        const row = logits.subarray(r * lk, (r + 1) * lk);
        let max = -Infinity;
        for (const s of row) max = Math.max(max, s);
        if (max === -Infinity) continue;
        let sum = 0;
        for (const s of row) sum += Math.exp(s - max);
        const lse = max + Math.log(sum);
        let lambda = 0;
        let vMax = 0;
        const qn = norm(inputs.q, ((b * H + h) * lq + i) * d, d);
        for (let l = 0; l < lk; l++) {
          if (row[l] === -Infinity) continue;
          const kn = norm(inputs.k, ((b * Hkv + kvh) * lk + l) * d, d);
          const lam = Math.abs(row[l]!) + Math.abs(scale) * qn * kn;
          if ((d + 8) * u * lam + (row[l]! - lse) < -60 * Math.LN2) continue;
          lambda = Math.max(lambda, lam);
          for (let x = 0; x < dv; x++) vMax = Math.max(vMax, Math.abs(inputs.v[((b * Hkv + kvh) * lk + l) * dv + x]!));
        }
        vMax += valueTerm?.max ?? 0;
        for (let l = 0; l < lk; l++) probs[r * lk + l] = Math.exp(row[l]! - lse);
        const eps = (d + 8) * u * lambda + u * Math.abs(lse);
        budget = Math.max(budget, 4 * (2 * eps + (lk + dv + 8) * u) * vMax);
        for (let x = 0; x < dv; x++) {
          let acc = 0;
          for (let l = 0; l < lk; l++) {
            acc += Math.exp(row[l]! - lse) * inputs.v[((b * Hkv + kvh) * lk + l) * dv + x]!;
          }
          want[r * dv + x] = acc;
        }
      }
    }
  }
  if (valueTerm) {
    const extra = valueTerm.add(probs);
    for (let i = 0; i < want.length; i++) want[i] = want[i]! + extra[i]!;
  }
  return { want, budget };
}

function isHypeError(e: unknown): e is HypeError {
  return e instanceof HypeError && e.message.length > 20;
}

describe('every encoding through the registry: the fp64 dense reference or one HypeError', () => {
  const counts = { built: 0, attended: 0 };

  it('random dims, options, offsets and dtypes on both backends', () => {
    fc.assert(
      fc.property(encodingDrawArb, (draw) => {
        const heads = draw.kvHeads * draw.group;
        const dims: EncodingDims = {
          heads,
          kvHeads: draw.kvHeads,
          headDim: draw.headDim,
          modelDim: heads * draw.headDim,
          trainLength: draw.trainLength,
        };
        const factory = getEncodingFactory(draw.name);
        let enc;
        try {
          enc = factory.create(dims, draw.options, new Rng(draw.seed));
        } catch (e) {
          if (isHypeError(e)) return;
          throw e;
        }
        counts.built++;
        const rng = new Rng(draw.seed + 1);
        const shape: AttentionShape = {
          batch: draw.batch,
          heads,
          kvHeads: draw.kvHeads,
          lq: draw.lq,
          lk: draw.lk,
          headDim: draw.headDim,
          valueDim: draw.headDim, // some encodings (shaw) need Dv = D
        };
        const make = (n: number) => {
          const a = draw.dtype === 'float64' ? new Float64Array(n) : new Float32Array(n);
          for (let i = 0; i < n; i++) a[i] = rng.normal();
          return a;
        };
        const inputs: AttendInputs = {
          q: make(draw.batch * heads * draw.lq * draw.headDim),
          k: make(draw.batch * draw.kvHeads * draw.lk * draw.headDim),
          v: make(draw.batch * draw.kvHeads * draw.lk * draw.headDim),
          x: make(draw.batch * draw.lk * dims.modelDim),
        };
        // Queries sit at or after position 0 here (the cache's and the trainer's use); keys start at 0.
        const queryOffset = draw.queryOffset ?? Math.max(draw.lk - draw.lq, 0);
        const backend = BACKENDS[draw.backend % BACKENDS.length]!;
        const ctx: AttendContext = { backend, shape, causal: draw.causal, queryOffset };
        let out: FloatArray;
        let grads: Record<string, FloatArray | undefined>;
        try {
          const res = enc.attend(ctx, inputs);
          out = res.out;
          grads = res.backward(make(draw.batch * heads * draw.lq * draw.headDim));
        } catch (e) {
          if (isHypeError(e)) return;
          throw e;
        }
        counts.attended++;
        const scale = 1 / Math.sqrt(draw.headDim);
        const logits = enc.denseLogits({ ...ctx, backend: new ReferenceBackend() }, inputs, scale);
        // Shaw's relative value embeddings add a term the logits cannot show; the encoding gives it for tests.
        const withValues = enc as { denseValueTerm?: (c: AttendContext, p: Float64Array) => Float64Array };
        const valueTerm = withValues.denseValueTerm
          ? {
              max: Math.max(...enc.params.map((p) => Array.from(p.data, Math.abs).reduce((m, x) => Math.max(m, x), 0))),
              add: (probs: Float64Array) => withValues.denseValueTerm!(ctx, probs),
            }
          : null;
        // HyPE's `format` rounds the attention operands to fp16/bf16 on purpose (emulation): its unit roundoff then
        // replaces the arrays' own.
        const format = draw.options.format;
        const u = Math.max(
          U[draw.dtype],
          isFloatFormatName(String(format)) ? floatFormat(format as never).unitRoundoff : 0,
        );
        const { want, budget } = reference(logits, shape, inputs, scale, u, valueTerm);
        for (let i = 0; i < want.length; i++) {
          const ok = Number.isFinite(out[i]!) && Math.abs(out[i]! - want[i]!) <= budget;
          if (!ok) {
            throw new Error(
              `${draw.name} ${JSON.stringify(draw.options)} on ${backend.name} (${draw.dtype}): out[${i}] = ` +
                `${out[i]}, dense reference ${want[i]} within ${budget.toExponential(2)}`,
            );
          }
        }
        for (const [name, g] of Object.entries(grads)) {
          if (!g) continue;
          for (let i = 0; i < g.length; i++) {
            if (!Number.isFinite(g[i]!))
              throw new Error(`${draw.name}: ${name}[${i}] = ${g[i]} after a finite forward`);
          }
        }
        for (const p of enc.params) {
          for (let i = 0; i < p.grad.length; i++) {
            if (!Number.isFinite(p.grad[i]!)) throw new Error(`${draw.name}: ${p.name}.grad[${i}] = ${p.grad[i]}`);
          }
        }
      }),
      FUZZ ? { numRuns: FUZZ_RUNS } : { numRuns: 400, seed: 20261204 },
    );
    // Not vacuous: most draws build an encoding and run attention to the end.
    expect(counts.attended).toBeGreaterThan(counts.built * 0.3);
  });
});
