/**
 * ALiBi's attention for given slopes, by either route, shared by `alibi` (fixed slopes) and `alibi-learned`:
 *   kernel  the term -m_h |D| as a distance table [H, span] the backend adds (distance-table.ts);
 *   concat  exact ALiBi on an unmodified kernel through two linear columns per head (SPEC section 9), centred at c:
 *             -m_h (i - l) = [-m_h (i - c), m_h] . [1, l - c]
 *           The slope sits on the query side so the key columns [1, l - c] are the same for every head, as grouped-
 *           query attention needs (query heads sharing a KV head have different slopes). c is the integer centre of
 *           the positions in the call, floor((max(queryOffset + Lq, Lk) - 1) / 2), so |columns| <= m L / 2 and l - c
 *           stays an integer. In bf16/fp16 the columns are split into hi/lo parts (concat-bias.ts, SPEC section 8).
 *           Causal attention only: without the mask ALiBi is -m |D|, which is not of low rank.
 * Both routes return d loss / d slope per head: -sum_D dTable[h, D] |D| (kernel), or from the query columns'
 * gradient (concat): sum_i dx0_i (-(i - c)) + dx1_i.
 * Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv]; slopes [H].
 */
import { check } from '../errors.ts';
import type { DType, FloatArray } from '../tensor.ts';
import { concatBiasAttention, concatOperandWidths, type ConcatPrecisionOptions } from './concat-bias.ts';
import { concatBf16Refusal, padMultiple } from '../numerics/split-columns.ts';
import { backendAttention, checkQk, fixedTermResult, denseLogitGrid, scaledDot } from './attention-plumbing.ts';
import {
  concatAttentionOnBackend,
  geometryKey,
  UploadCache,
  widenedConcatAttention,
  widenedTail,
} from './device-attention.ts';
import { alibiDistanceTable, alibiSlopeGrads, geometryOf, tableAttention } from './distance-table.ts';
import type {
  AttendContext,
  AttendInputs,
  AttendResult,
  EncodingDims,
  EncodingFactory,
  OnnxAttention,
  OnnxAttentionBuilder,
  Param,
  PositionalEncoding,
} from './encoding.ts';
import { defineEncoding } from './options.ts';

export interface AlibiRouteOptions extends ConcatPrecisionOptions {
  /** 'kernel' (default): a distance table inside the kernel; 'concat': two linear Q/K columns per head. */
  route: 'kernel' | 'concat';
}

/** The option defaults and the check both ALiBi encodings run on their route options. */
export const ALIBI_ROUTE_DEFAULTS = { route: 'kernel', multiple: 1 } as const;
export const ALIBI_ROUTE_OPTIONAL_KEYS = ['format', 'precision', 'columns'] as const;

export function checkAlibiRoute(name: string, opts: Partial<AlibiRouteOptions>): void {
  check(
    opts.route === undefined || opts.route === 'kernel' || opts.route === 'concat',
    'argument',
    () => `${name}: route must be 'kernel' or 'concat', got ${JSON.stringify(opts.route)}`,
  );
  check(
    (opts.route ?? 'kernel') === 'concat' ||
      (opts.format === undefined && opts.precision === undefined && opts.columns === undefined),
    'argument',
    `${name}: format, precision and columns describe the concat route's columns; add route=concat or drop them`,
  );
}

/** The centre c and the columns x [B, H, Lq, 2], y [B, Hkv, Lk, 2] of the concat route (module comment). */
export function alibiColumns<T, I>(
  ctx: AttendContext<T, I>,
  slopes: Float64Array,
): { c: number; x: Float64Array; y: Float64Array } {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk } = ctx.shape;
  const c = Math.floor((Math.max(ctx.queryOffset + lq, lk) - 1) / 2);
  const x = new Float64Array(B * H * lq * 2);
  const y = new Float64Array(B * Hkv * lk * 2);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      for (let i = 0; i < lq; i++) {
        const o = ((b * H + h) * lq + i) * 2;
        x[o] = -slopes[h]! * (i + ctx.queryOffset - c);
        x[o + 1] = slopes[h]!;
      }
    }
    for (let g = 0; g < Hkv; g++) {
      for (let l = 0; l < lk; l++) {
        const o = ((b * Hkv + g) * lk + l) * 2;
        y[o] = 1;
        y[o + 1] = l - c;
      }
    }
  }
  return { c, x, y };
}

export interface AlibiRun {
  out: FloatArray;
  backward(dOut: FloatArray): { dq: FloatArray; dk: FloatArray; dv: FloatArray; dSlopes: Float64Array };
}

