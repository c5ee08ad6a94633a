/**
 * Backend-owned tensors (backend.ts, issue 13): a whole training step (forward, backward, global-norm clipping,
 * AdamW) through src/train/step.ts on a device backend makes exactly ONE read-back (the statistics: loss, gradient
 * norm, non-finite logit count) and, after the first step, uploads nothing but the batch's tokens and targets. The
 * device here is the reference backend behind opaque handles that throw on any typed-array access
 * (helpers/opaque-backend.ts), so the model and the portable encodings are shown never to touch a host array. The
 * same steps on host arrays (the reference backend, tables stored in the model dtype as a device stores them) give
 * the same losses and parameters bit for bit: the device paths of the encodings compute the same fp64-built terms.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { AttentionOptions, Backend } from '../src/backend/backend.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import { CachedDecoder } from '../src/model/decode.ts';
import { Transformer } from '../src/model/transformer.ts';
import { defineEncoding } from '../src/pe/options.ts';
import { plainAttend } from '../src/pe/attention-plumbing.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { loadCheckpoint, restoreWeights, saveCheckpoint, saveCheckpointAsync } from '../src/train/checkpoint.ts';
import { evaluateHeldOut, evaluateHeldOutAsync } from '../src/train/evaluate.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { trainingStep } from '../src/train/step.ts';
import { TrainingRun } from '../src/train/trainer.ts';
import { Rng } from '../src/util/rng.ts';
import { OpaqueBackend } from './helpers/opaque-backend.ts';
import type { EncodingFactory } from '../src/pe/encoding.ts';

/**
 * The host side of the comparison: the reference backend with each distance table stored in fp32 before use, as a
 * device stores the fp64 table an encoding uploads into a tensor of the model dtype (the contract's one rounding).
 * ALiBi's tables are exact in fp32 either way; HyPE's kernel-route values are not, so without this the two runs
 * would differ by that rounding (about 1e-9 in the loss here) rather than agree bit for bit.
 */
class Fp32TableReference extends ReferenceBackend {
  private static fp32(opts: AttentionOptions): AttentionOptions {
    const bias = opts.bias;
    return bias?.kind === 'distance'
      ? { ...opts, bias: { kind: 'distance', table: Float32Array.from(bias.table) } }
      : opts;
  }
  override attentionForward(...[shape, q, k, v, opts]: Parameters<ReferenceBackend['attentionForward']>) {
    return super.attentionForward(shape, q, k, v, Fp32TableReference.fp32(opts));
  }
  override attentionBackward(...a: Parameters<ReferenceBackend['attentionBackward']>) {
    const [shape, q, k, v, out, lse, dOut, opts] = a;
    return super.attentionBackward(shape, q, k, v, out, lse, dOut, Fp32TableReference.fp32(opts));
  }
}

const B = 2;
const L = 12;

function config(pe: { name: string; options?: object }): ModelConfig {
  return parseModelConfig({ width: 16, layers: 2, heads: 4, kvHeads: 2, trainLength: L, dtype: 'float32', pe });
}

// clip 0.05 is below every gradient norm here, so the clipping path scales on the device each step.
const TRAIN = parseTrainConfig({ lr: 0.01, clip: 0.05 });

function batch(seed: number): { tokens: Int32Array; targets: Int32Array } {
  const rng = new Rng(seed);
  const tokens = Int32Array.from({ length: B * L }, () => rng.int(256));
  const targets = Int32Array.from({ length: B * L }, () => rng.int(256));
  return { tokens, targets };
}

async function steps<T, I>(backend: Backend<T, I>, cfg: ModelConfig, n: number, factory?: EncodingFactory<object>) {
  const model = new Transformer(cfg, backend, factory ? { encodingFactory: factory } : {});
  const opt = new AdamW(model.parameters(), backend);
  const out: { loss: number; gradNorm: number }[] = [];
  for (let s = 0; s < n; s++) {
    out.push(
      await trainingStep(model, opt, TRAIN, {
        ...batch(s + 1),
        batch: B,
        length: L,
        lr: 0.01,
        where: `at step ${s + 1}`,
      }),
    );
  }
  return { model, opt, out };
}

