/**
 * HyPE (Hyperbolic Positional Encoding, Angelotti 2023) as a positional encoding: presets, and the adapter that
 * runs attention through the concat route (augment Q and K with two columns per pair, then any kernel with the
 * explicit scale 1/sqrt(d)) or as a distance table the kernel adds (table.ts). The maths lives in core.ts.
 *
 * The bias HyPE adds to the logit of a key at distance D = i - l behind its query is a = tau sinh(mu D).
 *
 * SIGN. The paper's literal choice, tau = +1 and mu = 1/L_extra > 0, makes a GROW with distance: it rewards
 * attending far back, the opposite of ALiBi's penalty -m D (SPEC section 2; with it, attention drifts to the oldest
 * tokens). Recency needs tau * mu < 0. The presets make the sign explicit:
 *   paper    tau = +1, mu = 1/L_extra            rewards distance; the literal eq 14, kept for fidelity and as a
 *                                                baseline. Its whole bias spans at most sinh(1) = 1.18 logits.
 *   recency  mu_h = curvature / L_extra,         penalises distance like ALiBi: a = -(m_h/mu_h) sinh(mu_h D)
 *            tau_h = -m_h / mu_h                 = -m_h D (1 + (mu_h D)^2/6 + ...), m_h ALiBi's reference slopes.
 *   learned  recency's values as the start, tau and/or mu trained (their gradients come from an ordinary dQ, dK).
 *            parametrisation 'slope-curvature' trains (m_h, mu) instead, m_h = -tau_h mu_h, tau = -m / mu (SPEC
 *            section 9): trained as (tau, mu) the two move in lockstep (the slope is what training wants), so the
 *            curvature never moves on its own; in these coordinates a step in mu at fixed m changes only the shape.
 * Curvature (mu_h L_extra, default 0.5) trades fidelity to ALiBi against rounding: the relative deviation from a
 * straight line at the far end of the L_extra window is sinh(x)/x - 1 = 4.2% at x = 0.5 (1.0% at 0.25, 17.5% at 1),
 * while the recovered bias' rounding error grows like (m/mu) u, i.e. like 1/x. One mu for all heads keeps the
 * relative deviation equal across heads and satisfies grouped-query attention (query heads sharing a KV head must
 * share mu).
 */
import type { AttentionOptions, AttentionShape, Backend, PositionBias } from '../../backend/backend.ts';
import { check } from '../../errors.ts';
import { floatFormat, isFloatFormatName, roundTo, type FloatFormatName } from '../../numerics/float-formats.ts';
import {
  expandColumns,
  padMultiple,
  slotsPerColumn,
  type ColumnPrecision,
  type ColumnSide,
  concatBf16Refusal,
} from '../../numerics/split-columns.ts';
import { dtypeOf, type DType, type FloatArray } from '../../tensor.ts';
import type { Rng } from '../../util/rng.ts';
import { alibiSlopes } from '../alibi-slopes.ts';
import {
  concatAttentionOnBackend,
  geometryKey,
  UploadCache,
  widenedConcatAttention,
  widenedTail,
  widenRows,
} from '../device-attention.ts';
import { defineEncoding } from '../options.ts';
import { geometryOf } from '../distance-table.ts';
import type {
  AttendContext,
  AttendInputs,
  AttendResult,
  CachedAttention,
  CachePlan,
  EncodingDims,
  EncodingFactory,
  OnnxAttention,
  OnnxAttentionBuilder,
  OperandWidths,
  Param,
  PositionalEncoding,
} from '../encoding.ts';
import {
  augment,
  augmentBackward,
  buildEta,
  checkSpecShape,
  columnGrads,
  columnPlan,
  exactBias,
  guardOverflow,
  padColumns,
  sliceColumns,
  validateSpec,
  type AugmentOptions,
  type Augmented,
  type HypeEta,
  type HypeGrads,
  type HypeSpec,
} from './core.ts';
import { checkHypeTableRange, hypeDistanceTable, hypeTableGrads } from './table.ts';

export type HypePreset = 'paper' | 'recency' | 'learned';

export interface PresetInput {
  preset: HypePreset;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** The longest length the model will be evaluated at (L_extra). */
  lengthExtra: number;
  /** mu_h * L_extra for recency/learned (default 0.5). */
  curvature?: number;
  /** Token grid for 2-D/3-D data (one pair per axis, each with the preset's values); default: a sequence. */
  grid?: readonly number[];
}

