/**
 * The study's cost measurement: `npm run bench:explicit -- --json <file>` writes one record of training-step and
 * evaluation-forward times per encoding, measured side by side with alibi in one run on the native backend; the
 * report reads <results>/cost.json (when present) to answer the second round's cost question. Training seconds
 * recorded in study cells are no substitute: cells run several at a time on shared cores and a resumed cell counts
 * only the seconds after its checkpoint.
 *
 * Record shape: { bench, measuredAt, versions, threads, rounds, minSeconds, cpus, loadAverage: [start, end],
 * shape: { width, layers, heads, mlpWidth, trainLength, batch, evalLength }, rows: [{ encoding, trainMs, evalMs,
 * trainCalls, evalCalls }] } with rows[0] the baseline (alibi); evalMs is null when the eval column was skipped.
 */
import { existsSync, readFileSync } from 'node:fs';
import { check, HypeError } from '../errors.ts';
import type { Versions } from './versions.ts';

export const COST_FILE = 'cost.json';

export interface CostRow {
  encoding: string;
  /** Median ms per training step (zeroGrad, forward with targets, backward, clipping, AdamW). */
  trainMs: number;
  /** Median ms per evaluation forward at shape.evalLength, batch 1; null when not measured. */
  evalMs: number | null;
  trainCalls: number;
  evalCalls: number;
}

export interface CostRecord {
  bench: 'explicit-encodings';
  measuredAt: string;
  versions: Versions;
  threads: number;
  rounds: number;
  minSeconds: number;
  cpus: number;
  /** One-minute load average when the run started and when it ended (a busy machine inflates every time). */
  loadAverage: [number, number];
  shape: {
    width: number;
    layers: number;
    heads: number;
    mlpWidth: number;
    trainLength: number;
    batch: number;
    evalLength: number;
  };
  rows: CostRow[];
}

/** The record in `path`, or null when there is none; a malformed file is one error naming it. */
export function readCost(path: string): CostRecord | null {
  if (!existsSync(path)) return null;
  let r: CostRecord;
  try {
    r = JSON.parse(readFileSync(path, 'utf8')) as CostRecord;
  } catch (e) {
    throw new HypeError('io', `${path} is not JSON (${(e as Error).message}); rewrite it with bench:explicit --json`);
  }
  check(
    r?.bench === 'explicit-encodings' &&
      Array.isArray(r.rows) &&
      r.rows.length > 0 &&
      r.rows.every((x) => typeof x.encoding === 'string' && Number.isFinite(x.trainMs) && x.trainMs > 0),
    'argument',
    `${path} is not a bench:explicit record (rows of encoding and trainMs); rewrite it with bench:explicit --json`,
  );
  return r;
}

/**
 * Report lines for `encodings` from a cost record: step time relative to the record's baseline (its first row),
 * and whether that is within `fewPercent` of it, as the study issue asks.
 */
export function costRecordLines(cost: CostRecord, encodings: readonly string[], fewPercent = 5): string[] {
  const base = cost.rows[0]!;
  const s = cost.shape;
  const c = cost.versions.commit;
  // '+dirty': tracked code differed from the commit when it ran (versions.ts); say so rather than hide it.
  const commit = c ? c.slice(0, 7) + (c.endsWith('+dirty') ? ' with uncommitted changes' : '') : 'unknown commit';
  const lines = [
    `  - Measured by \`npm run bench:explicit\` (${cost.measuredAt.slice(0, 10)}, code ${commit}): native backend, ` +
      `${cost.threads} thread(s) on ${cost.cpus} cores, medians of ${cost.rounds} rounds of at least ` +
      `${cost.minSeconds} s each, every encoding timed in turn beside ${base.encoding}; load average ` +
      `${cost.loadAverage[0].toFixed(1)} at the start, ${cost.loadAverage[1].toFixed(1)} at the end. Training step: ` +
      `width ${s.width}, ${s.layers} layers, ${s.heads} heads, batch ${s.batch}, L = ${s.trainLength}, fp32; ` +
      (base.evalMs !== null
        ? `evaluation: one forward at L = ${s.evalLength}, batch 1. ${base.encoding}: ${base.trainMs.toFixed(1)} ms ` +
          `per step, ${base.evalMs.toFixed(1)} ms per evaluation.`
        : `${base.encoding}: ${base.trainMs.toFixed(1)} ms per step.`),
  ];
  for (const enc of encodings) {
    const row = cost.rows.find((r) => r.encoding === enc);
    if (!row) {
      lines.push(`  - ${enc}: not in this measurement.`);
      continue;
    }
    const ratio = row.trainMs / base.trainMs;
    const verdict =
      ratio <= 1 + fewPercent / 100
        ? `within ${fewPercent}% of ${base.encoding}`
        : `${((ratio - 1) * 100).toFixed(0)}% over ${base.encoding}: more than ${fewPercent}%`;
    const evalPart =
      row.evalMs !== null && base.evalMs !== null
        ? `; evaluation ${row.evalMs.toFixed(1)} ms, ${(row.evalMs / base.evalMs).toFixed(2)}x`
        : '';
    lines.push(
      `  - ${enc}: training step ${row.trainMs.toFixed(1)} ms, ${ratio.toFixed(2)}x ${base.encoding} (${verdict})` +
        `${evalPart}.`,
    );
  }
  return lines;
}