/** Per step after the first: [uploads, int uploads, reads]. */
async function transfersPerStep(cfg: ModelConfig, factory?: EncodingFactory<object>) {
  const { backend, impl } = OpaqueBackend.create();
  const model = new Transformer(cfg, backend, factory ? { encodingFactory: factory } : {});
  const opt = new AdamW(model.parameters(), backend);
  const step = (s: number) =>
    trainingStep(model, opt, TRAIN, { ...batch(s), batch: B, length: L, lr: 0.01, where: `at step ${s}` });
  await step(1);
  const seen: number[][] = [];
  for (let s = 2; s <= 3; s++) {
    impl.reset();
    await step(s);
    seen.push([impl.counts.uploads, impl.counts.uploadInts, impl.counts.reads]);
  }
  return seen;
}

const PORTABLE = [
  { name: 'none' },
  { name: 'alibi' },
  { name: 'alibi', options: { route: 'concat' } },
  { name: 'hype', options: { preset: 'recency' } },
  { name: 'hype', options: { preset: 'recency', route: 'kernel' } },
  { name: 'hype', options: { preset: 'paper', multiple: 8 } },
];

describe('a training step on backend-owned tensors', () => {
  for (const pe of PORTABLE) {
    const label = `${pe.name} ${JSON.stringify(pe.options ?? {})}`;
    it(`${label}: one read per step, only tokens and targets uploaded`, async () => {
      // [float uploads, int uploads (tokens, targets), reads (the statistics)] for steps 2 and 3.
      expect(await transfersPerStep(config(pe))).toEqual([
        [0, 2, 1],
        [0, 2, 1],
      ]);
    });

    it(`${label}: the same losses, norms and parameters as on host arrays`, async () => {
      const cfg = config(pe);
      const host = await steps(new Fp32TableReference(), cfg, 3);
      const { backend, impl } = OpaqueBackend.create();
      const dev = await steps(backend, cfg, 3);
      expect(dev.out).toEqual(host.out);
      expect(host.out[0]!.gradNorm).toBeGreaterThan(TRAIN.clip); // the clipping branch ran
      const hp = host.model.parameters();
      dev.model.parameters().forEach((p, i) => expect(impl.peek(p.data)).toEqual(hp[i]!.data));
    });
  }
});

describe('the transfer test can fail', () => {
  it('an encoding that uploads its table at every call is counted', async () => {
    // A portable-looking encoding that re-uploads a (useless) bias table each call instead of caching it.
    const leaky = defineEncoding<Record<string, never>>({
      name: 'leaky',
      description: 'test: plain attention that uploads one value per call',
      sites: ['score-bias'],
      defaults: {},
      create: () => ({
        name: 'leaky',
        sites: ['score-bias'],
        params: [],
        maxLength: Infinity,
        portable: true,
        attend(ctx, inputs) {
          const t = ctx.backend.allocate('float32', 1);
          ctx.backend.upload([0], t);
          return plainAttend(ctx, inputs);
        },
        denseLogits: () => new Float64Array(0),
      }),
    });
    const seen = await transfersPerStep(config({ name: 'leaky' }), leaky as unknown as EncodingFactory<object>);
    expect(seen).toEqual([
      [2, 2, 1], // one per block: the check above would fail
      [2, 2, 1],
    ]);
  });

  it('an encoding that reads a tensor as a host array throws', async () => {
    const peeking = defineEncoding<Record<string, never>>({
      name: 'peeking',
      description: 'test: plain attention that looks at q',
      sites: ['score-bias'],
      defaults: {},
      create: () => ({
        name: 'peeking',
        sites: ['score-bias'],
        params: [],
        maxLength: Infinity,
        portable: true,
        attend(ctx, inputs) {
          if (Number.isNaN(inputs.q[0])) throw new Error('unreachable');
          return plainAttend(ctx, inputs);
        },
        denseLogits: () => new Float64Array(0),
      }),
    });
    const { backend } = OpaqueBackend.create();
    await expect(
      steps(backend, config({ name: 'peeking' }), 1, peeking as unknown as EncodingFactory<object>),
    ).rejects.toThrow(/device handle was read like a host array/);
  });

  it('the host accessors refuse a device backend; host-only encodings are refused at construction', () => {
    const { backend } = OpaqueBackend.create();
    const model = new Transformer(config({ name: 'none' }), backend);
    const { tokens, targets } = batch(1);
    expect(() => model.forward(tokens, targets, B, L)).toThrow(/forward\(\) returns host arrays.*backend\.read/);
    expect(() => model.logits()).toThrow(HypeError);
    expect(() => new CachedDecoder(model, 1, 4).step(Int32Array.of(1), 1)).toThrow(
      /step\(\) returns host arrays.*stepAsync/,
    );
    for (const pe of [{ name: 'rope' }, { name: 't5' }, { name: 'hype', options: { preset: 'learned' } }]) {
      expect(() => new Transformer(config(pe), backend)).toThrow(
        new RegExp(`encoding '${pe.name}' runs on host backends only`),
      );
    }
  });
});

