/**
 * Browser side of test/webgpu-browser.test.ts, bundled by esbuild into the test page. It fetches its inputs (fp64
 * values written by Node), acquires the device from navigator.gpu, runs one fused attention forward and backward,
 * a few AdamW steps of the tiny model, and a few training steps of the library's Transformer on WebGpuBackend (the
 * step of src/train/step.ts written out: that module reaches a Node-only memory check), and publishes every result
 * (plain arrays) as `hypeResult`, a promise the Node side awaits: { ok: true, ... } or { ok: false, error } —
 * never a silent hang.
 */
import { acquireGpu, type GpuContext, type GpuTensor } from '../../src/backend/webgpu/context.ts';
import { gpuAttentionBackward, gpuAttentionForward } from '../../src/backend/webgpu/attention.ts';
import { gpuTrain, NAMES, type Params } from '../helpers/webgpu-tiny-model.ts';
import type { AttentionCase, AttentionInputs } from '../helpers/webgpu-attention-check.ts';
import { WebGpuBackend } from '../../src/backend/webgpu/backend.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { STAT_GRAD_NORM, STAT_LOSS, Transformer } from '../../src/model/transformer.ts';
import { AdamW } from '../../src/train/optimizer.ts';
import type { TrainConfig } from '../../src/train/config.ts';

/** What Node serves as /input.json (typed arrays travel as plain arrays). */
export interface PageInput {
  attention: {
    case: AttentionCase;
    inputs: Record<'q' | 'k' | 'v' | 'dOut' | 'table', number[]> & Pick<AttentionInputs, 'opts'>;
  }[];
  train: { params: Record<keyof Params, number[]>; steps: number };
  /** Transformer steps: the model config, the training options AdamW and clipping read, and one batch per step. */
  transformer: { config: unknown; train: TrainConfig; batch: number; length: number; batches: number[][] };
}

/** One training step as src/train/step.ts enqueues it, then its one read (the statistics). */
async function transformerLosses(ctx: GpuContext, t: PageInput['transformer']) {
  const be = new WebGpuBackend(ctx);
  const model = new Transformer(parseModelConfig(t.config), be);
  const opt = new AdamW(model.parameters(), be);
  const grads = model.parameters().map((p) => p.grad);
  const losses: number[] = [];
  for (const seq of t.batches) {
    const ids = Int32Array.from(seq);
    const n = t.batch * t.length;
    model.zeroGrad();
    model.enqueueForward(ids.subarray(0, n), ids.subarray(1, n + 1), t.batch, t.length);
    model.backward();
    be.globalNorm(grads, model.stats, STAT_GRAD_NORM);
    be.clipByNorm(grads, model.stats, STAT_GRAD_NORM, t.train.clip);
    opt.update(t.train, t.train.lr);
    losses.push((await be.read(model.stats))[STAT_LOSS]!);
  }
  return losses;
}

async function run(): Promise<Record<string, unknown>> {
  const input = (await (await fetch('/input.json')).json()) as PageInput;
  const ctx = await acquireGpu((globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu);
  const read = async (t: GpuTensor) => Array.from(await ctx.download(t));
  const attention = [];
  for (const { case: c, inputs: x } of input.attention) {
    const [q, k, v, dOut] = [x.q, x.k, x.v, x.dOut].map((a) => ctx.upload(a));
    const table = c.table ? ctx.upload(x.table) : undefined;
    const opts = table ? { ...x.opts, table } : x.opts;
    const fwd = gpuAttentionForward(ctx, c.shape, q!, k!, v!, opts);
    const grads = gpuAttentionBackward(ctx, c.shape, q!, k!, v!, fwd.out, fwd.lse, dOut!, opts);
    attention.push({
      out: await read(fwd.out),
      // -Infinity does not survive JSON: rows that see no key send their log-sum-exp as a string.
      lse: (await read(fwd.lse)).map((e) => (Number.isFinite(e) ? e : String(e))),
      dq: await read(grads.dq),
      dk: await read(grads.dk),
      dv: await read(grads.dv),
      dTable: grads.dTable ? await read(grads.dTable) : undefined,
    });
  }
  const p0 = Object.fromEntries(NAMES.map((n) => [n, Float64Array.from(input.train.params[n])])) as Params;
  const train = await gpuTrain(ctx, p0, input.train.steps);
  const params: Record<string, number[]> = {};
  for (const n of NAMES) params[n] = await read(train.params[n]);
  const transformer = await transformerLosses(ctx, input.transformer);
  return {
    adapter: ctx.description,
    features: [...ctx.adapterFeatures],
    attention,
    losses: train.losses,
    params,
    transformer,
  };
}

(globalThis as { hypeResult?: Promise<unknown> }).hypeResult = run().then(
  (r) => ({ ok: true, ...r }),
  (e: unknown) => ({ ok: false, error: e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e) }),
);
