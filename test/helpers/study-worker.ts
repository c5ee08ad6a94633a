/**
 * One study process over a tiny plan, for tests of several processes sharing a results folder:
 * `tsx test/helpers/study-worker.ts <experiment> <outDir> <workDir> <dataDir> <steps> [encodings] [queue url]` (with a
 * queue URL it is the coordinator of a queued study). Logs go to stderr, each line prefixed with this process's pid.
 */
import { ReferenceBackend } from '../../src/backend/reference.ts';
import { quickPlan, type Experiment, type StudyPlan } from '../../src/study/plan.ts';
import { runStudy } from '../../src/study/run.ts';

const [experiment, outDir, workDir, dataDir, steps, encodings, queue] = process.argv.slice(2);

function tinyPlan(): StudyPlan {
  const tiny = { width: 16, layers: 1, heads: 2, mlpWidth: 32 };
  const budget = { steps: Number(steps), batch: 2, lr: 1e-3, warmup: 1 };
  return {
    ...quickPlan(),
    seeds: [1],
    encodings: encodings ? encodings.split(',') : ['none', 'alibi', 'hype-recency'],
    lm: { corpora: ['tinyshakespeare'], trainLength: 8, multipliers: [1], evalBytes: 64, model: tiny, budget },
    precision: { encodings: ['hype-recency'], formats: ['fp32'], corpus: 'tinyshakespeare' },
  };
}

await runStudy({
  experiment: experiment as Experiment,
  quick: true,
  outDir: outDir!,
  workDir: workDir!,
  dataDir: dataDir!,
  backend: new ReferenceBackend(),
  plan: tinyPlan(),
  queue: queue || undefined,
  log: (s) => process.stderr.write(`[${process.pid}] ${s}\n`),
});
