/** Chart builders: what reaches the SVG (every series in its own colour, non-finite points dropped). */
import { describe, expect, it } from 'vitest';
import { lineChartSpec, type LinePoint } from '../src/plot/charts.ts';
import { renderSvg } from '../src/plot/render.ts';

function lines(series: number): LinePoint[] {
  const out: LinePoint[] = [];
  for (let s = 0; s < series; s++) for (let x = 1; x <= 3; x++) out.push({ x, y: s + x / 10, series: `enc${s}` });
  return out;
}

/** The distinct stroke colours of the drawn lines (vega draws each series as one 'line mark' path). */
async function lineColours(points: LinePoint[]): Promise<Set<string>> {
  const svg = await renderSvg(lineChartSpec({ title: 't', points, xTitle: 'x', yTitle: 'y', seriesTitle: 's' }));
  const strokes = svg.matchAll(/aria-roledescription="line mark"[^>]*stroke="(#[0-9a-fA-F]{6})"/g);
  return new Set([...strokes].map((m) => m[1]!.toLowerCase()));
}

describe('line charts', () => {
  it('give each of 14 series its own colour (the default palette has only 10)', async () => {
    expect((await lineColours(lines(14))).size).toBe(14);
  }, 30_000);

  it('keep the default palette up to 10 series', async () => {
    const spec = lineChartSpec({ title: 't', points: lines(10), xTitle: 'x', yTitle: 'y', seriesTitle: 's' });
    expect(JSON.stringify(spec)).not.toContain('tableau20');
    expect((await lineColours(lines(10))).size).toBe(10);
  }, 30_000);

  it('drop non-finite points rather than draw them', () => {
    const points = [...lines(2), { x: 4, y: Infinity, series: 'enc0' }, { x: NaN, y: 1, series: 'enc1' }];
    const spec = lineChartSpec({ title: 't', points, xTitle: 'x', yTitle: 'y', seriesTitle: 's' }) as {
      data: { values: LinePoint[] };
    };
    expect(spec.data.values).toHaveLength(6);
  });
});
