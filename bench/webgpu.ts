/**
 * `npm run bench:webgpu`: our WebGPU kernels on whatever adapter Dawn finds (lavapipe on a CPU-only machine), side
 * by side in one run: tiled gemm, fused attention forward and backward, and onnxruntime-web's WebGPU
 * com.microsoft MultiHeadAttention forward at the same shapes and on the same adapter (inference only: it has no
 * backward). Ratios: attention against our gemm's rate (targets: forward >= 50%, backward >= 35%) and ours against
 * onnxruntime-web's forward. The two forwards' outputs are also compared (max abs difference) as a sanity check.
 *
 *   npm run bench:webgpu                                  # lavapipe-sized: B=1, H=4, d=64, L = 128, 256
 *   npm run bench:webgpu -- --batch 8 --heads 8 --lengths 1024,4096,16384 --gemm 4096   # a real GPU
 *   npm run bench:webgpu -- --no-ort
 *
 * FLOPs: forward 4 B H Lq Lk d (QK^T and PV), causal counting only visible pairs L (L + 1) / 2; backward 2.5x the
 * forward (the FlashAttention convention: five products instead of two; our backward recomputes the logits in both
 * of its kernels, so it does more work than it is credited with). gemm 2 n^3. Each figure is the best of --reps
 * timed runs after one warm-up (which pays pipeline compilation: minutes for onnxruntime-web on lavapipe the first
 * time, cached by Mesa afterwards), each run ending when the GPU queue is done.
 */
import { create, globals } from 'webgpu';
import type { GpuContext, GpuTensor } from '../src/backend/webgpu/context.ts';
import { acquireGpu } from '../src/backend/webgpu/context.ts';
import { gpuGemm } from '../src/backend/webgpu/gemm.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../src/backend/webgpu/attention.ts';
import { multiHeadAttention } from '../src/interop/onnx-attention.ts';
import { OnnxGraph } from '../src/interop/onnx-graph.ts';
import { headsToTokens } from '../src/tensor.ts';
import { WebGpuBackend } from '../src/backend/webgpu/backend.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { trainingStep } from '../src/train/step.ts';

