/**
 * `hype show`: draws what a positional encoding does to attention, as an SVG.
 *
 * The picture is the logit a content-free query at position L - 1 gives a key at distance D = 0 .. L - 1 behind
 * it, per head, computed generically from the registry's factory and the encoding's dense reference:
 * - encodings acting on embeddings (sinusoidal, learned): zero token embeddings plus the position signal, with
 *   identity projections (head h reads model dims h*d .. h*d + d - 1); the value is the scaled dot product of the
 *   position signals alone;
 * - every other encoding: every query and key is the same content vector u = (1, ..., 1) (unit-variance
 *   coordinates, |u|^2 = d, the typical size of normalised q and k), so content is identical everywhere; the
 *   value is the logit minus the content-only logit scale * u.u = scale * d, i.e. what position adds (exactly 0
 *   for NoPE, -m_h D for ALiBi, the bucket scalar for T5, scale * (2 sum_j cos(D theta_j) - 2 pairs) for RoPE);
 * parameters are at their initialisation (seeded). `--heatmap` draws the full causal L x L pattern of one head.
 * Encodings are named as in the registry, optionally with options: `hype:preset=recency:lengthExtra=4096` or
 * `hype:{"preset":"recency"}` (the one parser of src/pe/options.ts).
 */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { ReferenceBackend } from '../backend/reference.ts';
import { check, HypeError } from '../errors.ts';
import type { AttendContext, EncodingDims, PositionalEncoding } from '../pe/encoding.ts';
import { findEncodingFactory, getEncodingFactory, parseEncodingSpec, splitEncodingSpec } from '../pe/registry.ts';
import { findVisionEncoding, getVisionEncoding } from '../pe/vision/registry.ts';
import { splitTopLevel } from '../pe/options.ts';
import type { TopLevelSpec } from 'vega-lite';
import {
  coincidentGroups,
  diffText,
  heatmapSpec,
  listText,
  lineChartSpec,
  type HeatCell,
  type LinePoint,
} from '../plot/charts.ts';
import { renderSvg, writeSvgFile } from '../plot/render.ts';
import { Rng } from '../util/rng.ts';

export interface EncodingRequest {
  /** The text the user wrote, used as the legend label. */
  label: string;
  name: string;
  options: Record<string, unknown>;
}

export interface ShowSettings {
  length: number;
  heads: number;
  headDim: number;
  trainLength: number;
  seed: number;
}

const EMBEDDING_NOTE =
  'absolute encodings: scaled dot product of the position signals alone (zero token embeddings, identity projections)';
const CONTENT_FREE_NOTE =
  'others: every query and key = (1, ..., 1); logit minus the content-only logit scale * d (what position adds)';

/**
 * `name[:options]` -> registry name and options, options as key=value pairs or JSON (`hype:preset=recency`,
 * `hype:{"preset":"recency"}`); unknown names and option keys give the registry's error.
 */
export function parseEncodingRequest(text: string): EncodingRequest {
  const { name, options } = parseEncodingSpec(text);
  return { label: text.trim(), name, options };
}

function checkSettings(s: ShowSettings): void {
  check(Number.isInteger(s.length) && s.length >= 2, 'argument', `--length must be an integer >= 2, got ${s.length}`);
  check(Number.isInteger(s.heads) && s.heads >= 1, 'argument', `--heads must be an integer >= 1, got ${s.heads}`);
  check(
    Number.isInteger(s.headDim) && s.headDim >= 2,
    'argument',
    `--head-dim must be an integer >= 2, got ${s.headDim}`,
  );
  check(
    Number.isInteger(s.trainLength) && s.trainLength >= 1,
    'argument',
    `--train-length must be an integer >= 1, got ${s.trainLength}`,
  );
}

function build(req: EncodingRequest, s: ShowSettings): PositionalEncoding {
  const dims: EncodingDims = {
    heads: s.heads,
    kvHeads: s.heads,
    headDim: s.headDim,
    modelDim: s.heads * s.headDim,
    trainLength: s.trainLength,
  };
  return getEncodingFactory(req.name).create(dims, req.options, new Rng(s.seed));
}

/**
 * Content-free logits [H, Lq, L] for queries at positions `queryPositions` (a contiguous run ending at L - 1)
 * over keys 0 .. L - 1, per the definition in this file's header.
 */
