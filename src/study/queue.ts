/**
 * The study across machines: its cells as jobs on a BullMQ queue in Redis (no home-made scheduler). The coordinator
 * (`hype study ... --queue redis://host:port[/db]`) enqueues every unfinished cell as one job whose id is the cell's
 * key, so a cell is never queued twice; workers (`hype worker --queue ...`) compute cells and return their results
 * through the queue; the coordinator writes each result into the usual results folder (under the cell's claim, as a
 * local study process would) and then the report.
 *
 * Failure semantics, from BullMQ: a worker that dies mid-cell stops renewing its job lock; after lockMs() the job is
 * stalled and goes back to the queue for another worker (at most MAX_STALLS times). It restarts the cell from its
 * start unless the workers share --work-dir, in which case the training-run claim (util/claim.ts) of the dead worker
 * falls stale and the next one resumes from the last checkpoint. A cell that throws is retried ATTEMPTS times in all,
 * then fails with its error shown by the coordinator. Jobs live in Redis, so a coordinator stopped and started again
 * collects what finished meanwhile and re-adds nothing already queued.
 */
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import type { Backend } from '../backend/backend.ts';
import { HypeError } from '../errors.ts';
import { withClaim } from '../util/claim.ts';
import type { StudyEnv } from './cell.ts';
import {
  computeFlipflop,
  computeLm,
  computePrecision,
  computeRecall,
  loadLmData,
  storeFor,
  type FlipflopConfig,
  type LmConfig,
  type PrecisionConfig,
  type RecallConfig,
} from './experiments.ts';
import { EXPERIMENTS, type CorpusName, type Experiment } from './plan.ts';
import { cellCost, formatDuration, queueTable, type RunningJob, type StudyCell } from './progress.ts';
import { cellKey } from './store.ts';
import { versions } from './versions.ts';

export const QUEUE_NAME = 'hype-study';
/** How long connecting to Redis may take before the command gives up with an error naming the URL. */
export const CONNECT_TIMEOUT_MS = 5000;
/** Tries of a cell that throws (a deterministic failure stops here, with its error). */
export const ATTEMPTS = 3;
/** Times a cell may be taken back from a worker that stopped renewing its lock (killed, frozen) before it fails. */
export const MAX_STALLS = 2;

/**
 * How long a worker's lock on its job lasts without renewal: the time before a killed worker's cell is taken back.
 * Renewed every half of it from a timer, so it must exceed the longest synchronous stretch of a cell (one
 * evaluation pass). HYPE_QUEUE_LOCK_MS overrides it (tests use 2 s).
 */
export function lockMs(): number {
  const env = Number(process.env.HYPE_QUEUE_LOCK_MS);
  return Number.isFinite(env) && env >= 1000 ? env : 120_000;
}

type AnyConfig = LmConfig | FlipflopConfig | RecallConfig | PrecisionConfig;

/** A job's payload: the cell and what a worker must match to compute it as the coordinator would. */
export interface CellJob {
  protocol: 1;
  experiment: Experiment;
  config: AnyConfig;
  /** The coordinator's hype-attention version; a worker of another version refuses the cell. */
  package: string;
  /** lm and precision: the coordinator's corpus, by the sha256 of its training and evaluation bytes. */
  corpus?: { name: CorpusName; trainSha256: string; evalSha256: string };
}

/** Progress a worker reports on its job. */
interface JobProgress {
  worker: string;
  step: number;
  steps: number;
}

export const jobIdOf = (config: unknown) => `cell-${cellKey(config)}`;

/** The URL with any password hidden, for messages. */
export function parseQueueUrl(url: string): { href: string; shown: string } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new HypeError('argument', `--queue '${url}' is not a URL; pass redis://host:port or redis://host:port/db`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new HypeError(
      'argument',
      `--queue '${url}' is not a redis:// URL; pass redis://host:port or redis://host:port/db`,
    );
  }
  if (u.pathname !== '' && u.pathname !== '/' && !/^\/\d+$/.test(u.pathname)) {
    throw new HypeError('argument', `--queue '${url}': the path must be a database number, as in redis://host:6379/2`);
  }
  const shown = new URL(u.href);
  if (shown.password) shown.password = '***';
  return { href: u.href, shown: shown.href };
}