function parseArgs(argv: string[]) {
  const get = (name: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  return {
    batch: Number(get('batch') ?? 1),
    heads: Number(get('heads') ?? 4),
    dim: Number(get('dim') ?? 64),
    lengths: (get('lengths') ?? '128,256').split(',').map(Number),
    gemm: Number(get('gemm') ?? 256),
    reps: Number(get('reps') ?? 3),
    ort: !argv.includes('--no-ort'),
    train: !argv.includes('--no-train'),
    trainSteps: Number(get('train-steps') ?? 3),
  };
}

function random(n: number, seed: number): Float32Array {
  // A small LCG: reproducible inputs without pulling in the library's RNG for a benchmark.
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

/** ms per training step on the WebGPU backend at bench:train's shape (a) (module comment). */
async function trainStepMs(ctx: GpuContext, pe: string, steps: number): Promise<{ ms: number; loss: number }> {
  const [B, L] = [8, 128];
  const cfg = parseModelConfig({ width: 128, layers: 1, heads: 4, trainLength: L, pe, dtype: 'float32' });
  const backend = new WebGpuBackend(ctx);
  const model = new Transformer(cfg, backend);
  const opt = new AdamW(model.parameters(), backend);
  const train = parseTrainConfig({});
  const seq = Int32Array.from(random(B * L + 1, 7), (x) => Math.floor((x + 1) * 128) & 255);
  const input = { tokens: seq.subarray(0, B * L), targets: seq.subarray(1), batch: B, length: L, lr: 1e-3 };
  const step = (i: number) => trainingStep(model, opt, train, { ...input, where: `at step ${i}` });
  for (let i = 0; i < 2; i++) await step(i); // warm-up: pipelines, buffer pools, uploaded position terms
  const t0 = performance.now();
  let loss = NaN;
  for (let i = 0; i < steps; i++) loss = (await step(2 + i)).loss;
  return { ms: (performance.now() - t0) / steps, loss };
}

async function best(reps: number, run: () => Promise<void>): Promise<number> {
  await run(); // warm-up: compiles pipelines
  let t = Infinity;
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    await run();
    t = Math.min(t, (performance.now() - t0) / 1000);
  }
  return t;
}

const gf = (flops: number, s: number) => flops / s / 1e9;
const fmt = (x: number, digits = 2) => (Number.isFinite(x) ? x.toFixed(digits) : 'n/a');

/** onnxruntime-web's WebGPU execution provider on the same Dawn instance, or why it is unavailable. */
async function loadOrt(gpu: GPU): Promise<typeof import('onnxruntime-web') | string> {
  try {
    Object.assign(globalThis, globals);
    Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true });
    // onnxruntime-web hands writeBuffer views of its (shared) wasm memory; Dawn for Node rejects SharedArrayBuffer
    // views ("Invalid argument"), so those are copied into a plain buffer first.
    const queue = (globals as { GPUQueue: { prototype: GPUQueue } }).GPUQueue.prototype;
    const write = queue.writeBuffer;
    queue.writeBuffer = function (this: GPUQueue, buffer, offset, data, dataOffset = 0, size?: number) {
      if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
        const el = (data as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
        const count = size ?? data.byteLength / el - dataOffset;
        const copy = new Uint8Array(data.buffer, data.byteOffset + dataOffset * el, count * el).slice();
        return write.call(this, buffer, offset, copy, 0, copy.byteLength);
      }
      return write.call(this, buffer, offset, data as Parameters<GPUQueue['writeBuffer']>[2], dataOffset, size);
    } as GPUQueue['writeBuffer'];
    const ort = await import('onnxruntime-web/webgpu');
    ort.env.wasm.numThreads = 1;
    return ort as unknown as typeof import('onnxruntime-web');
  } catch (e) {
    return `onnxruntime-web failed to load: ${String(e)}`;
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const gpu = create([]);
  const ctx: GpuContext = await acquireGpu(gpu);
  const features = ctx.adapterFeatures.filter((f) => /f16|subgroup/.test(f));
  console.log(`adapter: ${ctx.description}; features: ${features.join(', ') || 'none of shader-f16/subgroups'}`);

  // gemm ceiling of our own kernel on this adapter.
  const n = args.gemm;
  const [ga, gb, gc] = [1, 2, 3].map((s) => ctx.upload(random(n * n, s)));
  const tGemm = await best(args.reps, async () => {
    gpuGemm(ctx, false, false, n, n, n, 1, ga!, gb!, 0, gc!, { lda: n, ldb: n, ldc: n });
    await ctx.sync();
  });
  const gemmRate = gf(2 * n ** 3, tGemm);
  console.log(`gemm ${n}^3 (f32): ${fmt(gemmRate)} GFLOP/s`);
  ctx.release(ga!, gb!, gc!);

  const ort = args.ort ? await loadOrt(gpu) : 'disabled (--no-ort)';
  if (typeof ort === 'string') console.log(`(onnxruntime-web: ${ort})`);

  const { batch: B, heads: H, dim: D } = args;
  console.log(`\nattention B=${B} H=${H} d=${D}, f32, GFLOP/s (share of our gemm rate)`);
  console.log('| L | causal | ours fwd | ours bwd | ort-web MHA fwd | ours/ort fwd | max |ours - ort| |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const L of args.lengths) {
    const shape = { batch: B, heads: H, kvHeads: H, lq: L, lk: L, headDim: D, valueDim: D };
    const size = B * H * L * D;
    const host = [1, 2, 3, 4].map((s) => random(size, 10 + s));
    const [q, k, v, dOut] = host.map((x) => ctx.upload(x)) as [GpuTensor, GpuTensor, GpuTensor, GpuTensor];
    for (const causal of [false, true]) {
      const opts = { causal, scale: 1 / Math.sqrt(D), queryOffset: 0 };
      const pairs = causal ? (L * (L + 1)) / 2 : L * L;
      const flops = 4 * B * H * pairs * D;
      const tf = await best(args.reps, async () => {
        const f = gpuAttentionForward(ctx, shape, q, k, v, opts);
        await ctx.sync();
        ctx.release(f.out, f.lse);
      });
      const fwd = gpuAttentionForward(ctx, shape, q, k, v, opts);
      const tb = await best(args.reps, async () => {
        const g = gpuAttentionBackward(ctx, shape, q, k, v, fwd.out, fwd.lse, dOut, opts);
        await ctx.sync();
        ctx.release(g.dq, g.dk, g.dv);
      });
      const ours = new Float32Array(size);
      headsToTokens(await ctx.downloadF32(fwd.out), ours, B, H, L, D);
      ctx.release(fwd.out, fwd.lse);
      let ortRate = NaN;
      let diff = NaN;
      if (typeof ort !== 'string') {
        const g = new OnnxGraph('mha');
        const names = ['q', 'k', 'v'].map((x) => g.input(x, [B, L, H * D]));
        const mha = multiHeadAttention(g, names[0]!, names[1]!, names[2]!, { heads: H, scale: opts.scale, causal });
        g.node('Identity', [mha], {}, { names: ['out'] });
        g.output('out', [B, L, H * D]);
        const session = await ort.InferenceSession.create(g.toBytes({ microsoft: true }), {
          executionProviders: ['webgpu'],
        });
        const tokens = host.slice(0, 3).map((x) => {
          const t = new Float32Array(size);
          headsToTokens(x, t, B, H, L, D);
          return new ort.Tensor('float32', t, [B, L, H * D]);
        });
        const feeds = { q: tokens[0]!, k: tokens[1]!, v: tokens[2]! };
        let out: Float32Array = new Float32Array(0);
        const to = await best(args.reps, async () => {
          out = (await session.run(feeds)).out!.data as Float32Array;
        });
        ortRate = gf(flops, to);
        diff = 0;
        for (let i = 0; i < size; i++) diff = Math.max(diff, Math.abs(out[i]! - ours[i]!));
        await session.release();
      }
      const f = gf(flops, tf);
      const b = gf(2.5 * flops, tb);
      const pct = (x: number) => ` (${fmt((100 * x) / gemmRate, 0)}%)`;
      console.log(
        `| ${L} | ${causal} | ${fmt(f)}${pct(f)} | ${fmt(b)}${pct(b)} | ${fmt(ortRate)} | ${fmt(f / ortRate)}x | ` +
          `${Number.isFinite(diff) ? diff.toExponential(1) : 'n/a'} |`,
      );
    }
    ctx.release(q, k, v, dOut);
  }
  console.log('\ntargets (issue 15): attention forward >= 50% of our gemm rate, backward >= 35%');

  if (args.train) {
    console.log(`\ntraining step, bench:train shape (a): 1 block, B=8, L=128, width 128, 4 heads, f32`);
    console.log('| encoding | ms per step (webgpu) | tokens/s | loss after |');
    console.log('| --- | --- | --- | --- |');
    for (const pe of ['none', 'hype']) {
      const { ms, loss } = await trainStepMs(ctx, pe, args.trainSteps);
      console.log(`| ${pe} | ${fmt(ms, 1)} | ${fmt((8 * 128) / (ms / 1000), 0)} | ${fmt(loss, 3)} |`);
    }
    console.log('compare with `npm run bench:train -- --only a` (ours (native, ...) rows: the same step on the CPU)');
  }
  ctx.destroy();
  process.exit(0);
}

await main();
