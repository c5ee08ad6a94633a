import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cellKey, ResultStore, stableStringify } from '../src/study/store.ts';
import { markdownTable } from '../src/study/table.ts';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'hype-store-'));
  dirs.push(d);
  return d;
}

describe('result store', () => {
  it('keys configurations independently of key order', () => {
    expect(stableStringify({ b: 1, a: [{ y: 2, x: 1 }] })).toBe('{"a":[{"x":1,"y":2}],"b":1}');
    expect(cellKey({ pe: 'alibi', seed: 1 })).toBe(cellKey({ seed: 1, pe: 'alibi' }));
    expect(cellKey({ pe: 'alibi', seed: 1 })).not.toBe(cellKey({ pe: 'alibi', seed: 2 }));
  });

  it('resumes: finished cells are not recomputed, and results survive a new store on the same folder', async () => {
    const dir = tmp();
    const configs = [1, 2, 3].map((seed) => ({ pe: 'none', seed }));
    const calls: number[] = [];
    const work = async (c: { seed: number }) => {
      calls.push(c.seed);
      if (c.seed === 3 && calls.filter((s) => s === 3).length === 1) throw new Error('interrupted');
      return { bpb: c.seed / 10 };
    };
    const first = new ResultStore<{ pe: string; seed: number }, { bpb: number }>(dir);
    await expect(first.runAll(configs, work)).rejects.toThrow('interrupted');
    expect(readdirSync(join(dir, 'cells')).filter((f) => f.endsWith('.json'))).toHaveLength(2);
    const second = new ResultStore<{ pe: string; seed: number }, { bpb: number }>(dir);
    const all = await second.runAll(configs, work);
    expect(calls).toEqual([1, 2, 3, 3]);
    expect(all.map((r) => r.result.bpb)).toEqual([0.1, 0.2, 0.3]);
  });

  it('names a corrupt result file and how to recover', () => {
    const dir = tmp();
    const store = new ResultStore<{ a: number }, number>(dir);
    writeFileSync(join(dir, 'cells', `${cellKey({ a: 1 })}.json`), '{"truncated');
    expect(() => store.get({ a: 1 })).toThrow(/not valid JSON.*delete it/);
  });
});

describe('markdown table', () => {
  it('aggregates seeds into mean ± interval, sorts numeric columns, marks missing cells', () => {
    const t = markdownTable(
      [
        { row: 'alibi', column: 256, value: 1 },
        { row: 'alibi', column: 256, value: 3 },
        { row: 'alibi', column: 128, value: 2 },
        { row: 'rope', column: 128, value: 5 },
      ],
      { rowHeader: 'encoding', columnHeader: (c) => `L=${c}`, digits: 2, rowOrder: ['rope', 'alibi'] },
    );
    expect(t.split('\n')).toEqual([
      '| encoding | L=128 | L=256 |',
      '| --- | ---: | ---: |',
      '| rope | 5.00 | — |',
      // seeds {1, 3}: sd = sqrt(2), n = 2, so the half-width is t(0.975, 1) * sqrt(2) / sqrt(2) = 12.706
      '| alibi | 2.00 | 2.00 ± 12.71 |',
    ]);
  });

  it('puts named columns in the given order, unlisted ones after', () => {
    const obs = ['ood-dense', 'extra', 'id', 'ood-sparse'].map((column, i) => ({ row: 'rope', column, value: i }));
    const t = markdownTable(obs, { rowHeader: 'encoding', digits: 0, columnOrder: ['id', 'ood-sparse', 'ood-dense'] });
    expect(t.split('\n')[0]).toBe('| encoding | id | ood-sparse | ood-dense | extra |');
    expect(t.split('\n')[2]).toBe('| rope | 2 | 3 | 0 | 1 |');
  });
});
