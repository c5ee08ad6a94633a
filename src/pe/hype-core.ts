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
 * Layouts follow backend.ts: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]. Query row i sits at flat
 * position i + queryOffset, key row l at l; on a grid, flat position n has row-major coordinates (n = x0 * G1 + x1
 * in 2-D). eta^K depends on mu only, so query heads that share a KV head must share mu (GQA); tau may differ.
 */
import type { AttentionShape } from '../backend/backend.ts';
import { HypeError, check } from '../errors.ts';
import { FP32, FP64, floatFormat, roundTo, type FloatFormat, type FloatFormatName } from '../numerics/float-formats.ts';
import { concatMuLimit, type ConcatReach, type OverflowConstraint } from '../numerics/overflow.ts';
import type { FloatArray } from '../tensor.ts';

export interface HypeSpec {
  heads: number;
  kvHeads: number;
  /** The original head dim d (before augmentation): sets the sqrt(d) in eta^Q and the scale 1/sqrt(d). */
  headDim: number;
  /** Token grid shape, row-major: [] or [L] for a sequence (no bound), [G0, G1] or [G0, G1, G2] for grids. */
  grid: readonly number[];
  /** Axis of each term (length T); all 0 for a sequence. */
  termAxis: readonly number[];
  /** [H, T] amplitudes. */
  tau: Float64Array;
  /** [H, T] curvatures; equal across the query heads of one KV group. */
  mu: Float64Array;
}

/**
 * Position shift per axis. 'centre' (default) puts c at the midpoint of the coordinates in use, 'none' is the paper's
 * c = 0, numbers fix c per axis (e.g. for a KV cache whose columns must not move between calls).
 *
 * Why centre by default: the bias depends only on x - x', so c changes nothing in exact arithmetic, and the
 * recovered bias' rounding error (~ u cosh(mu D)) does not depend on c either. Centring halves max |mu p|, which
 * doubles the fp16 overflow limit (x = |mu| (L-1) from 9.7 to 19.4 at d = 64, fp32 accumulation); for fp32 and
 * bf16 the accumulator limit binds instead and centring is neutral. It never hurts, so it is always on unless the
 * caller fixes c.
 */
export type HypeShift = 'centre' | 'none' | readonly number[];

export interface HypePositions {
  lq: number;
  lk: number;
  /** Flat position of query row 0; default lk - lq (backend.ts). */
  queryOffset?: number;
  shift?: HypeShift;
}

function axisCount(spec: HypeSpec): number {
  return Math.max(spec.grid.length, 1);
}

/** Refuses bad sizes, NaN/Inf parameters and mu that differs within a KV group; names the fix each time. */
export function validateSpec(spec: HypeSpec): void {
  const { heads: H, kvHeads: Hkv, headDim: d } = spec;
  const T = spec.termAxis.length;
  check(Number.isInteger(H) && H >= 1, 'shape', `HyPE: heads must be a positive integer, got ${H}`);
  check(
    Number.isInteger(Hkv) && Hkv >= 1 && H % Hkv === 0,
    'shape',
    `HyPE: kvHeads (${Hkv}) must be a positive divisor of heads (${H})`,
  );
  check(Number.isInteger(d) && d >= 1, 'shape', `HyPE: headDim must be a positive integer, got ${d}`);
  check(T >= 1, 'argument', 'HyPE needs at least one (mu, tau) pair; pass termAxis = [0] for one pair on a sequence');
  check(spec.grid.length <= 3, 'argument', `HyPE grids have 1 to 3 axes, got [${spec.grid}]`);
  for (const g of spec.grid) {
    check(Number.isInteger(g) && g >= 1, 'shape', `HyPE: grid [${spec.grid}] must hold positive integers`);
  }
  for (const a of spec.termAxis) {
    check(
      Number.isInteger(a) && a >= 0 && a < axisCount(spec),
      'argument',
      `HyPE: term axis ${a} does not exist on a grid with ${axisCount(spec)} axis(es); use 0 .. ${axisCount(spec) - 1}`,
    );
  }
  for (const [name, arr] of [
    ['tau', spec.tau],
    ['mu', spec.mu],
  ] as const) {
    check(
      arr.length === H * T,
      'shape',
      `HyPE: ${name} has ${arr.length} entries but heads * pairs = ${H} * ${T} = ${H * T} are needed ([H, T] layout)`,
    );
    for (let j = 0; j < arr.length; j++) {
      check(
        Number.isFinite(arr[j]!),
        'non-finite',
        () =>
          `HyPE: ${name}[head ${Math.floor(j / T)}, pair ${j % T}] is ${arr[j]}; every tau and mu must be finite ` +
          '(check the preset options or lower the learning rate)',
      );
    }
  }
  const group = H / Hkv;
  for (let h = 0; h < H; h++) {
    const lead = Math.floor(h / group) * group;
    for (let t = 0; t < T; t++) {
      const a = spec.mu[h * T + t]!;
      const b = spec.mu[lead * T + t]!;
      check(
        a === b,
        'argument',
        () =>
          `HyPE with grouped-query attention: query heads ${lead} and ${h} share KV head ${Math.floor(h / group)} ` +
          `but have mu ${b} and ${a} (pair ${t}); eta^K depends on mu, so give every query head of a KV group the ` +
          'same mu (tau may differ)',
      );
    }
  }
}

