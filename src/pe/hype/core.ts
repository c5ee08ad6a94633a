/**
 * HyPE core maths (SPEC sections 1, 4, 5, 6): the eta columns, the concatenation Qhat = [Q, eta^Q], Khat = [K, eta^K]
 * and the gradient map back from dQhat, dKhat to dQ, dK, dtau, dmu. No attention happens here: the augmented
 * tensors go to any kernel that takes an explicit softmax scale.
 *
 * A HyPE configuration is a list of T "terms" (pairs of columns). Term t acts on one axis of the token grid
 * (1-D sequences have one axis; stacking puts several terms on the same axis; 2-D/3-D grids give each axis its own
 * terms) and has, for every query head h, a curvature mu[h*T+t] and an amplitude tau[h*T+t]. With query
 * coordinate x and key coordinate x' along the term's axis, shifted by the axis' centre c (p = x - c, p' = x' - c):
 *
 *   eta^Q = (tau sqrt(d) / 2) [e^{-mu p}, e^{+mu p}],   eta^K = [-e^{+mu p'}, e^{-mu p'}]
 *   Qhat . Khat = Q . K + sqrt(d) * a,   a = sum_t tau_t sinh(mu_t (x - x'))   (= -tau sinh(mu (l - i)) in 1-D)
 *
 * so softmax(Qhat Khat^T / sqrt(d)) equals softmax(Q K^T / sqrt(d) + a): the scale stays 1/sqrt(d) of the ORIGINAL
 * head dim (a fused kernel's default 1/sqrt(d + 2T) would be wrong). The sign: tau > 0, mu > 0 makes a grow with
 * the distance D = x - x' to a past key, i.e. rewards distance (the paper's literal choice); tau < 0 penalises it
 * like ALiBi (SPEC section 2).
 *
 * Half precision (SPEC section 8): with bf16/fp16 operands each eta column is split into hi/lo parts laid out as
 * numerics/split-columns.ts says (6 columns per pair instead of 2), so the bias survives to O(u^2) instead of O(u).
 *
 * Layouts follow backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]. Query row i sits at flat
 * position i + queryOffset, key row l at l; on a grid, flat position n has row-major coordinates (n = x0 * G1 + x1
 * in 2-D). eta^K depends on mu only, so query heads that share a KV head must share mu (GQA); tau may differ.
 */
import type { AttentionShape } from '../../backend/backend.ts';
import { check } from '../../errors.ts';
import {
  FP64,
  floatFormat,
  isFloatFormatName,
  roundTo,
  type FloatFormat,
  type FloatFormatName,
} from '../../numerics/float-formats.ts';
import {
  checkColumnPrecision,
  expandColumns,
  foldColumnGrads,
  padMultiple,
  slotsPerColumn,
  type ColumnPrecision,
  type SplitFormat,
} from '../../numerics/split-columns.ts';
import type { FloatArray } from '../../tensor.ts';
import { guardOverflow } from './guard.ts';
import { checkPositions, coordinate, resolveShift, validateSpec, type HypePositions, type HypeSpec } from './spec.ts';

export { guardOverflow } from './guard.ts';
export {
  coordinate,
  exactBias,
  resolveShift,
  validateSpec,
  type HypePositions,
  type HypeShift,
  type HypeSpec,
} from './spec.ts';

export interface HypeEta {
  /** [H, Lq, 2T]: per query head, the eta^Q columns (term t at 2t, 2t+1). */
  etaQ: Float64Array;
  /** [Hkv, Lk, 2T]: per KV head, the eta^K columns. */
  etaK: Float64Array;
  /** Shifted coordinate p of each query row per term: [T, Lq]. */
  pq: Float64Array;
  /** Shifted coordinate p' of each key row per term: [T, Lk]. */
  pk: Float64Array;
  shift: Float64Array;
}

