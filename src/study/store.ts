/**
 * Resumable experiment results. A study is a grid of cells (one training run + its evaluations each); every
 * finished cell is one JSON file named by a stable key of its configuration, written atomically, so an
 * interrupted study restarts where it stopped and never recomputes a finished cell.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { HypeError } from '../errors.ts';

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

export function cellKey(config: unknown): string {
  return createHash('sha256').update(stableStringify(config)).digest('hex').slice(0, 16);
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

  constructor(readonly dir: string) {
    this.cellsDir = join(dir, 'cells');
    mkdirSync(this.cellsDir, { recursive: true });
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
    try {
      return JSON.parse(readFileSync(p, 'utf8')) as CellRecord<C, R>;
    } catch (err) {
      throw new HypeError(
        'io',
        `result file ${p} is not valid JSON (${(err as Error).message}); delete it to rerun that cell`,
      );
    }
  }

  put(config: C, result: R, seconds: number): CellRecord<C, R> {
    const key = cellKey(config);
    const record: CellRecord<C, R> = { key, config, result, finishedAt: new Date().toISOString(), seconds };
    const p = this.path(key);
    const tmp = `${p}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(record, null, 1));
    renameSync(tmp, p); // atomic on one file system: a reader sees the old file or the whole new one
    return record;
  }

  all(): CellRecord<C, R>[] {
    return readdirSync(this.cellsDir)
      .filter((f) => f.endsWith('.json'))
      .sort()
      .map((f) => this.read(join(this.cellsDir, f)));
  }

  /**
   * Runs `work` for every config not finished yet, in order, storing each result as soon as it exists.
   * Returns all records (finished earlier or now) in the order of `configs`.
   */
  async runAll(
    configs: readonly C[],
    work: (config: C, index: number, pending: number) => Promise<R>,
  ): Promise<CellRecord<C, R>[]> {
    const pending = configs.filter((c) => !this.has(c)).length;
    let done = 0;
    const out: CellRecord<C, R>[] = [];
    for (const config of configs) {
      const existing = this.get(config);
      if (existing) {
        out.push(existing);
        continue;
      }
      const t0 = performance.now();
      const result = await work(config, done++, pending);
      out.push(this.put(config, result, (performance.now() - t0) / 1000));
    }
    return out;
  }
}
