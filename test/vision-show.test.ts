import { describe, expect, it } from 'vitest';
import { gridHeatmapSpec } from '../src/cli/show.ts';
import { alibiSlopes } from '../src/pe/alibi-slopes.ts';
import type { HeatCell } from '../src/plot/charts.ts';

const settings = { length: 2, heads: 4, headDim: 8, trainLength: 1, seed: 0 };
const cellsOf = (name: string, grid = 5) =>
  (gridHeatmapSpec({ label: name, name, options: {} }, settings, grid) as { data: { values: HeatCell[] } }).data.values;

describe('hype show for 2-D encodings', () => {
  it('alibi-2d: the heatmap over (dx, dy) is -m_h (|dx| + |dy|) per head, 0 at the query', () => {
    const slopes = alibiSlopes(4);
    const cells = cellsOf('alibi-2d');
    expect(cells).toHaveLength(4 * 25);
    for (const c of cells) {
      const h = Number(c.facet!.slice(5)) - 1;
      expect(c.value).toBeCloseTo(-slopes[h]! * (Math.abs(c.x) + Math.abs(c.y)), 12);
    }
  });

  it('hype-2d is antisymmetric about the query, hype-2d-sym symmetric, and both direction-aware per axis', () => {
    const at = (cells: HeatCell[], x: number, y: number) =>
      cells.find((c) => c.facet === 'head 1' && c.x === x && c.y === y)!.value;
    const anti = cellsOf('hype-2d');
    const sym = cellsOf('hype-2d-sym');
    expect(at(anti, 2, 1)).toBeCloseTo(-at(anti, -2, -1), 12);
    expect(Math.abs(at(anti, 2, 1))).toBeGreaterThan(1e-3);
    expect(at(sym, 2, 1)).toBeCloseTo(at(sym, -2, -1), 12);
    expect(at(sym, 2, 0)).toBeLessThan(at(sym, 1, 0));
  });

  it('refuses a grid it cannot draw', () => {
    expect(() => cellsOf('rope-2d', 1)).toThrow(/--grid must be an integer in 2..32/);
  });
});
