/**
 * 2-D ALiBi-style bias for image patches: each head h adds a fixed penalty to the logit of key cell (y_l, x_l) seen
 * from query cell (y_i, x_i),
 *   bias(h) = -m_h (|dy| + |dx|),   dy = y_i - y_l, dx = x_i - x_l   (the L1 distance on the patch grid),
 * with ALiBi's reference slopes m_h (alibi-slopes.ts), fixed as in the 1-D paper. Symmetric: no direction preferred.
 *
 * Route: attention over explicit scores (Backend.scoreAttention). |dy| + |dx| is not a function of the flattened
 * distance i - l (one flat distance mixes several (dy, dx) pairs), so the fused kernel's per-head distance table
 * cannot carry it, and |.| is not low rank, so no concat columns either. Any grid size works (the bias is relative).
 * Shapes: q [B, H, L, d], k [B, Hkv, L, d], v [B, Hkv, L, dv], L = rows * cols.
 */
import type { ExplicitHooks } from '../../backend/backend.ts';
import { check } from '../../errors.ts';
import { dtypeOf, asDtype } from '../../tensor.ts';
import { alibiSlopes } from '../alibi-slopes.ts';
import { attentionScale } from '../attention-plumbing.ts';
import type { EncodingFactory, PositionalEncoding } from '../encoding.ts';
import { defineEncoding } from '../options.ts';
import { checkAttendInputs } from '../params.ts';
import { cellOf, denseGridBiasLogits, gridOf, type Grid2 } from './grid.ts';

export type Alibi2dOptions = Record<string, never>;

/** [H, L, L] of -m_h (|dy| + |dx|) for every query and key cell of the grid. */
function biasTable(slopes: Float64Array, grid: Grid2): Float64Array {
  const L = grid[0] * grid[1];
  const H = slopes.length;
  const out = new Float64Array(H * L * L);
  for (let i = 0; i < L; i++) {
    const [yi, xi] = cellOf(grid, i);
    for (let l = 0; l < L; l++) {
      const [yl, xl] = cellOf(grid, l);
      const dist = Math.abs(yi - yl) + Math.abs(xi - xl);
      for (let h = 0; h < H; h++) out[(h * L + i) * L + l] = -slopes[h]! * dist;
    }
  }
  return out;
}

export const alibi2dEncoding: EncodingFactory<Alibi2dOptions> = defineEncoding<Alibi2dOptions>({
  name: 'alibi-2d',
  description: '2-D ALiBi-style fixed per-head penalty -m_h (|dy| + |dx|) on the patch grid (explicit scores)',
  sites: ['score-bias'],
  defaults: {},
  create(dims): PositionalEncoding {
    const slopes = alibiSlopes(dims.heads);
    const checkHeads = (heads: number): void =>
      check(
        heads === slopes.length,
        'shape',
        `alibi-2d was built for ${slopes.length} heads but attention has ${heads}`,
      );
    let cached: { key: string; table: Float64Array } | null = null;
    const tableFor = (grid: Grid2): Float64Array => {
      const key = grid.join('x');
      if (cached?.key !== key) cached = { key, table: biasTable(slopes, grid) };
      return cached.table;
    };
    return {
      name: 'alibi-2d',
      sites: ['score-bias'],
      params: [],
      maxLength: Infinity,
      attend(ctx, inputs) {
        checkAttendInputs(ctx, inputs, 'alibi-2d');
        checkHeads(ctx.shape.heads);
        const table = tableFor(gridOf(ctx, 'alibi-2d'));
        const L = ctx.shape.lk;
        const scale = attentionScale(ctx.shape);
        const hooks: ExplicitHooks = {
          logits: (_b, h, _kh, S) => {
            const base = h * L * L;
            for (let j = 0; j < L * L; j++) S[j] = S[j]! + table[base + j]!;
          },
          // Fixed slopes: the bias has no parameter, dLogits is already the gradient of the scores.
          backward: () => scale,
        };
        const core = ctx.backend.scoreAttention(
          ctx.shape,
          inputs.q,
          inputs.k,
          inputs.v,
          { causal: ctx.causal, queryOffset: ctx.queryOffset, scale },
          hooks,
        );
        return {
          out: core.out,
          backward(dOut) {
            const g = core.backward(dOut);
            return { dq: asDtype(g.dq, dtypeOf(inputs.q)), dk: asDtype(g.dk, dtypeOf(inputs.k)), dv: g.dv };
          },
        };
      },
      denseLogits(ctx, inputs, scale) {
        checkHeads(ctx.shape.heads);
        return denseGridBiasLogits(ctx, inputs, scale, 'alibi-2d', (h, dy, dx) => {
          return -slopes[h]! * (Math.abs(dy) + Math.abs(dx));
        });
      },
    };
  },
});