function contentFreeLogits(enc: PositionalEncoding, s: ShowSettings, lq: number): Float64Array {
  const { length: L, heads: H, headDim: d } = s;
  const C = H * d;
  const scale = 1 / Math.sqrt(d);
  const ctx: AttendContext = {
    backend: new ReferenceBackend(),
    shape: { batch: 1, heads: H, kvHeads: H, lq, lk: L, headDim: d, valueDim: d }, // dv = d: some encodings (shaw) need it
    causal: true,
    queryOffset: L - lq,
  };
  const q = new Float64Array(H * lq * d);
  const k = new Float64Array(H * L * d);
  const v = new Float64Array(H * L * d); // values do not enter the logits
  const x = new Float64Array(L * C).fill(1 / Math.sqrt(C));
  const absolute = enc.sites.includes('embedding');
  if (absolute) {
    const pe = new Float64Array(L * C);
    enc.embed!(pe, 1, L, C, 0);
    for (let h = 0; h < H; h++) {
      for (let t = 0; t < L; t++) {
        for (let c = 0; c < d; c++) {
          k[(h * L + t) * d + c] = pe[t * C + h * d + c]!;
          if (t >= L - lq) q[(h * lq + t - (L - lq)) * d + c] = pe[t * C + h * d + c]!;
        }
      }
    }
  } else {
    q.fill(1);
    k.fill(1);
  }
  const logits = enc.denseLogits(ctx, { q, k, v, x }, scale);
  // u.u = d is exact in floating point, so the content logit removed here is exactly the one inside `logits`.
  if (!absolute) for (let j = 0; j < logits.length; j++) logits[j] = logits[j]! - scale * d;
  return logits;
}

/** Per head, the value at distance D = 0 .. L - 1 for the query at position L - 1. */
export function distanceProfile(req: EncodingRequest, s: ShowSettings): Float64Array[] {
  checkSettings(s);
  const enc = build(req, s);
  const L = s.length;
  const logits = contentFreeLogits(enc, s, 1);
  return Array.from({ length: s.heads }, (_, h) => {
    const row = new Float64Array(L);
    for (let D = 0; D < L; D++) row[D] = logits[h * L + (L - 1 - D)]!;
    return row;
  });
}

function subtitle(s: ShowSettings, ...extra: string[]): string[] {
  return [
    `query at position ${s.length - 1}; ${s.heads} heads of dim ${s.headDim}; training length ${s.trainLength}; ` +
      `parameters at initialisation (seed ${s.seed}); scale 1/sqrt(${s.headDim})`,
    EMBEDDING_NOTE,
    CONTENT_FREE_NOTE,
    ...extra.filter(Boolean),
  ];
}

/**
 * The chart of the per-head distance profile of one encoding, or of several: then one panel per encoding, each with
 * its own y scale (ALiBi's -m D reaches -60 logits where the paper preset's bias is about +1: on a shared scale the
 * small one lies flat and its sign cannot be read), and a zero line in every panel. Encodings whose curves are the
 * same in every head are named in the subtitle, since they sit in separate panels.
 */
export function profileSpec(requests: EncodingRequest[], s: ShowSettings): TopLevelSpec {
  check(requests.length >= 1, 'argument', 'name at least one encoding, e.g. `hype show alibi`');
  const labels = requests.map((r) => r.label);
  const repeated = labels.find((l, i) => labels.indexOf(l) !== i);
  check(repeated === undefined, 'argument', `'${repeated}' is named twice; name each encoding once`);
  const headName = (h: number): string => `head ${h + 1}`;
  const points: LinePoint[] = [];
  for (const req of requests) {
    distanceProfile(req, s).forEach((row, h) =>
      row.forEach((y, D) => points.push({ x: D, y, series: headName(h), facet: req.label })),
    );
  }
  const heads = Array.from({ length: s.heads }, (_, h) => headName(h));
  const common = {
    xTitle: 'distance D = i - l (tokens behind the query)',
    yTitle: 'logit added by position',
    yUnit: 'logits',
    seriesTitle: 'head',
    seriesOrder: heads,
    markers: false, // one value per distance: markers would bury the curves
    rules: [{ y: 0, label: '0' }],
  };
  if (requests.length === 1) {
    return lineChartSpec({
      ...common,
      title: `${labels[0]}: position term per head`,
      subtitle: subtitle(s),
      points: points.map(({ facet: _, ...p }) => p),
    });
  }
  const same = coincidentGroups(points.map((p) => ({ ...p, series: p.facet!, facet: p.series }))).filter(
    (g) => g.panels.length === s.heads,
  );
  const sameNote = same.map(
    (g) => `the same curves in every head (|difference| <= ${diffText(g.maxDiff)} logits): ${listText(g.series)}`,
  );
  return lineChartSpec({
    ...common,
    title: `Position term per head: ${labels.join(', ')}`,
    subtitle: subtitle(
      s,
      'one panel per encoding, each with its own y scale (read the axis; the dashed line is 0)',
      ...sameNote,
    ),
    points,
    facetTitle: 'encoding',
    facetOrder: labels,
    facetColumns: Math.min(3, requests.length),
    yScale: 'independent',
  });
}

