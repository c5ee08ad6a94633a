/**
 * FoX, the Forgetting Transformer's bias (Lin et al., ICLR 2025, arXiv 2503.02130), on an unmodified kernel
 * (SPEC section 9). Each head has a forget gate read from the block input, f_t = sigmoid(w . x_t + b); with
 * F_n = sum_{t <= n} log f_t the logit of a key l seen from a query at n adds
 *   a_nl = F_n - F_l = sum_{t = l+1}^{n} log f_t  (<= 0: a learned, content-dependent decay),
 * which is rank 2: [F_n, 1] . [1, -F_l], two concat columns (concat-bias.ts), split into hi/lo parts in bf16/fp16.
 * O(L) memory: F is one number per position and head. Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv],
 * x [B, Lk, C] (C = modelDim); gate parameters fox.w [Hkv, C], fox.b [Hkv].
 *
 * Choices the paper leaves open or that we fix:
 * - One forget gate per KV head, shared by the query heads of its group: the key column -F_l must be the same for
 *   every query head reading that key (the paper's models are multi-head, one gate per head; with heads = kvHeads
 *   that is what this is).
 * - The gate reads the block's normed input x (the same x the q/k/v projections read), as the paper's
 *   f_t = sigmoid(w_f^T x_t + b_f) does; no output gate, QK-norm or short convolution ("FoX (Pro)" adds those).
 * - Initialisation: w ~ N(0, initStd^2) (default initStd = modelDim^-1/2, a linear layer's scale), b = biasInit
 *   (default 0, f ~ 1/2 per token at the start); the paper's code was not read here, so these are our choices.
 * - Centring: F is shifted by its value at the middle key position floor((Lk - 1) / 2) before it becomes columns, so
 *   |columns| <= |F| over half the window (the bias is unchanged: it is a difference of F values).
 * - Causal attention only (the decay accumulates from each key forward to its query); queries must sit at
 *   positions covered by x (queryOffset + Lq <= Lk), as in a model, where the keys include the queries.
 */
import { check } from '../errors.ts';
import type { DType, FloatArray } from '../tensor.ts';
import type { Rng } from '../util/rng.ts';
import { checkQk, denseLogitGrid, scaledDot } from './attention-plumbing.ts';
import { concatBf16Refusal } from '../numerics/split-columns.ts';
import { concatBiasAttention, concatOperandWidths, type ConcatPrecisionOptions } from './concat-bias.ts';
import type {
  AttendContext,
  AttendInputs,
  EncodingDims,
  EncodingFactory,
  OnnxAttention,
  OnnxAttentionBuilder,
  OperandWidths,
  Param,
  PositionalEncoding,
} from './encoding.ts';
import { defineEncoding } from './options.ts';
import { logSigmoid } from '../backend/layers.ts';
import { checkBlockInput, gateParam, projectGates, projectGatesBackward, rowNorms } from './gate-input.ts';

export interface FoxOptions extends ConcatPrecisionOptions {
  /** Standard deviation of the gate weights' normal initialisation; 0 (default) means modelDim^-1/2. */
  initStd: number;
  /** Initial gate bias b (f = sigmoid(b) for a zero input). */
  biasInit: number;
}

const DEFAULTS = { initStd: 0, biasInit: 0, multiple: 1 } as const;

class FoxEncoding implements PositionalEncoding {
  readonly name = 'fox';
  readonly sites = ['score-bias', 'data-dependent'] as const;
  readonly maxLength = Infinity;
  readonly w: Param;
  readonly b: Param;
  readonly params: Param[];

  constructor(
    private readonly dims: EncodingDims,
    private readonly opts: ConcatPrecisionOptions,
  ) {
    this.w = gateParam('fox.w', [dims.kvHeads, dims.modelDim]);
    this.b = gateParam('fox.b', [dims.kvHeads]);
    this.params = [this.w, this.b];
  }

  private checkCall(ctx: AttendContext, inputs: AttendInputs): FloatArray {
    check(ctx.causal, 'argument', 'fox: the forgetting bias is defined for causal attention only; pass causal: true');
    return checkBlockInput('fox', 'the forget gates', this.dims, ctx, inputs);
  }

  /** Gate pre-activations s [B, Hkv, Lk] = w_g . x_t + b_g in plain fp64 loops (denseLogits' own, independent of attend's gemm). */
  private gates(x: FloatArray, B: number, lk: number): Float64Array {
    const { kvHeads: G, modelDim: C } = this.dims;
    const s = new Float64Array(B * G * lk);
    for (let b = 0; b < B; b++)
      for (let g = 0; g < G; g++)
        for (let t = 0; t < lk; t++) {
          let acc = this.b.data[g]!;
          for (let c = 0; c < C; c++) acc += this.w.data[g * C + c]! * x[(b * lk + t) * C + c]!;
          s[(b * G + g) * lk + t] = acc;
        }
    return s;
  }

  /** q and k with room for the two columns (concat-bias.ts; plain rows with `format` emulation). */
  operandWidths(dtype: DType): OperandWidths | null {
    const d = this.dims.headDim;
    return concatOperandWidths(this.opts, 2, d, d, dtype);
  }

