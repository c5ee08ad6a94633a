/**
 * The CLI against hostile and careless input: bad folders, files, sizes, corrupt run and study files, signals.
 * Every refusal must be exit code 2 with exactly one line on stderr ("hype: ..."), no stack trace, and nothing
 * half-written left behind; recoverable states (a run cut off before its first checkpoint, a corrupt checkpoint
 * pointer, SIGTERM) must be recoverable. Most cases run the CLI in process (fast); hangs and signals need a child.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { main } from '../src/cli/main.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { checkpointsDir, loadCheckpoint, saveCheckpoint } from '../src/train/checkpoint.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { Rng } from '../src/util/rng.ts';
import { evaluateHeldOut } from '../src/train/evaluate.ts';
import { checkMemory } from '../src/train/memory.ts';
import { readLossLog, TrainingRun } from '../src/train/trainer.ts';
import { writeTinyRun } from './helpers/tiny-run.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-hostile-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const corpus = join(root, 'corpus.txt');
const corpusBytes = Buffer.from('the quick brown fox jumps over the lazy dog; '.repeat(200));
writeFileSync(corpus, corpusBytes);
const aFile = join(root, 'a-file.txt');
writeFileSync(aFile, 'not a folder\n');

const tiny = ['--pe', 'none', '--width', '16', '--layers', '1', '--heads', '2', '--length', '16', '--batch', '2'];
const train = (...more: string[]) => ['train', ...tiny, '--data', corpus, '--backend', 'reference', '--quiet', ...more];

interface Result {
  code: number;
  out: string;
  err: string;
}

/** Runs the CLI in this process, capturing its output and exit code. */
async function hype(...args: string[]): Promise<Result> {
  const out: string[] = [];
  const err: string[] = [];
  const so = vi.spyOn(process.stdout, 'write').mockImplementation((s) => (out.push(String(s)), true));
  const se = vi.spyOn(process.stderr, 'write').mockImplementation((s) => (err.push(String(s)), true));
  process.exitCode = 0;
  try {
    await main(['node', 'hype', ...args]);
  } finally {
    so.mockRestore();
    se.mockRestore();
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { code, out: out.join(''), err: err.join('') };
}

/** A refusal: exit 2, one line "hype: <message>" matching `pattern`, no stack trace. */
function expectRefusal(r: Result, pattern: RegExp): void {
  expect(r.code, r.err).toBe(2);
  expect(r.err.split('\n').filter(Boolean), r.err).toHaveLength(1);
  expect(r.err).toMatch(/^hype: /);
  expect(r.err).not.toMatch(/\n\s+at /);
  expect(r.err).toMatch(pattern);
}

describe('train: bad run folders are refused before anything is written', () => {
  it('a file, a path under a file, an empty path, an uncreatable folder', async () => {
    expectRefusal(await hype(...train('--run-dir', aFile)), /is a file, not a folder/);
    expect(readFileSync(aFile, 'utf8')).toBe('not a folder\n');
    expectRefusal(await hype(...train('--run-dir', join(aFile, 'run'))), /lies under .*a-file\.txt.*which is a file/);
    expectRefusal(await hype(...train('--run-dir', '')), /run folder: the path is empty/);
    // /sys refuses new folders even to root (a stand-in for a folder without write permission).
    expectRefusal(
      await hype(...train('--run-dir', '/sys/hype-test-run')),
      /cannot (create run folder|lock training run) .*\(E(PERM|ACCES|ROFS|NOENT)\)/,
    );
  });

  it('--batch 1000000000 is refused with the memory it needs, leaving no folder', async () => {
    const dir = join(root, 'huge-batch');
    expectRefusal(
      await hype(...train('--batch', '1000000000', '--run-dir', dir)),
      /needs at least [\d.]+ GiB .* available/,
    );
    expect(existsSync(dir)).toBe(false);
  });

  it('a configuration refused at the first forward pass leaves no folder (no dead end)', async () => {
    const dir = join(root, 'bad-option');
    const r = await hype(...train('--pe', 'hype', '--pe-options', '{"multiple":0}', '--run-dir', dir));
    expectRefusal(r, /multiple must be a positive integer/);
    expect(existsSync(dir)).toBe(false);
  });

  it('a corpus that is a folder or a device is refused up front', async () => {
    expectRefusal(await hype(...train('--data', root, '--run-dir', join(root, 'x'))), /is a directory/);
    expect(existsSync(join(root, 'x'))).toBe(false);
  });
});

describe('train: resuming', () => {
  it('a run cut off before its first checkpoint restarts with --resume; a plain start still refuses it', async () => {
    const dir = join(root, 'cut-off');
    // The state a kill -9 between run.json and the first checkpoint leaves: run.json, an empty loss log.
    const cfg = parseModelConfig({ width: 16, layers: 1, heads: 2, trainLength: 16, pe: 'none' });
    TrainingRun.start(dir, cfg, { data: corpus, batch: 2, steps: 4, checkpointEvery: 0 }, new ReferenceBackend());
    expect(existsSync(checkpointsDir(dir))).toBe(false);
    expectRefusal(await hype(...train('--run-dir', dir)), /already holds a run; pass --resume/);
    const r = await hype('train', '--resume', dir, '--backend', 'reference', '--quiet');
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/finished at step 4\/4/);
    expect(readLossLog(dir).map((x) => x.step)).toEqual([1, 2, 3, 4]);
  });

  it('a finished run says it is finished (no "loss NaN") and how to extend it', async () => {
    const dir = join(root, 'finished');
    expect((await hype(...train('--steps', '2', '--run-dir', dir))).code).toBe(0);
    const r = await hype('train', '--resume', dir, '--backend', 'reference', '--quiet');
    expect(r.code).toBe(0);
    expect(r.out).toMatch(/already finished \(step 2\/2\).*--steps 4/);
    expect(r.out).not.toMatch(/NaN/);
  });

  it('a corrupt latest.json names the checkpoints left, and --resume <checkpoint> picks one', async () => {
    const dir = join(root, 'corrupt-pointer');
    const r0 = await hype(
      ...train('--steps', '4', '--checkpoint-every', '2', '--keep-checkpoints', '3', '--run-dir', dir),
    );
    expect(r0.code, r0.err).toBe(0);
    writeFileSync(join(checkpointsDir(dir), 'latest.json'), '{"step": 4, "dir": "ste');
    const r = await hype('train', '--resume', dir, '--backend', 'reference', '--quiet');
    expectRefusal(r, /not valid JSON.*--resume .*step-00000004 \(available: step-00000002, step-00000004\)/);
    const from = join(checkpointsDir(dir), 'step-00000002');
    const r2 = await hype('train', '--resume', from, '--steps', '6', '--backend', 'reference', '--quiet');
    expect(r2.code, r2.err).toBe(0);
    expect(r2.out).toMatch(/finished at step 6\/6/);
    expect(loadCheckpoint(dir).state.step).toBe(6); // latest.json rewritten by the new checkpoint
    expect(readLossLog(dir).map((x) => x.step)).toEqual([1, 2, 3, 4, 5, 6]);
    // A broken loss log is named, not a JSON stack trace.
    writeFileSync(join(dir, 'losses.jsonl'), readFileSync(join(dir, 'losses.jsonl'), 'utf8') + '{"step": 7, "lo');
    expect(() => readLossLog(dir)).toThrow(/loss log .* malformed line 7/);
    // A checkpoint name that does not exist lists the ones that do.
    const r3 = await hype('train', '--resume', join(checkpointsDir(dir), 'step-00000099'), '--quiet');
    expectRefusal(r3, /no checkpoint 'step-00000099' .*available: .*step-00000006/);
  });
});

