/**
 * Generation on the WebGPU backend (lavapipe here and in CI): `generateAsync` with the KV cache on the device, for
 * the device-portable encodings none, ALiBi and HyPE (preset recency, concat route with cached [K, eta^K] rows and
 * kernel route via queryOffset), against the same greedy generation on the native backend (f32 on the CPU) and
 * against full recomputation on the device (`cache: false`). Each step reads back only its new logits.
 *
 * Bound on the logits: both backends run f32 from the same initial parameters. They differ in summation order only;
 * a logit is a chain of reductions of length at most K = max(C, F, L) = 64 per layer (gemm depths, layer norm,
 * attention over at most L keys) and a final dot of length C, each erring by about K U32 relative to the magnitudes
 * summed, so the logits agree to about layers * K * U32 * (scale of the summands) ~ 2 * 64 * 6e-8 * O(1) ~ 1e-5.
 * Bound: 2e-5 absolute (logits here are O(1); measured about 2e-7, printed). Greedy tokens agree when the top two logits of
 * every step are further apart than the bound, which the test checks (else the comparison would be meaningless).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import type { Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { WebGpuBackend } from '../src/backend/webgpu/backend.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { generateAsync } from '../src/model/generate.ts';
import { Transformer } from '../src/model/transformer.ts';
import { gpu, maxAbsDiff } from './helpers/webgpu.ts';

let gpuBackend: WebGpuBackend;
beforeAll(async () => {
  gpuBackend = new WebGpuBackend(await gpu());
}, 60_000);

const TOKENS = 12;
const BOUND = 2e-5;
const prompt = new TextEncoder().encode('To be, or not');

async function greedy<T, I>(be: Backend<T, I>, pe: object, cache = true) {
  const cfg = parseModelConfig({ width: 32, layers: 2, heads: 4, kvHeads: 2, mlpWidth: 64, trainLength: 32, pe });
  const logits: Float32Array[] = [];
  let reads = 0;
  const read = be.read;
  be.read = (src, offset, n) => (reads++, read.call(be, src, offset, n));
  const out = await generateAsync(new Transformer(cfg, be), prompt, {
    tokens: TOKENS,
    temperature: 0,
    topK: 0,
    seed: 1,
    cache,
    onToken: (l) => logits.push(Float32Array.from(l)),
  });
  be.read = read;
  return { out: [...out], logits, reads };
}

/** Smallest gap between the largest and second-largest logit over the steps. */
function minGap(rows: Float32Array[]): number {
  return Math.min(
    ...rows.map((r) => {
      const s = [...r].sort((a, b) => b - a);
      return s[0]! - s[1]!;
    }),
  );
}

const ENCODINGS = [
  { name: 'none', options: {} },
  { name: 'alibi', options: {} },
  { name: 'hype', options: { preset: 'recency' } },
  { name: 'hype', options: { preset: 'recency', route: 'kernel' } },
];

describe("generate on webgpu: the native backend's tokens and logits, and full recomputation's", () => {
  for (const pe of ENCODINGS) {
    it(`${pe.name} ${JSON.stringify(pe.options)}: ${TOKENS} greedy tokens`, async () => {
      const g = await greedy(gpuBackend, pe);
      const n = await greedy(loadBackend('native', { threads: 1 }), pe);
      const full = await greedy(gpuBackend, pe, false);
      expect(g.reads).toBe(TOKENS); // one read per step: its new logits
      let worst = 0;
      let worstFull = 0;
      for (let t = 0; t < TOKENS; t++) {
        worst = Math.max(worst, maxAbsDiff(g.logits[t]!, n.logits[t]!));
        worstFull = Math.max(worstFull, maxAbsDiff(g.logits[t]!, full.logits[t]!));
      }
      console.log(
        `${pe.name} ${JSON.stringify(pe.options)}: max |webgpu - native| ${worst.toExponential(2)}, ` +
          `max |cached - recomputed| ${worstFull.toExponential(2)}, smallest top-2 gap ${minGap(n.logits).toExponential(2)}`,
      );
      expect(worst).toBeLessThanOrEqual(BOUND);
      expect(worstFull).toBeLessThanOrEqual(BOUND);
      expect(minGap(n.logits)).toBeGreaterThan(2 * BOUND);
      expect(g.out).toEqual(n.out);
      expect(full.out).toEqual(n.out);
    }, 60_000);
  }
});