/** The HyPE spec a preset describes (one pair per axis). */
export function presetSpec(p: PresetInput): HypeSpec {
  const { heads: H, lengthExtra } = p;
  check(
    Number.isFinite(lengthExtra) && lengthExtra >= 1,
    'argument',
    `HyPE: lengthExtra must be a finite length >= 1 (the longest evaluation length), got ${lengthExtra}`,
  );
  const curvature = p.curvature ?? 0.5;
  check(
    Number.isFinite(curvature) && curvature > 0,
    'argument',
    `HyPE: curvature (mu * lengthExtra) must be a finite positive number, got ${curvature}; 0.25 .. 1 is sensible`,
  );
  check(
    (['paper', 'recency', 'learned'] as const).includes(p.preset),
    'argument',
    `HyPE: unknown preset '${p.preset}'; choose paper, recency or learned`,
  );
  const grid = p.grid ?? [];
  const T = Math.max(grid.length, 1);
  const tau = new Float64Array(H * T);
  const mu = new Float64Array(H * T);
  const slopes = alibiSlopes(H);
  for (let h = 0; h < H; h++) {
    for (let t = 0; t < T; t++) {
      if (p.preset === 'paper') {
        tau[h * T + t] = 1;
        mu[h * T + t] = 1 / lengthExtra;
      } else {
        mu[h * T + t] = curvature / lengthExtra;
        tau[h * T + t] = -slopes[h]! / mu[h * T + t]!;
      }
    }
  }
  const spec: HypeSpec = {
    heads: H,
    kvHeads: p.kvHeads,
    headDim: p.headDim,
    grid: [...grid],
    termAxis: Array.from({ length: T }, (_, t) => t),
    tau,
    mu,
  };
  validateSpec(spec);
  return spec;
}

/**
 * The library-level entry point (DESIGN.md's sketch): a preset's spec with its concat-route helpers bound to it.
 *   const h = hype({ preset: 'recency', heads: 8, kvHeads: 8, headDim: 64, lengthExtra: 4096 });
 *   const { qHat, kHat, vHat, shape, scale } = h.augment(attnShape, q, k, { v, multiple: 8 });
 *   // any attention kernel on (qHat, kHat, vHat) with `scale`; then h.backward(aug, dqHat, dkHat) for gradients.
 *   // For a bf16 or fp16 kernel: h.augment(attnShape, q, k, { v, multiple: 8, precision: 'bf16' }) emits split
 *   // columns (6 per pair, SPEC section 8) whose values are exact in that format.
 */
export function hype(p: PresetInput) {
  const spec = presetSpec(p);
  return {
    spec,
    augment: (shape: AttentionShape, q: FloatArray, k: FloatArray, opts?: AugmentOptions): Augmented =>
      augment(spec, shape, q, k, opts),
    backward: (aug: Augmented, dqHat: FloatArray, dkHat: FloatArray): HypeGrads =>
      augmentBackward(spec, aug, dqHat, dkHat),
    /** The exact bias of head h for a query at flat position nq and a key at nk. */
    bias: (h: number, nq: number, nk: number): number => exactBias(spec, h, nq, nk),
  };
}

export interface HypeOptions {
  preset: HypePreset;
  /** L_extra; default 16 x the training length (the study evaluates up to 16x). */
  lengthExtra?: number;
  curvature: number;
  /** 'concat': augment Q, K and run the backend with no bias; 'kernel': the bias as a distance table (table.ts). */
  route: 'concat' | 'kernel';
  /** Which parameters the learned preset trains ('tau' and 'both' read 'slope' under slope-curvature). */
  train: 'both' | 'tau' | 'mu';
  /**
   * The learned preset's coordinates: 'tau-mu' (default) trains tau_h and mu; 'slope-curvature' trains the slope
   * m_h = -tau_h mu_h (parameter hype.slope, [H, T]) and mu (hype.mu, [Hkv, T]), with tau = -m / mu, so the
   * curvature can move at a fixed slope. There train 'tau' is refused (a fixed curvature with a trained slope is
   * alibi-learned's job) and 'mu' trains the curvature at the initial slopes.
   */
  parametrisation: 'tau-mu' | 'slope-curvature';
  /**
   * Units of the learned parameters. 'relative' (default) stores tau / |tau_init| and mu / |mu_init| per head, so
   * both start at magnitude 1: raw mu is ~c / L_extra (1e-4 at L_extra = 4096) and raw |tau| ~ m L_extra / c (up to
   * thousands), and an optimizer like Adam, whose steps are ~lr in parameter units, would change mu by several
   * times itself per step and tau by nothing. 'raw' stores tau and mu themselves.
   */
  units: 'relative' | 'raw';
  /** Concat route: pad the head dims to a multiple of this (kernels like 4 or 8). */
  multiple: number;
  /**
   * Round the attention operands to this format (fp16/bf16 emulation; default: the arrays' own type): on the concat
   * route Qhat, Khat, Vhat (the bias columns included), on the kernel route Q, K, V, with the bias added in the
   * logits' precision.
   */
  format?: FloatFormatName;
  /**
   * Concat route: the operand precision the eta columns are built for (default: `format` when fp16/bf16, else
   * fp32); bf16/fp16 split each column into hi/lo parts (SPEC section 8). See AugmentOptions in core.ts.
   */
  precision?: ColumnPrecision;
  /** Concat route: 'plain' (2 columns per pair) or 'split' (6); default split for bf16/fp16 precision. */
  columns?: 'plain' | 'split';
  /** Token grid for 2-D/3-D data (concat route). */
  grid?: number[];
  shift: 'centre' | 'none';
}

const DEFAULTS: HypeOptions = {
  preset: 'recency',
  curvature: 0.5,
  route: 'concat',
  train: 'both',
  parametrisation: 'tau-mu',
  units: 'relative',
  multiple: 1,
  shift: 'centre',
};

