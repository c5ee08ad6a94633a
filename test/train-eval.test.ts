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
import { evaluateHeldOut } from '../src/train/evaluate.ts';
import { readLossLog } from '../src/train/trainer.ts';
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
