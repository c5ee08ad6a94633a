/**
 * Resumable experiment results. A study is a grid of cells (one training run + its evaluations each); every
 * finished cell is one JSON file named by a stable key of its configuration, written atomically, so an
 * interrupted study restarts where it stopped and never recomputes a finished cell. Several study processes may
 * share one results folder: a cell is computed only by the live process holding its claim (cells/<key>.json.lock,
 * see util/claim.ts); the others skip it, and at the end wait for its result or take over a dead holder's claim.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { HypeError } from '../errors.ts';
import { findEncodingFactory } from '../pe/registry.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { Claim } from '../util/claim.ts';
import { makeDirs, readJsonFile } from '../util/fs-safe.ts';

/** JSON with object keys sorted, so equal configurations always serialise (and hash) identically. */
export function stableStringify(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(stableStringify).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${stableStringify(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/**
 * The cell key: a hash of the configuration in its saved form. An encoding option whose default changed (the
 * factory's savedDefaults, e.g. T5/XL sharing) is left out of the key when it holds the value an absent key meant,
 * so a cell computed before the option existed keeps its key under a config that now names that choice, and a cell
 * with the new default gets a new key (never the old cell's numbers).
 */
export function cellKey(config: unknown): string {
  return createHash('sha256')
    .update(stableStringify(savedForm(config)))
    .digest('hex')
    .slice(0, 16);
}

function savedForm(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(savedForm);
  if (!value || typeof value !== 'object') return value;
  const obj = value as Record<string, unknown>;
  const out = Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, savedForm(v)]));
  const then = typeof obj.name === 'string' ? findEncodingFactory(obj.name)?.savedDefaults : undefined;
  if (then && out.options && typeof out.options === 'object') {
    out.options = Object.fromEntries(
      Object.entries(out.options).filter(([k, v]) => (then as Record<string, unknown>)[k] !== v),
    );
  }
  return out;
}

export interface CellRecord<C, R> {
  key: string;
  config: C;
  result: R;
  finishedAt: string;
  seconds: number;
}

export class ResultStore<C, R> {
  readonly cellsDir: string;

  constructor(
    readonly dir: string,
    private readonly log: (line: string) => void = () => {},
  ) {
    this.cellsDir = join(dir, 'cells');
    makeDirs(this.cellsDir, 'the results folder');
  }

  private path(key: string): string {
    return join(this.cellsDir, `${key}.json`);
  }

  has(config: C): boolean {
    return existsSync(this.path(cellKey(config)));
  }

  get(config: C): CellRecord<C, R> | undefined {
    const p = this.path(cellKey(config));
    return existsSync(p) ? this.read(p) : undefined;
  }

  private read(p: string): CellRecord<C, R> {
    return readCellFile<C, R>(p);
  }

  put(config: C, result: R, seconds: number): CellRecord<C, R> {
    const key = cellKey(config);
    const record: CellRecord<C, R> = { key, config, result, finishedAt: new Date().toISOString(), seconds };
    // Atomic: a reader (another study process, a report) sees no file or the whole one.
    writeFileAtomic(this.path(key), JSON.stringify(record, null, 1));
    return record;
  }

  all(): CellRecord<C, R>[] {
    return readdirSync(this.cellsDir)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => this.read(join(this.cellsDir, f)));
  }

  /**
   * Runs `work` for every config not finished yet, in order, storing each result as soon as it exists. A cell
   * another live process is computing is skipped at first; once the rest are done, this waits for its result (or
   * computes it, if that process died). Returns all records in the order of `configs`.
   */
  async runAll(
    configs: readonly C[],
    work: (config: C, index: number, pending: number) => Promise<R>,
  ): Promise<CellRecord<C, R>[]> {
    const pending = configs.filter((c) => !this.has(c)).length;
    let done = 0;
    const out = new Map<number, CellRecord<C, R>>();
    // Claims the cell and computes it; false if another live process holds it.
    const attempt = async (i: number): Promise<boolean> => {
      const config = configs[i]!;
      const claim = await Claim.tryTake(this.path(cellKey(config)), 'study cell');
      if (!claim) return false;
      try {
        const finished = this.get(config); // by the process that held the claim before us
        if (finished) {
          out.set(i, finished);
          return true;
        }
        const t0 = performance.now();
        const result = await work(config, done++, pending);
        claim.check();
        out.set(i, this.put(config, result, (performance.now() - t0) / 1000));
        return true;
      } finally {
        await claim.release();
      }
    };
    let elsewhere: number[] = [];
    for (let i = 0; i < configs.length; i++) {
      const existing = this.get(configs[i]!);
      if (existing) out.set(i, existing);
      else if (!(await attempt(i))) elsewhere.push(i);
    }
    if (elsewhere.length > 0) {
      this.log(`${elsewhere.length} cell(s) are being computed by another process; waiting for them`);
    }
    while (elsewhere.length > 0) {
      await new Promise((r) => setTimeout(r, 1000));
      const still: number[] = [];
      for (const i of elsewhere) {
        const existing = this.get(configs[i]!);
        if (existing) out.set(i, existing);
        else if (!(await attempt(i))) still.push(i);
      }
      elsewhere = still;
    }
    return configs.map((_, i) => out.get(i)!);
  }
}

/** One cell file; a truncated or hand-broken one is refused with the way out (delete it to recompute the cell). */
export function readCellFile<C, R>(p: string): CellRecord<C, R> {
  const rec = readJsonFile(p, 'result file', 'delete it to rerun that cell') as CellRecord<C, R>;
  if (typeof rec !== 'object' || rec === null || !('config' in rec) || !('result' in rec)) {
    throw new HypeError(
      'io',
      `result file '${p}' is not a study cell (no config or result); delete it to rerun that cell`,
    );
  }
  return rec;
}
