/**
 * Held-out evaluation: window accounting for non-overlapping and sliding modes, agreement with losses computed
 * window by window, and the `hype train` / `hype eval` commands end to end on a tiny run.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { main } from '../src/cli/main.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { encodingNames } from '../src/pe/registry.ts';
import { evaluateHeldOut } from '../src/train/evaluate.ts';
import { readLossLog, TrainingRun } from '../src/train/trainer.ts';
import { testNoPE } from './helpers/test-encodings.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-eval-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const backend = new ReferenceBackend();
const model = new Transformer(
  parseModelConfig({ width: 8, layers: 1, heads: 2, trainLength: 8, dtype: 'float64', seed: 2, pe: 'test-nope' }),
  backend,
  { encodingFactory: testNoPE },
);
const data = Uint8Array.from({ length: 45 }, (_, i) => (i * 31 + 7) % 97);

/** Mean loss of the targets data[s + first + 1 .. s + L] given the window data[s .. s + L). */
function windowNats(s: number, L: number, first: number): { sum: number; n: number } {
  const tokens = Int32Array.from(data.subarray(s, s + L));
  const targets = Int32Array.from(data.subarray(s + 1, s + L + 1));
  model.forward(tokens, targets, 1, L);
  const losses = model.tokenLosses();
  let sum = 0;
  for (let t = first; t < L; t++) sum += losses[t]!;
  return { sum, n: L - first };
}

describe('evaluateHeldOut', () => {
  it('non-overlapping windows score each byte once with the context of its own window', () => {
    const L = 8;
    const r = evaluateHeldOut(model, data, L, { batch: 3 });
    expect(r.windows).toBe(5); // starts 0, 8, 16, 24, 32 (32 + 8 + 1 <= 45; 40 + 9 > 45)
    expect(r.scored).toBe(40);
    let sum = 0;
    for (let s = 0; s < 40; s += L) sum += windowNats(s, L, 0).sum;
    expect(r.nats).toBeCloseTo(sum / 40, 13);
    expect(r.bitsPerByte).toBeCloseTo(r.nats / Math.LN2, 14);
    expect(r.perplexity).toBeCloseTo(Math.exp(r.nats), 12);
  });

  it('sliding windows score the first window whole and then only each last stride', () => {
    const L = 8;
    const S = 3;
    const r = evaluateHeldOut(model, data, L, { stride: S, batch: 4 });
    let sum = 0;
    let n = 0;
    for (let s = 0; s + L + 1 <= data.length; s += S) {
      const w = windowNats(s, L, s === 0 ? 0 : L - S);
      sum += w.sum;
      n += w.n;
    }
    expect(r.scored).toBe(n);
    expect(r.scored).toBe(8 + 3 * (r.windows - 1)); // every byte after the first window exactly once
    expect(r.nats).toBeCloseTo(sum / n, 13);
    // Stride L is the non-overlapping evaluation.
    expect(evaluateHeldOut(model, data, L, { stride: L }).nats).toBe(evaluateHeldOut(model, data, L).nats);
  });

  it('refuses a held-out split shorter than one window and a bad stride', () => {
    expect(() => evaluateHeldOut(model, data, 45)).toThrow(/fewer than one window/);
    expect(() => evaluateHeldOut(model, data, 8, { stride: 9 })).toThrow(/stride/);
  });
});