/** The SVG of profileSpec. */
export async function profileSvg(requests: EncodingRequest[], s: ShowSettings): Promise<string> {
  return renderSvg(profileSpec(requests, s));
}

/** The causal L x L content-free logit pattern of one head, as a heatmap SVG. */
export async function heatmapSvg(req: EncodingRequest, s: ShowSettings, head: number): Promise<string> {
  checkSettings(s);
  check(
    s.length <= 256,
    'argument',
    `--heatmap draws L x L cells; --length ${s.length} is too many to read, use --length <= 256`,
  );
  check(
    Number.isInteger(head) && head >= 1 && head <= s.heads,
    'argument',
    `--head must be between 1 and ${s.heads}, got ${head}`,
  );
  const L = s.length;
  const logits = contentFreeLogits(build(req, s), s, L);
  const cells: HeatCell[] = [];
  for (let i = 0; i < L; i++)
    for (let l = 0; l <= i; l++) cells.push({ x: l, y: i, value: logits[((head - 1) * L + i) * L + l]! });
  return renderSvg(
    heatmapSpec({
      title: `${req.label}: head ${head}, logit added by position (causal)`,
      subtitle: subtitle(s),
      cells,
      xTitle: 'key position l',
      yTitle: 'query position i',
      valueTitle: 'logit',
    }),
  );
}

/**
 * A 2-D (image) encoding on a G x G patch grid: per head, the logit position adds for a key at offset (dx, dy)
 * from a query at the centre cell, as a heatmap over (dx, dy) (one panel per head, one colour scale). Computed like
 * the 1-D profile: content-free q = k = (1, ..., 1) minus the content logit, or for embedding-site encodings the
 * scaled dot product of the position signals alone; parameters at initialisation (built for a G x G training grid).
 */
export function gridHeatmapSpec(req: EncodingRequest, s: ShowSettings, grid: number): TopLevelSpec {
  check(
    Number.isInteger(grid) && grid >= 2 && grid <= 32,
    'argument',
    `--grid must be an integer in 2..32, got ${grid}`,
  );
  check(
    Number.isInteger(s.heads) && s.heads >= 1 && Number.isInteger(s.headDim) && s.headDim >= 4,
    'argument',
    `--heads must be >= 1 and --head-dim >= 4 for a 2-D encoding, got ${s.heads} and ${s.headDim}`,
  );
  const { heads: H, headDim: d } = s;
  const L = grid * grid;
  const C = H * d;
  const scale = 1 / Math.sqrt(d);
  const dims: EncodingDims = {
    heads: H,
    kvHeads: H,
    headDim: d,
    modelDim: C,
    trainLength: L,
    trainGrid: [grid, grid],
  };
  const enc = getVisionEncoding(req.name).create(dims, req.options, new Rng(s.seed));
  const ctx: AttendContext = {
    backend: new ReferenceBackend(),
    shape: { batch: 1, heads: H, kvHeads: H, lq: L, lk: L, headDim: d, valueDim: d },
    causal: false,
    queryOffset: 0,
    grid: [grid, grid],
  };
  const q = new Float64Array(H * L * d).fill(1);
  const k = new Float64Array(H * L * d).fill(1);
  const absolute = enc.sites.includes('embedding');
  if (absolute) {
    const pe = new Float64Array(L * C);
    enc.embed!(pe, 1, L, C, 0, [grid, grid]);
    for (let h = 0; h < H; h++)
      for (let t = 0; t < L; t++)
        for (let c = 0; c < d; c++) q[(h * L + t) * d + c] = k[(h * L + t) * d + c] = pe[t * C + h * d + c]!;
  }
  const logits = enc.denseLogits(ctx, { q, k, v: new Float64Array(H * L * d) }, scale);
  const centre = Math.floor(grid / 2);
  const i = centre * grid + centre;
  const cells: HeatCell[] = [];
  for (let h = 0; h < H; h++) {
    for (let l = 0; l < L; l++) {
      const value = logits[(h * L + i) * L + l]! - (absolute ? 0 : scale * d);
      cells.push({ x: (l % grid) - centre, y: Math.floor(l / grid) - centre, value, facet: `head ${h + 1}` });
    }
  }
  return heatmapSpec({
    title: `${req.label}: logit added by position on a ${grid}x${grid} patch grid, query at the centre`,
    subtitle: [
      `${H} heads of dim ${d}; built for a ${grid}x${grid} training grid; parameters at initialisation (seed ${s.seed})`,
      absolute ? EMBEDDING_NOTE : CONTENT_FREE_NOTE,
    ],
    cells,
    xTitle: 'dx = key column - query column',
    yTitle: 'dy = key row - query row',
    valueTitle: 'logit',
    facetTitle: 'head',
    facetColumns: Math.min(4, H),
    facetOrder: Array.from({ length: H }, (_, h) => `head ${h + 1}`),
  });
}

