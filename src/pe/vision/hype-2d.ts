/**
 * HyPE on the patch grid, the paper's section 3.4 form (SPEC section 6): one sinh pair per axis,
 *   bias(h) = tau_hy sinh(mu_hy dy) + tau_hx sinh(mu_hx dx),   dy = y_i - y_l, dx = x_i - x_l,
 * delivered as 4 extra Q/K columns (2 per axis) on the fused kernel with the explicit scale 1/sqrt(d) (the concat
 * route of hype/core.ts, which builds grids). ANTISYMMETRIC: bias(i, l) = -bias(l, i), so in bidirectional
 * attention every head always favours one direction along each axis (a key above/left is penalised exactly as much
 * as the mirrored key below/right is rewarded). hype-2d-sym.ts is the symmetric alternative.
 *
 * Choices: the 1-D `learned` preset per axis (tau and mu trained, in units of their initial magnitude), started at
 * ALiBi-like recency along +dy and +dx: mu = curvature / G, tau_h = -m_h / mu, G the training grid's longest side
 * and m_h ALiBi's slopes. Any grid works at evaluation (the bias is relative); the columns are centred per axis.
 * Shapes: q [B, H, L, d], k [B, Hkv, L, d], v [B, Hkv, L, dv], L = rows * cols (queries and keys: one image).
 */
import { check } from '../../errors.ts';
import type { Rng } from '../../util/rng.ts';
import type { EncodingDims, EncodingFactory, PositionalEncoding } from '../encoding.ts';
import { hypeEncoding } from '../hype/encoding.ts';
import { defineEncoding } from '../options.ts';
import { gridOf } from './grid.ts';

export interface Hype2dOptions {
  /** mu * G at initialisation (G: the training grid's longest side). */
  curvature: number;
  /** Which of tau and mu train ('both', 'tau', 'mu'), as the 1-D learned preset. */
  train: 'both' | 'tau' | 'mu';
}

/** The training grid of an image model, refused when absent (a 2-D encoding outside a VisionTransformer). */
export function trainGridOf(dims: EncodingDims, who: string): readonly [number, number] {
  const g = dims.trainGrid;
  check(
    g !== undefined && g.length === 2 && g.every((v) => Number.isInteger(v) && v >= 1),
    'argument',
    `${who} is a 2-D encoding: build it with the training patch grid (EncodingDims.trainGrid = [rows, cols]), ` +
      `as a VisionTransformer does`,
  );
  return [g[0]!, g[1]!];
}

/**
 * 1-D HyPE's learned preset (hype/encoding.ts) under a vision name: on the grid (`grid` true: one pair per axis,
 * each call on its own grid) or on the flattened patch index (`grid` false: positions 0 .. L-1, SPEC section 6's
 * "wrong" form, measured here).
 */
export function learnedHypeOnPatches(
  name: string,
  dims: EncodingDims,
  options: Partial<Hype2dOptions>,
  rng: Rng,
  onGrid: boolean,
): PositionalEncoding {
  const train = trainGridOf(dims, name);
  const inner = hypeEncoding.create(
    dims,
    {
      preset: 'learned',
      curvature: options.curvature ?? 0.5,
      train: options.train ?? 'both',
      lengthExtra: onGrid ? Math.max(...train) : train[0] * train[1],
      ...(onGrid ? { grid: [...train] } : {}),
    },
    rng,
  );
  return {
    name,
    sites: inner.sites,
    params: inner.params,
    maxLength: Infinity,
    // The same columns as 1-D HyPE's concat route (on the grid or the flattened index): written into wide rows.
    ...(inner.operandWidths ? { operandWidths: inner.operandWidths.bind(inner) } : {}),
    attend(ctx, inputs) {
      gridOf(ctx, name);
      return inner.attend(onGrid ? ctx : { ...ctx, grid: undefined }, inputs);
    },
    denseLogits(ctx, inputs, scale) {
      gridOf(ctx, name);
      return inner.denseLogits(onGrid ? ctx : { ...ctx, grid: undefined }, inputs, scale);
    },
  };
}

export const hype2dEncoding: EncodingFactory<Hype2dOptions> = defineEncoding<Hype2dOptions>({
  name: 'hype-2d',
  description:
    'HyPE on the patch grid (paper section 3.4): one trained sinh pair per axis, 4 concat columns; antisymmetric',
  sites: ['score-bias'],
  defaults: { curvature: 0.5, train: 'both' },
  create: (dims, options, rng) => learnedHypeOnPatches('hype-2d', dims, options, rng, true),
});
