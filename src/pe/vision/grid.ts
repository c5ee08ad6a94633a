/**
 * What the 2-D (image) encodings share: the patch grid an attention call or an embedding runs on, and the dense
 * fp64 logits of an encoding whose position term is a bias over grid cells. A grid is [rows, cols]; token n of an
 * image sits at row y = floor(n / cols), column x = n % cols (row-major, the order patchify() writes). Attention
 * over a grid is one image's tokens attending to the same tokens: lq = lk = rows * cols, queryOffset 0.
 * Layouts follow backend.ts: q [B, H, L, D], k [B, Hkv, L, D], v [B, Hkv, L, Dv].
 */
import { check } from '../../errors.ts';
import { checkQk, denseLogitGrid, scaledDot } from '../attention-plumbing.ts';
import type { AttendContext, AttendInputs } from '../encoding.ts';

export type Grid2 = readonly [rows: number, cols: number];

function checkGridShape(grid: readonly number[] | undefined, who: string): Grid2 {
  check(
    grid !== undefined && grid.length === 2,
    'argument',
    `${who} is a 2-D encoding: it needs the patch grid [rows, cols] (AttendContext.grid, embed's grid), got ` +
      `${grid === undefined ? 'none' : `[${grid.join(', ')}]`}; run it inside a VisionTransformer or pass the grid`,
  );
  const [rows, cols] = grid;
  check(
    Number.isInteger(rows) && Number.isInteger(cols) && rows! >= 1 && cols! >= 1,
    'shape',
    `${who}: the grid [${grid.join(', ')}] must hold two positive integers`,
  );
  return [rows!, cols!];
}

/** The grid of an attention call, refused unless it covers exactly the queries and keys (one image per row). */
export function gridOf(ctx: AttendContext, who: string): Grid2 {
  const g = checkGridShape(ctx.grid, who);
  const cells = g[0] * g[1];
  check(
    ctx.shape.lq === cells && ctx.shape.lk === cells && ctx.queryOffset === 0,
    'shape',
    `${who}: grid [${g.join(', ')}] has ${cells} cells but the attention has ${ctx.shape.lq} queries and ` +
      `${ctx.shape.lk} keys at offset ${ctx.queryOffset}; a grid attends all of its own cells (lq = lk = cells, offset 0)`,
  );
  return g;
}

/** The grid of an embedding call, refused unless it has `length` cells. */
export function embedGridOf(grid: readonly number[] | undefined, length: number, offset: number, who: string): Grid2 {
  const g = checkGridShape(grid, who);
  check(
    g[0] * g[1] === length && offset === 0,
    'shape',
    `${who}: grid [${g.join(', ')}] has ${g[0] * g[1]} cells but the embedding has ${length} tokens at offset ` +
      `${offset}; pass the grid of the image's patches`,
  );
  return g;
}

/** Row y and column x of flat cell n. */
export function cellOf(grid: Grid2, n: number): [y: number, x: number] {
  return [Math.floor(n / grid[1]), n % grid[1]];
}

/**
 * Dense fp64 logits scale * q.k + bias(h, dy, dx) for every (query i, key l) of the grid, with dy = y_i - y_l and
 * dx = x_i - x_l (the reference every score-bias 2-D encoding is tested against).
 */
export function denseGridBiasLogits(
  ctx: AttendContext,
  inputs: AttendInputs,
  scale: number,
  who: string,
  bias: (h: number, dy: number, dx: number, i: number, l: number) => number,
): Float64Array {
  const grid = gridOf(ctx, who);
  checkQk(ctx, inputs.q, inputs.k);
  return denseLogitGrid(ctx, (b, h, kvh, i, l) => {
    const [yi, xi] = cellOf(grid, i);
    const [yl, xl] = cellOf(grid, l);
    return scaledDot(ctx, inputs.q, inputs.k, scale, b, h, kvh, i, l) + bias(h, yi - yl, xi - xl, i, l);
  });
}