describe('non-finite numbers stop training and evaluation', () => {
  it('hype eval refuses a model whose logits are NaN, naming where, and writes no eval.json', async () => {
    const dir = join(root, 'nan-run');
    // A checkpoint with a NaN in the final norm's bias (past attention, whose own input checks would catch it
    // earlier), written by the trainer's own save so its hashes match: only the logits show it.
    const m = writeTinyRun(join(root, 'nan-src'), { pe: 'none' });
    m.params.lnfBias.data[3] = NaN;
    saveCheckpoint(dir, {
      model: m,
      optimizer: new AdamW(m.parameters(), m.backend),
      rng: new Rng(1),
      step: 0,
      train: parseTrainConfig({ data: corpus }),
      corpus: { bytes: corpusBytes.length, sha256: createHash('sha256').update(corpusBytes).digest('hex') },
    });
    const r = await hype('eval', dir, '--lengths', '16', '--data', corpus, '--backend', 'reference', '--quiet');
    expectRefusal(r, /^hype: logit NaN at evaluation length 16 \(held-out windows 1\.\.\d+ of \d+\) .*not finite/);
    expect(r.out).not.toMatch(/bits|NaN/);
    expect(existsSync(join(dir, 'eval.json'))).toBe(false);
  });

  it('training stops at the step whose logits are not finite, naming the step', async () => {
    const cfg = parseModelConfig({ width: 16, layers: 1, heads: 2, trainLength: 16, pe: 'none' });
    const run = TrainingRun.start(
      join(root, 'nan-train'),
      cfg,
      { data: corpus, batch: 2, steps: 5 },
      new ReferenceBackend(),
    );
    await run.run({ stopAfter: 2 });
    run.model.params.lnfBias.data[0] = NaN; // every logit of every token becomes NaN
    const err = await run.run().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('non-finite');
    expect((err as HypeError).message).toMatch(/^logit NaN at step 3 \(token 0 of the batch/);
    expect(readLossLog(join(root, 'nan-train')).length).toBe(2); // the NaN step was not logged
  });

  it('evaluation refuses a batch past available memory, naming the size', () => {
    const m = writeTinyRun(join(root, 'mem-run'), { pe: 'none' });
    // One window of 10^7 bytes: ~10^7 x (a few thousand activations per token) bytes, far past any machine.
    expect(() => evaluateHeldOut(m, new Uint8Array(1e7 + 1), 1e7)).toThrow(
      /evaluating 1 windows of 10000000 bytes .* GiB/,
    );
    expect(() => checkMemory(3 * 2 ** 30, 'a test', 'do less', 2 ** 30)).toThrow(
      /a test needs at least 3\.0 GiB of memory, but only 1\.0 GiB is available; do less/,
    );
  });
});

describe('study: bad folders and damaged result files', () => {
  const results = join(root, 'results');
  const writeCell = (name: string, body: string) => {
    mkdirSync(join(results, 'lm', 'cells'), { recursive: true });
    writeFileSync(join(results, 'lm', 'cells', name), body);
  };

  it('--out that is a file', async () => {
    const r = await hype(
      'study',
      'lm',
      '--quick',
      '--out',
      aFile,
      '--work-dir',
      join(root, 'w'),
      '--backend',
      'reference',
    );
    expectRefusal(r, /results folder \(--out\) .*is a file, not a folder/);
  });

  it('--backend webgpu with a host-only encoding or precision: one line, and no folder', async () => {
    // The CLI checks the plan before it acquires the device, so a machine without an adapter hears the same.
    const out = join(root, 'gpu-out');
    const gpu = (...args: string[]) => hype('study', ...args, '--backend', 'webgpu', '--out', out);
    expectRefusal(
      await gpu('lm', '--encodings', 'rope'),
      /study encoding rope runs on host backends only .* on backend 'webgpu' the study runs none, alibi, /,
    );
    expectRefusal(await gpu('precision'), /precision/);
    expect(existsSync(out)).toBe(false);
  });

  it('report --to a folder, a truncated cell file, a corrupt study.json', async () => {
    writeCell('0123456789abcdef.json', '{"key": "0123456789abcdef", "config": {"experi');
    expectRefusal(
      await hype('study', 'report', '--out', results),
      /result file .*0123456789abcdef\.json' is not valid JSON.*delete it/,
    );
    rmSync(join(results, 'lm', 'cells', '0123456789abcdef.json'));
    writeCell('fedcba9876543210.json', '[1, 2]');
    expectRefusal(await hype('study', 'report', '--out', results), /is not a study cell/);
    rmSync(join(results, 'lm', 'cells', 'fedcba9876543210.json'));
    writeFileSync(join(results, 'study.json'), '{"plan": ');
    expectRefusal(await hype('study', 'report', '--out', results), /study metadata .*study\.json' is not valid JSON/);
    expectRefusal(await hype('study', 'report', '--out', results, '--to', root), /--to .* is a folder/);
    expectRefusal(await hype('study', 'report', '--out', aFile), /is a file, not a folder/);
    expect(readdirSync(results).sort()).toEqual(['lm', 'study.json']); // nothing written beside them
  });
});

/** Runs the CLI as a child process; `whileRunning` may act on it (send a signal). Kills it after `limitMs`. */
function child(
  args: string[],
  limitMs: number,
  whileRunning?: (c: ReturnType<typeof spawn>) => Promise<void>,
  env: Record<string, string> = {},
) {
  const c = spawn(process.execPath, ['bin/hype.js', ...args], {
    cwd: process.cwd(),
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let out = '';
  let err = '';
  c.stdout!.on('data', (d) => (out += d));
  c.stderr!.on('data', (d) => (err += d));
  const timer = setTimeout(() => c.kill('SIGKILL'), limitMs);
  const exit = new Promise<Result & { signal: string | null }>((resolve) =>
    c.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? -1, signal, out, err });
    }),
  );
  void whileRunning?.(c);
  return exit;
}

