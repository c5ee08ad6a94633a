/**
 * HyPE's kernel route as data: the bias a(h, D) = sum_t tau[h, t] sinh(mu[h, t] D) evaluated in fp64 into a
 * distance table [H, span] (distance-table.ts), and the chain rule from the backend's dTable back to tau and mu:
 *   d/dtau[h, t] = sum_D dTable[h, D] sinh(mu D),   d/dmu[h, t] = sum_D dTable[h, D] tau D cosh(mu D).
 * fp64 holds every value a fp32 kernel can use to better than half an fp32 ulp, so the table the kernel rounds is
 * exact in fp32 (the role the tile-local exponent scheme of SPEC section 4 played inside the kernel before). Large
 * arguments go through logs (tau sinh x = sign(tau x) e^{ln|tau| + |x| - ln 2} for |x| > 20, where e^{-2|x|} is
 * below fp64's ulp) so that a tiny |tau| times a huge sinh stays representable when the product is.
 */
import { distanceSpan } from '../../backend/backend.ts';
import { BIAS_LIMIT } from '../../backend/validate.ts';
import { HypeError } from '../../errors.ts';
import {
  buildDistanceTable,
  forEachDistanceGrad,
  reachableDistances,
  type DistanceGeometry,
} from '../distance-table.ts';

/** c sinh(x), or c cosh(x) with `cosh`, without overflowing in sinh/cosh when the product is representable. */
function scaledHyperbolic(c: number, x: number, cosh: boolean): number {
  if (c === 0) return 0;
  const ax = Math.abs(x);
  if (ax <= 20) return c * (cosh ? Math.cosh(x) : Math.sinh(x));
  const sign = Math.sign(c) * (cosh ? 1 : Math.sign(x));
  return sign * Math.exp(Math.log(Math.abs(c)) + ax - Math.LN2);
}

/** table[h, D] = sum_t tau[h * pairs + t] sinh(mu[h * pairs + t] D) in fp64. */
export function hypeDistanceTable(
  tau: Float64Array,
  mu: Float64Array,
  pairs: number,
  g: DistanceGeometry,
): Float64Array {
  return buildDistanceTable(g, (h, D) => {
    let a = 0;
    for (let t = 0; t < pairs; t++) a += scaledHyperbolic(tau[h * pairs + t]!, mu[h * pairs + t]! * D, false);
    return a;
  });
}

/** HyPE's chain rule: d loss / d tau and d loss / d mu per (head, pair), from the backend's dTable. */
export function hypeTableGrads(
  dTable: Float64Array,
  tau: Float64Array,
  mu: Float64Array,
  pairs: number,
  g: DistanceGeometry,
): { dtau: Float64Array; dmu: Float64Array } {
  const dtau = new Float64Array(tau.length);
  const dmu = new Float64Array(mu.length);
  forEachDistanceGrad(dTable, g, (h, D, x) => {
    for (let t = 0; t < pairs; t++) {
      const j = h * pairs + t;
      dtau[j]! += scaledHyperbolic(x, mu[j]! * D, false);
      dmu[j]! += scaledHyperbolic(x * tau[j]! * D, mu[j]! * D, true);
    }
  });
  return { dtau, dmu };
}

/**
 * Refuses a table whose positive values pass what the kernel's logits can hold (BIAS_LIMIT, the backend's own
 * rule), naming HyPE's parameters: the backend would refuse it too, but could only name the table entry.
 */
export function checkHypeTableRange(
  table: Float64Array,
  tau: Float64Array,
  mu: Float64Array,
  pairs: number,
  g: DistanceGeometry,
  dtype: 'float32' | 'float64',
): void {
  const limit = BIAS_LIMIT[dtype];
  const span = distanceSpan(g.lq, g.lk, g.queryOffset);
  const [lo, hi] = reachableDistances(g);
  for (let h = 0; h < g.heads; h++) {
    for (const D of [lo, hi]) {
      // sinh grows with |D|: the extreme values of each term sit at the ends of the range.
      const a = lo > hi || D < 1 - g.lk ? 0 : table[h * span + D + g.lk - 1]!;
      if (!(a > limit)) continue;
      throw new HypeError(
        'overflow',
        `the hype bias leaves the ${dtype} range (|bias| <= ${limit}): hype head ${h} (mu = ${mu[h * pairs]}, tau = ` +
          `${tau[h * pairs]}) reaches +${a} at distance ${D}, with Lq = ${g.lq}, Lk = ${g.lk}; reduce mu or |tau|, ` +
          'or the sequence length',
      );
    }
  }
}