  attend(ctx: AttendContext, inputs: AttendInputs) {
    const x = this.checkCall(ctx, inputs);
    const be = ctx.backend;
    const { batch: B, heads: H, kvHeads: G, lq, lk } = ctx.shape;
    const group = H / G;
    const off = ctx.queryOffset;
    // Pre-activations z [B, Lk, G] by one backend gemm (gate-input.ts), then F [B, Lk, G] = the running sum of
    // log sigmoid(z) along Lk centred at the middle key position, by the backend's gate op (fp64 on host arrays).
    const z = projectGates(be, x, this.w, this.b, B, lk, 0, lk);
    const mid = Math.floor((lk - 1) / 2);
    const F = new Float64Array(B * lk * G);
    be.gateForward(z, F, B, lk, G, 'logSigmoid', mid);
    const qc = new Float64Array(B * H * lq * 2);
    const kc = new Float64Array(B * G * lk * 2);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++)
        for (let i = 0; i < lq; i++) {
          const o = ((b * H + h) * lq + i) * 2;
          qc[o] = F[(b * lk + i + off) * G + Math.floor(h / group)]!;
          qc[o + 1] = 1;
        }
      for (let g = 0; g < G; g++)
        for (let l = 0; l < lk; l++) {
          const o = ((b * G + g) * lk + l) * 2;
          kc[o] = 1;
          kc[o + 1] = -F[(b * lk + l) * G + g]!;
        }
    }
    const run = concatBiasAttention(ctx, inputs, qc, kc, 2, this.opts);
    return {
      out: run.out,
      dispose: run.dispose,
      backward: (dOut: FloatArray) => {
        const { dq, dk, dv, dx: dqc, dy: dkc } = run.backward(dOut);
        // d loss / d F [B, Lk, G], then through the centring, the running sum and log sigmoid (the gate op's
        // backward, in place), then the projection.
        const dF = new Float64Array(B * lk * G);
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++)
            for (let i = 0; i < lq; i++)
              dF[(b * lk + i + off) * G + Math.floor(h / group)]! += dqc[((b * H + h) * lq + i) * 2]!;
          for (let g = 0; g < G; g++)
            for (let l = 0; l < lk; l++) dF[(b * lk + l) * G + g]! -= dkc[((b * G + g) * lk + l) * 2 + 1]!;
        }
        be.gateBackward(z, dF, dF, B, lk, G, 'logSigmoid', mid);
        const dx = projectGatesBackward(be, x, this.w, this.b, dF, B, lk, 0, lk);
        return { dq, dk, dv, dx };
      },
    };
  }

  /**
   * ONNX form: F [B, L, Hkv] = CumSum(log sigmoid(x w^T + b)) from the block's normed input, each KV head's F given
   * to its query heads (Gather), then the columns [F_i, 1] . [1, -F_l] on unmodified MultiHeadAttention. F is not
   * centred in the graph (the bias is a difference, so centring changes only fp32 roundoff, ~u |F|).
   */
  toOnnx(b: OnnxAttentionBuilder): OnnxAttention {
    const { heads: H, kvHeads: G } = this.dims;
    const F = b.gate({ weight: this.w.data, bias: this.b.data, rows: G, fn: 'logSigmoid', cumulative: true });
    const perHead = b.op('Gather', [F, b.constInt64(Array.from({ length: H }, (_, h) => Math.floor(h / (H / G))))], {
      axis: 2,
    });
    const F4 = b.op('Unsqueeze', [perHead, b.constInt64([3])]); // [B, L, H, 1]
    const ones = b.op('Add', [b.op('Mul', [F4, b.constFloat([0], [])]), b.constFloat([1], [])]);
    const query = b.op('Concat', [F4, ones], { axis: 3 });
    const key = b.op('Concat', [ones, b.op('Neg', [F4])], { axis: 3 });
    return b.columnAttention(query, key, 2, this.opts.multiple ?? 1);
  }

  /** Per KV head: the gate weights' norm |w_g| and bias b_g (f = sigmoid(b_g) for a zero input). */
  report(): Record<string, number[]> {
    return {
      'gate.wNorm': rowNorms(this.w.data, this.dims.kvHeads),
      'gate.b': Array.from(this.b.data),
    };
  }

  /** fp64 reference: scale q.k + sum_{t = l+1}^{n} log sigmoid(w_g . x_t + b_g), summed directly per pair. */
  denseLogits(ctx: AttendContext, inputs: AttendInputs, scale: number): Float64Array {
    checkQk(ctx, inputs.q, inputs.k);
    const x = this.checkCall(ctx, inputs);
    const { batch: B, kvHeads: G, lk } = ctx.shape;
    const s = this.gates(x, B, lk);
    return denseLogitGrid(ctx, (b, h, kvh, i, l, D) => {
      let bias = 0;
      for (let t = l + 1; t <= l + D; t++) bias += logSigmoid(s[(b * G + kvh) * lk + t]!);
      return scaledDot(ctx, inputs.q, inputs.k, scale, b, h, kvh, i, l) + bias;
    });
  }
}

export const foxFactory: EncodingFactory<FoxOptions> = defineEncoding<FoxOptions>({
  name: 'fox',
  description:
    'Forgetting Transformer bias (Lin et al. 2025): per-head forget gates sigmoid(w.x + b), bias F_i - F_l with F ' +
    'their cumulative log, as two concat columns on an unmodified kernel',
  sites: ['score-bias', 'data-dependent'],
  defaults: DEFAULTS,
  optionalKeys: ['format', 'precision', 'columns'],
  bf16Refusal: (o: Partial<FoxOptions>) => concatBf16Refusal('fox', o),
  create(dims: EncodingDims, options: Partial<FoxOptions>, rng: Rng): PositionalEncoding {
    const o = { ...DEFAULTS, ...options };
    check(
      o.initStd >= 0 && dims.modelDim > 0 && dims.heads % dims.kvHeads === 0,
      'argument',
      `fox: initStd = ${o.initStd} must be >= 0, modelDim positive and heads a multiple of kvHeads`,
    );
    const enc = new FoxEncoding(dims, o);
    rng.fillNormal(enc.w.data, o.initStd || 1 / Math.sqrt(dims.modelDim));
    enc.b.data.fill(o.biasInit);
    return enc;
  },
});
