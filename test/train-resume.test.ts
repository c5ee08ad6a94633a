/**
 * Checkpoints and resumption: a run stopped (gracefully, or by SIGKILL in a child process) and resumed must log
 * exactly the losses of an uninterrupted run, bit for bit; damaged or mismatched checkpoints are refused.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { decodeSafetensors, encodeSafetensors } from '../src/interop/safetensors.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { checkpointsDir, loadCheckpoint } from '../src/train/checkpoint.ts';
import { TrainingRun, readLossLog } from '../src/train/trainer.ts';
import { testLearnedSlopes } from './helpers/test-encodings.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-train-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

// A small corpus of its own, so the test does not depend on the shared data.
const corpusPath = join(root, 'corpus.txt');
const words = ['the', 'quick', 'brown', 'fox', 'jumps', 'over', 'a', 'lazy', 'dog', 'and', 'runs', 'far', 'away'];
let text = '';
for (let i = 0; text.length < 20000; i++) text += words[(i * 7 + (i >> 3)) % words.length] + (i % 11 ? ' ' : '.\n');
writeFileSync(corpusPath, text);

const backend = new ReferenceBackend();
const model = parseModelConfig({ width: 16, layers: 2, heads: 2, trainLength: 16, pe: 'test-slopes', seed: 3 });
const train = { data: corpusPath, batch: 2, steps: 12, warmup: 3, lr: 3e-3, checkpointEvery: 4, seed: 5 };
const opts = { encodingFactory: testLearnedSlopes };

function lossesOf(dir: string): number[] {
  return readLossLog(dir).map((r) => r.loss);
}

function checkpointError(fn: () => unknown): HypeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('checkpoint');
    return err as HypeError;
  }
  throw new Error('expected the checkpoint to be refused');
}

describe('resume determinism (in process)', () => {
  it('stop at step 5, resume: losses identical to an uninterrupted run, bit for bit', async () => {
    const whole = join(root, 'whole');
    const s = await TrainingRun.start(whole, model, train, backend, opts).run();
    expect(s.finished).toBe(true);
    const reference = lossesOf(whole);
    expect(reference.length).toBe(12);
    expect(reference[11]).toBeLessThan(reference[0]!); // it does learn

    const split = join(root, 'split');
    const first = await TrainingRun.start(split, model, train, backend, opts).run({ stopAfter: 5 });
    expect(first.step).toBe(5);
    expect(first.finished).toBe(false);
    const resumed = TrainingRun.resume(split, backend, opts);
    expect(resumed.step).toBe(5);
    await resumed.run();
    expect(lossesOf(split)).toEqual(reference); // toEqual on numbers is exact (Object.is per entry)

    // The final parameters agree too.
    const a = loadCheckpoint(whole).weights.tensors;
    const b = loadCheckpoint(split).weights.tensors;
    for (const [name, t] of a) expect(Array.from(b.get(name)!.data)).toEqual(Array.from(t.data));
  });

  it('a graceful stop request (as SIGINT sets) finishes the step and checkpoints it', async () => {
    const dir = join(root, 'stop');
    let steps = 0;
    const s = await TrainingRun.start(dir, model, train, backend, opts).run({ shouldStop: () => ++steps >= 3 });
    expect(s.interrupted).toBe(true);
    expect(s.step).toBe(3);
    expect(loadCheckpoint(dir).state.step).toBe(3);
  });
});

describe('resume after SIGKILL (child process)', () => {
  it('a run killed mid-training resumes to the uninterrupted losses', async () => {
    // Same settings through the CLI with the registered 'none' encoding; enough steps that the kill lands mid-run.
    const cliModel = ['--pe', 'none', '--width', '32', '--layers', '2', '--heads', '2', '--length', '32'];
    const cliTrain = ['--batch', '4', '--steps', '40', '--warmup', '5', '--lr', '0.003', '--checkpoint-every', '2'];
    // The same backend on both sides: bit-identity is promised per backend.
    const args = [...cliModel, ...cliTrain, '--seed', '9', '--data', corpusPath, '--backend', 'reference', '--quiet'];
    const killed = join(root, 'killed');
    const child = spawn(process.execPath, ['bin/hype.js', 'train', ...args, '--run-dir', killed], {
      cwd: process.cwd(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<NodeJS.Signals | number | null>((r) => child.on('exit', (code, sig) => r(sig ?? code)));
    const latest = join(checkpointsDir(killed), 'latest.json');
    const deadline = Date.now() + 60_000;
    while (!existsSync(latest) || JSON.parse(readFileSync(latest, 'utf8')).step < 6) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`child did not checkpoint: ${stderr}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    const killedAt = loadCheckpoint(killed).state.step;
    expect(killedAt).toBeGreaterThanOrEqual(6);
    expect(killedAt).toBeLessThan(40); // really mid-run

    const resumed = TrainingRun.resume(killed, backend);
    expect(resumed.step).toBe(killedAt);
    await resumed.run();

    const whole = join(root, 'whole-cli');
    const cfg = parseModelConfig({ width: 32, layers: 2, heads: 2, trainLength: 32, pe: 'none', seed: 9 });
    const cliEquivalent = { data: corpusPath, batch: 4, steps: 40, warmup: 5, lr: 0.003, checkpointEvery: 0, seed: 9 };
    await TrainingRun.start(whole, cfg, cliEquivalent, backend).run();
    const reference = lossesOf(whole);
    expect(reference.length).toBe(40);
    expect(lossesOf(killed)).toEqual(reference);
  }, 120_000);
});

describe('Ctrl-C (SIGINT) during hype train', () => {
  it('finishes the current step, writes a checkpoint there and exits cleanly', async () => {
    const dir = join(root, 'sigint');
    const args = ['--pe', 'none', '--width', '32', '--layers', '2', '--heads', '2', '--length', '32', '--batch', '4'];
    const child = spawn(
      process.execPath,
      [
        'bin/hype.js',
        'train',
        ...args,
        '--steps',
        '500',
        '--checkpoint-every',
        '3',
        '--data',
        corpusPath,
        '--run-dir',
        dir,
        '--quiet',
      ],
      { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const latest = join(checkpointsDir(dir), 'latest.json');
    const deadline = Date.now() + 60_000;
    // The run folder is passed below via --run-dir; wait for its first checkpoint, then interrupt.
    while (!existsSync(latest)) {
      if (Date.now() > deadline || child.exitCode !== null) throw new Error(`child did not checkpoint: ${stderr}`);
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    const m = /interrupted at step (\d+)\/500/.exec(stdout);
    expect(m, stdout + stderr).not.toBeNull();
    const step = Number(m![1]);
    expect(step).toBeLessThan(500);
    expect(loadCheckpoint(dir).state.step).toBe(step);
    expect(readLossLog(dir).length).toBe(step);
    expect(stdout).toMatch(/continue with: hype train --resume/);
  }, 120_000);
});

describe('damaged and mismatched checkpoints are refused', () => {
  const fresh = async (name: string) => {
    const dir = join(root, name);
    await TrainingRun.start(dir, model, { ...train, steps: 2, warmup: 1, checkpointEvery: 0 }, backend, opts).run();
    return { dir, ck: join(checkpointsDir(dir), 'step-00000002') };
  };

  it('a flipped byte in the weights fails the hash check', async () => {
    const { dir, ck } = await fresh('flip');
    const path = join(ck, 'model.safetensors');
    const bytes = readFileSync(path);
    bytes[bytes.length - 3] ^= 0x40;
    writeFileSync(path, bytes);
    expect(checkpointError(() => TrainingRun.resume(dir, backend, opts)).message).toMatch(/SHA-256/);
  });

  it('a truncated optimizer file is refused by size', async () => {
    const { dir, ck } = await fresh('trunc');
    const path = join(ck, 'optimizer.safetensors');
    writeFileSync(path, readFileSync(path).subarray(0, 100));
    expect(checkpointError(() => loadCheckpoint(dir)).message).toMatch(/has 100 bytes/);
  });

  it('a garbage pointer and a missing state file are refused', async () => {
    const { dir, ck } = await fresh('pointer');
    writeFileSync(join(checkpointsDir(dir), 'latest.json'), '{"step": 2, "dir": "../../etc"}');
    expect(checkpointError(() => loadCheckpoint(dir)).message).toMatch(/names no checkpoint folder/);
    writeFileSync(join(checkpointsDir(dir), 'latest.json'), '{"step": 2, "dir": "step-00000002"}');
    rmSync(join(ck, 'state.json'));
    expect(checkpointError(() => loadCheckpoint(dir)).message).toMatch(/unreadable state.json/);
  });

  it('weights with a missing tensor (consistent hashes) are refused as mismatched', async () => {
    const { dir, ck } = await fresh('missing');
    const path = join(ck, 'model.safetensors');
    const file = decodeSafetensors(readFileSync(path));
    const kept = [...file.tensors].filter(([n]) => n !== 'lnf.bias');
    const bytes = encodeSafetensors(
      kept.map(([name, t]) => ({ name, shape: t.shape, data: t.data })),
      file.metadata,
    );
    writeFileSync(path, bytes);
    const statePath = join(ck, 'state.json');
    const state = JSON.parse(readFileSync(statePath, 'utf8'));
    const { createHash } = await import('node:crypto');
    state.files['model.safetensors'] = {
      bytes: bytes.length,
      sha256: createHash('sha256').update(bytes).digest('hex'),
    };
    writeFileSync(statePath, JSON.stringify(state));
    expect(checkpointError(() => TrainingRun.resume(dir, backend, opts)).message).toMatch(/lacks tensor 'lnf.bias'/);
  });

  it('resuming with different options is refused; extending the step count is allowed', async () => {
    const { dir } = await fresh('options');
    expect(
      checkpointError(() => TrainingRun.resume(dir, backend, { ...opts, expectTrain: { batch: 3 } })).message,
    ).toMatch(/'batch' = 3 differs/);
    const run = TrainingRun.resume(dir, backend, { ...opts, steps: 4 });
    expect((await run.run()).step).toBe(4);
  });

  it('a run folder that already holds a run is not overwritten', async () => {
    const { dir } = await fresh('exists');
    expect(() => TrainingRun.start(dir, model, train, backend, opts)).toThrow(/already holds a run/);
  });
});