/** HypeOptions without a default: accepted by the shared option check (options.ts) besides DEFAULTS' keys. */
const OPTIONAL_KEYS: readonly (keyof HypeOptions)[] = ['lengthExtra', 'format', 'precision', 'columns', 'grid'];

function addInto(dst: FloatArray, src: ArrayLike<number>): void {
  for (let i = 0; i < dst.length; i++) dst[i] = dst[i]! + src[i]!;
}

function makeParam(name: string, shape: number[], values: Float64Array): Param {
  return { name, shape, data: Float64Array.from(values), grad: new Float64Array(values.length), decay: false };
}

/** Why a HyPE configuration cannot run on a device backend's handles, and the fix. */
const DEVICE_REFUSAL =
  "HyPE on a device backend covers the fixed presets (paper, recency) on a sequence with fp32 columns; train the 'learned' preset, a grid or fp16/bf16 emulation on a host backend (native, reference)";

export class HypeEncoding implements PositionalEncoding {
  readonly name = 'hype';
  readonly sites = ['score-bias'] as const;
  readonly params: Param[] = [];
  readonly maxLength: number;
  /** Fixed presets on a sequence with fp32 columns run on a device's handles (attendOnDevice). */
  readonly portable: boolean;
  private readonly uploads = new UploadCache();
  /** tau_h (parametrisation tau-mu) or the slope m_h = -tau_h mu_h (slope-curvature), [H, T]. */
  private readonly tauParam?: Param;
  private readonly muParam?: Param;
  /**
   * Parameter units: tau (or m) = tauUnit[j] * tauParam.data[j], mu (per KV group) = muUnit[g] * muParam.data[g].
   */
  private readonly tauUnit: Float64Array;
  private readonly muUnit: Float64Array;
  private readonly slopeCurvature: boolean;
  /** The initial slopes m_h = -tau_h mu_h, [H, T] (slope-curvature with a fixed slope keeps them). */
  private readonly baseSlope: Float64Array;

  constructor(
    private readonly base: HypeSpec,
    private readonly opts: HypeOptions,
  ) {
    const T = base.termAxis.length;
    const group = base.heads / base.kvHeads;
    this.maxLength = base.grid.length >= 2 ? base.grid.reduce((a, b) => a * b, 1) : Infinity;
    const muGroups = new Float64Array(base.kvHeads * T);
    for (let g = 0; g < base.kvHeads; g++)
      for (let t = 0; t < T; t++) muGroups[g * T + t] = base.mu[g * group * T + t]!;
    this.slopeCurvature = opts.parametrisation === 'slope-curvature';
    this.portable =
      opts.preset !== 'learned' &&
      base.grid.length <= 1 &&
      opts.format === undefined &&
      opts.precision === undefined &&
      opts.columns === undefined;
    this.baseSlope = base.tau.map((tau, j) => -tau * base.mu[j]!);
    const first = this.slopeCurvature ? this.baseSlope : base.tau;
    const relative = opts.units === 'relative';
    this.tauUnit = relative ? first.map(Math.abs) : new Float64Array(first.length).fill(1);
    this.muUnit = relative ? muGroups.map(Math.abs) : new Float64Array(muGroups.length).fill(1);
    if (opts.preset === 'learned') {
      const scaled = (v: Float64Array, unit: Float64Array) => v.map((x, j) => x / unit[j]!);
      const firstName = this.slopeCurvature ? 'hype.slope' : 'hype.tau';
      if (opts.train !== 'mu') this.tauParam = makeParam(firstName, [base.heads, T], scaled(first, this.tauUnit));
      if (opts.train !== 'tau') this.muParam = makeParam('hype.mu', [base.kvHeads, T], scaled(muGroups, this.muUnit));
      for (const p of [this.tauParam, this.muParam]) if (p) this.params.push(p);
      this.report = () => {
        const spec = this.spec();
        return {
          tau: Array.from(spec.tau),
          mu: Array.from(spec.mu),
          slope: Array.from(spec.tau, (tau, j) => -tau * spec.mu[j]!),
          curvature: Array.from(spec.mu, (mu, j) => (opts.curvature * mu) / base.mu[j]!),
        };
      };
    }
  }

  /**
   * The spec with the current (possibly trained) parameter values; mu expanded from KV groups to query heads. An
   * encoding built for a 2-D/3-D grid runs on the grid of the call when it gives one (ctx.grid: an image model
   * evaluated at another resolution), which must have as many axes.
   */
  spec(callGrid?: readonly number[]): HypeSpec {
    const { heads: H, kvHeads: Hkv } = this.base;
    const T = this.base.termAxis.length;
    const tauParam = this.tauParam;
    const muParam = this.muParam;
    let tau = tauParam ? tauParam.data.map((x, j) => x * this.tauUnit[j]!) : this.base.tau;
    let mu = this.base.mu;
    if (muParam) {
      mu = new Float64Array(H * T);
      const group = H / Hkv;
      for (let h = 0; h < H; h++) {
        for (let t = 0; t < T; t++) {
          const j = Math.floor(h / group) * T + t;
          mu[h * T + t] = muParam.data[j]! * this.muUnit[j]!;
        }
      }
    }
    if (this.slopeCurvature) {
      const slope = tauParam ? tau : this.baseSlope;
      tau = slope.map((m, j) => -m / mu[j]!);
    }
    let grid = this.base.grid;
    if (callGrid && grid.length >= 2) {
      check(
        callGrid.length === grid.length,
        'shape',
        `HyPE was built for a ${grid.length}-axis grid [${grid.join(', ')}] but the call's grid is ` +
          `[${callGrid.join(', ')}]; give it a grid with ${grid.length} axes`,
      );
      grid = [...callGrid];
    }
    const spec = { ...this.base, grid, tau: Float64Array.from(tau), mu };
    validateSpec(spec);
    return spec;
  }