describe('hangs and signals (child processes)', () => {
  it('--data /dev/zero, --model-config /dev/zero and --run-dir /proc/x are refused at once, not hanging', async () => {
    const [zero, config, proc] = await Promise.all([
      child(train('--data', '/dev/zero', '--run-dir', join(root, 'zero')), 30_000),
      child(['train', '--model-config', '/dev/zero', '--run-dir', join(root, 'zero-config')], 30_000),
      child(train('--run-dir', '/proc/hype-test/x'), 30_000),
    ]);
    expect(zero.signal, 'hung reading /dev/zero').toBeNull();
    expectRefusal(zero, /'\/dev\/zero' is not a regular file/);
    expect(config.signal, 'hung reading /dev/zero as JSON').toBeNull();
    expectRefusal(config, /model config '\/dev\/zero' is not a regular file/);
    expect(proc.signal, 'hung creating a folder under /proc').toBeNull();
    expectRefusal(proc, /^hype: cannot .*'\/proc\/hype-test.*\(ENOENT\)/);
    expect(existsSync(join(root, 'zero')) || existsSync(join(root, 'zero-config'))).toBe(false);
  }, 60_000);

  it('a run being trained is not resumed (nor restarted) by a second process; SIGTERM checkpoints it', async () => {
    const dir = join(root, 'sigterm');
    const latest = join(checkpointsDir(dir), 'latest.json');
    const env = { HYPE_CLAIM_STALE_MS: '2000' }; // claims refreshed every second, stale after two
    let second: Result | undefined;
    let loggedBefore = 0;
    const r = await child(
      train('--steps', '100000', '--checkpoint-every', '1000', '--run-dir', dir),
      90_000,
      async (c) => {
        // Wait for a few logged steps (no checkpoint yet: the state --resume would restart from scratch).
        while (!existsSync(join(dir, 'losses.jsonl')) || readLossLog(dir).length < 3) {
          await new Promise((res) => setTimeout(res, 20));
        }
        expect(existsSync(latest)).toBe(false);
        loggedBefore = readLossLog(dir).length;
        process.env.HYPE_CLAIM_STALE_MS = '2000';
        try {
          second = await hype('train', '--resume', dir, '--backend', 'reference', '--quiet');
        } finally {
          delete process.env.HYPE_CLAIM_STALE_MS;
        }
        // Then stop it as a job scheduler would.
        c.kill('SIGTERM');
      },
      env,
    );
    expect(second!.code).toBe(2);
    expect(second!.err).toMatch(/being trained by another live hype process/);
    expect(r.code, r.err).toBe(0);
    const m = /interrupted at step (\d+)\/100000/.exec(r.out);
    expect(m, r.out + r.err).not.toBeNull();
    const step = Number(m![1]);
    expect(step).toBeGreaterThan(loggedBefore); // it kept training while the second process waited
    expect(loadCheckpoint(dir).state.step).toBe(step);
    expect(readLossLog(dir).map((x) => x.step)).toEqual(Array.from({ length: step }, (_, i) => i + 1));
  }, 120_000);
});
