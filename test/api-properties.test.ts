/**
 * Property-based tests (fast-check) of the public attention API on both backends (reference: fp32 and fp64 inputs;
 * native: fp32). Every draw must end in one of two ways: the fp64 oracle's result within the error budget the
 * arithmetic allows (test/helpers/attention-oracle.ts), or one HypeError naming the problem — never a crash, a
 * plain TypeError, a NaN where the oracle has a number, or a silently different number.
 *
 * Draws: random shapes (batch, grouped-query ratios, lengths, head and value dims), causal or not, query offsets
 * (default, negative, past the keys), signed scales, per-head distance tables (CONTRACT.md), then hostile variants:
 * NaN/Inf injected into any input, malformed shapes, arrays and options, and logit magnitudes near the fp32 range.
 *
 * `npm test` runs a few hundred draws (seeded, reproducible); `npm run fuzz` runs HYPE_FUZZ_RUNS draws per
 * property (default 2,000) with a fresh seed, printing the seed and the shrunk counterexample of any failure.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type {
  AttentionOptions,
  AttentionShape,
  Backend,
  PositionBias,
  PositionBiasGrad,
} from '../src/backend/backend.ts';
import { loadNativeAddon, NativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import type { DType, FloatArray } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';
import {
  attentionOracle,
  errorBudget,
  firstDisagreement,
  spanOf,
  type OracleCase,
  type OracleTensor,
} from './helpers/attention-oracle.ts';

const FUZZ = process.env.HYPE_FUZZ_RUNS !== undefined;
const FUZZ_RUNS = Number(process.env.HYPE_FUZZ_RUNS) || 2000;
/** fast-check parameters: `runs` draws in npm test (fixed seed), HYPE_FUZZ_RUNS under `npm run fuzz`. */
function params(runs: number): fc.Parameters<unknown> {
  return FUZZ ? { numRuns: FUZZ_RUNS } : { numRuns: runs, seed: 20261204 };
}

const U = { float32: 2 ** -24, float64: 2 ** -53 } as const;