/**
 * A connection to the Redis of `url`, or one HypeError naming the URL within CONNECT_TIMEOUT_MS. Once connected,
 * a lost connection is retried (a restarted Redis is picked up again) and reported once per loss.
 */
export async function connectRedis(url: string, log: (line: string) => void): Promise<Redis> {
  const { href, shown } = parseQueueUrl(url);
  let ready = false;
  let lost = false;
  let lastError = '';
  const client = new Redis(href, {
    lazyConnect: true,
    connectTimeout: CONNECT_TIMEOUT_MS,
    maxRetriesPerRequest: null, // BullMQ's blocking commands require it
    retryStrategy: (n) => (ready ? Math.min(500 * n, 5000) : null),
  });
  client.on('error', (err: Error) => {
    lastError = err.message;
    if (ready && !lost) log(`lost the connection to Redis at ${shown} (${err.message}); reconnecting`);
    if (ready) lost = true;
  });
  client.on('ready', () => {
    if (lost) log(`reconnected to Redis at ${shown}`);
    lost = false;
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      client.connect(),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s`)),
          CONNECT_TIMEOUT_MS,
        );
      }),
    ]);
  } catch (err) {
    client.disconnect();
    throw new HypeError(
      'io',
      `cannot reach Redis at ${shown} (${lastError || (err as Error).message}); start redis-server there or ` +
        'correct --queue (see the README, "The study on several machines")',
    );
  } finally {
    clearTimeout(timer);
  }
  ready = true;
  return client;
}

const cellLabel = (e: Experiment, c: AnyConfig): string =>
  c.experiment === 'precision'
    ? `precision ${c.lm.encoding} seed ${c.lm.seed} ${c.format}`
    : c.experiment === 'lm'
      ? `lm ${c.corpus} ${c.encoding} seed ${c.seed}`
      : `${e} ${c.encoding} seed ${c.seed}`;

// ---------------------------------------------------------------------------------------------------- coordinator

export interface QueuedCell {
  experiment: Experiment;
  config: AnyConfig;
}

export interface QueueOutcome {
  /** Cells whose results this coordinator wrote. */
  written: number;
  /** Cells that failed on every attempt, with the last error. */
  failed: { label: string; reason: string }[];
}

/**
 * Enqueues the cells of `cells` without a result file in `outDir`, waits for all of them, writes each result as it
 * arrives, and returns what was written and what failed. `dataDir` gives the corpus hashes the workers must match.
 */
export async function runQueuedCells(o: {
  url: string;
  cells: readonly QueuedCell[];
  outDir: string;
  dataDir: string;
  log: (line: string) => void;
  /**
   * A live view (a terminal): called at every poll with the whole progress table (queueTable) to redraw in place;
   * without one, progress goes to `log` as a line when it changes (at most every 2 s, and every 30 s regardless).
   */
  live?: (table: string) => void;
  pollMs?: number;
  /**
   * Cells being recomputed (--recompute): a job of theirs left from an earlier run (waiting, finished but not yet
   * collected, failed) is removed first, so it cannot hand back a result of the code before the fix.
   */
  recompute?: (c: QueuedCell) => boolean;
}): Promise<QueueOutcome> {
  const log = o.log;
  const connection = await connectRedis(o.url, log);
  const queue = new Queue<CellJob>(QUEUE_NAME, { connection });
  const pkg = versions().package;
  const corpora = new Map<CorpusName, CellJob['corpus']>();
  const corpusOf = (name: CorpusName) => {
    if (!corpora.has(name)) {
      const d = loadLmData({ dataDir: o.dataDir } as StudyEnv, name);
      corpora.set(name, { name, trainSha256: d.trainSha256, evalSha256: d.evalSha256 });
    }
    return corpora.get(name);
  };
  const pathOf = (c: QueuedCell) => join(o.outDir, c.experiment, 'cells', `${cellKey(c.config)}.json`);
  try {
    const open = o.cells.filter((c) => !existsSync(pathOf(c)));
    const pending = new Map<string, QueuedCell>();
    const enqueue = async (c: QueuedCell) => {
      const corpusName =
        c.config.experiment === 'lm'
          ? c.config.corpus
          : c.config.experiment === 'precision'
            ? c.config.lm.corpus
            : null;
      const data: CellJob = {
        protocol: 1,
        experiment: c.experiment,
        config: c.config,
        package: pkg,
        ...(corpusName ? { corpus: corpusOf(corpusName) } : {}),
      };
      const id = jobIdOf(c.config);
      // An existing job of that id (queued by an earlier coordinator) is returned as it is: never queued twice.
      const job = await queue.add(c.experiment, data, {
        jobId: id,
        attempts: ATTEMPTS,
        backoff: { type: 'fixed', delay: 1000 },
      });
      if ((await job.getState()) === 'failed') {
        log(`${cellLabel(c.experiment, c.config)}: failed in an earlier run (${job.failedReason}); trying it again`);
        await job.retry('failed');
      }
      pending.set(id, c);
    };
    for (const c of open.filter((x) => o.recompute?.(x))) {
      const old = await queue.getJob(jobIdOf(c.config));
      if (!old) continue;
      if ((await old.getState()) === 'active') {
        throw new HypeError(
          'argument',
          `cannot recompute ${cellLabel(c.experiment, c.config)}: a worker is computing it now; pass --recompute once ` +
            'it has finished',
        );
      }
      await old.remove();
    }
    for (const c of open) await enqueue(c);
    log(
      `queue: ${open.length} cell(s) on ${QUEUE_NAME} at ${parseQueueUrl(o.url).shown}; waiting for workers (hype worker --queue ...)`,
    );

    const t0 = performance.now();
    const totalCost = open.reduce((s, c) => s + cellCost(c.config as StudyCell), 0);
    let doneCost = 0;
    let written = 0;
    const failed: QueueOutcome['failed'] = [];
    let lastLine = '';
    let lastAt = 0;
    while (pending.size > 0) {
      const running: RunningJob[] = [];
      let runningCost = 0;
      let waiting = 0;
      for (const [id, c] of [...pending]) {
        const label = cellLabel(c.experiment, c.config);
        const job = await queue.getJob(id);
        if (!job) {
          // Removed by someone else (another coordinator collected it, or an operator cleaned the queue).
          if (!existsSync(pathOf(c))) await enqueue(c);
          else pending.delete(id);
          continue;
        }
        const state = await job.getState();
        if (state === 'completed') {
          // The job object was fetched before getState(): if the job finished in between, its returnvalue and
          // finishedOn are not in that copy yet. Fetch it again now that it is known to be complete.
          const done = (await queue.getJob(id)) ?? job;
          const seconds = ((done.finishedOn ?? 0) - (done.processedOn ?? 0)) / 1000;
          await writeResult(o.outDir, c, done.returnvalue, seconds);
          await job.remove().catch(() => {}); // its result is on disk now; the job has done its work
          pending.delete(id);
          written++;
          doneCost += cellCost(c.config as StudyCell);
          log(
            `[${written + failed.length}/${open.length}] ${label}: done on ${done.processedBy ?? 'a worker'} in ${formatDuration(seconds)}`,
          );
        } else if (state === 'failed') {
          pending.delete(id);
          failed.push({ label, reason: job.failedReason });
          doneCost += cellCost(c.config as StudyCell);
          log(
            `[${written + failed.length}/${open.length}] ${label}: FAILED after ${job.attemptsMade} attempt(s): ${job.failedReason}`,
          );
        } else if (state === 'active') {
          const p = job.progress as Partial<JobProgress>;
          const seconds = job.processedOn ? Math.max(0, (Date.now() - job.processedOn) / 1000) : 0;
          if (typeof p === 'object' && p && typeof p.step === 'number' && typeof p.steps === 'number' && p.steps > 0) {
            running.push({
              label,
              worker: String(p.worker ?? job.processedBy ?? '?'),
              step: p.step,
              steps: p.steps,
              seconds,
            });
            runningCost += (cellCost(c.config as StudyCell) * p.step) / p.steps;
          } else running.push({ label, worker: job.processedBy ?? '?', step: 0, steps: 0, seconds });
        } else waiting++;
      }
      const elapsed = (performance.now() - t0) / 1000;
      const progressed = doneCost + runningCost;
      const eta =
        progressed > 0
          ? `about ${formatDuration((elapsed / progressed) * (totalCost - progressed))} left`
          : 'time left: known once a worker reports progress';
      if (o.live) {
        if (pending.size > 0) {
          o.live(
            queueTable(running, {
              done: written + failed.length,
              total: open.length,
              waiting,
              failed: failed.length,
              elapsed,
              eta,
            }),
          );
        }
      } else {
        const line = `queue: ${written + failed.length}/${open.length} done, ${running.length} running, ${waiting} waiting`;
        const jobs = running.map(
          (j) => `${j.label}${j.steps > 0 ? ` on ${j.worker}: step ${j.step}/${j.steps}` : ': starting'}`,
        );
        if (
          pending.size > 0 &&
          (line !== lastLine || performance.now() - lastAt > 30_000) &&
          performance.now() - lastAt > 2000
        ) {
          log(`${line} | ${formatDuration(elapsed)} elapsed, ${eta}${jobs.length ? `\n  ${jobs.join('\n  ')}` : ''}`);
          lastLine = line;
          lastAt = performance.now();
        }
      }
      if (pending.size > 0) await new Promise((r) => setTimeout(r, o.pollMs ?? 500));
    }
    return { written, failed };
  } finally {
    await queue.close();
    connection.disconnect();
  }
}

/** Writes a worker's result as the cell's file, under the cell's claim, unless another process wrote it first. */
async function writeResult(outDir: string, c: QueuedCell, result: unknown, seconds: number): Promise<void> {
  if (typeof result !== 'object' || result === null || !('versions' in result)) {
    throw new HypeError('io', `the queue returned no result object for ${cellLabel(c.experiment, c.config)}`);
  }
  const store = storeFor<AnyConfig, unknown>(outDir, c.experiment);
  const path = join(store.cellsDir, `${cellKey(c.config)}.json`);
  await withClaim(path, 'study cell', () => {
    if (!existsSync(path)) store.put(c.config, result, seconds);
  });
}

// ---------------------------------------------------------------------------------------------------- worker

/** The job's payload, checked: a payload this package did not write is refused for good (no retry helps). */
export function parseCellJob(job: { id?: string; data: unknown }): CellJob {
  const bad = (why: string) =>
    new UnrecoverableError(`malformed job payload (job ${job.id}): ${why}; only 'hype study --queue' enqueues cells`);
  const d = job.data as Partial<CellJob> | null;
  if (typeof d !== 'object' || d === null) throw bad('not an object');
  if (d.protocol !== 1) throw bad(`protocol ${JSON.stringify(d.protocol)}, expected 1`);
  if (!(EXPERIMENTS as readonly unknown[]).includes(d.experiment))
    throw bad(`unknown experiment ${JSON.stringify(d.experiment)}`);
  if (typeof d.config !== 'object' || d.config === null || d.config.experiment !== d.experiment) {
    throw bad('no cell configuration of that experiment');
  }
  if (job.id !== jobIdOf(d.config)) throw bad(`its configuration does not hash to its id (${jobIdOf(d.config)})`);
  if (typeof d.package !== 'string') throw bad('no package version');
  const needsCorpus = d.experiment === 'lm' || d.experiment === 'precision';
  if (needsCorpus && (typeof d.corpus?.trainSha256 !== 'string' || typeof d.corpus?.evalSha256 !== 'string')) {
    throw bad('no corpus hashes');
  }
  return d as CellJob;
}

export interface WorkerOptions {
  url: string;
  /** Any backend (a device one refuses, cell by cell, what it cannot run: those attempts fail for other workers). */
  backend: Backend<unknown, unknown>;
  dataDir: string;
  workDir: string;
  concurrency: number;
  log: (line: string) => void;
  /** Resolves when the worker should stop (after its current cells); absent: SIGINT/SIGTERM. */
  stop?: Promise<void>;
}

/**
 * Runs cells from the queue until stopped. Refuses (the job fails that attempt, so another worker may take it) a
 * cell of another package version — and then stops, since it could run none of that study — or one whose corpus
 * here differs from the coordinator's.
 */
export async function runWorker(o: WorkerOptions): Promise<void> {
  const connection = await connectRedis(o.url, o.log);
  const name = `${hostname()}:${process.pid}`;
  const mine = versions().package;
  let refusal: HypeError | null = null;
  let stopNow: () => void = () => {};
  const stopped = new Promise<void>((r) => (stopNow = r));
  const worker = new Worker<CellJob>(
    QUEUE_NAME,
    async (job: Job<CellJob>) => {
      const p = parseCellJob(job);
      const label = cellLabel(p.experiment, p.config);
      if (p.package !== mine) {
        refusal = new HypeError(
          'argument',
          `worker ${name} runs hype-attention ${mine} but the study was enqueued by ${p.package}; install ` +
            `${p.package} on this worker (it refused '${label}' and stops)`,
        );
        stopNow();
        throw new Error(refusal.message);
      }
      const env: StudyEnv = {
        backend: o.backend,
        workDir: o.workDir,
        dataDir: o.dataDir,
        log: (line) => o.log(`[${job.id}] ${line}`),
      };
      let last = 0;
      env.onStep = (step, steps) => {
        if (step < steps && performance.now() - last < 1000) return;
        last = performance.now();
        void job.updateProgress({ worker: name, step, steps } satisfies JobProgress).catch(() => {});
      };
      o.log(`[${job.id}] ${label}: started (attempt ${job.attemptsMade + 1} of ${ATTEMPTS})`);
      const c = p.config;
      if (c.experiment === 'lm' || c.experiment === 'precision') {
        const corpus = c.experiment === 'lm' ? c.corpus : c.lm.corpus;
        const data = loadLmData(env, corpus);
        if (data.trainSha256 !== p.corpus!.trainSha256 || data.evalSha256 !== p.corpus!.evalSha256) {
          throw new Error(
            `worker ${name} refused '${label}': its ${corpus} corpus in ${o.dataDir} (sha256 ` +
              `${data.trainSha256.slice(0, 12)}.../${data.evalSha256.slice(0, 12)}...) differs from the coordinator's ` +
              `(${p.corpus!.trainSha256.slice(0, 12)}.../${p.corpus!.evalSha256.slice(0, 12)}...); give this worker the ` +
              "coordinator's data folder (--data-dir)",
          );
        }
        return c.experiment === 'lm' ? computeLm(env, c, data) : computePrecision(env, c, data);
      }
      return c.experiment === 'flipflop' ? computeFlipflop(env, c) : computeRecall(env, c);
    },
    {
      connection,
      name,
      concurrency: o.concurrency,
      lockDuration: lockMs(),
      stalledInterval: Math.min(30_000, lockMs()),
      maxStalledCount: MAX_STALLS,
    },
  );
  worker.on('completed', (job) => o.log(`[${job.id}] done`));
  worker.on('failed', (job, err) => o.log(`[${job?.id}] failed: ${err.message}`));
  worker.on('error', (err) => o.log(`worker error: ${err.message}`));
  o.log(
    `hype worker ${name}: taking cells from ${QUEUE_NAME} at ${parseQueueUrl(o.url).shown} ` +
      `(concurrency ${o.concurrency}, backend ${o.backend.name}, data ${o.dataDir}, runs ${o.workDir})`,
  );
  const signals = () => {
    o.log(`hype worker ${name}: stopping after the cell(s) in hand (a second signal stops at once)`);
    stopNow();
    process.once('SIGINT', () => process.exit(130));
  };
  if (!o.stop) {
    process.once('SIGINT', signals);
    process.once('SIGTERM', signals);
  }
  await Promise.race([stopped, o.stop ?? new Promise<never>(() => {})]);
  await worker.close();
  connection.disconnect();
  process.off('SIGINT', signals);
  process.off('SIGTERM', signals);
  if (refusal) throw refusal;
}
