/**
 * Small builders for the two chart shapes the project draws: line charts (one line per series, optionally one
 * panel per facet, or a grid of panels by facet and row) and heatmaps. They return plain vega-lite specs; render
 * them with render.ts. Non-finite values (masked logits, overflow) are dropped rather than drawn, since JSON and
 * scales cannot hold them.
 *
 * A line chart must not hide what it plots: every series also gets its own open point shape, so two lines drawn
 * on top of each other still show both shapes, and the subtitle names the series that coincide (coincidentGroups).
 * Points may carry a 95% interval (lo, hi), drawn as a band; horizontal rules (chance, zero) are labelled.
 */
import type { TopLevelSpec } from 'vega-lite';

/** A report's chart: its file name inside the plots folder and its vega-lite spec (render.ts draws it). */
export interface Chart {
  file: string;
  spec: TopLevelSpec;
}

export interface LinePoint {
  x: number;
  y: number;
  /** Which line the point belongs to (legend entry). */
  series: string;
  /** Which panel the point belongs to, when the chart is faceted. */
  facet?: string;
  /** Which row of panels, for a grid (rowTitle set). */
  row?: string;
  /** The 95% interval of y (e.g. over seeds), drawn as a band; leave out where no interval exists. */
  lo?: number;
  hi?: number;
}

export interface ChartText {
  title: string;
  /** One string per subtitle line. */
  subtitle?: string[];
}

/** A labelled horizontal reference line (in every panel). */
export interface RuleLine {
  y: number;
  label: string;
}

export interface LineChartOptions extends ChartText {
  points: LinePoint[];
  xTitle: string;
  yTitle: string;
  seriesTitle: string;
  /** Facet panels by `facet`, this many per row. */
  facetTitle?: string;
  facetColumns?: number;
  /** With facetTitle: a grid, panels by `facet` across and `row` down. */
  rowTitle?: string;
  rowOrder?: string[];
  width?: number;
  height?: number;
  /** Keep series in the order given instead of sorting them alphabetically. */
  seriesOrder?: string[];
  facetOrder?: string[];
  /** 'log2' for lengths that double from one point to the next. Default linear. */
  xScale?: 'linear' | 'log2';
  /** Whether the y scale must include 0 (default true, vega's default). */
  yZero?: boolean;
  /** Panels share one y scale (default) or each gets its own. */
  yScale?: 'shared' | 'independent';
  /** Draw a marker at every value (default true; off for dense curves). */
  markers?: boolean;
  rules?: RuleLine[];
  /** Unit of y for the coincidence note, e.g. 'bits per byte'. */
  yUnit?: string;
}

/** One layer of a layered chart, as vega-lite's public TopLevelSpec type defines it. */
type Layer = Extract<TopLevelSpec, { layer: unknown }>['layer'][number];

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
/** Two lines closer than this fraction of their panel's y range are drawn on top of each other. */
export const COINCIDENT_FRACTION = 0.01;
/** Data ticks are used when there are at most this many distinct x values; past it vega picks ticks. */
const MAX_DATA_TICKS = 12;

function titleOf(t: ChartText): { text: string; subtitle?: string[]; anchor: 'start' } {
  return t.subtitle && t.subtitle.length > 0
    ? { text: t.title, subtitle: t.subtitle, anchor: 'start' }
    : { text: t.title, anchor: 'start' };
}

const panelOf = (p: LinePoint) => `${p.row ?? ''}\u0000${p.facet ?? ''}`;
const uniq = <T>(xs: T[]) => [...new Set(xs)];

/**
 * Groups of series that would be drawn on top of each other: within a panel, series with the same x values whose
 * y differ by at most COINCIDENT_FRACTION of the panel's y range everywhere. Each group lists its series (in
 * first-seen order), the panels where they coincide and the largest |difference| there.
 */