  /**
   * Adds d loss / d tau (per head) and d loss / d mu (per KV group), converted to the parameters' coordinates and
   * units. Slope-curvature (tau = -m / mu): d/dm = -dtau / mu, and d/dmu at fixed m gains dtau * m / mu^2 =
   * -dtau * tau / mu, summed over the query heads of each KV group. Public for encodings built on HyPE's
   * parameters (hype-gated.ts).
   */
  accumulate(spec: HypeSpec, dtauIn: ArrayLike<number>, dmuIn: ArrayLike<number>): void {
    let dtau = dtauIn;
    let dmuGroups = dmuIn;
    if (this.slopeCurvature) {
      const { heads: H, kvHeads: Hkv } = spec;
      const T = spec.termAxis.length;
      const group = H / Hkv;
      dtau = Array.from(dtauIn, (g, j) => -g / spec.mu[j]!);
      const dmu = Float64Array.from(dmuIn);
      for (let h = 0; h < H; h++)
        for (let t = 0; t < T; t++) {
          const j = h * T + t;
          dmu[Math.floor(h / group) * T + t] -= (dtauIn[j]! * spec.tau[j]!) / spec.mu[j]!;
        }
      dmuGroups = dmu;
    }
    if (this.tauParam)
      addInto(
        this.tauParam.grad,
        Array.from(dtau, (g, j) => g * this.tauUnit[j]!),
      );
    if (this.muParam)
      addInto(
        this.muParam.grad,
        Array.from(dmuGroups, (g, j) => g * this.muUnit[j]!),
      );
  }

  /**
   * Learned preset only: per query head and term the trained amplitude tau, curvature mu and slope m = -tau mu
   * (the ALiBi-equivalent slope at distance 0), and the curvature in units of the window, mu * L_extra.
   */
  readonly report?: () => Record<string, number[]>;

  /**
   * The concat route takes q and k widened by its columns (and v padded to `multiple`), written into the caller's
   * buffers (attendWidened); fp16/bf16 emulation (`format`) rounds whole operands on the host and the kernel route
   * adds no columns, so both take plain rows.
   */
  operandWidths(dtype: DType): OperandWidths | null {
    if (this.opts.route !== 'concat' || this.opts.format !== undefined) return null;
    const plan = columnPlan(this.opts, dtype === 'float64' ? 'fp64' : 'fp32');
    const w = 2 * this.base.termAxis.length * slotsPerColumn(plan.split !== null);
    const multiple = padMultiple(this.opts.multiple, 'HyPE');
    const d = this.base.headDim;
    return { qk: Math.ceil((d + w) / multiple) * multiple, v: Math.ceil(d / multiple) * multiple };
  }

  attend(ctx: AttendContext, inputs: AttendInputs): AttendResult {
    if (inputs.widths) return this.attendWidened(ctx, inputs);
    if (ctx.backend.residence === 'device') return this.attendOnDevice(ctx, inputs);
    const spec = this.spec(ctx.grid);
    return this.opts.route === 'kernel' ? this.attendKernel(ctx, inputs, spec) : this.attendConcat(ctx, inputs, spec);
  }

