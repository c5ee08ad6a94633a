/**
 * HyPE's configuration (HypeSpec), its validation, token coordinates on a sequence or grid, the position shift, and
 * the exact fp64 bias. The maths overview is in core.ts.
 */
import { check } from '../../errors.ts';

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

export function axisCount(spec: HypeSpec): number {
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

export function checkPositions(spec: HypeSpec, pos: HypePositions): number {
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

export interface AxisRange {
  qLo: number;
  qHi: number;
  kLo: number;
  kHi: number;
}

export function axisRanges(spec: HypeSpec, lq: number, lk: number, offset: number): AxisRange[] {
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