const addon = loadNativeAddon();
if (!addon && process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
interface Target {
  name: string;
  backend: Backend;
  dtypes: readonly DType[];
}
const TARGETS: Target[] = [
  { name: 'reference', backend: new ReferenceBackend(), dtypes: ['float32', 'float64'] },
  ...(addon ? [{ name: 'native', backend: new NativeBackend({ threads: 2 }), dtypes: ['float32'] as const }] : []),
];
if (!addon) console.warn(`api-properties: native backend not built (${nativeLoadError()}); reference only`);

/** The per-head distance table [H, span] (CONTRACT.md) as the backend takes it. */
function distanceBias(table: Float64Array | Float32Array): PositionBias {
  return { kind: 'distance', table };
}

function dTableOf(grad: PositionBiasGrad): ArrayLike<number> | undefined {
  return grad.kind === 'distance' ? grad.table : undefined;
}

/** One attention call's inputs. */
interface Draw {
  batch: number;
  kvHeads: number;
  group: number;
  lq: number;
  lk: number;
  headDim: number;
  valueDim: number;
  causal: boolean;
  queryOffset: number | undefined;
  scale: number;
  amp: number;
  biased: boolean;
  biasAmp: number;
  seed: number;
}

function drawArb(magnitudes: { amp: fc.Arbitrary<number>; scale: fc.Arbitrary<number> }): fc.Arbitrary<Draw> {
  return fc.record({
    batch: fc.integer({ min: 1, max: 2 }),
    kvHeads: fc.integer({ min: 1, max: 3 }),
    group: fc.integer({ min: 1, max: 3 }),
    lq: fc.integer({ min: 1, max: 11 }),
    lk: fc.integer({ min: 1, max: 11 }),
    headDim: fc.integer({ min: 1, max: 9 }),
    valueDim: fc.integer({ min: 1, max: 9 }),
    causal: fc.boolean(),
    queryOffset: fc.option(fc.integer({ min: -13, max: 14 }), { nil: undefined }),
    scale: magnitudes.scale,
    amp: magnitudes.amp,
    biased: fc.boolean(),
    biasAmp: fc.constantFrom(0.5, 4, 30),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
  });
}

const MODERATE = {
  amp: fc.constantFrom(1e-3, 1, 3),
  scale: fc.oneof(fc.double({ min: -2, max: 2, noNaN: true }), fc.constant(0)),
};

/** Magnitudes whose logits reach or pass fp32's range (3.4e38), and scales fp32 cannot hold (1e39, 1e-46). */
const EXTREME = {
  amp: fc.constantFrom(1e15, 1e19, 1e30, 3e38),
  scale: fc.constantFrom(1, -1, 1e10, 1e30, 1e39, 1e-46),
};

interface Built {
  shape: AttentionShape;
  opts: AttentionOptions;
  qo: number;
  span: number;
  table: Float64Array | null;
  q: FloatArray;
  k: FloatArray;
  v: FloatArray;
  dOut: FloatArray;
}

function build(d: Draw, dtype: DType): Built {
  const rng = new Rng(d.seed);
  const heads = d.kvHeads * d.group;
  const shape: AttentionShape = {
    batch: d.batch,
    heads,
    kvHeads: d.kvHeads,
    lq: d.lq,
    lk: d.lk,
    headDim: d.headDim,
    valueDim: d.valueDim,
  };
  const make = (n: number, amp: number) => {
    const a = dtype === 'float64' ? new Float64Array(n) : new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * amp;
    return a;
  };
  const qo = d.queryOffset ?? d.lk - d.lq;
  const span = spanOf(shape, qo);
  let table: Float64Array | null = null;
  if (d.biased) {
    table = new Float64Array(Math.max(heads * span, 0));
    for (let i = 0; i < table.length; i++) table[i] = (rng.uniform() * 2 - 1) * d.biasAmp;
  }
  const opts: AttentionOptions = {
    causal: d.causal,
    scale: d.scale,
    ...(d.queryOffset !== undefined ? { queryOffset: d.queryOffset } : {}),
    ...(table ? { bias: distanceBias(table) } : {}),
  };
  return {
    shape,
    opts,
    qo,
    span,
    table,
    q: make(d.batch * heads * d.lq * d.headDim, d.amp),
    k: make(d.batch * d.kvHeads * d.lk * d.headDim, d.amp),
    v: make(d.batch * d.kvHeads * d.lk * d.valueDim, 1),
    dOut: make(d.batch * heads * d.lq * d.valueDim, 1),
  };
}

/**
 * Whether the call reads table entry t (distance D = t - (Lk - 1)): every distance from queryOffset - (Lk - 1) to
 * queryOffset + Lq - 1 occurs, and a causal mask hides the negative ones.
 */
function entryRead(b: Built, t: number): boolean {
  const lk = b.shape.lk;
  return t >= b.qo && t < b.span && (!b.opts.causal || t >= lk - 1);
}

/** A table cannot serve distances below -(Lk - 1): a visible pair there (no causal mask, negative offset). */
function tableCovers(b: Built): boolean {
  return !b.table || b.opts.causal || b.qo >= 0;
}

function oracleCase(b: Built): OracleCase {
  const { table, span } = b;
  const lk = b.shape.lk;
  return {
    shape: b.shape,
    causal: b.opts.causal,
    scale: b.opts.scale,
    queryOffset: b.qo,
    bias: table ? (h, D) => table[h * span + D + lk - 1]! : null,
    q: b.q,
    k: b.k,
    v: b.v,
    dOut: b.dOut,
  };
}

type Outcome =
  { kind: 'refused'; error: HypeError } | { kind: 'done'; values: Record<OracleTensor, ArrayLike<number>> };

/** Forward then backward (from the forward's own out and lse); anything thrown but a HypeError fails the test. */
function run(backend: Backend, b: Built): Outcome {
  try {
    const fwd = backend.attentionForward(b.shape, b.q, b.k, b.v, b.opts);
    const g = backend.attentionBackward(b.shape, b.q, b.k, b.v, fwd.out, fwd.lse, b.dOut, b.opts);
    const dTable = b.table ? dTableOf(g.dBias) : new Float64Array(0);
    if (!dTable) throw new Error(`the backend returned no distance-table gradient (dBias kind ${g.dBias.kind})`);
    return { kind: 'done', values: { out: fwd.out, lse: fwd.lse, dq: g.dq, dk: g.dk, dv: g.dv, dTable } };
  } catch (e) {
    if (e instanceof HypeError) {
      expect(e.message.length, 'a HypeError must say what is wrong').toBeGreaterThan(20);
      return { kind: 'refused', error: e };
    }
    throw e;
  }
}

/** null when the outcome matches the fp64 oracle within the budget, else what differs. */
function disagreement(b: Built, values: Record<OracleTensor, ArrayLike<number>>, u: number): string | null {
  const c = oracleCase(b);
  const o = attentionOracle(c, u);
  const budget = errorBudget(c, o, u);
  for (const t of ['out', 'lse', 'dq', 'dk', 'dv', 'dTable'] as const) {
    if (t === 'dTable' && !b.table) continue;
    const msg = firstDisagreement(t, values[t], o.values[t], budget[t]);
    if (msg) return `${msg} (logit bound ${o.logitBound.toExponential(2)})`;
  }
  return null;
}

function describeBuilt(b: Built, dtype: DType): string {
  const s = b.shape;
  return (
    `${dtype} B=${s.batch} H=${s.heads} Hkv=${s.kvHeads} Lq=${s.lq} Lk=${s.lk} D=${s.headDim} Dv=${s.valueDim} ` +
    `causal=${b.opts?.causal} qo=${b.qo} scale=${b.opts?.scale} table=${b.table ? b.table.length : 'none'}`
  );
}

describe.each(TARGETS)('attention properties on the $name backend', ({ backend, dtypes }) => {
  it('valid inputs of moderate size: the fp64 oracle within the fp32/fp64 rounding budget', () => {
    fc.assert(
      fc.property(drawArb(MODERATE), fc.constantFrom(...dtypes), (d, dtype) => {
        const b = build(d, dtype);
        const outcome = run(backend, b);
        if (!tableCovers(b)) {
          // The only refusal a well-formed call may get: a table that lacks the distances the call reaches.
          expect(outcome.kind, describeBuilt(b, dtype)).toBe('refused');
          return;
        }
        if (outcome.kind === 'refused') throw new Error(`refused a valid call: ${outcome.error.message}`);
        const msg = disagreement(b, outcome.values, U[dtype]);
        expect(msg, describeBuilt(b, dtype)).toBeNull();
      }),
      params(150),
    );
  });

  it('NaN or Inf in any input, and malformed shapes, arrays or options: one HypeError', () => {
    fc.assert(
      fc.property(drawArb(MODERATE), fc.constantFrom(...dtypes), hostileArb, (d, dtype, hostile) => {
        const b = build(d, dtype);
        const applied = hostile.apply(b);
        const outcome = run(backend, b);
        if (applied === 'refuse') {
          expect(outcome.kind, `${hostile.name} on ${describeBuilt(b, dtype)}`).toBe('refused');
        } else if (outcome.kind === 'done') {
          expect(disagreement(b, outcome.values, U[dtype]), `${hostile.name}: ${describeBuilt(b, dtype)}`).toBeNull();
        }
      }),
      params(200),
    );
  });

  // A finite logit past the dtype's lowest value (scale 1e10 with |q|, |k| ~ 1e15) must not pass for a masked key:
  // a row that sees keys but has lse = -Infinity is refused as 'overflow' (issue 16 item 2b).
  it('logits near or past the fp32 range: the oracle or one HypeError, never NaN or a masked key', () => {
    fc.assert(
      fc.property(drawArb(EXTREME), fc.constantFrom(...dtypes), fc.nat(), (d, dtype, pick) => {
        const b = build(d, dtype);
        const outcome = run(backend, b);
        if (outcome.kind === 'done' && tableCovers(b)) {
          expect(disagreement(b, outcome.values, U[dtype]), describeBuilt(b, dtype)).toBeNull();
        }
        expectMaskedKeysIgnored(backend, build({ ...d, causal: true }, dtype), pick, 3e38);
      }),
      params(40),
    );
  });

  it('a row whose every logit rounds below the lowest finite value is refused, not returned as masked', () => {
    // scale 1e10 * (1e15 * -1e15) = -1e40 per key: finite in fp64 (lse = -1e40 + log 2), -Infinity in fp32.
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 1, lk: 2, headDim: 1, valueDim: 1 };
    for (const dtype of dtypes.filter((t) => t === 'float32')) {
      const mk = (xs: number[]) => (dtype === 'float32' ? Float32Array.from(xs) : Float64Array.from(xs));
      const call = () =>
        backend.attentionForward(shape, mk([1e15]), mk([-1e15, -1e15]), mk([1, 2]), {
          causal: false,
          scale: 1e10,
        });
      expect(call).toThrow(HypeError);
      expect(call).toThrow(/overflowed float32 at batch 0, head 0, query row 0/);
    }
  });

  it('keys masked for a query never change its row, whatever their values', () => {
    fc.assert(
      fc.property(drawArb(MODERATE), fc.constantFrom(...dtypes), fc.nat(), (d, dtype, pick) => {
        const b = build({ ...d, causal: true }, dtype);
        expectMaskedKeysIgnored(backend, b, pick, 1e30);
      }),
      params(60),
    );
  });
});

