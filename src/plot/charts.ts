/**
 * Small builders for the two chart shapes the project draws: line charts (one line per series, optionally one
 * panel per facet) and heatmaps. They return plain vega-lite specs; render them with render.ts. Non-finite values
 * (masked logits, overflow) are dropped rather than drawn, since JSON and scales cannot hold them.
 */
import type { TopLevelSpec } from 'vega-lite';

export interface LinePoint {
  x: number;
  y: number;
  /** Which line the point belongs to (legend entry). */
  series: string;
  /** Which panel the point belongs to, when the chart is faceted. */
  facet?: string;
}

export interface ChartText {
  title: string;
  /** One string per subtitle line. */
  subtitle?: string[];
}

export interface LineChartOptions extends ChartText {
  points: LinePoint[];
  xTitle: string;
  yTitle: string;
  seriesTitle: string;
  /** Facet panels by `facet`, this many per row. */
  facetTitle?: string;
  facetColumns?: number;
  width?: number;
  height?: number;
  /** Keep series in the order given instead of sorting them alphabetically. */
  seriesOrder?: string[];
  facetOrder?: string[];
}

function titleOf(t: ChartText): { text: string; subtitle?: string[]; anchor: 'start' } {
  return t.subtitle && t.subtitle.length > 0
    ? { text: t.title, subtitle: t.subtitle, anchor: 'start' }
    : { text: t.title, anchor: 'start' };
}

export function lineChartSpec(o: LineChartOptions): TopLevelSpec {
  const values = o.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const encoding = {
    x: { field: 'x', type: 'quantitative' as const, title: o.xTitle },
    y: { field: 'y', type: 'quantitative' as const, title: o.yTitle },
    color: {
      field: 'series',
      type: 'nominal' as const,
      title: o.seriesTitle,
      legend: { labelLimit: 400 }, // long labels (name:key=value) must stay readable
      // The default palette has 10 colours: past 10 series two lines would share one.
      ...(new Set(values.map((p) => p.series)).size > 10 ? { scale: { scheme: 'tableau20' } } : {}),
      ...(o.seriesOrder ? { sort: o.seriesOrder } : {}),
    },
  };
  const mark = { type: 'line' as const, strokeWidth: 1.5 };
  if (o.facetTitle) {
    return {
      $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
      title: titleOf(o),
      data: { values },
      facet: {
        field: 'facet',
        type: 'nominal',
        title: o.facetTitle,
        ...(o.facetOrder ? { sort: o.facetOrder } : {}),
      },
      columns: o.facetColumns ?? 4,
      spec: { width: o.width ?? 220, height: o.height ?? 160, mark, encoding },
      resolve: { scale: { y: 'shared' } },
    };
  }
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: titleOf(o),
    width: o.width ?? 560,
    height: o.height ?? 320,
    data: { values },
    mark,
    encoding,
  };
}

export interface HeatCell {
  x: number;
  y: number;
  value: number;
}

export interface HeatmapOptions extends ChartText {
  cells: HeatCell[];
  xTitle: string;
  yTitle: string;
  valueTitle: string;
  width?: number;
  height?: number;
}

export function heatmapSpec(o: HeatmapOptions): TopLevelSpec {
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: titleOf(o),
    width: o.width ?? 420,
    height: o.height ?? 420,
    data: { values: o.cells.filter((c) => Number.isFinite(c.value)) },
    mark: 'rect',
    encoding: {
      x: { field: 'x', type: 'ordinal', title: o.xTitle, axis: { labelOverlap: true } },
      y: { field: 'y', type: 'ordinal', title: o.yTitle, axis: { labelOverlap: true } },
      color: { field: 'value', type: 'quantitative', title: o.valueTitle, scale: { scheme: 'viridis' } },
    },
  };
}
