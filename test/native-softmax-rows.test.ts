/**
 * prefixSoftmaxRows, the masked row softmax of the explicit-logit attention: the native kernel (native/layers.cc)
 * and the TypeScript reference (layers.ts) against a plain fp64 softmax of the same fp32 logits, at widths that
 * are not a multiple of the vector width, sizes split across the pool, and the edge rows (nothing visible,
 * -Infinity logits, huge logits, NaN); then the refusals of bad arguments.
 *
 * Tolerances, per entry, with p the fp64 softmax and u = 2^-24:
 * - native: 8u p + exp(-87) + FLT_MIN. The kernel's exp (simd.h) is within 3u; its argument x - max is made exact
 *   to second order (TwoSum correction), so it adds nothing at first order; the exps carry their 3u into the
 *   double sum, hence into the normalisation; 1/sum and the final product round once each (2u). exp underflows to
 *   exactly 0 below -87, where the truth is below exp(-87) / sum <= exp(-87) (sum >= 1: the max contributes 1),
 *   and the pool flushes subnormal results (below FLT_MIN) to 0.
 * - reference in fp32: (2u + 2^-40) p + 2^-148. The exp is rounded to fp32 when parked in the row (u), the quotient
 *   once more (u); the double arithmetic of both sides (Math.exp, a sum of up to 2049 terms) adds below
 *   2049 * 2^-53 < 2^-40 relative; fp32 subnormals round absolutely.
 * - reference in fp64: 4 * 2^-53 p, against the same plain formula (an exp rounding and a division).
 * An indexing or masking mistake shows as an O(1) error, far above these bounds.
 */
import { describe, expect, it } from 'vitest';
import { referenceLayerOps as ref, type LayerOps } from '../src/backend/layers.ts';
import { loadNativeAddon, NativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { HypeError } from '../src/errors.ts';
import { Rng } from '../src/util/rng.ts';

const addon = loadNativeAddon();
if (!addon) {
  if (process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
  console.warn(`SKIPPING native prefixSoftmaxRows tests: the addon is not built (${nativeLoadError()})`);
}
const suite = addon ? describe : describe.skip;

const u = 2 ** -24;
const FLT_MIN = 1.1754943508222875e-38;
const EXP_FLOOR = Math.exp(-87);
const VL = addon?.vectorWidth ?? 16;
const rng = new Rng(20261127);

/** The plain fp64 softmax of each row's visible prefix (zeros elsewhere, and for rows with nothing to attend). */
function softmax64(x: ArrayLike<number>, rows: number, cols: number, visible: Int32Array): Float64Array {
  const p = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    const n = visible[r]!;
    let max = -Infinity;
    for (let j = 0; j < n; j++) max = Math.max(max, x[o + j]!);
    if (max === -Infinity) continue;
    let sum = 0;
    for (let j = 0; j < n; j++) sum += Math.exp(x[o + j]! - max);
    for (let j = 0; j < n; j++) p[o + j] = Math.exp(x[o + j]! - max) / sum;
  }
  return p;
}

/** Expects |got - want| <= tol(want) elementwise, naming the first violation. */
function expectWithin(what: string, got: ArrayLike<number>, want: Float64Array, tol: (p: number) => number) {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    const t = tol(want[i]!);
    if (!(err <= t)) throw new Error(`${what}[${i}]: ${got[i]} vs fp64 ${want[i]} (|err| ${err} > ${t})`);
  }
}
const tolNative = (p: number) => 8 * u * p + EXP_FLOOR + FLT_MIN;
const tolRef32 = (p: number) => (2 * u + 2 ** -40) * p + 2 ** -148;

/** Random visible counts in [0, cols], with the ends (0, 1, cols) always present when there are rows for them. */
function visibleCounts(rows: number, cols: number): Int32Array {
  const v = Int32Array.from({ length: rows }, () => rng.int(cols + 1));
  if (rows > 0) v[0] = 0;
  if (rows > 1) v[1] = cols;
  if (rows > 2) v[2] = Math.min(1, cols);
  return v;
}

function logits(n: number, std: number, negInf = 0): Float32Array {
  const a = new Float32Array(n);
  rng.fillNormal(a, std);
  for (let i = 0; i < n; i++) if (negInf > 0 && rng.uniform() < negInf) a[i] = -Infinity;
  return a;
}