/** Coordinate of flat position n along `axis` (row-major). */
export function coordinate(grid: readonly number[], n: number, axis: number): number {
  if (grid.length <= 1) return n;
  let stride = 1;
  for (let a = grid.length - 1; a > axis; a--) stride *= grid[a]!;
  return Math.floor(n / stride) % grid[axis]!;
}

function checkPositions(spec: HypeSpec, pos: HypePositions): number {
  const { lq, lk } = pos;
  const offset = pos.queryOffset ?? lk - lq;
  check(
    Number.isInteger(lq) && Number.isInteger(lk) && lq >= 0 && lk >= 0,
    'shape',
    `HyPE: lq (${lq}) and lk (${lk}) must be non-negative integers`,
  );
  check(
    Number.isInteger(offset) && offset >= 0,
    'shape',
    `HyPE: queryOffset must be a non-negative integer, got ${offset}`,
  );
  if (spec.grid.length >= 2) {
    let cells = 1;
    for (const g of spec.grid) cells *= g;
    const last = Math.max(lk, offset + lq);
    check(
      last <= cells,
      'shape',
      `HyPE: positions reach ${last - 1} but grid [${spec.grid}] holds only ${cells} tokens; pass the full grid shape`,
    );
  }
  return offset;
}

interface AxisRange {
  qLo: number;
  qHi: number;
  kLo: number;
  kHi: number;
}

function axisRanges(spec: HypeSpec, lq: number, lk: number, offset: number): AxisRange[] {
  const ranges: AxisRange[] = [];
  for (let a = 0; a < axisCount(spec); a++) {
    const r = { qLo: Infinity, qHi: -Infinity, kLo: Infinity, kHi: -Infinity };
    for (let i = 0; i < lq; i++) {
      const x = coordinate(spec.grid, i + offset, a);
      r.qLo = Math.min(r.qLo, x);
      r.qHi = Math.max(r.qHi, x);
    }
    for (let l = 0; l < lk; l++) {
      const x = coordinate(spec.grid, l, a);
      r.kLo = Math.min(r.kLo, x);
      r.kHi = Math.max(r.kHi, x);
    }
    ranges.push(r);
  }
  return ranges;
}

/** The shift c per axis that `shift` resolves to for these positions. */
export function resolveShift(spec: HypeSpec, pos: HypePositions): Float64Array {
  const offset = checkPositions(spec, pos);
  const shift = pos.shift ?? 'centre';
  const n = axisCount(spec);
  if (shift === 'none') return new Float64Array(n);
  if (shift === 'centre') {
    return Float64Array.from(axisRanges(spec, pos.lq, pos.lk, offset), (r) => {
      const lo = Math.min(r.qLo, r.kLo);
      const hi = Math.max(r.qHi, r.kHi);
      return Number.isFinite(lo) ? (lo + hi) / 2 : 0;
    });
  }
  check(
    shift.length === n && shift.every(Number.isFinite),
    'argument',
    `HyPE: an explicit shift needs one finite number per axis (${n}), got [${shift}]`,
  );
  return Float64Array.from(shift);
}

/**
 * Refuses, before any eta is built, a configuration whose concat-route operands or products overflow `format`
 * (SPEC section 4; limits in numerics/overflow.ts). One error naming head, pair, mu, L, dtype, the limit and fixes.
 */
