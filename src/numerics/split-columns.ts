/**
 * Split columns (SPEC section 8): the one helper every bias delivered by concatenation uses (HyPE's eta columns
 * today; linear ALiBi or FoX columns [F_i, 1] . [1, -F_l] would use it the same way) to survive bf16/fp16 operands.
 *
 * A concat-route bias is a sum of products of columns, a_il = sum_c x_c(i) y_c(l), with x_c on the query rows and
 * y_c on the key rows. Rounded to a format with unit roundoff u, each product is off by ~u |x y|, which is large
 * when the bias is a small difference of large products (HyPE: |tau| sqrt(d) / 2 up to thousands). Splitting each
 * column into hi = round(x) and lo = round(x - hi) (x = hi + lo to ~u^2 |x|) and laying them out as
 *
 *   query side, per column: [x_hi, x_hi, x_lo]        key side, per column: [y_hi, y_lo, y_hi]
 *
 * makes the dot product x_hi y_hi + x_hi y_lo + x_lo y_hi = x y - x_lo y_lo: the bias to O(u^2), on an unmodified
 * kernel with fp32 accumulation (products of two bf16/fp16 values are exact in fp32). Three operand columns per
 * source column instead of one.
 *
 * Gradients (rounding treated as the identity, so hi = x and lo = 0 to first order): a query column's gradient is the
 * sum of its two hi slots' gradients, a key column's the sum of its slots 0 and 2 (the hi slots).
 *
 * Shapes: a column block is [rows, r] row-major (r source columns per row); its expanded form is [rows, r] (plain)
 * or [rows, 3r] (split), column c at 3c .. 3c + 2.
 *
 * CONTRACT (where split columns live; the ONNX exporter and any new concat-route bias build on these):
 *   src/numerics/split-columns.ts (this file, exported from src/index.ts):
 *     splitColumns(x: Float64Array, format: 'fp32' | 'bf16' | 'fp16'): { hi: Float64Array; lo: Float64Array }
 *     expandColumns(cols, rows, r, side: 'query' | 'key', split: format | null): Float64Array   [rows, r or 3r]
 *     foldColumnGrads(g, rows, r, side, split: boolean, stride, offset, scale?): Float64Array  [rows, r]
 *   HyPE, src/pe/hype/core.ts: augment(spec, shape, q, k, { precision: 'fp32' | 'bf16' | 'fp16', columns?:
 *     'plain' | 'split', multiple?, format?, ... }) and augmentBackward(spec, aug, dqHat, dkHat); the same options
 *     on h.augment from hype() and on the encoding's options (src/pe/hype/encoding.ts). Per pair the operand
 *     columns are Qhat = [..., qa_hi, qa_hi, qa_lo, qb_hi, qb_hi, qb_lo], Khat = [..., ka_hi, ka_lo, ka_hi, kb_hi,
 *     kb_lo, kb_hi] (SPEC section 8), after the d content columns, then zero padding to `multiple`.
 */
import { HypeError } from '../errors.ts';
import { floatFormat, roundTo, type FloatFormatName } from './float-formats.ts';

/**
 * The operand precision a concat-route bias is built for: 'fp32' keeps plain columns (one operand column per
 * source column), 'bf16' / 'fp16' split each column into hi/lo parts rounded to that format.
 */
export type ColumnPrecision = 'fp32' | 'bf16' | 'fp16';
export const COLUMN_PRECISIONS: readonly ColumnPrecision[] = ['fp32', 'bf16', 'fp16'];

/** The format hi and lo are rounded to ('fp32' splits at fp32 granularity: for fp32 kernels with huge columns). */
export type SplitFormat = Extract<FloatFormatName, 'fp32' | 'bf16' | 'fp16'>;

export type ColumnSide = 'query' | 'key';

/** Refuses anything but fp32, bf16 or fp16, naming the allowed values. */
export function checkColumnPrecision(p: unknown, who: string): asserts p is ColumnPrecision {
  if (!COLUMN_PRECISIONS.includes(p as ColumnPrecision)) {
    throw new HypeError(
      'argument',
      `${who}: unknown precision ${JSON.stringify(p)}; choose one of ${COLUMN_PRECISIONS.join(', ')} ` +
        '(fp32: plain columns; bf16/fp16: hi/lo split columns rounded to that format)',
    );
  }
}