/**
 * Changes key l0's k and v (every batch and KV head) to `amp`-sized values and checks that rows whose queries sit
 * before l0 (causal) keep bit-identical out and lse, and that key l0 gets zero dk and dv from them.
 */
function expectMaskedKeysIgnored(backend: Backend, b: Built, pick: number, amp: number): void {
  if (!tableCovers(b)) return;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = b.shape;
  const l0 = pick % lk;
  const before = run(backend, b);
  if (before.kind === 'refused') {
    // Only magnitudes no kernel can take may be refused; moderate draws must run.
    expect(before.error.code, before.error.message).toMatch(/overflow|non-finite/);
    return;
  }
  const k2 = b.k.slice();
  const v2 = b.v.slice();
  const rng = new Rng(pick);
  for (let bh = 0; bh < B * Hkv; bh++) {
    for (let x = 0; x < d; x++) k2[(bh * lk + l0) * d + x] = (rng.uniform() * 2 - 1) * amp;
    for (let x = 0; x < dv; x++) v2[(bh * lk + l0) * dv + x] = (rng.uniform() * 2 - 1) * amp;
  }
  const after = run(backend, { ...b, k: k2, v: v2 });
  const rows = Array.from({ length: lq }, (_, i) => i).filter((i) => i + b.qo < l0);
  if (after.kind === 'refused') {
    // Refusing the new values is fine only if they are what is refused (a magnitude no kernel can take).
    expect(after.error.code).toMatch(/overflow|non-finite|argument/);
    return;
  }
  for (let bh = 0; bh < B * H; bh++) {
    for (const i of rows) {
      const r = bh * lq + i;
      expect(after.values.lse[r], `lse row ${r} changed by masked key ${l0}`).toBe(before.values.lse[r]);
      for (let x = 0; x < dv; x++) {
        expect(after.values.out[r * dv + x], `out row ${r} changed by masked key ${l0}`).toBe(
          before.values.out[r * dv + x],
        );
      }
    }
  }
  if (rows.length === lq) {
    // No query sees key l0 at all: its gradients must be exactly zero.
    for (let bh = 0; bh < B * Hkv; bh++) {
      for (let x = 0; x < d; x++)
        expect(after.values.dk[(bh * lk + l0) * d + x] === 0, 'dk of a masked key').toBe(true);
      for (let x = 0; x < dv; x++)
        expect(after.values.dv[(bh * lk + l0) * dv + x] === 0, 'dv of a masked key').toBe(true);
    }
  }
}