export function coincidentGroups(
  points: readonly LinePoint[],
): { series: string[]; panels: string[]; maxDiff: number }[] {
  const finite = points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const out = new Map<string, { series: string[]; panels: string[]; maxDiff: number }>();
  for (const panel of uniq(finite.map(panelOf))) {
    const inPanel = finite.filter((p) => panelOf(p) === panel);
    const ys = inPanel.map((p) => p.y);
    const tol = COINCIDENT_FRACTION * (Math.max(...ys) - Math.min(...ys));
    const curves = new Map<string, Map<number, number>>();
    for (const p of inPanel) (curves.get(p.series) ?? curves.set(p.series, new Map()).get(p.series)!).set(p.x, p.y);
    const names = [...curves.keys()];
    // Union-find over the coinciding pairs, so three lines on top of each other read as one group.
    const parent = new Map(names.map((n) => [n, n]));
    const find = (n: string): string => (parent.get(n) === n ? n : find(parent.get(n)!));
    const close: { a: string; b: string; d: number }[] = [];
    for (let i = 0; i < names.length; i++) {
      for (let j = i + 1; j < names.length; j++) {
        const a = curves.get(names[i]!)!;
        const b = curves.get(names[j]!)!;
        if (a.size !== b.size || a.size === 0 || ![...a.keys()].every((x) => b.has(x))) continue;
        const d = Math.max(...[...a].map(([x, y]) => Math.abs(y - b.get(x)!)));
        if (d <= tol) {
          parent.set(find(names[j]!), find(names[i]!));
          close.push({ a: names[i]!, b: names[j]!, d });
        }
      }
    }
    const groups = new Map<string, string[]>();
    for (const n of names) (groups.get(find(n)) ?? groups.set(find(n), []).get(find(n))!).push(n);
    for (const g of groups.values()) {
      if (g.length < 2) continue;
      const key = g.join('\u0000');
      const e = out.get(key) ?? out.set(key, { series: g, panels: [], maxDiff: 0 }).get(key)!;
      e.panels.push(panel.split('\u0000').filter(Boolean).join(', '));
      for (const c of close) if (g.includes(c.a)) e.maxDiff = Math.max(e.maxDiff, c.d);
    }
  }
  return [...out.values()];
}

/** "a", "a and b", "a, b and c". */
export function listText(xs: readonly string[]): string {
  return xs.length <= 1 ? (xs[0] ?? '') : `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`;
}

/** A largest difference for a note: 2 significant digits, and plain 0 when the values are equal. */
export const diffText = (d: number): string => (d === 0 ? '0' : d.toPrecision(2));

/** Subtitle lines naming coinciding series (one per group); empty when every line is visible on its own. */
export function coincidentNotes(points: readonly LinePoint[], unit?: string): string[] {
  const panels = uniq(points.map(panelOf)).length;
  return coincidentGroups(points).map((g) => {
    const where = panels > 1 && g.panels.length < panels ? `in ${g.panels.join('; ')}, ` : '';
    const diff = `|difference| <= ${diffText(g.maxDiff)}${unit ? ` ${unit}` : ''}`;
    return `drawn on top of each other (${where}${diff}): ${listText(g.series)}`;
  });
}

