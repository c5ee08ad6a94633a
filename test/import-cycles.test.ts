/**
 * No import cycles in src/: every relative import (type-only ones included, since a type cycle is still a design
 * cycle) is read with TypeScript's own pre-processor, and the strongly connected components of the graph must all
 * be single files; the same holds between src/'s folders (numerics, pe, backend, model, ...: a folder may depend on
 * another or be depended on by it, not both). The finder is first shown to catch a cycle on a small made-up graph.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/** Tarjan's strongly connected components; returns those with more than one node or a self-edge. */
function cycles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const scc: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
      } while (w !== v);
      if (scc.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? tsFiles(p) : p.endsWith('.ts') ? [p] : [];
  });
}

function importGraph(root: string): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of tsFiles(root)) {
    const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    const deps = info.importedFiles
      .map((f) => f.fileName)
      .filter((s) => s.startsWith('.'))
      .map((s) => relative(root, resolve(dirname(file), s)));
    graph.set(relative(root, file), deps);
  }
  return graph;
}

describe('import cycles', () => {
  it('the finder catches a cycle and ignores a chain', () => {
    const g = new Map([
      ['a', ['b']],
      ['b', ['c']],
      ['c', ['a']],
      ['d', ['a']],
    ]);
    expect(cycles(g)).toEqual([['a', 'b', 'c']]);
    expect(
      cycles(
        new Map([
          ['a', ['b']],
          ['b', []],
        ]),
      ),
    ).toEqual([]);
  });

  it('src/ has none', () => {
    const graph = importGraph(resolve(import.meta.dirname, '../src'));
    expect(graph.size).toBeGreaterThan(50);
    expect(cycles(graph)).toEqual([]);
  });

  it("src/'s folders have none", () => {
    const top = (p: string) => p.split('/')[0]!;
    const folders = new Map<string, string[]>();
    for (const [file, deps] of importGraph(resolve(import.meta.dirname, '../src'))) {
      const from = top(file);
      const out = folders.get(from) ?? [];
      for (const d of deps) if (top(d) !== from && !out.includes(top(d))) out.push(top(d));
      folders.set(from, out);
    }
    expect(folders.get('pe')).toContain('numerics');
    expect(cycles(folders)).toEqual([]);
  });
});
