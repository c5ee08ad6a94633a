/**
 * Gated HyPE: a content-dependent HyPE with a per-query amplitude (issue 19's (a)), on an unmodified kernel. Each
 * query head h scales its query's eta columns by s_hi = softplus(w_h . x_i + b_h), so the logit of a key at l gains
 *   a_hil = s_hi * tau_h sinh(mu_h (n_i - l))      (n_i = i + queryOffset, the query's absolute position),
 * still rank 2 per term: [s_hi eta^Q_hi] . [eta^K_l], two concat columns per term (concat-bias.ts), split into hi/lo
 * parts in bf16/fp16 (SPEC section 8). A query can thus turn its recency bias up (s > 1), down or off (s -> 0) from
 * what it reads; the keys' columns stay position-only. O(L) memory: s is one number per query and head.
 * Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv], x [B, Lk, C] (C = modelDim); gate parameters
 * hype-gated.w [H, C], hype-gated.b [H]; tau, mu as hype's (hype.tau/hype.mu or hype.slope/hype.mu).
 *
 * Choices:
 * - x is the block's normed input (the same x the q/k/v projections read, AttendInputs.x), as fox.ts reads it; the
 *   query at row i reads x row i + queryOffset, so x must cover the queries' positions (queryOffset + Lq <= Lk).
 * - One gate per query head (the query columns are per head, so this costs nothing under grouped-query attention;
 *   mu stays per KV group, as HyPE requires).
 * - softplus keeps s >= 0, so the gate can weaken or strengthen the bias but never flip its sign (a flipped sign
 *   rewards distance, the paper's failure mode, SPEC section 2).
 * - Initialisation: w = 0 and b = softplus^-1(1) = log(e - 1), so s = 1 exactly and the encoding starts as the
 *   plain HyPE of the same options (default preset 'learned'); w's gradient x * ds * sigmoid(z) is nonzero from
 *   the first step. No weight decay on the gate (as fox's).
 * - The underlying HyPE is built by hype/encoding.ts with route 'concat' (every HyPE option but route and grid
 *   applies: preset, curvature, train, parametrisation, units, shift, format/precision/columns, multiple); 1-D only.
 * - Cached decoding: no transformed-key cache hook (the key columns are HyPE's, but the gate needs each query's x,
 *   which the generic cache keeps for 'data-dependent' encodings and passes back with queryOffset = cache length).
 */
import { check } from '../errors.ts';
import type { DType, FloatArray } from '../tensor.ts';
import type { Rng } from '../util/rng.ts';
import { checkQk, denseLogitGrid, scaledDot } from './attention-plumbing.ts';
import { concatBf16Refusal } from '../numerics/split-columns.ts';
import { concatBiasAttention, concatOperandWidths } from './concat-bias.ts';
import type {
  AttendContext,
  AttendInputs,
  AttendResult,
  EncodingDims,
  EncodingFactory,
  OnnxAttention,
  OnnxAttentionBuilder,
  OperandWidths,
  Param,
  PositionalEncoding,
} from './encoding.ts';
import { buildEta, columnPlan, etaGrads, exactBias } from './hype/core.ts';
import { createHype, type HypeEncoding, type HypeOptions } from './hype/encoding.ts';
import { defineEncoding } from './options.ts';
import { softplus } from '../backend/layers.ts';
import { checkBlockInput, gateParam, projectGates, projectGatesBackward, rowNorms } from './gate-input.ts';

export type GatedHypeOptions = Omit<HypeOptions, 'route' | 'grid'>;

const DEFAULTS: GatedHypeOptions = {
  preset: 'learned',
  curvature: 0.5,
  train: 'both',
  parametrisation: 'tau-mu',
  units: 'relative',
  multiple: 1,
  shift: 'centre',
};

/** softplus^-1(1): the gate bias that makes s = 1 at w = 0. */
export const GATE_BIAS_INIT = Math.log(Math.E - 1);

/** Running statistics of the gate values s over forward passes (reported per head, then reset). */
interface GateStats {
  n: number;
  sum: Float64Array;
  sumSq: Float64Array;
  min: Float64Array;
  max: Float64Array;
}

function emptyStats(H: number): GateStats {
  return {
    n: 0,
    sum: new Float64Array(H),
    sumSq: new Float64Array(H),
    min: new Float64Array(H).fill(Infinity),
    max: new Float64Array(H).fill(-Infinity),
  };
}

class GatedHypeEncoding implements PositionalEncoding {
  readonly name = 'hype-gated';
  readonly sites = ['score-bias', 'data-dependent'] as const;
  readonly maxLength = Infinity;
  readonly w: Param;
  readonly b: Param;
  readonly params: Param[];
  private stats: GateStats;