export function lineChartSpec(o: LineChartOptions): TopLevelSpec {
  const values = o.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y));
  const seriesCount = new Set(values.map((p) => p.series)).size;
  const xs = uniq(values.map((p) => p.x)).sort((a, b) => a - b);
  const hasBands = values.some((p) => Number.isFinite(p.lo) && Number.isFinite(p.hi));
  const faceted = o.facetTitle !== undefined;
  const x = {
    field: 'x',
    type: 'quantitative' as const,
    title: o.xTitle,
    // Ticks where the data are (lengths 96, 192, ... rather than powers of two the data never visit).
    ...(xs.length <= MAX_DATA_TICKS ? { axis: { values: xs, labelFlush: false, format: 'd' } } : {}),
    scale:
      o.xScale === 'log2'
        ? { type: 'log' as const, base: 2, domain: [xs[0]!, xs[xs.length - 1]!], nice: false }
        : { nice: false, ...(xs.length > 0 ? { domain: [xs[0]!, xs[xs.length - 1]!] } : {}) },
  };
  const yScale = { zero: o.yZero ?? true };
  // The colour domain is fixed, so the bands (fill) and the lines (stroke) give a series the same colour even
  // where some series have no band.
  const present = uniq(values.map((p) => p.series));
  const domain = [
    ...(o.seriesOrder ?? []).filter((x) => present.includes(x)),
    ...present.filter((x) => !o.seriesOrder?.includes(x)).sort(),
  ];
  // The default palette has 10 colours: past 10 series two lines would share one.
  const colourScale = { domain, scheme: seriesCount > 10 ? ('tableau20' as const) : ('tableau10' as const) };
  const color = {
    field: 'series',
    type: 'nominal' as const,
    title: o.seriesTitle,
    legend: { labelLimit: 400 }, // long labels (name:key=value) must stay readable
    scale: colourScale,
  };
  const isPoint = { filter: 'datum.kind === "point"' };
  const layer: Layer[] = [];
  if (hasBands) {
    layer.push({
      transform: [isPoint, { filter: 'isFinite(datum.lo) && isFinite(datum.hi)' }],
      mark: { type: 'area', opacity: 0.18 },
      encoding: {
        x,
        y: { field: 'lo', type: 'quantitative', title: o.yTitle, scale: yScale },
        y2: { field: 'hi' },
        // Its own field and a legend-free fill: merged into the colour legend, the bands would fade its symbols.
        fill: { field: 'band', type: 'nominal', scale: colourScale, legend: null },
      },
    });
  }
  layer.push({
    transform: [isPoint],
    mark: { type: 'line', strokeWidth: 1.5 },
    encoding: { x, y: { field: 'y', type: 'quantitative', title: o.yTitle, scale: yScale }, color },
  });
  if (o.markers ?? true) {
    layer.push({
      transform: [isPoint],
      mark: { type: 'point', filled: false, size: 36, strokeWidth: 1.3, opacity: 1 },
      encoding: {
        x,
        y: { field: 'y', type: 'quantitative', title: o.yTitle, scale: yScale },
        color,
        // Same field and title as colour: one legend showing colour and shape together.
        shape: { field: 'series', type: 'nominal', title: o.seriesTitle, scale: { domain } },
      },
    });
  }
  const rules = o.rules ?? [];
  const panels = uniq(values.map((p) => ({ facet: p.facet, row: p.row })).map((p) => JSON.stringify(p))).map(
    (s) => JSON.parse(s) as { facet?: string; row?: string },
  );
  // Rules travel in the data (one row per rule and panel) so that faceted panels draw each rule once.
  const ruleRows = rules.flatMap((r) => panels.map((p) => ({ kind: 'rule', ...p, ruleY: r.y, label: r.label })));
  if (rules.length > 0) {
    const isRule = { filter: 'datum.kind === "rule"' };
    layer.push(
      {
        transform: [isRule],
        mark: { type: 'rule', strokeDash: [5, 4], color: '#555', strokeWidth: 1 },
        encoding: { y: { field: 'ruleY', type: 'quantitative', title: o.yTitle, scale: yScale } },
      },
      {
        transform: [isRule],
        mark: { type: 'text', align: 'left', baseline: 'bottom', dx: 4, dy: -2, color: '#555', fontSize: 10 },
        encoding: {
          x: { value: 0 },
          y: { field: 'ruleY', type: 'quantitative', title: o.yTitle, scale: yScale },
          text: { field: 'label' },
        },
      },
    );
  }
  const text = titleOf({ title: o.title, subtitle: [...(o.subtitle ?? []), ...coincidentNotes(values, o.yUnit)] });
  const data = { values: [...values.map((p) => ({ kind: 'point', band: p.series, ...p })), ...ruleRows] };
  if (faceted) {
    const column = {
      field: 'facet',
      type: 'nominal' as const,
      title: o.facetTitle,
      ...(o.facetOrder ? { sort: o.facetOrder } : {}),
    };
    const facet = o.rowTitle
      ? {
          column,
          row: {
            field: 'row',
            type: 'nominal' as const,
            title: o.rowTitle,
            ...(o.rowOrder ? { sort: o.rowOrder } : {}),
          },
        }
      : column;
    return {
      $schema: SCHEMA,
      title: text,
      data,
      facet,
      ...(o.rowTitle ? {} : { columns: o.facetColumns ?? 4 }),
      spec: { width: o.width ?? 220, height: o.height ?? 160, layer },
      resolve: { scale: { y: o.yScale ?? 'shared' } },
    };
  }
  return {
    $schema: SCHEMA,
    title: text,
    width: o.width ?? 560,
    height: o.height ?? 320,
    data,
    layer,
  };
}

export interface HeatCell {
  x: number;
  y: number;
  value: number;
  /** Which panel the cell belongs to, when the heatmap is faceted. */
  facet?: string;
}

export interface HeatmapOptions extends ChartText {
  cells: HeatCell[];
  xTitle: string;
  yTitle: string;
  valueTitle: string;
  width?: number;
  height?: number;
  /** Facet panels by `facet` (one colour scale for all), this many per row. */
  facetTitle?: string;
  facetColumns?: number;
  facetOrder?: string[];
  /** Draw y increasing upwards (a picture's axes) instead of down the rows. */
  yUp?: boolean;
}

export function heatmapSpec(o: HeatmapOptions): TopLevelSpec {
  const data = { values: o.cells.filter((c) => Number.isFinite(c.value)) };
  const encoding = {
    x: { field: 'x', type: 'ordinal' as const, title: o.xTitle, axis: { labelOverlap: true } },
    y: {
      field: 'y',
      type: 'ordinal' as const,
      title: o.yTitle,
      axis: { labelOverlap: true },
      ...(o.yUp ? { sort: 'descending' as const } : {}),
    },
    color: { field: 'value', type: 'quantitative' as const, title: o.valueTitle, scale: { scheme: 'viridis' } },
  };
  if (o.facetTitle) {
    return {
      $schema: SCHEMA,
      title: titleOf(o),
      data,
      facet: { field: 'facet', type: 'nominal', title: o.facetTitle, ...(o.facetOrder ? { sort: o.facetOrder } : {}) },
      columns: o.facetColumns ?? 4,
      spec: { width: o.width ?? 160, height: o.height ?? 160, mark: 'rect', encoding },
    };
  }
  return {
    $schema: SCHEMA,
    title: titleOf(o),
    width: o.width ?? 420,
    height: o.height ?? 420,
    data,
    mark: 'rect',
    encoding,
  };
}