export function alibiAttention(
  ctx: AttendContext,
  inputs: AttendInputs,
  slopes: Float64Array,
  opts: AlibiRouteOptions,
): AlibiRun {
  check(
    ctx.shape.heads === slopes.length,
    'shape',
    () =>
      `alibi was built for ${slopes.length} heads but attention has ${ctx.shape.heads}; build it with heads = ${ctx.shape.heads}`,
  );
  const { q, k, v } = inputs;
  if (opts.route === 'kernel') {
    const geometry = geometryOf(ctx);
    const run = tableAttention(ctx, q, k, v, alibiDistanceTable(slopes, geometry));
    return {
      out: run.out,
      backward(dOut) {
        const { dq, dk, dv, dTable } = run.backward(dOut);
        return { dq, dk, dv, dSlopes: alibiSlopeGrads(dTable, geometry) };
      },
    };
  }
  check(
    ctx.causal,
    'argument',
    "alibi route 'concat' needs causal attention: without the mask the penalty -m |D| is not of low rank; " +
      "use route 'kernel' for bidirectional attention",
  );
  const { c, x, y } = alibiColumns(ctx, slopes);
  const run = concatBiasAttention(ctx, inputs, x, y, 2, opts);
  return {
    out: run.out,
    backward(dOut) {
      const { dq, dk, dv, dx } = run.backward(dOut);
      const { batch: B, heads: H, lq } = ctx.shape;
      const dSlopes = new Float64Array(H);
      for (let b = 0; b < B; b++)
        for (let h = 0; h < H; h++)
          for (let i = 0; i < lq; i++) {
            const o = ((b * H + h) * lq + i) * 2;
            dSlopes[h]! += -dx[o]! * (i + ctx.queryOffset - c) + dx[o + 1]!;
          }
      return { dq, dk, dv, dSlopes };
    },
  };
}

/** fp64 reference logits: scale q.k - m_h |D| (masked = -Infinity). */
export function alibiDenseLogits(
  ctx: AttendContext,
  { q, k }: AttendInputs,
  scale: number,
  slopes: Float64Array,
): Float64Array {
  checkQk(ctx, q, k);
  check(
    ctx.shape.heads === slopes.length,
    'shape',
    () => `alibi was built for ${slopes.length} heads but attention has ${ctx.shape.heads}`,
  );
  return denseLogitGrid(
    ctx,
    (b, h, kvh, i, l, D) => scaledDot(ctx, q, k, scale, b, h, kvh, i, l) - slopes[h]! * Math.abs(D),
  );
}

/** What distinguishes one ALiBi encoding from another: its parameters, its current slopes and their gradient. */
export interface AlibiSlopeSource {
  params: Param[];
  slopes(): Float64Array;
  /** Receives d loss / d slope per head (the slopes m used by that call); fixed slopes drop it. */
  slopeGrads?(m: Float64Array, dSlopes: Float64Array): void;
}

/** An ALiBi encoding factory (both routes, the same options) around a slope source. */
export function defineAlibi(
  name: string,
  description: string,
  source: (dims: EncodingDims) => AlibiSlopeSource,
): EncodingFactory<AlibiRouteOptions> {
  return defineEncoding<AlibiRouteOptions>({
    name,
    description,
    sites: ['score-bias'],
    defaults: ALIBI_ROUTE_DEFAULTS,
    optionalKeys: ALIBI_ROUTE_OPTIONAL_KEYS,
    bf16Refusal: (o: Partial<AlibiRouteOptions>) =>
      (o.route ?? ALIBI_ROUTE_DEFAULTS.route) === 'concat'
        ? concatBf16Refusal(name, o, ` or --pe ${name} (route kernel, the default)`)
        : null,
    create(dims: EncodingDims, options: Partial<AlibiRouteOptions>): PositionalEncoding {
      checkAlibiRoute(name, options);
      const opts: AlibiRouteOptions = { ...ALIBI_ROUTE_DEFAULTS, ...options };
      const src = source(dims);
      const uploads = new UploadCache();
      return {
        name,
        sites: ['score-bias'],
        params: src.params,
        maxLength: Infinity,
        // Fixed slopes in fp32 columns: every term is data uploaded once per geometry (device-attention.ts).
        portable: src.params.length === 0 && (opts.route === 'kernel' || !hasPrecisionOptions(opts)),
        // The concat route writes its columns into q and k rows the block allocates wide enough (no copies).
        ...(opts.route === 'concat'
          ? {
              operandWidths: (dtype: DType) => concatOperandWidths(opts, 2, dims.headDim, dims.headDim, dtype),
            }
          : {}),
        attend(ctx, inputs) {
          if (ctx.backend.residence === 'device') return alibiOnDevice(ctx, inputs, src.slopes(), opts, uploads);
          const m = src.slopes();
          const run = alibiAttention(ctx, inputs, m, opts);
          return {
            out: run.out,
            backward(dOut) {
              const { dq, dk, dv, dSlopes } = run.backward(dOut);
              src.slopeGrads?.(m, dSlopes);
              return { dq, dk, dv };
            },
          };
        },
        denseLogits: (ctx, inputs, scale) => alibiDenseLogits(ctx, inputs, scale, src.slopes()),
        // The current slopes (trained ones are constants once exported), by the run's route.
        toOnnx: (b: OnnxAttentionBuilder) => alibiToOnnx(b, src.slopes(), opts),
        // Trained slopes only: fixed ones are the reference values, nothing to record.
        ...(src.params.length > 0 ? { report: () => ({ slope: Array.from(src.slopes()) }) } : {}),
      };
    },
  });
}