function defaultOutPath(requests: EncodingRequest[], heatmap: boolean): string {
  const stem = requests.map((r) => r.label.replace(/[^A-Za-z0-9._-]+/g, '-')).join('_');
  return `pe-${stem}${heatmap ? '-heatmap' : ''}.svg`;
}

interface ShowFlags {
  length: string;
  heads: string;
  headDim: string;
  trainLength?: string;
  seed: string;
  out?: string;
  compare?: string;
  heatmap?: boolean;
  head: string;
  grid: string;
}

function integerFlag(raw: string, flag: string): number {
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new HypeError('argument', `${flag} must be an integer, got '${raw}'`);
  return n;
}

export async function runShow(encoding: string | undefined, flags: ShowFlags): Promise<string> {
  const texts = [...(encoding ? [encoding] : []), ...(flags.compare ? splitTopLevel(flags.compare, ',') : [])].filter(
    (t) => t.trim() !== '',
  );
  check(texts.length >= 1, 'argument', 'name an encoding (`hype show alibi`) or several (`--compare alibi,rope`)');
  // A 2-D (image) encoding: the heatmap over (dx, dy) per head.
  const first = splitEncodingSpec(texts[0]!);
  if (findVisionEncoding(first.name) && !findEncodingFactory(first.name)) {
    check(texts.length === 1, 'argument', 'a 2-D encoding is drawn on its own; drop --compare');
    getVisionEncoding(first.name).checkOptions?.(first.options);
    const req = { label: texts[0]!.trim(), ...first };
    const settings = {
      length: 2,
      heads: integerFlag(flags.heads, '--heads'),
      headDim: integerFlag(flags.headDim, '--head-dim'),
      trainLength: 1,
      seed: integerFlag(flags.seed, '--seed'),
    };
    const svg = await renderSvg(gridHeatmapSpec(req, settings, integerFlag(flags.grid, '--grid')));
    const out = resolve(flags.out ?? defaultOutPath([req], true));
    writeSvgFile(out, svg);
    return out;
  }
  const requests = texts.map(parseEncodingRequest);
  const length = integerFlag(flags.length, '--length');
  const settings: ShowSettings = {
    length,
    heads: integerFlag(flags.heads, '--heads'),
    headDim: integerFlag(flags.headDim, '--head-dim'),
    trainLength: flags.trainLength === undefined ? length : integerFlag(flags.trainLength, '--train-length'),
    seed: integerFlag(flags.seed, '--seed'),
  };
  let svg: string;
  if (flags.heatmap) {
    check(requests.length === 1, 'argument', '--heatmap draws one encoding; drop --compare or draw them one by one');
    svg = await heatmapSvg(requests[0]!, settings, integerFlag(flags.head, '--head'));
  } else {
    svg = await profileSvg(requests, settings);
  }
  const out = resolve(flags.out ?? defaultOutPath(requests, !!flags.heatmap));
  writeSvgFile(out, svg);
  return out;
}

export function registerShowCommand(program: Command): void {
  program
    .command('show')
    .description(
      'draw what a positional encoding adds to the logits, per head over distance (SVG); e.g. ' +
        '`hype show --compare alibi,hype:preset=recency,hype:preset=paper`',
    )
    .argument('[encoding]', 'encoding name, optionally with options: name:key=value:key=value')
    .option('--length <L>', 'sequence length (the query sits at L - 1)', '128')
    .option('--heads <H>', 'number of heads', '8')
    .option('--head-dim <d>', 'head dimension', '64')
    .option('--train-length <n>', 'training length the encoding is built for (default: --length)')
    .option('--seed <n>', 'seed for parameter initialisation', '0')
    .option('--compare <list>', 'comma-separated encodings, drawn side by side (one panel each, own y scale)')
    .option('--heatmap', 'draw the causal L x L pattern of one head instead')
    .option('--head <h>', 'head drawn by --heatmap (1-based)', '1')
    .option(
      '--grid <G>',
      'for a 2-D image encoding (hype-2d, hype-2d-sym, hype-flat, alibi-2d, rope-2d, learned-2d, sincos-2d): ' +
        'the G x G patch grid of its heatmap over (dx, dy) per head',
      '7',
    )
    .option('--out <file>', 'SVG file to write (default: pe-<encodings>.svg in the current directory)')
    .action(async (encoding: string | undefined, flags: ShowFlags) => {
      const out = await runShow(encoding, flags);
      process.stdout.write(`${out}\n`);
    });
}