/** A corruption of one built call: 'refuse' when the only right answer is a HypeError. */
interface Hostile {
  name: string;
  apply(b: Built): 'refuse' | 'refuse-or-agree';
}

const nonFinite = fc.constantFrom(NaN, Infinity, -Infinity);

const hostileArb: fc.Arbitrary<Hostile> = fc.oneof(
  fc
    .tuple(fc.constantFrom('q', 'k', 'v', 'dOut') as fc.Arbitrary<'q' | 'k' | 'v' | 'dOut'>, nonFinite, fc.nat())
    .map(([which, x, at]): Hostile => ({
      name: `${x} in ${which}`,
      apply(b) {
        b[which][at % b[which].length] = x;
        return 'refuse';
      },
    })),
  fc.tuple(nonFinite, fc.nat()).map(([x, at]): Hostile => ({
    name: `${x} in the distance table`,
    apply(b) {
      if (!b.table || b.table.length === 0) return 'refuse-or-agree';
      const t = at % b.table.length;
      b.table[t] = x;
      // -Infinity could be read as "masked"; NaN and +Infinity have no meaning where the call reads them (an entry
      // for a distance the call never reaches changes nothing, and may be accepted).
      return x !== -Infinity && entryRead(b, t % b.span) ? 'refuse' : 'refuse-or-agree';
    },
  })),
  fc
    .constantFrom<[string, unknown]>(
      ['NaN', NaN],
      ['Infinity', Infinity],
      ['-Infinity', -Infinity],
      ['a string', '0.5'],
      ['missing', undefined],
    )
    .map(([what, scale]): Hostile => ({
      name: `scale ${what}`,
      apply(b) {
        (b.opts as { scale: unknown }).scale = scale;
        return 'refuse';
      },
    })),
  fc
    .constantFrom<[string, unknown]>(['NaN', NaN], ['1.5', 1.5], ['2^53', 2 ** 53], ['a string', '2'])
    .map(([what, qo]): Hostile => ({
      name: `queryOffset ${what}`,
      apply(b) {
        (b.opts as { queryOffset: unknown }).queryOffset = qo;
        return 'refuse';
      },
    })),
  fc
    .constantFrom<[string, (s: AttentionShape) => void]>(
      ['kvHeads above heads (no whole groups)', (s) => (s.kvHeads = s.heads + 1)],
      ['lq = 0', (s) => (s.lq = 0)],
      ['headDim 1.5', (s) => (s.headDim = 1.5)],
      ['batch -1', (s) => (s.batch = -1)],
      ['lk NaN', (s) => (s.lk = NaN)],
      ['kvHeads as a string', (s) => ((s as { kvHeads: unknown }).kvHeads = '1')],
      ['lq 2^31 (products past int32)', (s) => (s.lq = 2 ** 31)],
      ['heads 2^32 (products past uint32)', (s) => ((s.heads = 2 ** 32), (s.kvHeads = 2 ** 32))],
      ['valueDim 2^53', (s) => (s.valueDim = 2 ** 53)],
    )
    .map(([what, corrupt]): Hostile => ({
      name: `shape: ${what}`,
      apply(b) {
        corrupt(b.shape);
        return 'refuse';
      },
    })),
  fc
    .constantFrom<[string, (b: Built) => void]>(
      ['q one element short', (b) => (b.q = b.q.subarray(0, b.q.length - 1))],
      ['k one element long', (b) => (b.k = Float64Array.from([...b.k, 0]))],
      [
        'v of the other float type',
        (b) => (b.v = b.v instanceof Float32Array ? Float64Array.from(b.v) : Float32Array.from(b.v)),
      ],
      ['q a plain array', (b) => (b.q = Array.from(b.q) as unknown as FloatArray)],
      ['k an Int32Array', (b) => (b.k = Int32Array.from(b.k) as unknown as FloatArray)],
      ['dOut null', (b) => (b.dOut = null as unknown as FloatArray)],
      ['options null', (b) => (b.opts = null as unknown as AttentionOptions)],
      ['causal as a string', (b) => ((b.opts as { causal: unknown }).causal = 'yes')],
      ['an unknown bias kind', (b) => (b.opts = { ...b.opts, bias: { kind: 'alibi2' } as unknown as PositionBias })],
      [
        'a bias without its table',
        (b) => (b.opts = { ...b.opts, bias: { kind: 'distance' } as unknown as PositionBias }),
      ],
      [
        'a distance table one short',
        (b) => {
          const n = b.shape.heads * b.span;
          const t = new Float64Array(n > 0 ? n - 1 : 1); // one short, or one too many where none is needed
          b.opts = { ...b.opts, bias: distanceBias(t) };
        },
      ],
    )
    .map(([what, corrupt]): Hostile => ({
      name: what,
      apply(b) {
        corrupt(b);
        return 'refuse';
      },
    })),
);
