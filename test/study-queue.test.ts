/**
 * The study on a BullMQ queue, against a private redis-server on a loopback port: a coordinator and two worker
 * processes give the same numbers as a local run; a worker killed mid-cell loses nothing (the other finishes the
 * cell, once); a coordinator killed and restarted collects what finished meanwhile without recomputing it; bad
 * input (unreachable Redis, a malformed payload, another package version, another corpus) is refused with one clear
 * error.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import type { StudyEnv } from '../src/study/cell.ts';
import { lmConfigs, loadLmData } from '../src/study/experiments.ts';
import { quickPlan, type StudyPlan } from '../src/study/plan.ts';
import { connectRedis, jobIdOf, QUEUE_NAME, runWorker, type CellJob } from '../src/study/queue.ts';
import { runStudy, type StudyOptions } from '../src/study/run.ts';
import { versions } from '../src/study/versions.ts';
import { closedPort, startRedis } from './helpers/redis.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-queue-'));
const dataDir = join(root, 'data');
const otherData = join(root, 'other-data');
const text = 'First Citizen:\nBefore we proceed any further, hear me speak.\n'.repeat(60);
for (const [dir, body] of [
  [dataDir, text],
  [otherData, text.replace('Citizen', 'Senator')],
] as const) {
  mkdirSync(join(dir, 'tinyshakespeare'), { recursive: true });
  writeFileSync(join(dir, 'tinyshakespeare', 'input.txt'), body);
}

let redis: { url: string; stop: () => Promise<void> };
const children: ChildProcess[] = [];
beforeAll(async () => {
  redis = await startRedis();
}, 20_000);
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await redis?.stop();
  rmSync(root, { recursive: true, force: true });
});

/** Each test gets its own Redis database, so their queues do not meet. */
let nextDb = 1;
const freshDb = () => `${redis.url}/${nextDb++}`;

function tinyPlan(steps: number, encodings: string[]): StudyPlan {
  const tiny = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
  const budget = { steps, batch: 2, lr: 1e-3, warmup: 1 };
  return {
    ...quickPlan(),
    seeds: [1],
    encodings,
    lm: { corpora: ['tinyshakespeare'], trainLength: 8, multipliers: [1, 2], evalBytes: 128, model: tiny, budget },
    flipflop: { trainLength: 16, multipliers: [1], evalSequences: 4, model: tiny, budget },
    recall: { trainLength: 40, multipliers: [1], evalSequences: 3, model: tiny, budget },
    precision: { encodings: ['hype-recency'], formats: ['fp32', 'bf16'], corpus: 'tinyshakespeare' },
  };
}

interface Proc {
  child: ChildProcess;
  stderr: () => string;
  exit: Promise<number | string | null>;
}

function proc(args: string[], env: Record<string, string> = {}): Proc {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    cwd: process.cwd(),
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.push(child);
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  const exit = new Promise<number | string | null>((r) => child.on('exit', (code, sig) => r(sig ?? code)));
  return { child, stderr: () => err, exit };
}

const worker = (url: string, data: string, work: string, env: Record<string, string> = {}) =>
  proc(['test/helpers/queue-worker.ts', url, data, join(root, work)], env);

async function stop(p: Proc): Promise<void> {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
  await p.exit;
}

/** Cell files of a results folder, by experiment and key, parsed (a corrupt file fails the parse). */
function cells(out: string): Map<string, { result: unknown }> {
  const m = new Map<string, { result: unknown }>();
  for (const exp of readdirSync(out).filter((f) => existsSync(join(out, f, 'cells')))) {
    const dir = join(out, exp, 'cells');
    for (const f of readdirSync(dir)) {
      expect(f, `left-over claim or temporary file in ${dir}`).toMatch(/^[0-9a-f]{16}\.json$/);
      m.set(`${exp}/${f}`, JSON.parse(readFileSync(join(dir, f), 'utf8')));
    }
  }
  return m;
}

/** A result without what differs between runs of the same numbers: wall times and the run folder's path. */
function numbers(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(numbers);
  if (v && typeof v === 'object') {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([k]) => !['seconds', 'evalSeconds', 'runDir', 'finishedAt'].includes(k))
        .map(([k, x]) => [k, numbers(x)]),
    );
  }
  return v;
}