  /**
   * A fixed preset on a device backend's handles: the kernel route's fp64 distance table, or the concat route's
   * eta columns of one batch entry, each built (with the host route's guards) and uploaded once per geometry.
   */
  private attendOnDevice<T, I>(ctx: AttendContext<T, I>, inputs: AttendInputs<T>): AttendResult<T> {
    check(this.portable, 'argument', DEVICE_REFUSAL);
    const be = ctx.backend;
    const dtype = be.dtypeOf(inputs.q);
    const key = geometryKey(ctx);
    const spec = this.spec(); // fixed values: the same at every call, so cached uploads stay valid
    const T = spec.termAxis.length;
    if (this.opts.route === 'kernel') {
      const [table] = this.uploads.get(be, key, dtype, () => {
        const geometry = geometryOf(ctx);
        const t = hypeDistanceTable(spec.tau, spec.mu, T, geometry);
        checkHypeTableRange(t, spec.tau, spec.mu, T, geometry, dtype);
        return [t];
      });
      const opts: AttentionOptions<T> = {
        causal: ctx.causal,
        scale: 1 / Math.sqrt(spec.headDim),
        bias: { kind: 'distance', table: table! },
        queryOffset: ctx.queryOffset,
        biasGrad: false,
      };
      const fwd = be.attentionForward(ctx.shape, inputs.q, inputs.k, inputs.v, opts);
      return {
        out: fwd.out,
        backward: (dOut) => {
          const { dq, dk, dv } = be.attentionBackward(
            ctx.shape,
            inputs.q,
            inputs.k,
            inputs.v,
            fwd.out,
            fwd.lse,
            dOut,
            opts,
          );
          return { dq, dk, dv };
        },
        dispose() {
          be.release(fwd.out);
          be.release(fwd.lse);
        },
      };
    }
    const { heads: H, kvHeads: Hkv, lq, lk } = ctx.shape;
    const plan = columnPlan(this.opts, dtype === 'float64' ? 'fp64' : 'fp32');
    const [colsQ, colsK] = this.uploads.get(be, key, dtype, () => {
      const eta = buildEta(spec, { lq, lk, queryOffset: ctx.queryOffset, shift: this.opts.shift }, plan.guard);
      return [
        expandColumns(eta.etaQ, H * lq, 2 * T, 'query', plan.split),
        expandColumns(eta.etaK, Hkv * lk, 2 * T, 'key', plan.split),
      ];
    });
    const w = 2 * T * slotsPerColumn(plan.split !== null);
    return concatAttentionOnBackend(ctx, inputs, colsQ!, colsK!, w, padMultiple(this.opts.multiple, 'HyPE'));
  }

