/**
 * Several study processes on one results folder (real child processes, tiny plan): every cell is trained by
 * exactly one of them, no run folder is deleted under a live process, the loss logs do not mix, and a cell whose
 * process was killed (SIGKILL, claim left behind) is taken over and finished by the next process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = mkdtempSync(join(tmpdir(), 'hype-concurrent-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const dataDir = join(root, 'data');
mkdirSync(join(dataDir, 'tinyshakespeare'), { recursive: true });
writeFileSync(
  join(dataDir, 'tinyshakespeare', 'input.txt'),
  'First Citizen:\nBefore we proceed any further, hear me speak.\n'.repeat(60),
);

interface Worker {
  child: ChildProcess;
  stderr: () => string;
  exit: Promise<number | string | null>;
}

function worker(
  experiment: string,
  dir: string,
  steps: number,
  encodings = '',
  env: Record<string, string> = {},
): Worker {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      'test/helpers/study-worker.ts',
      experiment,
      join(dir, 'out'),
      join(dir, 'work'),
      dataDir,
      String(steps),
      encodings,
    ],
    { cwd: process.cwd(), stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } },
  );
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | string | null>((r) => child.on('exit', (code, sig) => r(sig ?? code)));
  return { child, stderr: () => err, exit };
}

const losses = (dir: string) =>
  readdirSync(join(dir, 'work'))
    .filter((f) => f.startsWith('lm-') && !f.endsWith('.lock'))
    .map(
      (f) =>
        readFileSync(join(dir, 'work', f, 'losses.jsonl'), 'utf8')
          .trim()
          .split('\n').length,
    );
const cells = (dir: string, exp: string) =>
  readdirSync(join(dir, 'out', exp, 'cells')).filter((f) => f.endsWith('.json')).length;

describe('study processes sharing one results folder', () => {
  it('lm twice and precision at once: each run trained by exactly one process, logs unmixed', async () => {
    const dir = join(root, 'shared');
    const steps = 20;
    const ws = [worker('lm', dir, steps), worker('precision', dir, steps), worker('lm', dir, steps)];
    const codes = await Promise.all(ws.map((w) => w.exit));
    const all = ws.map((w) => w.stderr()).join('');
    expect(codes, all).toEqual([0, 0, 0]);
    expect(cells(dir, 'lm')).toBe(3);
    expect(cells(dir, 'precision')).toBe(1);
    // Three lm runs (precision reuses hype-recency's), each trained once: one "training" line each, in all logs.
    const trained = all.match(/: training \d+ steps/g) ?? [];
    expect(trained.length, all).toBe(3);
    expect(losses(dir)).toEqual([steps, steps, steps]);
    // No claim is left behind.
    expect(readdirSync(join(dir, 'work')).filter((f) => f.endsWith('.lock'))).toEqual([]);
    expect(readdirSync(join(dir, 'out', 'lm', 'cells')).filter((f) => f.endsWith('.lock'))).toEqual([]);
    const meta = JSON.parse(readFileSync(join(dir, 'out', 'study.json'), 'utf8'));
    expect(meta.invocations).toHaveLength(3); // every process's invocation recorded, none overwritten
  }, 120_000);

  it('a cell whose process was killed mid-training is taken over and finished', async () => {
    const dir = join(root, 'killed');
    const env = { HYPE_CLAIM_STALE_MS: '2000' }; // a dead holder's claim falls free after 2 s
    const steps = 150; // one checkpoint, at step 100 (study runs checkpoint every max(100, steps / 5))
    const first = worker('lm', dir, steps, 'none', env);
    const work = join(dir, 'work');
    const deadline = Date.now() + 60_000;
    // Wait until the run is training (its loss log has lines), then kill it before its first checkpoint.
    const logged = () =>
      existsSync(work) &&
      readdirSync(work).some((f) => {
        const p = join(work, f, 'losses.jsonl');
        return existsSync(p) && readFileSync(p, 'utf8').length > 0;
      });
    while (!logged()) {
      if (Date.now() > deadline || first.child.exitCode !== null) throw new Error(`not training: ${first.stderr()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    first.child.kill('SIGKILL');
    expect(await first.exit).toBe('SIGKILL');
    const locks = () => readdirSync(work).filter((f) => f.endsWith('.lock'));
    expect(locks()).toHaveLength(1); // its claim on the run is left behind

    const second = worker('lm', dir, steps, 'none', env);
    expect(await second.exit, second.stderr()).toBe(0);
    expect(cells(dir, 'lm')).toBe(1);
    expect(losses(dir)).toEqual([steps]); // the dead process's partial log was discarded, not continued
    expect(locks()).toEqual([]);
  }, 120_000);
});