/** Runs native and reference on copies of x; checks both against the fp64 softmax. */
function checkAll(nat: LayerOps, what: string, x: Float32Array, rows: number, cols: number, visible: Int32Array) {
  const want = softmax64(x, rows, cols, visible);
  const n = x.slice();
  const r = x.slice();
  nat.prefixSoftmaxRows(n, rows, cols, visible);
  ref.prefixSoftmaxRows(r, rows, cols, visible);
  expectWithin(`${what} native`, n, want, tolNative);
  expectWithin(`${what} reference`, r, want, tolRef32);
}

// Widths below, at and above the vector width, with tails after full vectors, and sizes the kernel splits into
// several pool tasks (more than 16384 floats).
const SHAPES: [number, number][] = [
  [1, 1],
  [3, 7],
  [5, VL],
  [4, VL + 3],
  [37, 2 * VL + 5],
  [130, 256],
  [67, 257],
  [9, 2049],
];

suite('prefixSoftmaxRows: native and reference match an fp64 softmax', () => {
  const backend = new NativeBackend();
  const nat: LayerOps = backend;

  it('is the backend own op', () => {
    expect(nat.prefixSoftmaxRows).not.toBe(ref.prefixSoftmaxRows);
  });

  it.each(SHAPES)('rows=%i cols=%i, logits of std 1, 20 (exp underflow) and with -Infinity', (rows, cols) => {
    const visible = visibleCounts(rows, cols);
    checkAll(nat, 'std 1', logits(rows * cols, 1), rows, cols, visible);
    checkAll(nat, 'std 20', logits(rows * cols, 20), rows, cols, visible);
    checkAll(nat, '-inf', logits(rows * cols, 3, 0.3), rows, cols, visible);
  });

  it('edge rows: nothing visible, partial and all -Infinity, huge logits, a lone visible entry', () => {
    const cols = 2 * VL + 3;
    const NEG = -Infinity;
    const F32_MAX = 3.4028234663852886e38;
    const rowsSpec: { visible: number; values: number[] }[] = [
      { visible: 0, values: [1, 2, 3] }, // sees nothing: all zeros, whatever the logits
      { visible: cols, values: [NEG, 0, NEG, 1, NEG] }, // partial -inf: those get 0
      { visible: 5, values: [NEG, NEG, NEG, NEG, NEG, 7, 8] }, // all visible -inf: all zeros
      { visible: cols, values: Array.from({ length: cols }, () => NEG) },
      { visible: 4, values: [1e30, 0, -1e30, 1e30, 5] }, // two tied huge maxima: 1/2 each
      { visible: 3, values: [-1e30, -1e30 * 1.0000001, -1e30] }, // huge negative, differences still resolved
      { visible: cols, values: [F32_MAX, -F32_MAX, 0] }, // the difference overflows fp32: exactly 0
      { visible: 1, values: [-5, 9, 9] }, // a lone visible entry: 1, the rest 0
      { visible: VL + 1, values: Array.from({ length: VL + 1 }, (_, j) => (j === VL ? 3 : NEG)) }, // max in tail
    ];
    const rows = rowsSpec.length;
    const x = logits(rows * cols, 2);
    const visible = new Int32Array(rows);
    rowsSpec.forEach((s, r) => {
      visible[r] = s.visible;
      s.values.forEach((v, j) => (x[r * cols + j] = v));
    });
    checkAll(nat, 'edge', x, rows, cols, visible);
    const out = x.slice();
    nat.prefixSoftmaxRows(out, rows, cols, visible);
    const row = (r: number) => Array.from(out.subarray(r * cols, (r + 1) * cols));
    const zeros = new Array<number>(cols).fill(0);
    expect(row(0)).toEqual(zeros);
    expect(row(2)).toEqual(zeros);
    expect(row(3)).toEqual(zeros);
    expect(row(4).slice(0, 4)).toEqual([0.5, 0, 0, 0.5]);
    expect(row(6).slice(0, 2)).toEqual([1, 0]);
    expect(row(7)).toEqual([1, ...zeros.slice(1)]);
    expect(row(8)[VL]).toBe(1);
  });

  it('NaN or +Infinity among the visible logits: the visible part is NaN as in the reference, zeros after', () => {
    const cols = VL + 5;
    const rows = 4;
    const x = logits(rows * cols, 1);
    const visible = Int32Array.from([cols, VL + 2, 3, 2]);
    x[1] = NaN; // row 0, in a full vector
    x[cols + VL + 1] = Infinity; // row 1, in the tail
    x[2 * cols + 5] = NaN; // row 2, masked: no effect
    x[3 * cols] = -Infinity; // row 3: -inf and NaN
    x[3 * cols + 1] = NaN;
    const n = x.slice();
    const r = x.slice();
    nat.prefixSoftmaxRows(n, rows, cols, visible);
    ref.prefixSoftmaxRows(r, rows, cols, visible);
    for (let i = 0; i < n.length; i++) {
      expect(Number.isNaN(n[i]!), `entry ${i}`).toBe(Number.isNaN(r[i]!));
      if (!Number.isNaN(r[i]!)) expect(Math.abs(n[i]! - r[i]!)).toBeLessThanOrEqual(10 * u * r[i]! + EXP_FLOOR);
    }
    expect(Number.isNaN(r[0]!) && Number.isNaN(r[cols + VL + 1]!) && r[cols + VL + 2] === 0).toBe(true);
    expect(Number.isNaN(r[2 * cols]!)).toBe(false);
  });

  it('fp64 arrays take the reference, which matches the fp64 softmax to a few ulps', () => {
    const rows = 23;
    const cols = 2 * VL + 1;
    const x32 = logits(rows * cols, 10, 0.1);
    const visible = visibleCounts(rows, cols);
    const want = softmax64(x32, rows, cols, visible);
    const a = Float64Array.from(x32);
    const b = Float64Array.from(x32);
    nat.prefixSoftmaxRows(a, rows, cols, visible);
    ref.prefixSoftmaxRows(b, rows, cols, visible);
    expect(Array.from(a)).toEqual(Array.from(b));
    expectWithin('fp64 reference', a, want, (p) => 4 * 2 ** -53 * p);
  });

  it('zero rows or zero columns are no-ops', () => {
    const x = new Float32Array(0);
    nat.prefixSoftmaxRows(x, 0, 5, new Int32Array(0));
    nat.prefixSoftmaxRows(x, 3, 0, new Int32Array(3));
    expect(x.length).toBe(0);
  });

  it('refuses bad arguments with a HypeError naming the problem', () => {
    const x = new Float32Array(12);
    const refuse = (f: () => void, re: RegExp) => {
      let err: unknown;
      try {
        f();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(HypeError);
      expect((err as Error).message).toMatch(re);
    };
    refuse(() => nat.prefixSoftmaxRows(x, 3, 4, Int32Array.from([4, 5, 0])), /visible 5 at row 1 is outside \[0, 4\]/);
    refuse(() => nat.prefixSoftmaxRows(x, 3, 4, Int32Array.from([0, 0, -1])), /visible -1 at row 2/);
    refuse(() => nat.prefixSoftmaxRows(x, 3, 4, new Int32Array(2)), /visible has 2 elements but 3/);
    refuse(() => nat.prefixSoftmaxRows(x, 4, 4, new Int32Array(4)), /x has 12 elements but 16/);
    refuse(() => nat.prefixSoftmaxRows(x, 3, 4, [1, 2, 3] as unknown as Int32Array), /visible must be an Int32Array/);
    refuse(() => nat.prefixSoftmaxRows(x, 1.5, 4, new Int32Array(2)), /rows must be a non-negative integer/);
    refuse(() => nat.prefixSoftmaxRows(x, 3, -4, new Int32Array(3)), /cols must be a non-negative integer/);
    // Nothing was written by a refused call.
    expect(Array.from(x)).toEqual(new Array<number>(12).fill(0));
  });

  it('the addon re-checks what it relies on (second fence), and the reference refuses out-of-range counts', () => {
    const x = new Float32Array(12);
    const kernel = addon!.prefixSoftmaxRows!.bind(addon);
    expect(() => kernel(x, 3, 4, Int32Array.from([0, 9, 0]))).toThrow(/hype native: visible 9 at row 1/);
    expect(() => kernel(x, 4, 4, new Int32Array(4))).toThrow(/hype native: x has 12 elements, needs 16/);
    expect(() => kernel(x, 3, 4, new Int32Array(2))).toThrow(/hype native: visible has 2 elements, needs 3/);
    expect(() => kernel(x, 3, 4, new Float32Array(3) as unknown as Int32Array)).toThrow(
      /hype native: visible must be a/,
    );
    expect(() => ref.prefixSoftmaxRows(x, 3, 4, Int32Array.from([0, 0, 5]))).toThrow(RangeError);
  });
});
