/**
 * `npm run bench:webgpu`: our WebGPU kernels on whatever adapter Dawn finds (lavapipe on a CPU-only machine), side
 * by side in one run: tiled gemm, fused attention forward and backward; onnxruntime-web's WebGPU com.microsoft
 * MultiHeadAttention forward (inference only: it has no backward); and @jax-js/jax's webgpu backend, whose
 * nn.dotProductAttention (einsum, softmax, einsum) is jitted forward and as the gradient of sum(out * dOut) with
 * respect to q, k, v. All at the same shapes and on the same adapter. Ratios: attention against our gemm's rate
 * (targets: forward >= 50%, backward >= 35%), ours against onnxruntime-web's forward and against jax-js's forward
 * and backward. Outputs are compared (max abs difference): ours against onnxruntime-web's forward, and against
 * jax-js's forward and its three gradients (the larger of those is shown).
 *
 *   npm run bench:webgpu                                  # lavapipe-sized: B=1, H=4, d=64, L = 128, 256
 *   npm run bench:webgpu -- --batch 8 --heads 8 --lengths 1024,4096,16384 --gemm 4096   # a real GPU
 *   npm run bench:webgpu -- --no-ort --no-jax
 *   npm run bench:webgpu -- --no-ort --no-jax --lengths 64 --gemm 64 --reps 1 --train-shapes a,tiny   # short
 *
 * Training-step rows: --train-steps timed steps (x10 for the tiny model) after two warm-up steps, with kernels
 * batched into one submit between host writes and reads (context.ts) and, side by side, one submit per kernel.
 *
 * FLOPs: forward 4 B H Lq Lk d (QK^T and PV), causal counting only visible pairs L (L + 1) / 2; backward 2.5x the
 * forward (the FlashAttention convention: five products instead of two; our backward recomputes the logits in both
 * of its kernels, so it does more work than it is credited with). Every engine is credited the same FLOPs (jax-js
 * computes and masks all L^2 logits when causal), so the ours/other columns are ratios of times. gemm 2 n^3. Each
 * figure is the best of --reps timed runs after one warm-up (which pays pipeline compilation: minutes for
 * onnxruntime-web on lavapipe the first time, cached by Mesa afterwards; jit tracing and compilation for jax-js),
 * each run ending when the GPU queue is done.
 */
import { create, globals } from 'webgpu';
import type { GpuContext, GpuTensor } from '../src/backend/webgpu/context.ts';
import { acquireGpu } from '../src/backend/webgpu/context.ts';
import { gpuGemm } from '../src/backend/webgpu/gemm.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../src/backend/webgpu/attention.ts';
import { multiHeadAttention } from '../src/interop/onnx-attention.ts';
import { OnnxGraph } from '../src/interop/onnx-graph.ts';
import { headsToTokens } from '../src/tensor.ts';
import { importJax } from './jax-node.ts';
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
    jax: !argv.includes('--no-jax'),
    train: !argv.includes('--no-train'),
    trainSteps: Number(get('train-steps') ?? 3),
    trainShapes: (get('train-shapes') ?? 'a,tiny').split(','),
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

/** The training-step rows' shapes: bench:train's shape (a), and a tiny model whose step is bound by dispatches. */
const TRAIN_SHAPES = {
  a: { B: 8, L: 128, width: 128, layers: 1, heads: 4, stepsPer: 1 },
  tiny: { B: 2, L: 16, width: 32, layers: 2, heads: 4, stepsPer: 10 },
} as const;

/**
 * ms per training step on the WebGPU backend at one of TRAIN_SHAPES; `batching` false submits each kernel on its
 * own (the submission before batching, context.ts), for the side-by-side column.
 */
