/**
 * HyPE on an attention kernel nobody here wrote: onnxruntime's fused com.microsoft MultiHeadAttention, given Q and
 * K with HyPE's columns concatenated inside the graph and no bias input. Compared with our fp64 reference.
 */
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';
import type { AttentionShape, PositionBias } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import {
  alibiBiasTensor,
  hypeAugment,
  multiHeadAttention,
  type HypeGraphParams,
} from '../src/interop/onnx-attention.ts';
import { OnnxGraph } from '../src/interop/onnx-graph.ts';
import { alibiDistanceTable } from '../src/pe/distance-table.ts';
import { hypeDistanceTable } from '../src/pe/hype/table.ts';
import { Rng } from '../src/util/rng.ts';

const [B, L, H, d] = [2, 40, 4, 16];
const slopes = Array.from({ length: H }, (_, h) => 2 ** ((-8 * (h + 1)) / H)); // ALiBi slopes for 4 heads
const lengthExtra = 160;

function randn(rng: Rng, n: number): Float32Array {
  const a = new Float32Array(n);
  rng.fillNormal(a);
  return a;
}

/** [B, L, H, d] (MultiHeadAttention's layout) <-> [B, H, L, d] (ours), widened to fp64. */
function toBHLD(x: Float32Array, dim: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let b = 0; b < B; b++)
    for (let l = 0; l < L; l++)
      for (let h = 0; h < H; h++)
        for (let c = 0; c < dim; c++) out[((b * H + h) * L + l) * dim + c] = x[((b * L + l) * H + h) * dim + c]!;
  return out;
}

async function run(bytes: Uint8Array, q: Float32Array, k: Float32Array, v: Float32Array): Promise<Float32Array> {
  const session = await ort.InferenceSession.create(bytes);
  const feeds = {
    q: new ort.Tensor('float32', q, [B, L, H * d]),
    k: new ort.Tensor('float32', k, [B, L, H * d]),
    v: new ort.Tensor('float32', v, [B, L, H * d]),
  };
  const result = await session.run(feeds);
  await session.release();
  return result.out!.data as Float32Array;
}

function graphWith(build: (g: OnnxGraph, q: string, k: string, v: string) => string): Uint8Array {
  const g = new OnnxGraph('attention');
  const q = g.input('q', ['batch', 'length', H * d]);
  const k = g.input('k', ['batch', 'length', H * d]);
  const v = g.input('v', ['batch', 'length', H * d]);
  g.node('Identity', [build(g, q, k, v)], {}, { names: ['out'] });
  g.output('out', ['batch', 'length', H * d]);
  return g.toBytes({ microsoft: true });
}

const geometry = (causal: boolean) => ({ heads: H, lq: L, lk: L, queryOffset: 0, causal });

/** HyPE's bias as the distance table its kernel route builds. */
function hypeBias(p: { mu: number[]; tau: number[] }, causal: boolean): PositionBias {
  const table = hypeDistanceTable(Float64Array.from(p.tau), Float64Array.from(p.mu), 1, geometry(causal));
  return { kind: 'distance', table };
}

function reference(
  q: Float32Array,
  k: Float32Array,
  v: Float32Array,
  causal: boolean,
  bias: PositionBias,
): Float64Array {
  const shape: AttentionShape = { batch: B, heads: H, kvHeads: H, lq: L, lk: L, headDim: d, valueDim: d };
  const out = new ReferenceBackend().attentionForward(shape, toBHLD(q, d), toBHLD(k, d), toBHLD(v, d), {
    causal,
    scale: 1 / Math.sqrt(d),
    bias,
  }).out;
  // back to [B, L, H, d]
  const res = new Float64Array(out.length);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let l = 0; l < L; l++)
        for (let c = 0; c < d; c++) res[((b * L + l) * H + h) * d + c] = out[((b * H + h) * L + l) * d + c]!;
  return res;
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

const presets: Record<string, { mu: number[]; tau: number[] }> = {
  // SPEC section 3: curvature mu with mu * L_extra = 0.5, amplitude tau = -m / mu reaches ALiBi's slopes.
  recency: { mu: slopes.map(() => 0.5 / lengthExtra), tau: slopes.map((m) => -m / (0.5 / lengthExtra)) },
  // The paper's literal choice: tau = 1, mu = 1 / L_extra (rewards distance).
  paper: { mu: slopes.map(() => 1 / lengthExtra), tau: slopes.map(() => 1) },
};