/** hi = round(x), lo = round(x - hi), elementwise, in `format` (SPEC section 8). */
export function splitColumns(x: Float64Array, format: SplitFormat): { hi: Float64Array; lo: Float64Array } {
  const fmt = floatFormat(format);
  const hi = new Float64Array(x.length);
  const lo = new Float64Array(x.length);
  for (let j = 0; j < x.length; j++) {
    const h = roundTo(fmt, x[j]!);
    hi[j] = h;
    lo[j] = Number.isFinite(h) ? roundTo(fmt, x[j]! - h) : 0;
  }
  return { hi, lo };
}

/** Operand columns per source column: 1 plain, 3 split. */
export function slotsPerColumn(split: boolean): 1 | 3 {
  return split ? 3 : 1;
}

/**
 * The operand columns of a [rows, r] column block: a copy when `split` is null, else [rows, 3r] with each column c
 * as [hi, hi, lo] (query side) or [hi, lo, hi] (key side) rounded to `split`.
 */
export function expandColumns(
  cols: Float64Array,
  rows: number,
  r: number,
  side: ColumnSide,
  split: SplitFormat | null,
): Float64Array {
  if (split === null) return Float64Array.from(cols.subarray(0, rows * r));
  const { hi, lo } = splitColumns(cols.subarray(0, rows * r), split);
  const out = new Float64Array(rows * 3 * r);
  const [s1, s2] = side === 'query' ? [hi, lo] : [lo, hi];
  for (let j = 0; j < rows * r; j++) {
    out[3 * j] = hi[j]!;
    out[3 * j + 1] = s1[j]!;
    out[3 * j + 2] = s2[j]!;
  }
  return out;
}

/**
 * The gradient of each source column from the gradient of its operand columns: g holds rows of width `stride`, the
 * expanded block starting at column `offset` (layout of expandColumns), each sum times `scale` (a column that entered
 * the operand scaled takes its gradient scaled the same way). Returns [rows, r].
 */
export function foldColumnGrads(
  g: ArrayLike<number>,
  rows: number,
  r: number,
  side: ColumnSide,
  split: boolean,
  stride: number,
  offset: number,
  scale = 1,
): Float64Array {
  const out = new Float64Array(rows * r);
  const other = side === 'query' ? 1 : 2; // the second hi slot
  for (let i = 0; i < rows; i++) {
    const base = i * stride + offset;
    for (let c = 0; c < r; c++) {
      out[i * r + c] = (split ? g[base + 3 * c]! + g[base + 3 * c + other]! : g[base + c]!) * scale;
    }
  }
  return out;
}

/**
 * Largest head-dim padding multiple accepted. Fused kernels want multiples of 4 or 8 (FlashAttention-2: 8, with head
 * dims <= 256), so nothing useful lies past 256; a larger value would only pad every row with up to that many zero
 * columns (multiple = 1e9 asked for gigabytes).
 */
export const MAX_PAD_MULTIPLE = 256;

/** The padding multiple of a concat route, defaulting to 1; one HypeError naming the accepted range otherwise. */
export function padMultiple(multiple: number | undefined, who: string): number {
  const m = multiple ?? 1;
  if (!(Number.isInteger(m) && m >= 1 && m <= MAX_PAD_MULTIPLE))
    throw new HypeError(
      'argument',
      `${who}: multiple must be a positive integer up to ${MAX_PAD_MULTIPLE} (kernels want 4 or 8), got ${m}`,
    );
  return m;
}

/**
 * The bf16 mixed-precision refusal of a concat route built for fp32 operands (EncodingFactory.bf16Refusal), or null
 * when its columns are split for bf16. `alternative` names another way out (e.g. a kernel route), if any.
 */
export function concatBf16Refusal(
  name: string,
  o: { precision?: unknown; format?: unknown; columns?: unknown },
  alternative = '',
): string | null {
  if ((o.precision ?? o.format) === 'bf16') {
    if (o.columns !== 'plain') return null;
    // Plain columns rounded to bf16 lose the bias as surely as fp32 ones: only the split layout is exact.
    return (
      `${name}: columns=plain under --precision bf16 rounds each bias column whole to bf16, losing the bias to ` +
      `cancellation; drop columns=plain (precision=bf16 splits them)${alternative}`
    );
  }
  return (
    `${name}'s concat route builds its bias columns for fp32 operands, and rounding them to bf16 would lose the ` +
    `bias to cancellation; with --precision bf16 pass --pe ${name}:precision=bf16 (columns split to be exact in ` +
    `bf16)${alternative}`
  );
}