  /**
   * The concat route over the caller's widened operands (operandWidths): Qhat = [Q, eta^Q, 0...] and Khat = [K,
   * eta^K, 0...] are the caller's buffers, whose columns past the head dim this writes: fixed presets once per
   * buffer and geometry (the tails built in fp64 and rounded once, as augment does, then kept per geometry), the
   * learned preset at every call (its columns move with tau and mu; their gradients come from dQhat and dKhat).
   * The same operands as attendConcat's, so the same numbers, without copying q, k or the gradients.
   */
  private attendWidened<T, I>(ctx: AttendContext<T, I>, inputs: AttendInputs<T>): AttendResult<T> {
    const be = ctx.backend;
    const dtype = be.dtypeOf(inputs.q);
    const widths = this.operandWidths(dtype);
    check(
      widths !== null,
      'argument',
      "HyPE's kernel route and fp16/bf16 emulation (format) take plain q, k, v rows; pass them without widths",
    );
    check(this.portable || be.residence === 'host', 'argument', DEVICE_REFUSAL);
    const spec = this.spec(ctx.grid);
    checkSpecShape(spec, ctx.shape);
    const { heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
    const T = spec.termAxis.length;
    const plan = columnPlan(this.opts, dtype === 'float64' ? 'fp64' : 'fp32');
    const w = 2 * T * slotsPerColumn(plan.split !== null);
    const multiple = padMultiple(this.opts.multiple, 'HyPE');
    const expected = { qk: widths.qk, v: Math.ceil(dv / multiple) * multiple };
    const tail = (cols: Float64Array, rows: number) => widenedTail(cols, rows, w, expected.qk - d);
    const tails = (eta: HypeEta) => [
      tail(expandColumns(eta.etaQ, H * lq, 2 * T, 'query', plan.split), H * lq),
      tail(expandColumns(eta.etaK, Hkv * lk, 2 * T, 'key', plan.split), Hkv * lk),
      ...(expected.v > dv ? [new Float64Array(Hkv * lk * (expected.v - dv))] : []),
    ];
    const build = () => buildEta(spec, { lq, lk, queryOffset: ctx.queryOffset, shift: this.opts.shift }, plan.guard);
    if (this.params.length === 0) {
      const key = `widened:${geometryKey(ctx)}`;
      const columns = { owner: this, key, tails: () => this.uploads.get(be, key, dtype, () => tails(build())) };
      return widenedConcatAttention(ctx, inputs, expected, columns);
    }
    // The learned preset: this call's columns, written afresh, and the chain rule from their gradients (host).
    const eta = build();
    const upload = (data: Float64Array) => {
      const t = be.allocate(dtype, data.length, 'widened attention columns');
      be.upload(data, t);
      return t;
    };
    const columns = { owner: this, key: null, tails: () => tails(eta).map(upload) };
    const shape = { ...ctx.shape, headDim: expected.qk, valueDim: expected.v };
    return widenedConcatAttention(ctx, inputs, expected, columns, (dqHat, dkHat) => {
      const g = columnGrads(spec, eta, plan.split !== null, shape, be.hostView(dqHat)!, be.hostView(dkHat)!);
      this.accumulate(spec, g.dtau, g.dmu);
    });
  }

  private attendConcat(ctx: AttendContext, inputs: AttendInputs, spec: HypeSpec): AttendResult {
    const { batch: B, heads: H, lq, valueDim: dv } = ctx.shape;
    const aug = augment(spec, ctx.shape, inputs.q, inputs.k, {
      v: inputs.v,
      queryOffset: ctx.queryOffset,
      multiple: this.opts.multiple,
      format: this.opts.format,
      precision: this.opts.precision,
      columns: this.opts.columns,
      shift: this.opts.shift,
    });
    const opts: AttentionOptions = {
      causal: ctx.causal,
      scale: aug.scale,
      bias: { kind: 'none' },
      queryOffset: ctx.queryOffset,
    };
    const vHat = aug.vHat!;
    const dvp = aug.shape.valueDim;
    const fwd = ctx.backend.attentionForward(aug.shape, aug.qHat, aug.kHat, vHat, opts);
    const rows = B * H * lq;
    return {
      out: dvp === dv ? fwd.out : sliceColumns(fwd.out, rows, dvp, dv),
      backward: (dOut) => {
        const dOutHat = dvp === dv ? dOut : padColumns(dOut, rows, dv, dvp);
        const g = ctx.backend.attentionBackward(aug.shape, aug.qHat, aug.kHat, vHat, fwd.out, fwd.lse, dOutHat, opts);
        const hg = augmentBackward(spec, aug, g.dq, g.dk);
        this.accumulate(spec, hg.dtau, hg.dmu);
        const dvRows = ctx.shape.batch * ctx.shape.kvHeads * ctx.shape.lk;
        return { dq: hg.dq, dk: hg.dk, dv: dvp === dv ? g.dv : sliceColumns(g.dv, dvRows, dvp, dv) };
      },
    };
  }

  private attendKernel(ctx: AttendContext, inputs: AttendInputs, spec: HypeSpec): AttendResult {
    check(
      spec.grid.length <= 1,
      'argument',
      'HyPE on a 2-D/3-D grid needs per-axis distances, which a kernel distance table (a function of the flat ' +
        "distance) cannot express; use route 'concat'",
    );
    const { heads: H, kvHeads: Hkv } = ctx.shape;
    const T = spec.termAxis.length;
    // The bias as a distance table built in fp64 (table.ts); whether it fits the logits' dtype is checked by
    // the backend (validate.ts).
    const geometry = geometryOf(ctx);
    const table = hypeDistanceTable(spec.tau, spec.mu, T, geometry);
    checkHypeTableRange(table, spec.tau, spec.mu, T, geometry, dtypeOf(inputs.q));
    const bias: PositionBias = { kind: 'distance', table };
    const opts: AttentionOptions = {
      causal: ctx.causal,
      scale: 1 / Math.sqrt(spec.headDim),
      bias,
      queryOffset: ctx.queryOffset,
    };
    // fp16/bf16: Q, K, V rounded to the format (emulation, as on the concat route), while the bias is computed
    // and added in the logits' own precision, as a fused kernel with an in-kernel bias does. The gradients are
    // those of the rounded operands, passed straight through.
    const format = this.opts.format;
    const round = (x: FloatArray): FloatArray => {
      if (format !== 'fp16' && format !== 'bf16') return x;
      const f = floatFormat(format);
      return x.map((value) => roundTo(f, value));
    };
    const [q, k, v] = [round(inputs.q), round(inputs.k), round(inputs.v)];
    const fwd = ctx.backend.attentionForward(ctx.shape, q, k, v, opts);
    return {
      out: fwd.out,
      backward: (dOut) => {
        const g = ctx.backend.attentionBackward(ctx.shape, q, k, v, fwd.out, fwd.lse, dOut, opts);
        check(g.dBias.kind === 'distance', 'native', `backend ${ctx.backend.name} returned no HyPE bias gradients`);
        const hg = hypeTableGrads(g.dBias.table, spec.tau, spec.mu, T, geometry);
        const dmu = new Float64Array(Hkv * T);
        const group = H / Hkv;
        for (let h = 0; h < H; h++)
          for (let t = 0; t < T; t++) dmu[Math.floor(h / group) * T + t] += hg.dmu[h * T + t]!;
        this.accumulate(spec, hg.dtau, dmu);
        return { dq: g.dq, dk: g.dk, dv: g.dv };
      },
    };
  }

  /**
   * KV cache, SPEC section 6, FIXED-SHIFT policy: the cache keeps Khat rows [K, eta^K] with eta^K at each key's
   * absolute position under one shift c chosen for the whole generation (the centre of 0 .. maxPositions - 1 with
   * shift 'centre', 0 with 'none'), so cached columns are never rebased; the overflow guard checks the whole
   * planned range once, here. Each step only builds eta^Q for its new queries. The kernel route keeps raw keys (its
   * bias comes from queryOffset), and so do 2-D/3-D grids (a grid coordinate is not linear in the flat position):
   * both return null and use the cache's generic path.
   */
  cachedAttention<T, I>(plan: CachePlan<T, I>): CachedAttention | null {
    if (this.opts.route === 'kernel' || this.base.grid.length >= 2) return null;
    const spec = this.spec();
    const T = spec.termAxis.length;
    const d = spec.headDim;
    const cols = columnPlan(this.opts, plan.dtype === 'float64' ? 'fp64' : 'fp32');
    const format = floatFormat(this.opts.format ?? (plan.dtype === 'float64' ? 'fp64' : 'fp32'));
    const c = this.opts.shift === 'centre' ? (plan.maxPositions - 1) / 2 : 0;
    const positions = { lq: plan.maxPositions, lk: plan.maxPositions, queryOffset: 0 };
    guardOverflow(spec, positions, cols.guard, Float64Array.of(c));
    const multiple = this.opts.multiple;
    const w = 2 * T * slotsPerColumn(cols.split !== null);
    const width = Math.ceil((d + w) / multiple) * multiple;
    const be = plan.backend;
    if (be?.residence === 'device') {
      const device = deviceCachedAttention(be, spec, { d, width, w, shift: c, split: cols.split, dtype: plan.dtype });
      return device as unknown as CachedAttention;
    }
    const emulate = format.name === 'fp16' || format.name === 'bf16';
    const rounded = (x: FloatArray): FloatArray => {
      if (emulate) for (let j = 0; j < x.length; j++) x[j] = roundTo(format, x[j]!);
      return x;
    };
    /** [x, eta, 0...] per row; eta holds rowsPerBatch rows of 2T columns, the same for every batch entry. */
    const withEta = (x: FloatArray, batch: number, rowsPerBatch: number, eta: Float64Array, side: ColumnSide) => {
      const expanded = expandColumns(eta, rowsPerBatch, 2 * T, side, cols.split);
      const out = padColumns(x, batch * rowsPerBatch, d, width);
      for (let b = 0; b < batch; b++)
        for (let r = 0; r < rowsPerBatch; r++)
          out.set(expanded.subarray(r * w, (r + 1) * w), (b * rowsPerBatch + r) * width + d);
      return rounded(out);
    };
    return {
      keyWidth: width,
      cacheKeys(k, batch, n, first) {
        // buildEta puts key row j at position j; shifting by c - first puts it at first + j, minus c.
        const { etaK } = buildEta(spec, { lq: 0, lk: n, queryOffset: 0, shift: [c - first] });
        return withEta(k, batch, spec.kvHeads * n, etaK, 'key');
      },
      attend(ctx, q, cachedK, v) {
        const { batch: B, heads: H, lq } = ctx.shape;
        const { etaQ } = buildEta(spec, { lq, lk: 0, queryOffset: ctx.queryOffset, shift: [c] });
        const qHat = withEta(q, B, H * lq, etaQ, 'query');
        const vUse = emulate ? rounded(v.slice()) : v;
        const shape = { ...ctx.shape, headDim: width };
        const opts = { causal: ctx.causal, scale: 1 / Math.sqrt(d), queryOffset: ctx.queryOffset };
        return ctx.backend.attentionForward(shape, qHat, cachedK, vUse, { ...opts, bias: { kind: 'none' } }).out;
      },
    };
  }

  /**
   * ONNX: Q and K augmented in the graph with the eta columns of the current (possibly trained) tau and mu, the
   * kernel's scale 1/sqrt(d) of the original head dim. The kernel route exports through this concat form (the same
   * function). queryScale (gated HyPE, float32 [B, L, H]) scales each query's eta^Q columns.
   */
  toOnnx(b: OnnxAttentionBuilder, queryScale?: string): OnnxAttention {
    check(
      this.base.grid.length <= 1,
      'argument',
      'ONNX export of HyPE covers sequences; a 2-D/3-D grid needs per-axis columns the exporter does not build',
    );
    const spec = this.spec();
    return b.hyperbolicAttention({
      tau: spec.tau,
      mu: spec.mu,
      pairs: spec.termAxis.length,
      shift: this.opts.shift,
      multiple: this.opts.multiple,
      ...(queryScale ? { queryScale } : {}),
    });
  }

  /** fp64 logits straight from the definition: scale q.k + sum_t tau sinh(mu (x - x')), masked = -Infinity. */
  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    const spec = this.spec(ctx.grid);
    const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d } = ctx.shape;
    const { q, k } = inputs;
    check(
      q.length === B * H * lq * d && k.length === B * Hkv * lk * d,
      'shape',
      'HyPE denseLogits: q or k does not match ctx.shape',
    );
    const out = new Float64Array(B * H * lq * lk);
    const group = H / Hkv;
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const kvh = Math.floor(h / group);
        for (let i = 0; i < lq; i++) {
          const nq = i + ctx.queryOffset;
          for (let l = 0; l < lk; l++) {
            const o = ((b * H + h) * lq + i) * lk + l;
            if (ctx.causal && nq < l) {
              out[o] = -Infinity;
              continue;
            }
            let dot = 0;
            const qo = ((b * H + h) * lq + i) * d;
            const ko = ((b * Hkv + kvh) * lk + l) * d;
            for (let c = 0; c < d; c++) dot += q[qo + c]! * k[ko + c]!;
            out[o] = scale * dot + exactBias(spec, h, nq, l);
          }
        }
      }
    }
    return out;
  }
}