/**
 * ALiBi in an ONNX graph: route 'kernel' as MultiHeadAttention's attention_bias -m_h |i - l|; route 'concat' as its
 * two columns on unmodified MultiHeadAttention, query [-m_h (i - c), m_h], key [1, l - c] with c = (L - 1) / 2 of the
 * running length (the model's integer centre differs by 1/2 at even L, which changes no bias: only roundoff).
 */
function alibiToOnnx(b: OnnxAttentionBuilder, slopes: Float64Array, opts: AlibiRouteOptions): OnnxAttention {
  if (opts.route === 'kernel') {
    return {
      out: b.attention(b.q, b.k, b.v, { linearSlopes: slopes }),
      qkHeadDim: b.headDim,
      attentionBias: true,
      columns: null,
    };
  }
  const H = slopes.length;
  const pos = b.positions(); // [1, L, 1, 1]
  const ones = b.op('Add', [b.op('Mul', [pos, b.constFloat([0], [])]), b.constFloat([1], [])]);
  const m = b.constFloat(slopes, [1, 1, H, 1]);
  const query = b.op('Concat', [b.op('Mul', [b.op('Neg', [pos]), m]), b.op('Mul', [ones, m])], { axis: 3 });
  const key = b.op('Mul', [
    b.op('Concat', [ones, pos], { axis: 3 }),
    b.constFloat(new Float64Array(H).fill(1), [1, 1, H, 1]),
  ]);
  return b.columnAttention(query, key, 2, opts.multiple ?? 1);
}

function hasPrecisionOptions(opts: AlibiRouteOptions): boolean {
  return opts.format !== undefined || opts.precision !== undefined || opts.columns !== undefined;
}

/**
 * ALiBi with fixed slopes on a device backend's handles, by either route: the kernel route's distance table, or
 * the concat route's fp32 columns of one batch entry, uploaded once per geometry; no slope gradient.
 */
function alibiOnDevice<T, I>(
  ctx: AttendContext<T, I>,
  inputs: AttendInputs<T>,
  slopes: Float64Array,
  opts: AlibiRouteOptions,
  uploads: UploadCache,
): AttendResult<T> {
  const be = ctx.backend;
  const dtype = be.dtypeOf(inputs.q);
  const key = geometryKey(ctx);
  if (opts.route === 'kernel') {
    const [table] = uploads.get(be, key, dtype, () => [alibiDistanceTable(slopes, geometryOf(ctx))]);
    return fixedTermResult(
      backendAttention(ctx, inputs.q, inputs.k, inputs.v, { kind: 'distance', table: table! }, false),
    );
  }
  check(
    ctx.causal,
    'argument',
    "alibi route 'concat' needs causal attention: without the mask the penalty -m |D| is not of low rank; " +
      "use route 'kernel' for bidirectional attention",
  );
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = ctx.shape;
  // One batch entry's columns [H Lq, 2] (x sqrt(d)) and [Hkv Lk, 2], fp64 (the upload rounds them once).
  const columns = () => {
    const one = alibiColumns({ ...ctx, shape: { ...ctx.shape, batch: 1 } }, slopes);
    return { x: one.x, y: one.y, sqrtD: Math.sqrt(d) };
  };
  if (inputs.widths) {
    // Widened operands: the tails (columns, then zero padding) built once per geometry and written into each buffer
    // once (device-attention.ts).
    const expected = concatOperandWidths(opts, 2, d, dv, dtype)!;
    const wideKey = `widened:${key}`;
    const tails = () => {
      const { x, y, sqrtD } = columns();
      return [
        widenedTail(x, H * lq, 2, expected.qk - d, sqrtD),
        widenedTail(y, Hkv * lk, 2, expected.qk - d),
        ...(expected.v > dv ? [new Float64Array(Hkv * lk * (expected.v - dv))] : []),
      ];
    };
    return widenedConcatAttention(ctx, inputs, expected, {
      owner: uploads,
      key: wideKey,
      tails: () => uploads.get(be, wideKey, dtype, tails),
    });
  }
  const [colsQ, colsK] = uploads.get(be, key, dtype, () => {
    const { x, y, sqrtD } = columns();
    return [x.map((value) => value * sqrtD), y]; // fp32 columns: no split, one slot per column
  });
  return concatAttentionOnBackend(ctx, inputs, colsQ!, colsK!, 2, padMultiple(opts.multiple, 'concat bias'));
}