export function guardOverflow(spec: HypeSpec, pos: HypePositions, format: FloatFormat, shift: Float64Array): void {
  const offset = checkPositions(spec, pos);
  if (pos.lq === 0 || pos.lk === 0) return;
  const ranges = axisRanges(spec, pos.lq, pos.lk, offset);
  const T = spec.termAxis.length;
  const sqrtD = Math.sqrt(spec.headDim);
  for (let h = 0; h < spec.heads; h++) {
    for (let t = 0; t < T; t++) {
      const axis = spec.termAxis[t]!;
      const r = ranges[axis]!;
      const c = shift[axis]!;
      const reach = {
        queryReach: Math.max(Math.abs(r.qLo - c), Math.abs(r.qHi - c)),
        keyReach: Math.max(Math.abs(r.kLo - c), Math.abs(r.kHi - c)),
        span: Math.max(r.qHi - r.kLo, r.kHi - r.qLo),
      };
      const tau = spec.tau[h * T + t]!;
      const mu = spec.mu[h * T + t]!;
      const amplitude = (Math.abs(tau) * sqrtD) / 2;
      const { muMax, binding } = concatMuLimit(format, amplitude, reach);
      if (Math.abs(mu) <= muMax) continue;
      const L = Math.max(r.qHi, r.kHi) - Math.min(r.qLo, r.kLo) + 1;
      throw new HypeError(
        'overflow',
        overflowMessage({ format, h, t, mu, tau, d: spec.headDim, L, muMax, binding, reach, r }),
      );
    }
  }
}

interface OverflowReport {
  format: FloatFormat;
  h: number;
  t: number;
  mu: number;
  tau: number;
  d: number;
  L: number;
  muMax: number;
  binding: OverflowConstraint;
  reach: ConcatReach;
  r: AxisRange;
}

/** The one message of an overflow refusal: what, where, the limit, why, and only the fixes that would work. */
function overflowMessage(o: OverflowReport): string {
  const { format, mu, tau, d, L, muMax, binding, reach, r } = o;
  const amplitude = (Math.abs(tau) * Math.sqrt(d)) / 2;
  const x = (m: number) => (m * (L - 1)).toPrecision(4);
  const why =
    binding === 'accumulator'
      ? `the product (|tau| sqrt(d)/2) e^{|mu| D} must stay <= ${FP32.max.toPrecision(5)} in the fp32 accumulator`
      : binding === 'query-operand'
        ? `eta^Q = (|tau| sqrt(d)/2) e^{|mu| |p|} must stay <= ${format.max.toPrecision(5)}, the ${format.name} max`
        : `eta^K = e^{|mu| |p'|} must stay <= ${format.max.toPrecision(5)}, the ${format.name} max`;
  const limit = muMax > 0 ? `|mu| <= ${muMax.toPrecision(4)}, x <= ${x(muMax)}` : 'for every mu';
  const fixes: string[] = [];
  if (muMax > 0) fixes.push(`use |mu| <= ${muMax.toPrecision(4)} (x <= ${x(muMax)})`);
  else fixes.push(`lower |tau| (|tau| sqrt(d)/2 = ${amplitude.toPrecision(4)} alone exceeds the ${format.name} max)`);
  const mid = (Math.min(r.qLo, r.kLo) + Math.max(r.qHi, r.kHi)) / 2;
  const centredReach = {
    queryReach: Math.max(Math.abs(r.qLo - mid), Math.abs(r.qHi - mid)),
    keyReach: Math.max(Math.abs(r.kLo - mid), Math.abs(r.kHi - mid)),
    span: reach.span,
  };
  const centredMax = concatMuLimit(format, amplitude, centredReach).muMax;
  if (centredMax > muMax && centredMax >= Math.abs(mu)) {
    fixes.push(`centre the positions (shift 'centre', c = (L-1)/2: the limit becomes x <= ${x(centredMax)})`);
  }
  if (format.name !== 'fp32' && format.name !== 'fp64') {
    const fp32Max = concatMuLimit(FP32, amplitude, reach).muMax;
    if (fp32Max >= Math.abs(mu)) fixes.push(`use fp32 operands (limit x <= ${x(fp32Max)})`);
  }
  fixes.push("use the in-kernel tile-local form (route 'kernel', PositionBias kind 'hype')");
  return (
    `HyPE concat route would overflow ${format.name}: head ${o.h}, pair ${o.t}: |mu| = ${Math.abs(mu).toPrecision(4)} ` +
    `over L = ${L} positions (x = |mu| (L-1) = ${x(Math.abs(mu))}) with |tau| = ${Math.abs(tau).toPrecision(4)} and ` +
    `d = ${d} exceeds the ${format.name} limit ${limit} (${binding}: ${why}). ` +
    `Fix: ${fixes.join('; or ')}`
  );
}

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