/**
 * Cached decoding over handles (src/model/decode.ts): the cache, activations and logits stay on the device; a step
 * uploads its new tokens (one uploadInt) and reads back only its logits. HyPE's concat route builds its cached
 * [K, eta^K] rows on the device from eta columns of the new rows only. The same steps on host arrays give the same
 * logits bit for bit (same kernels, same fp64-built terms rounded once to fp32).
 */
describe('cached decoding on backend-owned tensors', () => {
  const [Bd, prompt, steps] = [2, 5, 4];
  for (const pe of PORTABLE) {
    it(`${pe.name} ${JSON.stringify(pe.options ?? {})}: one read per step, the host's logits`, async () => {
      const cfg = config(pe);
      const hostDecoder = new CachedDecoder(new Transformer(cfg, new Fp32TableReference()), Bd, prompt + steps);
      const { backend, impl } = OpaqueBackend.create();
      const devDecoder = new CachedDecoder(new Transformer(cfg, backend), Bd, prompt + steps);
      let tokens = Int32Array.from({ length: Bd * prompt }, (_, i) => 97 + ((i * 5) % 11));
      let n = prompt;
      for (let s = 0; s <= steps - 1; s++) {
        const want = hostDecoder.step(tokens, n);
        impl.reset();
        const got = await devDecoder.stepAsync(tokens, n);
        expect(impl.counts.reads, `step ${s}`).toBe(1);
        expect(impl.counts.uploadInts, `step ${s}`).toBe(1);
        expect(got).toEqual(want);
        // Next: the greedy token of each sequence's last row.
        const V = cfg.vocab;
        tokens = Int32Array.from({ length: Bd }, (_, b) => {
          const row = want.subarray((b * n + n - 1) * V, (b * n + n) * V);
          return row.indexOf(Math.max(...row));
        });
        n = 1;
      }
      devDecoder.release();
    });
  }
});

