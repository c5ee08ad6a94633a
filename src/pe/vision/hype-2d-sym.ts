/**
 * Symmetric hyperbolic bias on the patch grid (SPEC section 11, a named alternative to the paper's antisymmetric
 * form): per head h and axis,
 *   bias(h) = -tau_hy (cosh(mu_hy dy) - 1) - tau_hx (cosh(mu_hx dx) - 1),   dy = y_i - y_l, dx = x_i - x_l,
 * a locality penalty with no direction (quadratic near 0, exponential far out). cosh(a - b) = cosh a cosh b -
 * sinh a sinh b makes it rank 2 per axis, so it rides 4 concat columns on the fused kernel (concat-bias.ts, scale
 * 1/sqrt(d)); the constant tau of each axis is dropped (softmax ignores it). With centred coordinates p:
 *   query columns  [tau cosh(mu p_i), -tau sinh(mu p_i)]      key columns  [-cosh(mu p_l), -sinh(mu p_l)]
 * (tau on the query side so it may differ per query head; mu is shared by the query heads of a KV group.)
 *
 * Choices: tau and mu trained, in units of their initial magnitude (as HyPE's learned preset); initially
 * mu = curvature / G and tau_h = m_h G / (cosh(curvature) - 1), so a key G cells away along one axis (G: the
 * training grid's longest side) is penalised by ALiBi's m_h G, m_h the reference slopes.
 * Shapes: q [B, H, L, d], k [B, Hkv, L, d], v [B, Hkv, L, dv], L = rows * cols.
 */
import { check } from '../../errors.ts';
import { alibiSlopes } from '../alibi-slopes.ts';
import { concatBiasAttention, concatOperandWidths } from '../concat-bias.ts';
import type { AttendContext, EncodingFactory, PositionalEncoding } from '../encoding.ts';
import { defineEncoding } from '../options.ts';
import { checkAttendInputs, createParam } from '../params.ts';
import { cellOf, denseGridBiasLogits, gridOf, type Grid2 } from './grid.ts';
import { trainGridOf } from './hype-2d.ts';

export interface Hype2dSymOptions {
  /** mu * G at initialisation. */
  curvature: number;
}

/** |mu p| beyond this overflows cosh in fp32 (cosh(89.4) = fp32 max): the columns would be inf. */
const MAX_EXPONENT = 80;