async function trainStepMs(
  ctx: GpuContext,
  pe: string,
  steps: number,
  shape: (typeof TRAIN_SHAPES)[keyof typeof TRAIN_SHAPES],
  batching: boolean,
): Promise<{ ms: number; loss: number }> {
  const { B, L, width, layers, heads } = shape;
  ctx.batching = batching;
  const cfg = parseModelConfig({ width, layers, heads, trainLength: L, pe, dtype: 'float32' });
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

/**
 * Browsers' navigator.gpu on Node: the `webgpu` package's Dawn instance and its GPU* classes as globals, so that
 * onnxruntime-web and jax-js find the same adapter ours uses. jax-js also reads navigator.userAgent.
 */
function installNavigator(gpu: GPU): void {
  if ((globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu === gpu) return;
  Object.assign(globalThis, globals);
  Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: 'Node.js' }, configurable: true });
}

/** onnxruntime-web's WebGPU execution provider on the same Dawn instance, or why it is unavailable. */
async function loadOrt(gpu: GPU): Promise<typeof import('onnxruntime-web') | string> {
  try {
    installNavigator(gpu);
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

type Jax = typeof import('@jax-js/jax');

/** @jax-js/jax with its webgpu backend on the same Dawn instance, or why it is unavailable. */
async function loadJax(gpu: GPU): Promise<Jax | string> {
  try {
    installNavigator(gpu);
    const jax = await importJax();
    const ready = await jax.init('webgpu');
    if (!ready.includes('webgpu')) return 'jax-js found no WebGPU adapter/device';
    jax.defaultDevice('webgpu');
    return jax;
  } catch (e) {
    return `@jax-js/jax (webgpu) failed to load: ${String(e)}`;
  }
}

/**
 * jax-js's attention at one shape, inputs in token layout [B, L, H, D]: forward and backward (gradients of
 * sum(out * dOut) with respect to q, k, v) each jitted once, timed like ours; outputs in token layout for comparison.
 */
async function benchJax(
  jax: Jax,
  reps: number,
  dims: [number, number, number, number],
  tokens: Float32Array[],
  opts: { causal: boolean; scale: number },
): Promise<{ tf: number; tb: number; out: Float32Array; grads: Float32Array[] }> {
  const { numpy: np, nn, jit, grad } = jax;
  type A = InstanceType<Jax['Array']>;
  const [q, k, v, dOut] = tokens.map((t) => np.array(t).reshape(dims)) as [A, A, A, A];
  const attend = (a: A, b: A, c: A) => nn.dotProductAttention(a, b, c, { isCausal: opts.causal, scale: opts.scale });
  const fwd = jit(attend);
  const bwd = jit(grad((a: A, b: A, c: A, g: A) => attend(a, b, c).mul(g).sum(), { argnums: [0, 1, 2] }));
  const tf = await best(reps, async () => {
    (await jax.blockUntilReady(fwd(q.ref, k.ref, v.ref))).dispose();
  });
  const tb = await best(reps, async () => {
    for (const g of await jax.blockUntilReady(bwd(q.ref, k.ref, v.ref, dOut.ref) as A[])) g.dispose();
  });
  const out = (await fwd(q.ref, k.ref, v.ref).data()) as Float32Array;
  const grads = await Promise.all((bwd(q, k, v, dOut) as A[]).map(async (g) => (await g.data()) as Float32Array));
  fwd.dispose();
  bwd.dispose();
  return { tf, tb, out, grads };
}

const maxDiff = (a: Float32Array, b: Float32Array) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i]!)), 0);
const expo = (x: number) => (Number.isFinite(x) ? x.toExponential(1) : 'n/a');

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
  const jax = args.jax ? await loadJax(gpu) : 'disabled (--no-jax)';
  if (typeof jax === 'string') console.log(`(@jax-js/jax: ${jax})`);

  const { batch: B, heads: H, dim: D } = args;
  console.log(`\nattention B=${B} H=${H} d=${D}, f32, GFLOP/s (share of our gemm rate)`);
  console.log(
    '| L | causal | ours fwd | ours bwd | ort-web MHA fwd | ours/ort fwd | max |ours - ort| | jax-js fwd | ' +
      'jax-js bwd | ours/jax fwd | ours/jax bwd | max |ours - jax| fwd, bwd |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
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
      // Ours in token layout [B, L, H, D], as onnxruntime-web and jax-js take and give them.
      const toTokens = async (t: GpuTensor) => {
        const x = new Float32Array(size);
        headsToTokens(await ctx.downloadF32(t), x, B, H, L, D);
        return x;
      };
      const ours = await toTokens(fwd.out);
      const og = gpuAttentionBackward(ctx, shape, q, k, v, fwd.out, fwd.lse, dOut, opts);
      const oursGrads = [await toTokens(og.dq), await toTokens(og.dk), await toTokens(og.dv)];
      ctx.release(fwd.out, fwd.lse, og.dq, og.dk, og.dv);
      const tokens = host.map((x) => {
        const t = new Float32Array(size);
        headsToTokens(x, t, B, H, L, D);
        return t;
      });
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
        const [tq, tk, tv] = tokens.map((t) => new ort.Tensor('float32', t, [B, L, H * D]));
        const feeds = { q: tq!, k: tk!, v: tv! };
        let out: Float32Array = new Float32Array(0);
        const to = await best(args.reps, async () => {
          out = (await session.run(feeds)).out!.data as Float32Array;
        });
        ortRate = gf(flops, to);
        diff = maxDiff(out, ours);
        await session.release();
      }
      const f = gf(flops, tf);
      const b = gf(2.5 * flops, tb);
      let jaxCells = Array<string>(5).fill(typeof jax === 'string' ? 'n/a' : '');
      if (typeof jax !== 'string') {
        try {
          const j = await benchJax(jax, args.reps, [B, L, H, D], tokens, opts);
          const [jf, jb] = [gf(flops, j.tf), gf(2.5 * flops, j.tb)];
          const gradDiff = Math.max(...j.grads.map((g, i) => maxDiff(g, oursGrads[i]!)));
          const diffs = `${expo(maxDiff(j.out, ours))}, ${expo(gradDiff)}`;
          jaxCells = [fmt(jf), fmt(jb), `${fmt(f / jf)}x`, `${fmt(b / jb)}x`, diffs];
        } catch (e) {
          jaxCells = [`failed: ${String(e).split('\n')[0]}`, '', '', '', ''];
        }
      }
      const pct = (x: number) => ` (${fmt((100 * x) / gemmRate, 0)}%)`;
      console.log(
        `| ${L} | ${causal} | ${fmt(f)}${pct(f)} | ${fmt(b)}${pct(b)} | ${fmt(ortRate)} | ${fmt(f / ortRate)}x | ` +
          `${expo(diff)} | ${jaxCells.join(' | ')} |`,
      );
    }
    ctx.release(q, k, v, dOut);
  }
  console.log('\ntargets (issue 15): attention forward >= 50% of our gemm rate, backward >= 35%');

  if (args.train) {
    console.log(
      `\ntraining step, f32: bench:train shape (a) (1 block, B=8, L=128, width 128, 4 heads) and a tiny model ` +
        '(2 blocks, B=2, L=16, width 32, 4 heads: dispatch-bound); kernels batched into one submit between host ' +
        'writes and reads (context.ts) against one submit per kernel',
    );
    console.log(
      '| shape | encoding | ms per step (batched) | tokens/s | ms per step (submit per kernel) | ratio | loss after |',
    );
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    for (const [name, shape] of Object.entries(TRAIN_SHAPES)) {
      if (!args.trainShapes.includes(name)) continue;
      for (const pe of ['none', 'hype']) {
        const steps = args.trainSteps * shape.stepsPer; // the tiny model's steps are short: time more of them
        const each = await trainStepMs(ctx, pe, steps, shape, false);
        const { ms, loss } = await trainStepMs(ctx, pe, steps, shape, true);
        if (loss !== each.loss) throw new Error(`batching changed the loss: ${loss} vs ${each.loss}`);
        const tokens = shape.B * shape.L;
        console.log(
          `| ${name} | ${pe} | ${fmt(ms, 1)} | ${fmt(tokens / (ms / 1000), 0)} | ${fmt(each.ms, 1)} | ` +
            `${fmt(each.ms / ms)}x | ${fmt(loss, 3)} |`,
        );
      }
    }
    console.log('compare with `npm run bench:train -- --only a` (ours (native, ...) rows: the same step on the CPU)');
  }
  ctx.destroy();
  process.exit(0);
}

await main();