describe('hype train and hype eval commands', () => {
  it('train writes a run folder; eval prints bits per byte at each length and saves eval.json', async () => {
    const corpus = join(root, 'corpus.txt');
    writeFileSync(corpus, 'to be or not to be, that is the question.\n'.repeat(40));
    const run = join(root, 'run');
    const out: string[] = [];
    const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
    try {
      await main(['node', 'hype', 'train', '--pe', 'none', '--width', '16', '--layers', '1', '--heads', '2',
        '--length', '16', '--batch', '2', '--steps', '6', '--checkpoint-every', '3', '--data', corpus,
        '--run-dir', run, '--quiet']); // prettier-ignore
      await main(['node', 'hype', 'eval', run, '--lengths', '8,16', '--quiet']);
      await main(['node', 'hype', 'eval', run, '--lengths', '16', '--sliding', '4', '--quiet']);
    } finally {
      spy.mockRestore();
    }
    expect(process.exitCode ?? 0).toBe(0);
    expect(readLossLog(run).map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
    const text = out.join('');
    expect(text).toMatch(/finished at step 6\/6/);
    expect(text).toMatch(/\n8 +\d+ +non-overlapping/);
    expect(text).toMatch(/\n16 +\d+ +sliding\/4/);
    const saved = JSON.parse(readFileSync(join(run, 'eval.json'), 'utf8'));
    expect(saved.results[0].length).toBe(16);
    expect(saved.results[0].bitsPerByte).toBeGreaterThan(0);
  });

  it('takes a model config file, and refuses to resume it with a different encoding', async () => {
    const corpus = join(root, 'corpus2.txt');
    writeFileSync(corpus, 'now is the winter of our discontent\n'.repeat(40));
    const cfgPath = join(root, 'model.json');
    writeFileSync(cfgPath, JSON.stringify({ width: 16, layers: 1, heads: 2, trainLength: 16, pe: { name: 'alibi' } }));
    const run = join(root, 'run-cfg');
    const err: string[] = [];
    const spyOut = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const spyErr = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
    try {
      await main(['node', 'hype', 'train', '--model-config', cfgPath, '--batch', '2', '--steps', '2', '--data', corpus,
        '--run-dir', run, '--quiet']); // prettier-ignore
      expect(process.exitCode ?? 0).toBe(0);
      expect(JSON.parse(readFileSync(join(run, 'run.json'), 'utf8')).model.pe.name).toBe('alibi');
      await main(['node', 'hype', 'train', '--resume', run, '--pe', 'rope', '--quiet']);
      expect(process.exitCode).toBe(2);
    } finally {
      spyOut.mockRestore();
      spyErr.mockRestore();
      process.exitCode = 0;
    }
    expect(err.join('')).toMatch(/model option 'pe' .* differs .*mismatched checkpoint/);
  });

  it('refuses a missing corpus with a one-line error and exit code 2', async () => {
    const err: string[] = [];
    const spy = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
    try {
      await main(['node', 'hype', 'train', '--pe', 'none', '--data', join(root, 'nope.txt'), '--quiet']);
    } finally {
      spy.mockRestore();
    }
    expect(process.exitCode).toBe(2);
    process.exitCode = 0;
    expect(err.join('')).toMatch(/cannot read corpus .*nope\.txt.*no such file/);
  });
});

describe('periodic held-out evaluation, corpus identity and eval defaults', () => {
  const corpus = join(root, 'corpus3.txt');
  writeFileSync(corpus, 'all the world is a stage, and all the men and women merely players\n'.repeat(30));
  const cfg = parseModelConfig({ width: 8, layers: 1, heads: 2, trainLength: 8, dtype: 'float64', seed: 3, pe: 'x' });
  const train = { data: corpus, batch: 2, steps: 6, warmup: 2, checkpointEvery: 0, seed: 4 };

  it('evaluates every N steps and after the last, without changing the training trajectory', async () => {
    const plain = TrainingRun.start(join(root, 'plain'), cfg, train, backend, { encodingFactory: testNoPE });
    await plain.run();
    const dir = join(root, 'evals');
    const seen: number[] = [];
    const run = TrainingRun.start(dir, cfg, train, backend, { encodingFactory: testNoPE });
    await run.run({ evalInterval: 4, evalBytes: 64, onEval: (e) => seen.push(e.step) });
    // Evaluation only reads the model: every training loss is bit-identical to the run without it.
    expect(readLossLog(dir).map((r) => r.loss)).toEqual(readLossLog(join(root, 'plain')).map((r) => r.loss));
    expect(seen).toEqual([4, 6]);
    const evals = readFileSync(join(dir, 'evals.jsonl'), 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(evals.map((e) => e.step)).toEqual([4, 6]);
    // The logged figure is the held-out loss over the first 64 held-out bytes (8 windows of 8), recomputed here.
    const direct = evaluateHeldOut(run.model, run.corpus.val.subarray(0, 64), 8);
    expect(evals[1].scored).toBe(direct.scored);
    expect(evals[1].valLoss).toBe(direct.nats);
    expect(evals[1].bitsPerByte).toBeCloseTo(direct.nats / Math.LN2, 14);
  });

  it('refuses an evaluation interval on a run that has no held-out split before training', async () => {
    const run = TrainingRun.start(join(root, 'tiny-val'), cfg, { ...train, valFraction: 0.001 }, backend, {
      encodingFactory: testNoPE,
    });
    await expect(run.run({ evalInterval: 2 })).rejects.toThrow(/held-out split of at least 9 bytes.*--eval-interval 0/);
    expect(run.step).toBe(0);
  });

  it('stores the corpus as an absolute path, and eval refuses a corpus whose SHA-256 differs', async () => {
    const run = join(root, 'abs');
    const cwd = process.cwd();
    const err: string[] = [];
    const spyOut = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    const spyErr = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
    try {
      process.chdir(root); // the corpus given relative to this folder...
      await main(['node', 'hype', 'train', '--pe', 'none', '--width', '8', '--layers', '1', '--heads', '2',
        '--length', '8', '--batch', '2', '--steps', '2', '--data', 'corpus3.txt', '--run-dir', run, '--quiet']); // prettier-ignore
      process.chdir(tmpdir()); // ...is found again from elsewhere
      expect(JSON.parse(readFileSync(join(run, 'run.json'), 'utf8')).train.data).toBe(corpus);
      await main(['node', 'hype', 'eval', run, '--quiet']);
      expect(process.exitCode ?? 0).toBe(0);
      // No --lengths: 1x..16x the training length (8), those the held-out split (204 bytes) has a window for.
      const saved = JSON.parse(readFileSync(join(run, 'eval.json'), 'utf8'));
      expect(saved.results.map((r: { length: number }) => r.length)).toEqual([8, 16, 32, 64, 128]);
      const other = join(root, 'other.txt');
      writeFileSync(other, readFileSync(corpus, 'utf8').replace('stage', 'Stage'));
      await main(['node', 'hype', 'eval', run, '--data', other, '--quiet']);
      expect(process.exitCode).toBe(2);
    } finally {
      process.chdir(cwd);
      spyOut.mockRestore();
      spyErr.mockRestore();
      process.exitCode = 0;
    }
    expect(err.join('')).toMatch(/corpus .*other\.txt.* is not the one the run trained on \(SHA-256/);
  });
});

describe('command-line flags', () => {
  const capture = async (argv: string[]) => {
    const out: string[] = [];
    const spyOut = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
    const spyErr = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (out.push(String(s)), true));
    try {
      await main(['node', 'hype', ...argv]);
      return { text: out.join(''), code: process.exitCode ?? 0 };
    } finally {
      spyOut.mockRestore();
      spyErr.mockRestore();
      process.exitCode = 0;
    }
  };

  it('--version prints the package version', async () => {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
    expect((await capture(['--version'])).text.trim()).toBe(pkg.version);
  });

  it('train --help lists every encoding and the defaults; eval --help states its default lengths', async () => {
    const train = (await capture(['train', '--help'])).text.replace(/\s+/g, ' ');
    for (const name of encodingNames()) expect(train).toContain(name);
    expect(train).toMatch(/--dtype <dtype> parameter and activation dtype \(default float32\)/);
    expect(train).toMatch(/--threads <n>/);
    expect(train).toMatch(/--eval-interval <n>/);
    expect((await capture(['eval', '--help'])).text.replace(/\s+/g, ' ')).toMatch(/default: 1x, 2x, 4x, 8x and 16x/);
    expect((await capture(['generate', '--help'])).text.replace(/\s+/g, ' ')).toMatch(/default: "auto"/);
  });

  it('an unknown --pe, a bad --threads and a warmup longer than the run are one-line errors', async () => {
    const bad = await capture(['train', '--pe', 'nope', '--quiet']);
    expect(bad.code).toBe(2);
    expect(bad.text).toMatch(/unknown positional encoding 'nope'; choose one of: alibi, .*xl/);
    expect((await capture(['train', '--pe', 'none', '--threads', '0', '--quiet'])).text).toMatch(
      /--threads must be a positive integer, got '0'/,
    );
    const warm = await capture(['train', '--pe', 'none', '--steps', '3', '--warmup', '5', '--quiet']);
    expect(warm.text).toMatch(/warmup \(5 steps\) is longer than the run \(3 steps\)/);
  });
});