export const hype2dSymEncoding: EncodingFactory<Hype2dSymOptions> = defineEncoding<Hype2dSymOptions>({
  name: 'hype-2d-sym',
  description: 'symmetric hyperbolic 2-D bias -tau (cosh(mu d) - 1) per axis (SPEC 11): 4 concat columns, trained',
  sites: ['score-bias'],
  defaults: { curvature: 1 },
  create(dims, options): PositionalEncoding {
    const G = Math.max(...trainGridOf(dims, 'hype-2d-sym'));
    const curvature = options.curvature ?? 1;
    check(
      Number.isFinite(curvature) && curvature > 0,
      'argument',
      `hype-2d-sym curvature (mu * G) must be a finite positive number, got ${curvature}; 0.5 .. 2 is sensible`,
    );
    const { heads: H, kvHeads: Hkv } = dims;
    const slopes = alibiSlopes(H);
    // Units: tau = tauUnit[h] * tau.data[h * 2 + a], mu = muUnit * mu.data[g * 2 + a] (all start at 1).
    const tauUnit = Float64Array.from(slopes, (m) => (m * G) / (Math.cosh(curvature) - 1));
    const muUnit = curvature / G;
    const tau = createParam('hype.tau', [H, 2], false);
    const mu = createParam('hype.mu', [Hkv, 2], false);
    tau.data.fill(1);
    mu.data.fill(1);
    const group = H / Hkv;
    const tauOf = (h: number, a: number) => tauUnit[h]! * tau.data[h * 2 + a]!;
    const muOf = (h: number, a: number) => muUnit * mu.data[Math.floor(h / group) * 2 + a]!;
    const checkHeads = (ctx: AttendContext): void =>
      check(
        ctx.shape.heads === H && ctx.shape.kvHeads === Hkv,
        'shape',
        `hype-2d-sym was built for ${H} heads and ${Hkv} KV heads but attention has ${ctx.shape.heads} and ` +
          `${ctx.shape.kvHeads}`,
      );
    /** Centred coordinate of cell n along axis a (0: rows, 1: columns). */
    const centred = (grid: Grid2, n: number, a: number) => cellOf(grid, n)[a]! - (grid[a]! - 1) / 2;

    return {
      name: 'hype-2d-sym',
      sites: ['score-bias'],
      params: [tau, mu],
      maxLength: Infinity,
      // Four concat columns (concat-bias.ts), written into q and k rows allocated wide enough.
      operandWidths: (dtype) => concatOperandWidths({}, 4, dims.headDim, dims.headDim, dtype),
      attend(ctx, inputs) {
        checkAttendInputs(ctx, inputs, 'hype-2d-sym');
        checkHeads(ctx);
        const grid = gridOf(ctx, 'hype-2d-sym');
        const { batch: B } = ctx.shape;
        const L = grid[0] * grid[1];
        for (let h = 0; h < H; h++) {
          for (let a = 0; a < 2; a++) {
            const reach = Math.abs(muOf(h, a)) * ((grid[a]! - 1) / 2);
            check(
              reach <= MAX_EXPONENT,
              'overflow',
              () =>
                `hype-2d-sym: mu = ${muOf(h, a)} on a grid side of ${grid[a]} puts cosh(mu p) at exponent ${reach}, ` +
                `beyond ${MAX_EXPONENT} (fp32 overflow); use a smaller grid or a lower learning rate`,
            );
          }
        }
        const x = new Float64Array(B * H * L * 4);
        const y = new Float64Array(B * Hkv * L * 4);
        for (let h = 0; h < H; h++) {
          for (let n = 0; n < L; n++) {
            for (let a = 0; a < 2; a++) {
              const mp = muOf(h, a) * centred(grid, n, a);
              const t = tauOf(h, a);
              for (let b = 0; b < B; b++) {
                const o = ((b * H + h) * L + n) * 4 + 2 * a;
                x[o] = t * Math.cosh(mp);
                x[o + 1] = -t * Math.sinh(mp);
                if (h % group === 0) {
                  const ok = ((b * Hkv + h / group) * L + n) * 4 + 2 * a;
                  y[ok] = -Math.cosh(mp);
                  y[ok + 1] = -Math.sinh(mp);
                }
              }
            }
          }
        }
        const run = concatBiasAttention(ctx, inputs, x, y, 4, {});
        return {
          out: run.out,
          backward(dOut) {
            const g = run.backward(dOut);
            // Chain rule from the columns' gradients to tau (per head) and mu (per KV group), then to the units.
            for (let b = 0; b < B; b++) {
              for (let h = 0; h < H; h++) {
                for (let n = 0; n < L; n++) {
                  for (let a = 0; a < 2; a++) {
                    const p = centred(grid, n, a);
                    const m = muOf(h, a);
                    const c = Math.cosh(m * p);
                    const s = Math.sinh(m * p);
                    const t = tauOf(h, a);
                    const o = ((b * H + h) * L + n) * 4 + 2 * a;
                    const g0 = g.dx[o]!;
                    const g1 = g.dx[o + 1]!;
                    tau.grad[h * 2 + a]! += (g0 * c - g1 * s) * tauUnit[h]!;
                    let dmu = t * p * (g0 * s - g1 * c);
                    if (h % group === 0) {
                      const ok = ((b * Hkv + h / group) * L + n) * 4 + 2 * a;
                      dmu -= p * (g.dy[ok]! * s + g.dy[ok + 1]! * c);
                    }
                    mu.grad[Math.floor(h / group) * 2 + a]! += dmu * muUnit;
                  }
                }
              }
            }
            return { dq: g.dq, dk: g.dk, dv: g.dv };
          },
        };
      },
      denseLogits(ctx, inputs, scale) {
        checkHeads(ctx);
        return denseGridBiasLogits(
          ctx,
          inputs,
          scale,
          'hype-2d-sym',
          (h, dy, dx) =>
            -tauOf(h, 0) * (Math.cosh(muOf(h, 0) * dy) - 1) - tauOf(h, 1) * (Math.cosh(muOf(h, 1) * dx) - 1),
        );
      },
    };
  },
});