describe('HyPE through onnxruntime MultiHeadAttention (unmodified fused kernel)', () => {
  const rng = new Rng(17);
  const q = randn(rng, B * L * H * d);
  const k = randn(rng, B * L * H * d);
  const v = randn(rng, B * L * H * d);

  for (const [name, p] of Object.entries(presets))
    for (const causal of [true, false])
      for (const shift of [0, 'center'] as const) {
        it(`${name}, ${causal ? 'causal' : 'bidirectional'}, shift ${shift}: matches the fp64 reference`, async () => {
          const params: HypeGraphParams = { heads: H, headDim: d, mu: p.mu, tau: p.tau, pairs: 1, shift };
          const bytes = graphWith((g, q_, k_, v_) => {
            const { qHat, kHat } = hypeAugment(g, q_, k_, params);
            return multiHeadAttention(g, qHat, kHat, v_, { heads: H, scale: 1 / Math.sqrt(d), causal });
          });
          const ours = reference(q, k, v, causal, hypeBias(p, causal));
          const err = maxAbsDiff(await run(bytes, q, k, v), ours);
          // fp32 kernel on O(1) outputs; the recovered bias has error ~ |tau| sqrt(d)/2 * 2^-24 per product
          // (SPEC section 4), i.e. < 1e-5 logits here. 1e-4 is the bound.
          expect(err).toBeLessThan(1e-4);
        });
      }

  it('the scale matters: onnxruntime default 1/sqrt(d+2) is measurably wrong, 1/sqrt(d) is right', async () => {
    const p = presets.recency!;
    const params: HypeGraphParams = { heads: H, headDim: d, mu: p.mu, tau: p.tau, pairs: 1, shift: 0 };
    const build = (scale: number | undefined) =>
      graphWith((g, q_, k_, v_) => {
        const { qHat, kHat } = hypeAugment(g, q_, k_, params);
        return multiHeadAttention(g, qHat, kHat, v_, { heads: H, causal: true, ...(scale ? { scale } : {}) });
      });
    const ours = reference(q, k, v, true, hypeBias(p, true));
    const right = maxAbsDiff(await run(build(1 / Math.sqrt(d)), q, k, v), ours);
    const wrong = maxAbsDiff(await run(build(undefined), q, k, v), ours);
    expect(right).toBeLessThan(1e-4);
    // 1/sqrt(18) vs 1/sqrt(16) rescales every logit (bias included) by 0.943: errors of order 1e-2 on O(1) outputs.
    expect(wrong).toBeGreaterThan(1e-3);
  });

  it('zero-padding the augmented head dim to a multiple of 8 leaves the output unchanged', async () => {
    const p = presets.recency!;
    const outputs: Float32Array[] = [];
    for (const padMultiple of [1, 8]) {
      const params: HypeGraphParams = { heads: H, headDim: d, mu: p.mu, tau: p.tau, pairs: 1, shift: 0, padMultiple };
      const bytes = graphWith((g, q_, k_, v_) => {
        const { qHat, kHat, width } = hypeAugment(g, q_, k_, params);
        expect(width).toBe(padMultiple === 8 ? 24 : 18);
        return multiHeadAttention(g, qHat, kHat, v_, { heads: H, scale: 1 / Math.sqrt(d), causal: true });
      });
      outputs.push(await run(bytes, q, k, v));
    }
    // Zero columns add exact zeros to every dot product; only the kernel's summation order may differ.
    expect(maxAbsDiff(outputs[0]!, outputs[1]!)).toBeLessThan(1e-6);
  });

  it('ALiBi through an attention_bias input computed in the graph matches the reference', async () => {
    const bytes = graphWith((g, q_, k_, v_) =>
      multiHeadAttention(g, q_, k_, v_, {
        heads: H,
        scale: 1 / Math.sqrt(d),
        causal: true,
        attentionBias: alibiBiasTensor(g, q_, slopes),
      }),
    );
    const table = alibiDistanceTable(Float64Array.from(slopes), geometry(true));
    const ours = reference(q, k, v, true, { kind: 'distance', table });
    expect(maxAbsDiff(await run(bytes, q, k, v), ours)).toBeLessThan(1e-4);
  });
});
