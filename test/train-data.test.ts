import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import type { Param } from '../src/pe/encoding.ts';
import { TRAIN_DEFAULTS, checkSchedule, learningRate, parseTrainConfig } from '../src/train/config.ts';
import { loadCorpus, sampleWindows, unigramEntropy } from '../src/train/corpus.ts';
import { AdamW, clipGradients, globalGradNorm } from '../src/train/optimizer.ts';
import { Rng } from '../src/util/rng.ts';

const dir = mkdtempSync(join(tmpdir(), 'hype-data-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function ioError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('io');
    return (err as HypeError).message;
  }
  throw new Error('expected an io refusal');
}

describe('byte corpus', () => {
  it('splits off the tail as held-out data and hashes the file', () => {
    const p = join(dir, 'ok.txt');
    writeFileSync(p, 'héllo wörld, 0123456789'); // multi-byte UTF-8 is fine: tokens are bytes
    const c = loadCorpus(p, 0.2);
    expect(c.bytes).toBe(Buffer.byteLength('héllo wörld, 0123456789'));
    expect(c.val.length).toBe(Math.floor(c.bytes * 0.2));
    expect(c.train.length + c.val.length).toBe(c.bytes);
    expect(Buffer.from(c.val).toString()).toBe('456789'.slice(6 - c.val.length));
    expect(c.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it('refuses missing, empty, directory and non-UTF-8 inputs with the fix in the message', () => {
    expect(ioError(() => loadCorpus(join(dir, 'missing.txt'), 0.1))).toMatch(/no such file.*--data/);
    writeFileSync(join(dir, 'empty.txt'), '');
    expect(ioError(() => loadCorpus(join(dir, 'empty.txt'), 0.1))).toMatch(/is empty/);
    mkdirSync(join(dir, 'folder'));
    expect(ioError(() => loadCorpus(join(dir, 'folder'), 0.1))).toMatch(/is a directory/);
    writeFileSync(join(dir, 'bin.dat'), Buffer.from([0x61, 0x62, 0xff, 0x63]));
    expect(ioError(() => loadCorpus(join(dir, 'bin.dat'), 0.1))).toMatch(/not valid UTF-8 text \(at byte 2\)/);
    expect(() => loadCorpus(join(dir, 'ok.txt'), 1)).toThrow(/held-out fraction/);
  });

  it('samples windows whose targets are the next bytes, covering every start', () => {
    const data = Uint8Array.from({ length: 20 }, (_, i) => i);
    const L = 4;
    const tokens = new Int32Array(3 * L);
    const targets = new Int32Array(3 * L);
    const rng = new Rng(1);
    const seen = new Set<number>();
    for (let k = 0; k < 300; k++) {
      sampleWindows(data, 3, L, rng, tokens, targets);
      for (let b = 0; b < 3; b++) {
        const s = tokens[b * L]!;
        seen.add(s);
        for (let t = 0; t < L; t++) {
          expect(tokens[b * L + t]).toBe(s + t);
          expect(targets[b * L + t]).toBe(s + t + 1);
        }
      }
    }
    expect([...seen].sort((a, b) => a - b)).toEqual(Array.from({ length: 16 }, (_, i) => i)); // 0 .. 20-4-1
  });

  it('unigram entropy: ln 2 for two equiprobable bytes, 0 for one', () => {
    expect(unigramEntropy(Uint8Array.from([1, 2, 1, 2]))).toBeCloseTo(Math.LN2, 15);
    expect(unigramEntropy(Uint8Array.from([7, 7, 7]))).toBe(0);
  });
});

describe('schedule, clipping and AdamW', () => {
  it('warms up linearly, peaks, and decays by cosine to minLr', () => {
    const cfg = parseTrainConfig({ lr: 1, minLr: 0.1, warmup: 10, steps: 110 });
    expect(learningRate(cfg, 1)).toBeCloseTo(0.1, 15);
    expect(learningRate(cfg, 10)).toBe(1);
    expect(learningRate(cfg, 60)).toBeCloseTo(0.55, 15); // halfway: the mean of lr and minLr
    expect(learningRate(cfg, 110)).toBeCloseTo(0.1, 15);
  });

  it('refuses bad hyper-parameters and unknown keys', () => {
    expect(() => parseTrainConfig({ lr: -1 })).toThrow(/'lr' must be/);
    expect(() => parseTrainConfig({ minLr: 1, lr: 0.1 })).toThrow(/'minLr'/);
    expect(() => parseTrainConfig({ batchsize: 3 })).toThrow(/unknown train config key 'batchsize'/);
  });

  it('refuses a warmup longer than the run; the default warmup shrinks to a short run', () => {
    expect(() => checkSchedule(parseTrainConfig({ steps: 10, warmup: 11 }))).toThrow(
      /warmup \(11 steps\) is longer than the run/,
    );
    expect(() => checkSchedule(parseTrainConfig({ steps: 10, warmup: 10 }))).not.toThrow();
    // A stored config from before the rule still parses (its run can be evaluated); only new runs are refused.
    expect(parseTrainConfig({ steps: 3, warmup: 50 }).warmup).toBe(50);
    expect(parseTrainConfig({ steps: 3 }).warmup).toBe(3);
    expect(parseTrainConfig({ steps: 1000 }).warmup).toBe(TRAIN_DEFAULTS.warmup);
  });

  const param = (name: string, values: number[], decay: boolean): Param => ({
    name,
    shape: [values.length],
    data: Float64Array.from(values),
    grad: new Float64Array(values.length),
    decay,
  });

  it('clips the global norm over all tensors together and refuses a non-finite one', () => {
    const a = param('a', [0, 0], true);
    const b = param('b', [0], false);
    a.grad.set([3, 0]);
    b.grad.set([4]);
    expect(clipGradients([a, b], 1)).toBe(5);
    expect(globalGradNorm([a, b])).toBeCloseTo(1, 15);
    expect(a.grad[0]).toBeCloseTo(3 / 5, 15);
    expect(b.grad[0]).toBeCloseTo(4 / 5, 15);
    b.grad[0] = NaN;
    expect(() => clipGradients([a, b], 1)).toThrow(/diverged/);
  });

  it('decays only parameters marked for decay unless decayAll', () => {
    const cfg = parseTrainConfig({ lr: 0.1, weightDecay: 0.5 });
    const w = param('w', [2], true);
    const n = param('norm', [2], false);
    const opt = new AdamW([w, n], new ReferenceBackend());
    opt.update(cfg, 0.1); // zero gradients: only decay moves anything
    expect(w.data[0]).toBeCloseTo(2 * (1 - 0.1 * 0.5), 15);
    expect(n.data[0]).toBe(2);
    new AdamW([n], new ReferenceBackend()).update({ ...cfg, decayAll: true }, 0.1);
    expect(n.data[0]).toBeCloseTo(2 * (1 - 0.1 * 0.5), 15);
  });
});
