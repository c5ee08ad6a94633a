/**
 * The native and reference backends train the same model to the same losses: 20 steps in fp32 from the same
 * seed, every loss within 1e-4 (the bound). The two sum in different orders, so they differ by fp32
 * rounding that compounds through the updates: measured 2-3e-8 here, far inside the bound, while a real kernel
 * difference shows at 1e-3 or more within a step or two.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadNativeAddon, NativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import type { Backend } from '../src/backend/backend.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { TrainingRun, readLossLog } from '../src/train/trainer.ts';

const addon = loadNativeAddon();
if (!addon) {
  // In CI the addon must build: a missing addon fails the suite there instead of silently skipping it.
  if (process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
  console.warn(`SKIPPING native training tests: the addon is not built (${nativeLoadError()}); run \`npm rebuild\``);
}
const suite = addon ? describe : describe.skip;

const root = mkdtempSync(join(tmpdir(), 'hype-native-train-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const corpus = join(root, 'corpus.txt');
writeFileSync(corpus, 'All the world is a stage, and all the men and women merely players.\n'.repeat(60));

async function losses(backend: Backend, pe: string, tag: string): Promise<number[]> {
  const model = parseModelConfig({ width: 32, layers: 2, heads: 4, trainLength: 32, pe, seed: 4, dtype: 'float32' });
  const train = { data: corpus, batch: 4, steps: 20, lr: 3e-3, warmup: 4, checkpointEvery: 0, seed: 6 };
  const dir = join(root, `${pe}-${tag}`);
  await TrainingRun.start(dir, model, train, backend).run();
  return readLossLog(dir).map((r) => r.loss);
}

suite('native training is reproducible', () => {
  it('a run stopped and resumed on the native backend (threads and all) repeats the uninterrupted losses', async () => {
    const model = parseModelConfig({ width: 32, layers: 2, heads: 4, trainLength: 32, pe: 'hype', seed: 5 });
    const train = { data: corpus, batch: 4, steps: 16, lr: 3e-3, warmup: 4, checkpointEvery: 5, seed: 7 };
    const whole = join(root, 'native-whole');
    await TrainingRun.start(whole, model, train, new NativeBackend()).run();
    const split = join(root, 'native-split');
    await TrainingRun.start(split, model, train, new NativeBackend()).run({ stopAfter: 7 });
    await TrainingRun.resume(split, new NativeBackend()).run();
    expect(readLossLog(split).map((r) => r.loss)).toEqual(readLossLog(whole).map((r) => r.loss));
  }, 60_000);
});

suite('native vs reference training', () => {
  it.each(['none', 'rope', 'alibi', 'hype', 't5'])(
    '%s: 20 fp32 steps agree within 1e-4',
    async (pe) => {
      const { writeFileSync } = await import('node:fs');
      writeFileSync(corpus, 'All the world is a stage, and all the men and women merely players.\n'.repeat(60));
      const native = await losses(new NativeBackend(), pe, 'native');
      const reference = await losses(new ReferenceBackend(), pe, 'reference');
      expect(native.length).toBe(20);
      let worst = 0;
      for (let i = 0; i < 20; i++) worst = Math.max(worst, Math.abs(native[i]! - reference[i]!));
      console.log(`${pe}: worst |native - reference| loss difference over 20 steps ${worst.toExponential(2)}`);
      expect(worst).toBeLessThan(1e-4);
      expect(native[19]).toBeLessThan(native[0]! - 0.5); // and it trains
    },
    120_000,
  );
});