/** Builds eta^Q and eta^K in fp64 (exact formulas, no rounding to any format yet), after the overflow guard. */
export function buildEta(spec: HypeSpec, pos: HypePositions, format: FloatFormat = FP64): HypeEta {
  validateSpec(spec);
  const offset = checkPositions(spec, pos);
  const shift = resolveShift(spec, pos);
  guardOverflow(spec, pos, format, shift);
  const { heads: H, kvHeads: Hkv } = spec;
  const { lq, lk } = pos;
  const T = spec.termAxis.length;
  const pq = new Float64Array(T * lq);
  const pk = new Float64Array(T * lk);
  for (let t = 0; t < T; t++) {
    const axis = spec.termAxis[t]!;
    for (let i = 0; i < lq; i++) pq[t * lq + i] = coordinate(spec.grid, i + offset, axis) - shift[axis]!;
    for (let l = 0; l < lk; l++) pk[t * lk + l] = coordinate(spec.grid, l, axis) - shift[axis]!;
  }
  const half = Math.sqrt(spec.headDim) / 2;
  const etaQ = new Float64Array(H * lq * 2 * T);
  for (let h = 0; h < H; h++) {
    for (let i = 0; i < lq; i++) {
      for (let t = 0; t < T; t++) {
        const amp = spec.tau[h * T + t]! * half;
        const mp = spec.mu[h * T + t]! * pq[t * lq + i]!;
        const o = (h * lq + i) * 2 * T + 2 * t;
        etaQ[o] = amp * Math.exp(-mp);
        etaQ[o + 1] = amp * Math.exp(mp);
      }
    }
  }
  const group = H / Hkv;
  const etaK = new Float64Array(Hkv * lk * 2 * T);
  for (let g = 0; g < Hkv; g++) {
    for (let l = 0; l < lk; l++) {
      for (let t = 0; t < T; t++) {
        const mp = spec.mu[g * group * T + t]! * pk[t * lk + l]!;
        const o = (g * lk + l) * 2 * T + 2 * t;
        etaK[o] = -Math.exp(mp);
        etaK[o + 1] = Math.exp(-mp);
      }
    }
  }
  return { etaQ, etaK, pq, pk, shift };
}

export interface AugmentOptions extends Omit<HypePositions, 'lq' | 'lk'> {
  /** Pad the augmented head dim (and V's, when given) with zero columns up to a multiple of this (default 1). */
  multiple?: number;
  /** V [B, Hkv, Lk, Dv], zero-padded to the multiple and returned as vHat. */
  v?: FloatArray;
  /**
   * Emulation: fp16/bf16 round every operand of Qhat, Khat, Vhat to that format (values held in the input's array
   * type). Default: fp32 for Float32Array inputs, fp64 for Float64Array.
   */
  format?: FloatFormatName;
  /**
   * The operand precision the eta columns are built for (SPEC section 8): sets the overflow guard's limits and, with
   * columns 'split', the format of the hi/lo parts. Default: `format` when that is fp16/bf16, else fp32. With an
   * fp16/bf16 `format` it must equal it.
   */
  precision?: ColumnPrecision;
  /**
   * 'plain': 2 columns per pair; 'split': 6 (hi/lo parts, numerics/split-columns.ts). Default: split for bf16/fp16
   * precision, plain for fp32 (split at fp32 is allowed: it removes fp32's O(u |tau|) bias error too).
   */
  columns?: 'plain' | 'split';
}

export interface ColumnPlan {
  precision: ColumnPrecision;
  /** The hi/lo format, or null for plain columns. */
  split: SplitFormat | null;
  /** The format the overflow guard checks (the emulated format, else the precision). */
  guard: FloatFormat;
}