async function waitFor(what: string, ok: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A study of `plan` (the reference backend, as the workers), local or, with `queue`, as the queue's coordinator. */
function study(
  o: Pick<StudyOptions, 'experiment' | 'outDir' | 'plan' | 'queue' | 'recompute' | 'live'>,
  log: string[] = [],
) {
  return runStudy({
    quick: true,
    workDir: join(root, 'coordinator-work'),
    dataDir,
    backend: new ReferenceBackend(),
    log: (s) => log.push(s),
    ...o,
  });
}

describe('the study on a queue', () => {
  it('a coordinator and two workers write the same cells and numbers as a local run', async () => {
    const plan = tinyPlan(4, ['none', 'hype-recency']);
    const local = join(root, 'local');
    await study({ experiment: 'all', outDir: local, plan });
    const url = freshDb();
    const ws = [worker(url, dataDir, 'w1'), worker(url, dataDir, 'w2')];
    const out = join(root, 'queued');
    const log: string[] = [];
    const outcome = await study({ experiment: 'all', outDir: out, plan, queue: url }, log);
    await Promise.all(ws.map(stop));
    const all = log.join('\n') + ws.map((w) => w.stderr()).join('');
    expect(outcome.computed, all).toBe(8); // lm 2, flipflop 2, recall 2, precision 2
    const a = cells(local);
    const b = cells(out);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [k, rec] of a) expect(numbers(b.get(k)!.result), k).toEqual(numbers(rec.result));
    expect(readFileSync(join(out, 'report.md'), 'utf8')).toContain('hype-recency');
    // Every cell was computed by exactly one worker: one "started" line per cell across both.
    expect(ws.map((w) => w.stderr().match(/: started \(attempt/g)?.length ?? 0).reduce((s, n) => s + n, 0)).toBe(8);
    expect(log.some((l) => /elapsed, (about .* left|time left)/.test(l))).toBe(true);
  }, 120_000);

  it('a worker killed mid-cell: the other worker computes the cell, once, and the JSON is whole', async () => {
    const url = freshDb();
    const env = { HYPE_QUEUE_LOCK_MS: '2000' }; // a dead worker's job is taken back after 2 s
    const steps = 300;
    const first = worker(url, dataDir, 'k1', env);
    const out = join(root, 'killed');
    const log: string[] = [];
    const tables: string[] = [];
    const coordinator = study(
      { experiment: 'lm', outDir: out, plan: tinyPlan(steps, ['none']), queue: url, live: (t) => tables.push(t) },
      log,
    );
    const connection = await connectRedis(url, () => {});
    const queue = new Queue(QUEUE_NAME, { connection });
    try {
      await waitFor('the first worker to report progress', async () => {
        const active = await queue.getActive();
        const p = active[0]?.progress as { step?: number } | undefined;
        return (p?.step ?? 0) > 0;
      });
    } finally {
      await queue.close();
      connection.disconnect();
    }
    first.child.kill('SIGKILL');
    expect(await first.exit).toBe('SIGKILL');
    const second = worker(url, dataDir, 'k2', env);
    await coordinator;
    await stop(second);
    const got = cells(out);
    expect(got.size).toBe(1);
    const rec = [...got.values()][0] as { result: { train: { steps: number } } };
    expect(rec.result.train.steps).toBe(steps);
    // The second worker computed it from the start (its own work folder: no checkpoint to resume from).
    expect(second.stderr()).toMatch(/training 300 steps\n/);
    expect(log.filter((l) => /: done on /.test(l))).toHaveLength(1);
    // The live table showed the cell running on the first worker with its step and time left.
    const row = new RegExp(`lm .* \\S+:${first.child.pid} +\\d+/300 +\\d`); // worker names are host:pid
    expect(
      tables.some((t) => /cell +worker +step +time left/.test(t) && row.test(t)),
      tables.at(-1),
    ).toBe(true);
    const losses = readFileSync(
      join(
        root,
        'k2',
        readdirSync(join(root, 'k2')).find((f) => f.startsWith('lm-'))!,
        'losses.jsonl',
      ),
      'utf8',
    );
    expect(losses.trim().split('\n')).toHaveLength(steps);
  }, 120_000);

  it('a coordinator killed and restarted collects finished cells without computing them again', async () => {
    const url = freshDb();
    const out = join(root, 'restarted');
    const coordinatorArgs = [
      'test/helpers/study-worker.ts',
      'lm',
      out,
      join(root, 'unused-work'),
      dataDir,
      '4',
      '',
      url,
    ];
    const first = proc(coordinatorArgs);
    const connection = await connectRedis(url, () => {});
    const queue = new Queue(QUEUE_NAME, { connection });
    try {
      await waitFor('three queued cells', async () => (await queue.getWaitingCount()) === 3);
      first.child.kill('SIGKILL');
      await first.exit;
      const w = worker(url, dataDir, 'r1');
      await waitFor('three completed cells', async () => (await queue.getCompletedCount()) === 3);
      const second = proc(coordinatorArgs);
      expect(await second.exit, second.stderr()).toBe(0);
      await stop(w);
      expect(cells(out).size).toBe(3);
      expect(w.stderr().match(/: started \(attempt/g)).toHaveLength(3); // none computed twice
      expect(second.stderr().match(/: done on /g)).toHaveLength(3);
      expect(await queue.getCompletedCount()).toBe(0); // collected jobs are removed once written
    } finally {
      await queue.close();
      connection.disconnect();
    }
  }, 120_000);
});

describe('--recompute on a queue', () => {
  it('drops a finished but uncollected job of a recomputed cell instead of taking its old result', async () => {
    const url = freshDb();
    const plan = tinyPlan(3, ['none']);
    const config = lmConfigs(plan, ['none'])[0]!;
    const data = loadLmData({ dataDir } as StudyEnv, 'tinyshakespeare');
    const payload: CellJob = {
      protocol: 1,
      experiment: 'lm',
      config,
      package: versions().package,
      corpus: { name: 'tinyshakespeare', trainSha256: data.trainSha256, evalSha256: data.evalSha256 },
    };
    const connection = await connectRedis(url, () => {});
    const queue = new Queue(QUEUE_NAME, { connection });
    const w = worker(url, dataDir, 'rc1');
    try {
      // A job an earlier coordinator queued and a worker finished, never collected (the coordinator died).
      await queue.add('lm', payload, { jobId: jobIdOf(config), attempts: 3 });
      await waitFor('the old job to complete', async () => (await queue.getCompletedCount()) === 1);
      const log: string[] = [];
      await study({ experiment: 'lm', outDir: join(root, 'recompute'), plan, queue: url, recompute: ['none'] }, log);
      expect(w.stderr().match(/: started \(attempt/g)).toHaveLength(2); // computed again, not collected
      expect(cells(join(root, 'recompute')).size).toBe(1);
    } finally {
      await stop(w);
      await queue.close();
      connection.disconnect();
    }
  }, 60_000);
});

describe('bad input to the queue', () => {
  it('an unreachable Redis is one error naming the URL, within the connect timeout', async () => {
    const url = `redis://127.0.0.1:${await closedPort()}`;
    const t0 = Date.now();
    await expect(
      study({ experiment: 'lm', outDir: join(root, 'unreachable'), plan: tinyPlan(2, ['none']), queue: url }),
    ).rejects.toThrow(new RegExp(`cannot reach Redis at ${url.replace(/[./]/g, '\\$&')}/? \\(.*ECONNREFUSED`));
    expect(Date.now() - t0).toBeLessThan(6000);
    await expect(
      runWorker({
        url: 'http://127.0.0.1:6379',
        backend: new ReferenceBackend(),
        dataDir,
        workDir: join(root, 'unused-work'),
        concurrency: 1,
        log: () => {},
      }),
    ).rejects.toThrow(/--queue 'http:\/\/127.0.0.1:6379' is not a redis:\/\/ URL/);
  }, 20_000);

  it('a malformed payload fails at once; another package version is refused and the worker stops', async () => {
    const url = freshDb();
    const connection = await connectRedis(url, () => {});
    const queue = new Queue(QUEUE_NAME, { connection });
    const lines: string[] = [];
    let release: () => void = () => {};
    const workerDone = runWorker({
      url,
      backend: new ReferenceBackend(),
      dataDir,
      workDir: join(root, 'bad-work'),
      concurrency: 1,
      log: (s) => lines.push(s),
      stop: new Promise<void>((r) => (release = r)),
    });
    try {
      const broken = await queue.add('lm', { protocol: 1, experiment: 'lm' } as never, {
        jobId: 'cell-0123456789abcdef',
        attempts: 3,
      });
      await waitFor('the malformed job to fail', async () => (await broken.getState()) === 'failed', 20_000);
      const failed = (await queue.getJob(broken.id!))!;
      expect(failed.failedReason).toMatch(/malformed job payload \(job cell-0123456789abcdef\): no cell configuration/);
      expect(failed.attemptsMade).toBe(1); // not retried: no worker could run it

      const config = lmConfigs(tinyPlan(2, ['none']), ['none'])[0]!;
      const payload: CellJob = {
        protocol: 1,
        experiment: 'lm',
        config,
        package: '0.0.0-other',
        corpus: { name: 'tinyshakespeare', trainSha256: 'x', evalSha256: 'y' },
      };
      const job = await queue.add('lm', payload, { jobId: jobIdOf(config), attempts: 3, backoff: 60_000 });
      await expect(workerDone).rejects.toThrow(
        new RegExp(
          `runs hype-attention ${versions().package.replace(/\./g, '\\.')} but the study was enqueued by 0\\.0\\.0-other`,
        ),
      );
      const refused = (await queue.getJob(job.id!))!;
      expect(refused.failedReason).toMatch(/enqueued by 0\.0\.0-other; install 0\.0\.0-other on this worker/);
      expect(await refused.getState()).toBe('delayed'); // left for a worker of the right version
    } finally {
      release();
      await workerDone.catch(() => {});
      await queue.close();
      connection.disconnect();
    }
  }, 30_000);

  it('a worker with another corpus refuses the cell; after every attempt the coordinator names it', async () => {
    const url = freshDb();
    const w = worker(url, otherData, 'c1');
    await expect(
      study({ experiment: 'lm', outDir: join(root, 'corpus'), plan: tinyPlan(2, ['none']), queue: url }),
    ).rejects.toThrow(
      /1 cell\(s\) failed on every attempt[\s\S]*lm tinyshakespeare none seed 1: worker .* refused .*: its tinyshakespeare corpus .* differs from the coordinator's/,
    );
    await stop(w);
    expect(w.stderr().match(/: started \(attempt/g)).toHaveLength(3);
  }, 60_000);
});