describe('checkpoints leave a device backend by read-back', () => {
  it('saveCheckpointAsync writes what the host run writes; restoring uploads it and training continues alike', async () => {
    const cfg = config({ name: 'hype', options: { preset: 'recency' } });
    const dir = mkdtempSync(join(tmpdir(), 'hype-handles-'));
    try {
      const save = async <T, I>(backend: Backend<T, I>, sub: string) => {
        const { model, opt: optimizer, out } = await steps(backend, cfg, 2);
        const args = { model, optimizer, rng: new Rng(3), step: 2, train: TRAIN, corpus: { bytes: 0, sha256: '' } };
        await saveCheckpointAsync(join(dir, sub), args);
        return out;
      };
      const { backend, impl } = OpaqueBackend.create();
      await save(new ReferenceBackend(), 'host');
      impl.reset();
      await save(backend, 'device');
      expect(impl.counts.reads).toBeGreaterThan(0); // the checkpoint's tensors were read back, not peeked at
      const host = loadCheckpoint(join(dir, 'host'));
      const dev = loadCheckpoint(join(dir, 'device'));
      for (const [name, t] of host.weights.tensors) expect(dev.weights.tensors.get(name)!.data).toEqual(t.data);
      for (const [name, t] of host.optimizer.tensors) expect(dev.optimizer.tensors.get(name)!.data).toEqual(t.data);
      // Restored on the device, the weights are the same tensors again.
      const restored = new Transformer(cfg, backend);
      restoreWeights(restored, dev.weights);
      restored.parameters().forEach((p) => expect(impl.peek(p.data)).toEqual(host.weights.tensors.get(p.name)!.data));
      expect(() =>
        saveCheckpoint(join(dir, 'sync'), {
          model: restored,
          optimizer: new AdamW(restored.parameters(), backend),
          rng: new Rng(3),
          step: 1,
          train: TRAIN,
          corpus: { bytes: 0, sha256: '' },
        }),
      ).toThrow(/saveCheckpointAsync/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('held-out evaluation on a device backend', () => {
  it('evaluateHeldOutAsync scores what evaluateHeldOut scores on host arrays, reading back only its results', async () => {
    const cfg = config({ name: 'alibi' });
    const rng = new Rng(7);
    const data = Uint8Array.from({ length: 100 }, () => rng.int(256));
    const host = evaluateHeldOut(new Transformer(cfg, new Fp32TableReference()), data, L, { stride: 5, batch: 3 });
    const { backend, impl } = OpaqueBackend.create();
    const model = new Transformer(cfg, backend);
    impl.reset();
    const dev = await evaluateHeldOutAsync(model, data, L, { stride: 5, batch: 3 });
    expect(dev).toEqual(host);
    const passes = Math.ceil(host.windows / 3);
    // Per pass: tokens and targets up, statistics and losses down; each block's distance table goes up once.
    expect(impl.counts).toMatchObject({ uploads: cfg.layers, uploadInts: 2 * passes, reads: 2 * passes });
  });
});

describe('a training run on a device backend', () => {
  it('TrainingRun trains, evaluates, checkpoints and resumes as on host arrays', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hype-handles-run-'));
    try {
      const rng = new Rng(11);
      const corpus = join(dir, 'corpus.txt');
      writeFileSync(
        corpus,
        Uint8Array.from({ length: 3000 }, () => 32 + rng.int(90)),
      );
      const cfg = config({ name: 'alibi', options: { route: 'concat' } });
      const train = { data: corpus, steps: 4, batch: 2, checkpointEvery: 2, lr: 0.01 };
      const control = { evalInterval: 2, evalBytes: 200, onEval: () => {} };
      const go = async <T, I>(backend: Backend<T, I>, sub: string) => {
        const run = TrainingRun.start(join(dir, sub), cfg, { ...train, steps: 3 }, backend);
        await run.run(control);
        const resumed = TrainingRun.resume(join(dir, sub), backend, { steps: 4 });
        await resumed.run(control);
        return {
          losses: readFileSync(join(dir, sub, 'losses.jsonl'), 'utf8'),
          evals: readFileSync(join(dir, sub, 'evals.jsonl'), 'utf8'),
        };
      };
      const strip = (text: string) => text.replace(/"seconds":[0-9.e-]+/g, '');
      const host = await go(new ReferenceBackend(), 'host');
      const dev = await go(OpaqueBackend.create().backend, 'device');
      expect(strip(dev.losses)).toBe(strip(host.losses));
      expect(strip(dev.evals)).toBe(strip(host.evals));
      expect(strip(host.losses).split('\n').filter(Boolean)).toHaveLength(4);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