export const hypeEncoding: EncodingFactory<HypeOptions> = defineEncoding<HypeOptions>({
  name: 'hype',
  description:
    'HyPE: bias tau*sinh(mu*D) via two concatenated Q/K columns (or in-kernel); presets paper (rewards distance, ' +
    'literal), recency (ALiBi-like penalty), learned',
  sites: ['score-bias'],
  defaults: DEFAULTS,
  optionalKeys: OPTIONAL_KEYS,
  // The kernel route adds its fp32 table inside the kernel: fine with bf16 operands; the concat route needs split
  // columns for bf16 (precision, or a bf16 format, which implies it).
  bf16Refusal: (o: Partial<HypeOptions>) =>
    (o.route ?? DEFAULTS.route) === 'kernel'
      ? null
      : concatBf16Refusal('hype', o, ' or --pe hype:route=kernel (the bias added in fp32 inside the kernel)'),
  create: (dims: EncodingDims, options: Partial<HypeOptions>, _rng: Rng): PositionalEncoding =>
    createHype(dims, options),
});

/** A HyPE encoding from (checked) options: the factory's create, typed for encodings built on it (hype-gated.ts). */
export function createHype(dims: EncodingDims, options: Partial<HypeOptions>): HypeEncoding {
  const opts: HypeOptions = { ...DEFAULTS, ...options };
  check(
    opts.route === 'concat' || opts.route === 'kernel',
    'argument',
    `HyPE: unknown route '${opts.route}'; choose concat or kernel`,
  );
  check(
    ['both', 'tau', 'mu'].includes(opts.train),
    'argument',
    `HyPE: train must be both, tau or mu, got '${opts.train}'`,
  );
  check(
    opts.parametrisation === 'tau-mu' || opts.parametrisation === 'slope-curvature',
    'argument',
    `HyPE: parametrisation must be tau-mu or slope-curvature, got '${opts.parametrisation}'`,
  );
  check(
    opts.parametrisation === 'tau-mu' || opts.train !== 'tau',
    'argument',
    "HyPE: parametrisation 'slope-curvature' with train 'tau' would train the slope at a fixed curvature; use " +
      "alibi-learned for a trained slope alone, or train 'both' or 'mu'",
  );
  check(
    opts.units === 'relative' || opts.units === 'raw',
    'argument',
    `HyPE: units must be relative or raw, got '${opts.units}'`,
  );
  check(
    opts.shift === 'centre' || opts.shift === 'none',
    'argument',
    `HyPE: shift must be centre or none, got '${opts.shift}'`,
  );
  check(
    opts.format === undefined || isFloatFormatName(opts.format),
    'argument',
    `HyPE: format must be fp64, fp32, fp16 or bf16, got '${opts.format}'`,
  );
  columnPlan(opts, 'fp32'); // refuses an unknown precision or columns, or one that contradicts format
  const spec = presetSpec({
    preset: opts.preset,
    heads: dims.heads,
    kvHeads: dims.kvHeads,
    headDim: dims.headDim,
    lengthExtra: opts.lengthExtra ?? 16 * dims.trainLength,
    curvature: opts.curvature,
    grid: opts.grid,
  });
  return new HypeEncoding(spec, opts);
}

