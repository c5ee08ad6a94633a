/**
 * `npm run bench:explicit`: cost of encodings against the fused-kernel baseline (alibi), side by side in one run,
 * at the lm study's full shape on the native backend. By default the explicit-logit encodings (xl, shaw, da, path);
 * `--only` takes any study encoding names (src/study/plan.ts: e.g. alibi-learned,hype-sc,fox,hype-gated — the
 * study issue's cost question) or registry specs without commas. Measured:
 *   - train: one training step as the trainer runs it (zeroGrad, forward with targets, backward, gradient
 *     clipping, AdamW update) for width 128, 2 layers, 4 heads, MLP 512, batch 16, L = 128, fp32;
 *   - eval: one forward with targets at L = 2048, batch 1 (the longest evaluation length of the study).
 * Prints ms per call and the ratio to alibi measured in the same run; compare ratios rather than absolute times
 * when the machine is shared. With --rounds R > 1 the encodings are timed in turn R times (A B C A B C ...) and the
 * median of each is reported, so a burst of load elsewhere does not land on one encoding only.
 *
 * Options: --only xl,shaw (encodings besides alibi), --seconds S (minimum timed seconds per cell, default 3),
 * --threads N (native threads, default all cores), --eval-length N (default 2048; 0 skips the eval column),
 * --rounds R (default 1), --json FILE (also write the medians as a cost record, src/study/cost.ts: the study report
 * reads results/full/cost.json for its cost question).
 */
import { writeFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { loadBackend } from '../src/backend/index.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { AdamW, clipGradients } from '../src/train/optimizer.ts';
import type { CostRecord } from '../src/study/cost.ts';
import { STUDY_ENCODINGS } from '../src/study/plan.ts';
import { versions } from '../src/study/versions.ts';
import { Rng } from '../src/util/rng.ts';

const args = process.argv.slice(2);
const value = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const minSeconds = Number(value('--seconds') ?? 3);
const threads = Number(value('--threads') ?? availableParallelism());
const evalLength = Number(value('--eval-length') ?? 2048);
const rounds = Math.max(1, Number(value('--rounds') ?? 1));
const encodings = ['alibi', ...(value('--only')?.split(',') ?? ['xl', 'shaw', 'da', 'path'])];
const jsonPath = value('--json');
const loadAtStart = loadavg()[0]!;

const SHAPE = { width: 128, layers: 2, heads: 4, mlpWidth: 512, trainLength: 128, batch: 16 };
const VOCAB = 256;

/** Runs `fn` once to warm up, then until minSeconds have passed (at least 2 timed calls); mean ms per call. */
function timeCalls(fn: () => void): { ms: number; calls: number } {
  fn();
  let n = 0;
  const t0 = performance.now();
  while (n < 2 || performance.now() - t0 < minSeconds * 1000) {
    fn();
    n++;
  }
  return { ms: (performance.now() - t0) / n, calls: n };
}

function randomTokens(n: number, seed: number): { tokens: Int32Array; targets: Int32Array } {
  const rng = new Rng(seed);
  return {
    tokens: Int32Array.from({ length: n }, () => rng.int(VOCAB)),
    targets: Int32Array.from({ length: n }, () => rng.int(VOCAB)),
  };
}

interface Row {
  pe: string;
  train: { ms: number; calls: number };
  evaluate: { ms: number; calls: number };
}

/** A study encoding name (its registry name and options) or a registry spec such as 'hype:preset=learned'. */
function peOf(name: string): unknown {
  return STUDY_ENCODINGS[name] ?? name;
}

function benchEncoding(pe: string): Row {
  const backend = loadBackend('native', { threads });
  const { batch, ...model } = SHAPE;
  const cfg = parseModelConfig({ ...model, kvHeads: SHAPE.heads, pe: peOf(pe), seed: 1, dtype: 'float32' });
  const net = new Transformer(cfg, backend);
  const train = parseTrainConfig({});
  const opt = new AdamW(net.parameters(), backend);
  const t = randomTokens(batch * SHAPE.trainLength, 1);
  const trainTime = timeCalls(() => {
    net.zeroGrad();
    net.forward(t.tokens, t.targets, batch, SHAPE.trainLength);
    net.backward();
    clipGradients(net.parameters(), train.clip);
    opt.update(train, 1e-3);
  });
  const e = randomTokens(Math.max(evalLength, 1), 2);
  const evalTime =
    evalLength > 0
      ? timeCalls(() => {
          net.forward(e.tokens, e.targets, 1, evalLength);
        })
      : { ms: NaN, calls: 0 };
  return { pe, train: trainTime, evaluate: evalTime };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const samples = new Map<string, Row[]>(encodings.map((pe) => [pe, []]));
for (let round = 1; round <= rounds; round++) {
  for (const pe of encodings) {
    const r = benchEncoding(pe);
    samples.get(pe)!.push(r);
    process.stderr.write(
      `round ${round}: ${pe}: train ${r.train.ms.toFixed(1)} ms, eval ${r.evaluate.ms.toFixed(1)} ms\n`,
    );
  }
}
const rows: Row[] = encodings.map((pe) => {
  const rs = samples.get(pe)!;
  const calls = (f: (r: Row) => { calls: number }) => rs.reduce((n, r) => n + f(r).calls, 0);
  return {
    pe,
    train: { ms: median(rs.map((r) => r.train.ms)), calls: calls((r) => r.train) },
    evaluate: { ms: median(rs.map((r) => r.evaluate.ms)), calls: calls((r) => r.evaluate) },
  };
});
const base = rows[0]!;
const evalHead = evalLength > 0 ? `eval forward ms (B=1, L=${evalLength})` : 'eval forward ms';
const header = `| encoding | train step ms (B=${SHAPE.batch}, L=${SHAPE.trainLength}) | x alibi | ${evalHead} | x alibi |`;
console.log(
  `threads ${threads}, minimum ${minSeconds} s per cell, ${rounds} round(s) (medians); width 128, 2 layers, ` +
    '4 heads, fp32, native',
);
console.log(header);
console.log('|---|---:|---:|---:|---:|');
const cell = (ms: number, baseMs: number) =>
  evalLength > 0 ? `${ms.toFixed(1)} | ${(ms / baseMs).toFixed(2)}` : 'skipped | -';
for (const r of rows) {
  console.log(
    `| ${r.pe} | ${r.train.ms.toFixed(1)} | ${(r.train.ms / base.train.ms).toFixed(2)} | ` +
      `${cell(r.evaluate.ms, base.evaluate.ms)} |`,
  );
}
if (jsonPath) {
  const record: CostRecord = {
    bench: 'explicit-encodings',
    measuredAt: new Date().toISOString(),
    versions: versions(),
    threads,
    rounds,
    minSeconds,
    cpus: availableParallelism(),
    loadAverage: [loadAtStart, loadavg()[0]!],
    shape: { ...SHAPE, evalLength },
    rows: rows.map((r) => ({
      encoding: r.pe,
      trainMs: r.train.ms,
      evalMs: evalLength > 0 ? r.evaluate.ms : null,
      trainCalls: r.train.calls,
      evalCalls: r.evaluate.calls,
    })),
  };
  writeFileSync(jsonPath, JSON.stringify(record, null, 2) + '\n');
  console.log(`wrote ${jsonPath}`);
}
