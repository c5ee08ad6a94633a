/**
 * Learned absolute 2-D positions (the standard ViT table): a trained table P [R, S, C] for the training grid R x S,
 * row (y, x) added to the embedding of the patch at that cell (x [B, L, C], L = rows * cols, row-major). On another
 * grid the table is resized bilinearly, the standard practice when a ViT meets a new resolution (PyTorch's
 * F.interpolate(mode='bilinear', align_corners=False): source coordinate (dst + 0.5) * in / out - 0.5, clamped to
 * the table), and the gradient flows back through the same interpolation weights. With resize 'none' another grid
 * is refused with the fix.
 *
 * Choices: init N(0, 0.02^2) as 1-D learned; no weight decay, like every position parameter here.
 */
import { check, HypeError } from '../../errors.ts';
import type { FloatArray } from '../../tensor.ts';
import { plainAttend, plainDenseLogits } from '../attention-plumbing.ts';
import type { EncodingFactory, PositionalEncoding } from '../encoding.ts';
import { defineEncoding } from '../options.ts';
import { createParam } from '../params.ts';
import { embedGridOf, type Grid2 } from './grid.ts';
import { trainGridOf } from './hype-2d.ts';

export interface Learned2dOptions {
  /** 'bilinear': resize the table to another grid; 'none': refuse other grids. */
  resize: 'bilinear' | 'none';
  initStd: number;
}

/** Bilinear taps of one axis (align_corners False): for each output index, two source indices and their weights. */
export function axisTaps(inSize: number, outSize: number): { lo: Int32Array; hi: Int32Array; w: Float64Array } {
  const lo = new Int32Array(outSize);
  const hi = new Int32Array(outSize);
  const w = new Float64Array(outSize);
  for (let o = 0; o < outSize; o++) {
    const src = Math.min(Math.max((o + 0.5) * (inSize / outSize) - 0.5, 0), inSize - 1);
    lo[o] = Math.floor(src);
    hi[o] = Math.min(lo[o]! + 1, inSize - 1);
    w[o] = src - lo[o]!;
  }
  return { lo, hi, w };
}

/** The (up to 4) table cells and weights each cell of `grid` reads from a table of grid `table`. */
export function bilinearTaps(table: Grid2, grid: Grid2): { cells: Int32Array; weights: Float64Array } {
  const ty = axisTaps(table[0], grid[0]);
  const tx = axisTaps(table[1], grid[1]);
  const L = grid[0] * grid[1];
  const cells = new Int32Array(L * 4);
  const weights = new Float64Array(L * 4);
  for (let y = 0; y < grid[0]; y++) {
    for (let x = 0; x < grid[1]; x++) {
      const n = (y * grid[1] + x) * 4;
      const ys = [ty.lo[y]!, ty.hi[y]!];
      const xs = [tx.lo[x]!, tx.hi[x]!];
      const wy = [1 - ty.w[y]!, ty.w[y]!];
      const wx = [1 - tx.w[x]!, tx.w[x]!];
      for (let a = 0; a < 2; a++)
        for (let b = 0; b < 2; b++) {
          cells[n + 2 * a + b] = ys[a]! * table[1] + xs[b]!;
          weights[n + 2 * a + b] = wy[a]! * wx[b]!;
        }
    }
  }
  return { cells, weights };
}

export const learned2dEncoding: EncodingFactory<Learned2dOptions> = defineEncoding<Learned2dOptions>({
  name: 'learned-2d',
  description: 'learned absolute 2-D position table (ViT), bilinearly resized for other grids',
  sites: ['embedding'],
  defaults: { resize: 'bilinear', initStd: 0.02 },
  create(dims, options, rng): PositionalEncoding {
    const train = trainGridOf(dims, 'learned-2d');
    const resize = options.resize ?? 'bilinear';
    const initStd = options.initStd ?? 0.02;
    check(
      resize === 'bilinear' || resize === 'none',
      'argument',
      `learned-2d resize must be 'bilinear' or 'none', got ${JSON.stringify(resize)}`,
    );
    check(initStd >= 0 && Number.isFinite(initStd), 'argument', `learned-2d initStd must be >= 0, got ${initStd}`);
    const width = dims.modelDim;
    const table = createParam('positions', [train[0], train[1], width], false);
    rng.fillNormal(table.data, initStd);
    const tapsFor = (grid: Grid2) => {
      if (grid[0] === train[0] && grid[1] === train[1]) return null;
      if (resize === 'none') {
        throw new HypeError(
          'length',
          `learned-2d has a table for the ${train.join('x')} training grid only, and this image has a ` +
            `${grid.join('x')} patch grid; build it with resize 'bilinear' (the ViT practice) or feed images of the ` +
            'training size',
        );
      }
      return bilinearTaps(train, grid);
    };
    const prepare = (
      x: FloatArray,
      batch: number,
      length: number,
      w: number,
      offset: number,
      g?: readonly number[],
    ) => {
      const grid = embedGridOf(g, length, offset, 'learned-2d');
      check(w === width, 'shape', `learned-2d was built for width ${width} but got width ${w}`);
      check(x.length === batch * length * w, 'shape', `activations have ${x.length} elements, expected B*L*C`);
      return tapsFor(grid);
    };
    return {
      name: 'learned-2d',
      sites: ['embedding'],
      params: [table],
      maxLength: Infinity,
      embed(x, batch, length, w, offset, grid) {
        const taps = prepare(x, batch, length, w, offset, grid);
        for (let n = 0; n < length; n++) {
          for (let t = 0; t < (taps ? 4 : 1); t++) {
            const cell = taps ? taps.cells[n * 4 + t]! : n;
            const weight = taps ? taps.weights[n * 4 + t]! : 1;
            if (weight === 0) continue;
            for (let b = 0; b < batch; b++) {
              const at = (b * length + n) * w;
              for (let c = 0; c < w; c++) x[at + c] = x[at + c]! + weight * table.data[cell * w + c]!;
            }
          }
        }
      },
      embedBackward(dx, batch, length, w, offset, grid) {
        const taps = prepare(dx, batch, length, w, offset, grid);
        for (let n = 0; n < length; n++) {
          for (let t = 0; t < (taps ? 4 : 1); t++) {
            const cell = taps ? taps.cells[n * 4 + t]! : n;
            const weight = taps ? taps.weights[n * 4 + t]! : 1;
            if (weight === 0) continue;
            for (let b = 0; b < batch; b++) {
              const at = (b * length + n) * w;
              for (let c = 0; c < w; c++) table.grad[cell * w + c]! += weight * dx[at + c]!;
            }
          }
        }
      },
      attend: plainAttend,
      denseLogits: plainDenseLogits,
    };
  },
});