/**
 * The concat route's KV cache on a device backend (the fixed-shift policy of HypeEncoding.cachedAttention): the
 * cache keeps Khat = [K, eta^K, 0...] rows built on the device from k and the new rows' eta^K columns (computed in
 * fp64 on the host, uploaded rounded once: Hkv * n * w values per step); a step's queries get their eta^Q columns
 * the same way. Nothing is read back.
 */
function deviceCachedAttention<T, I>(
  be: Backend<T, I>,
  spec: HypeSpec,
  g: { d: number; width: number; w: number; shift: number; split: Parameters<typeof expandColumns>[4]; dtype: DType },
): CachedAttention<T, I> {
  const T = spec.termAxis.length;
  const augment = (x: T, batch: number, rowsPerBatch: number, eta: Float64Array, side: ColumnSide): T => {
    const cols = be.allocate(g.dtype, rowsPerBatch * g.w, 'HyPE position columns');
    be.upload(expandColumns(eta, rowsPerBatch, 2 * T, side, g.split), cols);
    const out = widenRows(be, x, batch * rowsPerBatch, g.d, g.width, {
      t: cols,
      perBatch: rowsPerBatch,
      w: g.w,
      batch,
    });
    be.release(cols);
    return out;
  };
  return {
    keyWidth: g.width,
    cacheKeys(k, batch, n, first) {
      // buildEta puts key row j at position j; shifting by c - first puts it at first + j, minus c.
      const { etaK } = buildEta(spec, { lq: 0, lk: n, queryOffset: 0, shift: [g.shift - first] });
      return augment(k, batch, spec.kvHeads * n, etaK, 'key');
    },
    attend(ctx, q, cachedK, v) {
      const { batch: B, heads: H, lq } = ctx.shape;
      const { etaQ } = buildEta(spec, { lq, lk: 0, queryOffset: ctx.queryOffset, shift: [g.shift] });
      const qHat = augment(q, B, H * lq, etaQ, 'query');
      const shape = { ...ctx.shape, headDim: g.width };
      const opts = { causal: ctx.causal, scale: 1 / Math.sqrt(g.d), queryOffset: ctx.queryOffset };
      const fwd = be.attentionForward(shape, qHat, cachedK, v, { ...opts, bias: { kind: 'none' } });
      be.release(qHat);
      be.release(fwd.lse);
      return fwd.out;
    },
  };
}