/** The exact bias a = sum_t tau_t sinh(mu_t (x - x')) of query head h at flat position nq for key position nk. */
export function exactBias(spec: HypeSpec, h: number, nq: number, nk: number): number {
  const T = spec.termAxis.length;
  let a = 0;
  for (let t = 0; t < T; t++) {
    const axis = spec.termAxis[t]!;
    const dx = coordinate(spec.grid, nq, axis) - coordinate(spec.grid, nk, axis);
    a += spec.tau[h * T + t]! * Math.sinh(spec.mu[h * T + t]! * dx);
  }
  return a;
}

export interface AugmentOptions extends Omit<HypePositions, 'lq' | 'lk'> {
  /** Pad the augmented head dim (and V's, when given) with zero columns up to a multiple of this (default 1). */
  multiple?: number;
  /** V [B, Hkv, Lk, Dv], zero-padded to the multiple and returned as vHat. */
  v?: FloatArray;
  /**
   * Operand format: the guard's dtype, and fp16/bf16 round every operand of Qhat, Khat, Vhat to that format (values
   * held in the input's array type: emulation). Default: fp32 for Float32Array inputs, fp64 for Float64Array.
   */
  format?: FloatFormatName;
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
  check(
    H === spec.heads && Hkv === spec.kvHeads && d === spec.headDim,
    'shape',
    `HyPE was built for heads=${spec.heads}, kvHeads=${spec.kvHeads}, headDim=${spec.headDim} but the attention ` +
      `has heads=${H}, kvHeads=${Hkv}, headDim=${d}; build it with the attention's sizes`,
  );
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
  const multiple = opts.multiple ?? 1;
  check(
    Number.isInteger(multiple) && multiple >= 1,
    'argument',
    `HyPE: multiple must be a positive integer, got ${multiple}`,
  );
  if (opts.v) {
    check(
      opts.v.length === B * Hkv * lk * dv,
      'shape',
      `HyPE: v has ${opts.v.length} elements, expected B*Hkv*Lk*Dv = ${B * Hkv * lk * dv}`,
    );
  }
  const format = floatFormat(opts.format ?? defaultFormat(q));
  const T = spec.termAxis.length;
  const eta = buildEta(spec, { lq, lk, queryOffset: opts.queryOffset, shift: opts.shift }, format);
  const dp = roundUp(d + 2 * T, multiple);
  const qHat = padColumns(q, B * H * lq, d, dp);
  const kHat = padColumns(k, B * Hkv * lk, d, dp);
  for (let b = 0; b < B; b++) {
    for (let r = 0; r < H * lq; r++) qHat.set(eta.etaQ.subarray(r * 2 * T, (r + 1) * 2 * T), (b * H * lq + r) * dp + d);
    for (let r = 0; r < Hkv * lk; r++) {
      kHat.set(eta.etaK.subarray(r * 2 * T, (r + 1) * 2 * T), (b * Hkv * lk + r) * dp + d);
    }
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
 * The straight-through rule applies to fp16/bf16 rounding (treated as the identity).
 */
export function augmentBackward(spec: HypeSpec, aug: Augmented, dqHat: FloatArray, dkHat: FloatArray): HypeGrads {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: dp } = aug.shape;
  const d = spec.headDim;
  const T = spec.termAxis.length;
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
  const dtau = new Float64Array(H * T);
  const dmu = new Float64Array(Hkv * T);
  const { etaQ, etaK, pq, pk } = aug.eta;
  const half = Math.sqrt(d) / 2;
  const group = H / Hkv;
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / group);
      for (let i = 0; i < lq; i++) {
        const row = ((b * H + h) * lq + i) * dp + d;
        const e = (h * lq + i) * 2 * T;
        for (let t = 0; t < T; t++) {
          const g0 = dqHat[row + 2 * t]!;
          const g1 = dqHat[row + 2 * t + 1]!;
          const mp = spec.mu[h * T + t]! * pq[t * lq + i]!;
          dtau[h * T + t] += half * (g0 * Math.exp(-mp) + g1 * Math.exp(mp));
          dmu[g * T + t] += pq[t * lq + i]! * (-g0 * etaQ[e + 2 * t]! + g1 * etaQ[e + 2 * t + 1]!);
        }
      }
    }
    for (let g = 0; g < Hkv; g++) {
      for (let l = 0; l < lk; l++) {
        const row = ((b * Hkv + g) * lk + l) * dp + d;
        const e = (g * lk + l) * 2 * T;
        for (let t = 0; t < T; t++) {
          dmu[g * T + t] +=
            pk[t * lk + l]! * (dkHat[row + 2 * t]! * etaK[e + 2 * t]! - dkHat[row + 2 * t + 1]! * etaK[e + 2 * t + 1]!);
        }
      }
    }
  }
  return { dq, dk, dtau, dmu };
}