/** Resolves format / precision / columns into one plan, refusing unknown or contradictory values. */
export function columnPlan(
  opts: Pick<AugmentOptions, 'format' | 'precision' | 'columns'>,
  arrayFormat: FloatFormatName,
): ColumnPlan {
  const format = opts.format ?? arrayFormat;
  check(
    isFloatFormatName(format),
    'argument',
    `HyPE: unknown format ${JSON.stringify(format)}; choose one of fp64, fp32, fp16, bf16`,
  );
  const half = format === 'fp16' || format === 'bf16';
  const precision = opts.precision ?? (half ? format : 'fp32');
  checkColumnPrecision(precision, 'HyPE');
  check(
    !half || precision === format,
    'argument',
    `HyPE: precision '${precision}' contradicts format '${format}' (the operands are rounded to ${format}); ` +
      `give precision '${format}' or leave it out`,
  );
  const columns = opts.columns ?? (precision === 'fp32' ? 'plain' : 'split');
  check(
    columns === 'plain' || columns === 'split',
    'argument',
    `HyPE: columns must be 'plain' or 'split', got ${JSON.stringify(columns)}`,
  );
  const guard = floatFormat(half ? format : precision === 'fp32' ? format : precision);
  return { precision, split: columns === 'split' ? precision : null, guard };
}

export interface Augmented {
  qHat: FloatArray;
  kHat: FloatArray;
  vHat?: FloatArray;
  /** The attention shape of the augmented tensors (headDim and, with v, valueDim padded). */
  shape: AttentionShape;
  /** 1/sqrt(d) of the original head dim: pass it to the kernel explicitly. */
  scale: number;
  eta: HypeEta;
  format: FloatFormat;
  /** The column layout used (the backward needs it). */
  columns: ColumnPlan;
}

function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** Copies rows of width `from` into rows of width `to` (zero-filled beyond `from`), in the array type of `like`. */
export function padColumns(x: FloatArray, rows: number, from: number, to: number, like: FloatArray = x): FloatArray {
  const out = like instanceof Float64Array ? new Float64Array(rows * to) : new Float32Array(rows * to);
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * from, r * from + Math.min(from, to)), r * to);
  return out;
}

/** The first `to` columns of rows of width `from`. */
export function sliceColumns(x: FloatArray, rows: number, from: number, to: number): FloatArray {
  const out = x instanceof Float64Array ? new Float64Array(rows * to) : new Float32Array(rows * to);
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * from, r * from + to), r * to);
  return out;
}

function defaultFormat(x: FloatArray): FloatFormatName {
  return x instanceof Float64Array ? 'fp64' : 'fp32';
}

/** Refuses an attention whose heads or head dim are not those the spec was built for. */
export function checkSpecShape(spec: HypeSpec, shape: AttentionShape): void {
  const { heads: H, kvHeads: Hkv, headDim: d } = shape;
  check(
    H === spec.heads && Hkv === spec.kvHeads && d === spec.headDim,
    'shape',
    `HyPE was built for heads=${spec.heads}, kvHeads=${spec.kvHeads}, headDim=${spec.headDim} but the attention ` +
      `has heads=${H}, kvHeads=${Hkv}, headDim=${d}; build it with the attention's sizes`,
  );
}

/**
 * Qhat = [Q, eta^Q, 0...], Khat = [K, eta^K, 0...] (and Vhat = [V, 0...]) with head dim padded to `multiple`, plus
 * the scale 1/sqrt(d) to hand to the kernel. `shape` describes q, k (and v); its headDim must be spec.headDim.
 */
