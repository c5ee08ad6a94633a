/**
 * Axial 2-D RoPE (as in Heo et al. 2024, "Rotary Position Embedding for Vision Transformer", axial variant): the head
 * dim is split in two halves; adjacent pairs (2j, 2j+1) of the first half rotate by the patch's row y, those of the
 * second half by its column x, each half with the 1-D frequencies theta_j = base^(-2j / (d/2)) (rope.ts), so
 *   q'_i . k'_l = sum over row pairs of q^T R((y_l - y_i) theta_j) k + sum over column pairs of q^T R((x_l - x_i) theta_j) k
 * depends on positions only through (dy, dx). Rotation on q and k, then the fused kernel with no bias.
 *
 * Choices: base 100 by default (the ViT RoPE paper's choice for grids of tens of cells; 10000 would leave most pairs
 * almost unrotated on a 7x7 grid); a head dim not divisible by 4 leaves its last dims unrotated.
 * Shapes: q [B, H, L, d], k [B, Hkv, L, d], v [B, Hkv, L, dv], L = rows * cols.
 */
import { check } from '../../errors.ts';
import type { FloatArray } from '../../tensor.ts';
import { backendAttention, checkQk, denseLogitGrid } from '../attention-plumbing.ts';
import type { EncodingFactory, PositionalEncoding } from '../encoding.ts';
import { defineEncoding } from '../options.ts';
import { ropeFrequencies } from '../rope.ts';
import { rotatePairs } from '../rotary.ts';
import { cellOf, gridOf, type Grid2 } from './grid.ts';

export interface Rope2dOptions {
  base: number;
}

/** The axis (0: row y, 1: column x) and frequency of rotated pair j, or null when pair j is not rotated. */
function pairAxis(j: number, freqs: Float64Array): [axis: number, freq: number] | null {
  const n = freqs.length;
  if (j < n) return [0, freqs[j]!];
  if (j < 2 * n) return [1, freqs[j - n]!];
  return null;
}

/** Rotates every row of x [groups, L, d] by its cell's angles; sign -1 applies the inverse (for gradients). */
function rotateGrid(x: FloatArray, groups: number, grid: Grid2, d: number, freqs: Float64Array, sign: 1 | -1) {
  return rotatePairs(x, groups, grid[0] * grid[1], d, 2 * freqs.length, (n, j) => {
    const [axis, f] = pairAxis(j, freqs)!;
    return sign * cellOf(grid, n)[axis]! * f;
  });
}

export const rope2dEncoding: EncodingFactory<Rope2dOptions> = defineEncoding<Rope2dOptions>({
  name: 'rope-2d',
  description: 'axial 2-D RoPE: half the head dims rotate by the patch row, half by its column (base 100)',
  sites: ['qk-transform'],
  defaults: { base: 100 },
  create(dims, options): PositionalEncoding {
    const base = options.base ?? 100;
    check(Number.isFinite(base) && base > 1, 'argument', `rope-2d base must be a finite number > 1, got ${base}`);
    const d = dims.headDim;
    check(d >= 4, 'argument', `rope-2d needs a head dim >= 4 (a rotated pair per axis), got ${d}`);
    // Frequencies of one half (d/2 dims -> floor(d/4) pairs per axis).
    const freqs = ropeFrequencies(2 * Math.floor(d / 4), base, 1);
    return {
      name: 'rope-2d',
      sites: ['qk-transform'],
      params: [],
      maxLength: Infinity,
      attend(ctx, inputs) {
        const grid = gridOf(ctx, 'rope-2d');
        checkQk(ctx, inputs.q, inputs.k);
        const { batch: B, heads: H, kvHeads: Hkv, headDim } = ctx.shape;
        check(headDim === d, 'shape', `rope-2d was built for head dim ${d} but attention has ${headDim}`);
        const qr = rotateGrid(inputs.q, B * H, grid, d, freqs, 1);
        const kr = rotateGrid(inputs.k, B * Hkv, grid, d, freqs, 1);
        const run = backendAttention(ctx, qr, kr, inputs.v, { kind: 'none' });
        return {
          out: run.out,
          backward(dOut) {
            const g = run.backward(dOut);
            return {
              dq: rotateGrid(g.dq, B * H, grid, d, freqs, -1),
              dk: rotateGrid(g.dk, B * Hkv, grid, d, freqs, -1),
              dv: g.dv,
            };
          },
        };
      },
      // Relative form per pair: (q0 k0 + q1 k1) cos(D f) + (q0 k1 - q1 k0) sin(D f), D = dy or dx (rotary.ts).
      denseLogits(ctx, inputs, scale) {
        const grid = gridOf(ctx, 'rope-2d');
        const { q, k } = inputs;
        checkQk(ctx, q, k);
        const { heads: H, kvHeads: Hkv, lq, lk } = ctx.shape;
        return denseLogitGrid(ctx, (b, h, kvh, i, l) => {
          const ci = cellOf(grid, i);
          const cl = cellOf(grid, l);
          const qb = ((b * H + h) * lq + i) * d;
          const kb = ((b * Hkv + kvh) * lk + l) * d;
          let s = 0;
          for (let c = 0; c < d; c++) {
            const pair = c % 2 === 0 ? pairAxis(c / 2, freqs) : null;
            if (pair) {
              const [axis, f] = pair;
              const phi = (ci[axis]! - cl[axis]!) * f;
              const [q0, q1, k0, k1] = [q[qb + c]!, q[qb + c + 1]!, k[kb + c]!, k[kb + c + 1]!];
              s += (q0 * k0 + q1 * k1) * Math.cos(phi) + (q0 * k1 - q1 * k0) * Math.sin(phi);
              c++;
            } else s += q[qb + c]! * k[kb + c]!;
          }
          return scale * s;
        });
      },
    };
  },
});