  constructor(
    private readonly dims: EncodingDims,
    private readonly hype: HypeEncoding,
    private readonly opts: GatedHypeOptions,
  ) {
    this.w = gateParam('hype-gated.w', [dims.heads, dims.modelDim]);
    this.b = gateParam('hype-gated.b', [dims.heads]);
    this.b.data.fill(GATE_BIAS_INIT);
    this.params = [...hype.params, this.w, this.b];
    this.stats = emptyStats(dims.heads);
  }

  private checkCall(ctx: AttendContext, inputs: AttendInputs): FloatArray {
    return checkBlockInput('hype-gated', 'the amplitude gates', this.dims, ctx, inputs);
  }

  /** Gate pre-activations z [B, H, Lq] = w_h . x_(i + queryOffset) + b_h in plain fp64 loops (denseLogits' own). */
  private preActivations(x: FloatArray, B: number, lq: number, lk: number, off: number): Float64Array {
    const { heads: H, modelDim: C } = this.dims;
    const z = new Float64Array(B * H * lq);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < H; h++)
        for (let i = 0; i < lq; i++) {
          let acc = this.b.data[h]!;
          const xo = (b * lk + i + off) * C;
          for (let c = 0; c < C; c++) acc += this.w.data[h * C + c]! * x[xo + c]!;
          z[(b * H + h) * lq + i] = acc;
        }
    return z;
  }

  /** q and k with room for HyPE's 2T columns (concat-bias.ts; plain rows with `format` emulation). */
  operandWidths(dtype: DType): OperandWidths | null {
    const d = this.dims.headDim;
    return concatOperandWidths(this.opts, 2 * this.hype.spec().termAxis.length, d, d, dtype);
  }

  attend(ctx: AttendContext, inputs: AttendInputs): AttendResult {
    const x = this.checkCall(ctx, inputs);
    const { batch: B, heads: H, kvHeads: G, lq, lk, headDim: d } = ctx.shape;
    const off = ctx.queryOffset;
    const spec = this.hype.spec();
    const T = spec.termAxis.length;
    const r = 2 * T;
    const plan = columnPlan(this.opts, inputs.q instanceof Float64Array ? 'fp64' : 'fp32');
    const eta = buildEta(spec, { lq, lk, queryOffset: off, shift: this.opts.shift }, plan.guard);
    // z [B, Lq, H] by one backend gemm (gate-input.ts), s = softplus(z) by the backend's gate op (fp64 here).
    const z = projectGates(ctx.backend, x, this.w, this.b, B, lk, off, lq);
    const s = new Float64Array(z.length);
    ctx.backend.gateForward(z, s, 1, z.length, 1, 'softplus', -1);
    this.observe(s, B, lq);
    // Query columns s * eta^Q / sqrt(d) (concat-bias.ts multiplies by sqrt(d) again); key columns eta^K per batch.
    const sqrtD = Math.sqrt(d);
    const qc = new Float64Array(B * H * lq * r);
    for (let b = 0; b < B; b++)
      for (let h = 0; h < H; h++)
        for (let i = 0; i < lq; i++) {
          const amp = s[(b * lq + i) * H + h]! / sqrtD;
          const o = ((b * H + h) * lq + i) * r;
          const e = (h * lq + i) * r;
          for (let c = 0; c < r; c++) qc[o + c] = amp * eta.etaQ[e + c]!;
        }
    const kc = new Float64Array(B * G * lk * r);
    for (let b = 0; b < B; b++) kc.set(eta.etaK, b * G * lk * r);
    const run = concatBiasAttention(ctx, inputs, qc, kc, r, this.opts);
    return {
      out: run.out,
      dispose: run.dispose,
      backward: (dOut: FloatArray) => {
        const { dq, dk, dv, dx: dqc, dy: dkc } = run.backward(dOut);
        // Through qc = s eta^Q / sqrt(d): d eta^Q = s dqc / sqrt(d), ds = dqc . eta^Q / sqrt(d).
        const gq = new Float64Array(B * H * lq * r);
        const dz = new Float64Array(B * lq * H); // ds, then dz [B, Lq, H] (as z)
        for (let b = 0; b < B; b++)
          for (let h = 0; h < H; h++)
            for (let i = 0; i < lq; i++) {
              const row = (b * H + h) * lq + i;
              const zi = (b * lq + i) * H + h;
              const e = (h * lq + i) * r;
              let ds = 0;
              for (let c = 0; c < r; c++) {
                gq[row * r + c] = (s[zi]! * dqc[row * r + c]!) / sqrtD;
                ds += (dqc[row * r + c]! * eta.etaQ[e + c]!) / sqrtD;
              }
              dz[zi] = ds;
            }
        ctx.backend.gateBackward(z, dz, dz, 1, dz.length, 1, 'softplus', -1); // ds -> dz = ds softplus'(z)
        const { dtau, dmu } = etaGrads(spec, eta, B, gq, dkc);
        this.hype.accumulate(spec, dtau, dmu);
        const dx = projectGatesBackward(ctx.backend, x, this.w, this.b, dz, B, lk, off, lq);
        return { dq, dk, dv, dx };
      },
    };
  }

  /**
   * ONNX form: hype's eta columns (its current tau, mu) with each query's eta^Q scaled by s = Softplus(x w^T + b)
   * computed in the graph from the block's normed input, on unmodified MultiHeadAttention.
   */
  toOnnx(b: OnnxAttentionBuilder): OnnxAttention {
    return this.hype.toOnnx(
      b,
      b.gate({ weight: this.w.data, bias: this.b.data, rows: this.dims.heads, fn: 'softplus' }),
    );
  }

  /** s [B, Lq, H]. */
  private observe(s: Float64Array, B: number, lq: number): void {
    const H = this.dims.heads;
    const st = this.stats;
    for (let b = 0; b < B; b++)
      for (let h = 0; h < H; h++)
        for (let i = 0; i < lq; i++) {
          const v = s[(b * lq + i) * H + h]!;
          st.sum[h]! += v;
          st.sumSq[h]! += v * v;
          if (v < st.min[h]!) st.min[h] = v;
          if (v > st.max[h]!) st.max[h] = v;
        }
    st.n += B * lq;
  }

  /**
   * HyPE's trained values (its report, learned preset) plus, per head, the gate's weight norm |w_h|, its bias b_h, and the mean,
   * standard deviation, min and max of s over the queries of every forward pass since the previous report (reset
   * here; empty lists when none ran).
   */
  report(): Record<string, number[]> {
    const H = this.dims.heads;
    const st = this.stats;
    const seen = st.n > 0;
    const mean = seen ? Array.from(st.sum, (v) => v / st.n) : [];
    const out: Record<string, number[]> = {
      ...this.hype.report?.(),
      'gate.wNorm': rowNorms(this.w.data, H),
      'gate.b': Array.from(this.b.data),
      'gate.sMean': mean,
      'gate.sStd': seen ? mean.map((m, h) => Math.sqrt(Math.max(0, st.sumSq[h]! / st.n - m * m))) : [],
      'gate.sMin': seen ? Array.from(st.min) : [],
      'gate.sMax': seen ? Array.from(st.max) : [],
    };
    this.stats = emptyStats(H);
    return out;
  }

  /** fp64 reference: scale q.k + softplus(w_h . x_n + b_h) tau_h sinh(mu_h (n - l)), from the definition. */
  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    checkQk(ctx, inputs.q, inputs.k);
    const x = this.checkCall(ctx, inputs);
    const { batch: B, heads: H, lq, lk } = ctx.shape;
    const spec = this.hype.spec();
    const z = this.preActivations(x, B, lq, lk, ctx.queryOffset);
    return denseLogitGrid(ctx, (b, h, kvh, i, l) => {
      const sGate = softplus(z[(b * H + h) * lq + i]!);
      const bias = sGate * exactBias(spec, h, i + ctx.queryOffset, l);
      return scaledDot(ctx, inputs.q, inputs.k, scale, b, h, kvh, i, l) + bias;
    });
  }
}

export const hypeGatedFactory: EncodingFactory<GatedHypeOptions> = defineEncoding<GatedHypeOptions>({
  name: 'hype-gated',
  description:
    'HyPE with a per-query amplitude softplus(w.x + b) read from the block input (initialised to 1): a ' +
    'content-dependent HyPE, still two concat columns per term on an unmodified kernel',
  sites: ['score-bias', 'data-dependent'],
  defaults: DEFAULTS,
  optionalKeys: ['lengthExtra', 'format', 'precision', 'columns'],
  bf16Refusal: (o: Partial<GatedHypeOptions>) => concatBf16Refusal('hype-gated', o),
  create(dims: EncodingDims, options: Partial<GatedHypeOptions>, _rng: Rng): PositionalEncoding {
    const o = { ...DEFAULTS, ...options };
    check(dims.modelDim > 0, 'argument', `hype-gated: modelDim must be positive, got ${dims.modelDim}`);
    return new GatedHypeEncoding(dims, createHype(dims, { ...o, route: 'concat' }), o);
  },
});