export function augment(
  spec: HypeSpec,
  shape: AttentionShape,
  q: FloatArray,
  k: FloatArray,
  opts: AugmentOptions = {},
): Augmented {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  checkSpecShape(spec, shape);
  check(
    q.length === B * H * lq * d,
    'shape',
    `HyPE: q has ${q.length} elements, expected B*H*Lq*D = ${B * H * lq * d}`,
  );
  check(
    k.length === B * Hkv * lk * d,
    'shape',
    `HyPE: k has ${k.length} elements, expected B*Hkv*Lk*D = ${B * Hkv * lk * d}`,
  );
  check(
    q instanceof Float64Array === k instanceof Float64Array,
    'argument',
    'HyPE: q and k must have the same array type (both Float32Array or both Float64Array)',
  );
  const multiple = padMultiple(opts.multiple, 'HyPE');
  if (opts.v) {
    check(
      opts.v.length === B * Hkv * lk * dv,
      'shape',
      `HyPE: v has ${opts.v.length} elements, expected B*Hkv*Lk*Dv = ${B * Hkv * lk * dv}`,
    );
  }
  const plan = columnPlan(opts, defaultFormat(q));
  const format = floatFormat(opts.format ?? defaultFormat(q));
  const T = spec.termAxis.length;
  const eta = buildEta(spec, { lq, lk, queryOffset: opts.queryOffset, shift: opts.shift }, plan.guard);
  const w = 2 * T * slotsPerColumn(plan.split !== null);
  const etaQ = expandColumns(eta.etaQ, H * lq, 2 * T, 'query', plan.split);
  const etaK = expandColumns(eta.etaK, Hkv * lk, 2 * T, 'key', plan.split);
  const dp = roundUp(d + w, multiple);
  const qHat = padColumns(q, B * H * lq, d, dp);
  const kHat = padColumns(k, B * Hkv * lk, d, dp);
  for (let b = 0; b < B; b++) {
    for (let r = 0; r < H * lq; r++) qHat.set(etaQ.subarray(r * w, (r + 1) * w), (b * H * lq + r) * dp + d);
    for (let r = 0; r < Hkv * lk; r++) kHat.set(etaK.subarray(r * w, (r + 1) * w), (b * Hkv * lk + r) * dp + d);
  }
  let vHat: FloatArray | undefined;
  let valueDim = dv;
  if (opts.v) {
    valueDim = roundUp(dv, multiple);
    vHat = padColumns(opts.v, B * Hkv * lk, dv, valueDim, q);
  }
  if (format.name === 'fp16' || format.name === 'bf16') {
    for (const arr of [qHat, kHat, vHat])
      if (arr) for (let j = 0; j < arr.length; j++) arr[j] = roundTo(format, arr[j]!);
  }
  return {
    qHat,
    kHat,
    vHat,
    shape: { ...shape, headDim: dp, valueDim },
    scale: 1 / Math.sqrt(d),
    eta,
    format,
    columns: plan,
  };
}

export interface HypeGrads {
  dq: FloatArray;
  dk: FloatArray;
  /** [H, T]: d loss / d tau per query head and pair. */
  dtau: Float64Array;
  /**
   * [Hkv, T]: d loss / d mu of each KV group's shared mu (query-side terms of all its heads plus the key side).
   * With kvHeads = heads this is one entry per head.
   */
  dmu: Float64Array;
}

/**
 * Maps dLoss/dQhat, dLoss/dKhat back to dQ, dK (the first d columns) and to dtau, dmu (SPEC section 5, written
 * without the 1/tau of the paper-style formula so tau = 0 is fine):
 *   dtau = sum_{b,i} (sqrt(d)/2) (G[i,c0] e^{-mu p} + G[i,c1] e^{mu p})
 *   dmu  = sum_{b,i} p (-G[i,c0] etaQ0 + G[i,c1] etaQ1) + sum_{b,l} p' (Hk[l,c0] etaK0 - Hk[l,c1] etaK1)
 * The straight-through rule applies to fp16/bf16 rounding (treated as the identity); split columns' gradients are
 * folded back onto their source column first (hi slots summed, numerics/split-columns.ts).
 */
