/**
 * Sampling semantics (temperature, top-k, greedy), determinism under a seed, and the sampler's frequencies.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { main } from '../src/cli/main.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { generate, sampleToken, samplingProbabilities } from '../src/model/generate.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/util/rng.ts';
import { writeTinyRun } from './helpers/tiny-run.ts';

const logits = [1.5, -0.5, 3, 0.25, 3, 2];

function softmax(xs: number[]): number[] {
  const m = Math.max(...xs);
  const e = xs.map((x) => Math.exp(x - m));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / z);
}

describe('samplingProbabilities', () => {
  it('temperature 1, no top-k: the softmax of the logits', () => {
    const p = samplingProbabilities(logits, { temperature: 1, topK: 0 });
    softmax(logits).forEach((x, j) => expect(p[j]).toBeCloseTo(x, 15));
  });

  it('temperature T divides the logits (sharper below 1, flatter above)', () => {
    for (const T of [0.5, 2]) {
      const p = samplingProbabilities(logits, { temperature: T, topK: 0 });
      softmax(logits.map((x) => x / T)).forEach((x, j) => expect(p[j]).toBeCloseTo(x, 15));
    }
    const sharp = samplingProbabilities(logits, { temperature: 0.5, topK: 0 });
    const flat = samplingProbabilities(logits, { temperature: 2, topK: 0 });
    expect(sharp[2]!).toBeGreaterThan(flat[2]!);
  });

  it('top-k keeps exactly the k largest (ties to the lower index) and renormalises among them', () => {
    const p = samplingProbabilities(logits, { temperature: 1, topK: 2 });
    // Largest: 3 at indices 2 and 4 (a tie), then 2 at index 5.
    expect([...p].map((x) => x > 0)).toEqual([false, false, true, false, true, false]);
    expect(p[2]).toBeCloseTo(0.5, 15);
    const p3 = samplingProbabilities(logits, { temperature: 1, topK: 3 });
    const kept = softmax([3, 3, 2]);
    expect([p3[2], p3[4], p3[5]].map((x) => x!.toFixed(14))).toEqual(kept.map((x) => x.toFixed(14)));
    expect(p3[0]).toBe(0);
    const p1 = samplingProbabilities(logits, { temperature: 1, topK: 1 });
    expect([...p1]).toEqual([0, 0, 1, 0, 0, 0]);
  });

  it('temperature 0 is greedy (argmax, lower index on ties) whatever top-k says', () => {
    expect([...samplingProbabilities(logits, { temperature: 0, topK: 0 })]).toEqual([0, 0, 1, 0, 0, 0]);
    expect([...samplingProbabilities(logits, { temperature: 0, topK: 4 })]).toEqual([0, 0, 1, 0, 0, 0]);
  });

  it('refuses a negative temperature and a top-k outside [0, vocab]', () => {
    expect(() => samplingProbabilities(logits, { temperature: -1, topK: 0 })).toThrow(/temperature/);
    expect(() => samplingProbabilities(logits, { temperature: 1, topK: 7 })).toThrow(/top-k/);
    expect(() => samplingProbabilities(logits, { temperature: 1, topK: 1.5 })).toThrow(/top-k/);
  });
});

describe('sampleToken', () => {
  it('draws with the frequencies samplingProbabilities gives, never a token outside the top-k', () => {
    const rng = new Rng(3);
    const o = { temperature: 1.3, topK: 4 };
    const p = samplingProbabilities(logits, o);
    const n = 20000;
    const counts = new Array<number>(logits.length).fill(0);
    for (let i = 0; i < n; i++) counts[sampleToken(logits, o, rng)]!++;
    for (let j = 0; j < logits.length; j++) {
      if (p[j] === 0) expect(counts[j]).toBe(0);
      // Binomial standard deviation sqrt(n p (1 - p)); 5 of them bound a fixed-seed draw with a wide margin.
      const sd = Math.sqrt(n * p[j]! * (1 - p[j]!));
      expect(Math.abs(counts[j]! - n * p[j]!)).toBeLessThanOrEqual(5 * sd + 1e-9);
    }
  });
});

describe('generate', () => {
  const model = new Transformer(
    parseModelConfig({
      width: 16,
      layers: 1,
      heads: 2,
      trainLength: 16,
      dtype: 'float64',
      initStd: 0.5,
      seed: 9,
      pe: 'hype',
    }),
    new ReferenceBackend(),
  );
  const prompt = new TextEncoder().encode('abc');
  const opts = { tokens: 48, temperature: 1, topK: 0 };

  it('is deterministic for a seed and differs between seeds', () => {
    const a = generate(model, prompt, { ...opts, seed: 1 });
    const b = generate(model, prompt, { ...opts, seed: 1 });
    const c = generate(model, prompt, { ...opts, seed: 2 });
    expect([...a]).toEqual([...b]);
    expect([...a]).not.toEqual([...c]);
  });

  it('top-k 1 is greedy decoding, whatever the temperature or seed', () => {
    const greedy = generate(model, prompt, { ...opts, temperature: 0, seed: 1 });
    expect([...generate(model, prompt, { ...opts, topK: 1, temperature: 3, seed: 7 })]).toEqual([...greedy]);
  });

  it('every sampled token lies in the top-k of its step', () => {
    generate(model, prompt, {
      ...opts,
      topK: 5,
      seed: 4,
      onToken: (l, token) => {
        const above = [...l].filter((x) => x > l[token]!).length;
        expect(above).toBeLessThan(5);
      },
    });
  });

  it('cached and recomputing generation give the same bytes', () => {
    const cached = generate(model, prompt, { ...opts, seed: 5 });
    const slow = generate(model, prompt, { ...opts, seed: 5, cache: false });
    expect([...cached]).toEqual([...slow]);
  });

  it('refuses an empty prompt', () => {
    expect(() => generate(model, new Uint8Array(0), { ...opts, seed: 1 })).toThrow(/at least one byte/);
  });
});

describe('hype generate command', () => {
  const root = mkdtempSync(join(tmpdir(), 'hype-generate-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('continues the prompt from a run folder, the same bytes as the library call for the same seed', async () => {
    const run = join(root, 'run');
    const model = writeTinyRun(run, { pe: 'rope', dtype: 'float64', initStd: 0.5 });
    const expected = generate(model, new TextEncoder().encode('To be'), {
      tokens: 20,
      temperature: 0.7,
      topK: 8,
      seed: 3,
    });
    const chunks: Uint8Array[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => {
      chunks.push(typeof c === 'string' ? Buffer.from(c) : c);
      return true;
    });
    try {
      await main([
        'node',
        'hype',
        'generate',
        run,
        '--prompt',
        'To be',
        '--tokens',
        '20',
        '--temperature',
        '0.7',
        '--top-k',
        '8',
        '--seed',
        '3',
        '--quiet',
      ]);
    } finally {
      spy.mockRestore();
    }
    const printed = Buffer.concat(chunks);
    expect([...printed]).toEqual([...Buffer.from('To be'), ...expected, 10]);
  });

  it('refuses a bad flag value with a one-line error and exit code 2', async () => {
    const run = join(root, 'run2');
    writeTinyRun(run, { pe: 'none' });
    const err = vi.spyOn(process.stderr, 'write').mockImplementation(() => true);
    try {
      await main(['node', 'hype', 'generate', run, '--prompt', 'x', '--temperature', 'hot']);
      expect(process.exitCode).toBe(2);
      expect(String(err.mock.calls[0]?.[0])).toMatch(/--temperature must be a number/);
    } finally {
      err.mockRestore();
      process.exitCode = 0;
    }
  });
});