export function augmentBackward(spec: HypeSpec, aug: Augmented, dqHat: FloatArray, dkHat: FloatArray): HypeGrads {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: dp } = aug.shape;
  const d = spec.headDim;
  check(
    dqHat.length === aug.qHat.length,
    'shape',
    `HyPE backward: dqHat has ${dqHat.length} elements, expected ${aug.qHat.length}`,
  );
  check(
    dkHat.length === aug.kHat.length,
    'shape',
    `HyPE backward: dkHat has ${dkHat.length} elements, expected ${aug.kHat.length}`,
  );
  const dq = sliceColumns(dqHat, B * H * lq, dp, d);
  const dk = sliceColumns(dkHat, B * Hkv * lk, dp, d);
  return { dq, dk, ...columnGrads(spec, aug.eta, aug.columns.split !== null, aug.shape, dqHat, dkHat) };
}

/**
 * d loss / d tau and d loss / d mu from dQhat [B, H, Lq, dp], dKhat [B, Hkv, Lk, dp] (the eta columns at d ..,
 * `split` when they are hi/lo split: numerics/split-columns.ts folds them back first). `shape` is the widened one.
 */
export function columnGrads(
  spec: HypeSpec,
  eta: HypeEta,
  split: boolean,
  shape: AttentionShape,
  dqHat: ArrayLike<number>,
  dkHat: ArrayLike<number>,
): { dtau: Float64Array; dmu: Float64Array } {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: dp } = shape;
  const d = spec.headDim;
  const T = spec.termAxis.length;
  const gq = foldColumnGrads(dqHat, B * H * lq, 2 * T, 'query', split, dp, d);
  const gk = foldColumnGrads(dkHat, B * Hkv * lk, 2 * T, 'key', split, dp, d);
  return etaGrads(spec, eta, B, gq, gk);
}

/**
 * d loss / d tau [H, T] and d loss / d mu [Hkv, T] from the gradients of the eta columns themselves: gq [B, H, Lq, 2T]
 * for eta^Q (as buildEta made them, sqrt(d) tau / 2 included) and gk [B, Hkv, Lk, 2T] for eta^K (formulas above).
 * Shared by augmentBackward and encodings that scale or reuse the columns (hype-gated.ts).
 */
export function etaGrads(
  spec: HypeSpec,
  eta: HypeEta,
  B: number,
  gq: Float64Array,
  gk: Float64Array,
): { dtau: Float64Array; dmu: Float64Array } {
  const { heads: H, kvHeads: Hkv } = spec;
  const T = spec.termAxis.length;
  const lq = eta.pq.length / T;
  const lk = eta.pk.length / T;
  const d = spec.headDim;
  const dtau = new Float64Array(H * T);
  const dmu = new Float64Array(Hkv * T);
  const { etaQ, etaK, pq, pk } = eta;
  const half = Math.sqrt(d) / 2;
  const group = H / Hkv;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group);
      for (let i = 0; i < lq; i++) {
        const row = ((b * H + h) * lq + i) * 2 * T;
        const e = (h * lq + i) * 2 * T;
        for (let t = 0; t < T; t++) {
          const g0 = gq[row + 2 * t]!;
          const g1 = gq[row + 2 * t + 1]!;
          const mp = spec.mu[h * T + t]! * pq[t * lq + i]!;
          dtau[h * T + t] += half * (g0 * Math.exp(-mp) + g1 * Math.exp(mp));
          dmu[g * T + t] += pq[t * lq + i]! * (-g0 * etaQ[e + 2 * t]! + g1 * etaQ[e + 2 * t + 1]!);
        }
      }
    }
    for (let g = 0; g < Hkv; g++) {
      for (let l = 0; l < lk; l++) {
        const row = ((b * Hkv + g) * lk + l) * 2 * T;
        const e = (g * lk + l) * 2 * T;
        for (let t = 0; t < T; t++) {
          dmu[g * T + t] +=
            pk[t * lk + l]! * (gk[row + 2 * t]! * etaK[e + 2 * t]! - gk[row + 2 * t + 1]! * etaK[e + 2 * t + 1]!);
        }
      }
    }
  }
  return { dtau, dmu };
}
