/**
 * The overflow guard of the concat route (SPEC section 4): refuses before any eta column is built, with one message
 * naming what overflows, where, the limit, and only the fixes that would work.
 */
import { HypeError } from '../../errors.ts';
import { FP32, type FloatFormat } from '../../numerics/float-formats.ts';
import { concatMuLimit, type ConcatReach, type OverflowConstraint } from '../../numerics/overflow.ts';
import { axisRanges, checkPositions, type AxisRange, type HypePositions, type HypeSpec } from './spec.ts';

/**
 * Refuses, before any eta is built, a configuration whose concat-route operands or products overflow `format`
 * (SPEC section 4; limits in numerics/overflow.ts). One error naming head, pair, mu, L, dtype, the limit and fixes.
 */
export function guardOverflow(spec: HypeSpec, pos: HypePositions, format: FloatFormat, shift: Float64Array): void {
  const offset = checkPositions(spec, pos);
  if (pos.lq === 0 || pos.lk === 0) return;
  const ranges = axisRanges(spec, pos.lq, pos.lk, offset);
  const T = spec.termAxis.length;
  const sqrtD = Math.sqrt(spec.headDim);
  for (let h = 0; h < spec.heads; h++) {
    for (let t = 0; t < T; t++) {
      const axis = spec.termAxis[t]!;
      const r = ranges[axis]!;
      const c = shift[axis]!;
      const reach = {
        queryReach: Math.max(Math.abs(r.qLo - c), Math.abs(r.qHi - c)),
        keyReach: Math.max(Math.abs(r.kLo - c), Math.abs(r.kHi - c)),
        span: Math.max(r.qHi - r.kLo, r.kHi - r.qLo),
      };
      const tau = spec.tau[h * T + t]!;
      const mu = spec.mu[h * T + t]!;
      const amplitude = (Math.abs(tau) * sqrtD) / 2;
      const { muMax, binding } = concatMuLimit(format, amplitude, reach);
      if (Math.abs(mu) <= muMax) continue;
      const L = Math.max(r.qHi, r.kHi) - Math.min(r.qLo, r.kLo) + 1;
      throw new HypeError(
        'overflow',
        overflowMessage({ format, h, t, mu, tau, d: spec.headDim, L, muMax, binding, reach, r }),
      );
    }
  }
}

interface OverflowReport {
  format: FloatFormat;
  h: number;
  t: number;
  mu: number;
  tau: number;
  d: number;
  L: number;
  muMax: number;
  binding: OverflowConstraint;
  reach: ConcatReach;
  r: AxisRange;
}

/** The one message of an overflow refusal: what, where, the limit, why, and only the fixes that would work. */
function overflowMessage(o: OverflowReport): string {
  const { format, mu, tau, d, L, muMax, binding, reach, r } = o;
  const amplitude = (Math.abs(tau) * Math.sqrt(d)) / 2;
  const x = (m: number) => (m * (L - 1)).toPrecision(4);
  const why =
    binding === 'accumulator'
      ? `the product (|tau| sqrt(d)/2) e^{|mu| D} must stay <= ${FP32.max.toPrecision(5)} in the fp32 accumulator`
      : binding === 'query-operand'
        ? `eta^Q = (|tau| sqrt(d)/2) e^{|mu| |p|} must stay <= ${format.max.toPrecision(5)}, the ${format.name} max`
        : `eta^K = e^{|mu| |p'|} must stay <= ${format.max.toPrecision(5)}, the ${format.name} max`;
  const limit = muMax > 0 ? `|mu| <= ${muMax.toPrecision(4)}, x <= ${x(muMax)}` : 'for every mu';
  const fixes: string[] = [];
  if (muMax > 0) fixes.push(`use |mu| <= ${muMax.toPrecision(4)} (x <= ${x(muMax)})`);
  else fixes.push(`lower |tau| (|tau| sqrt(d)/2 = ${amplitude.toPrecision(4)} alone exceeds the ${format.name} max)`);
  const mid = (Math.min(r.qLo, r.kLo) + Math.max(r.qHi, r.kHi)) / 2;
  const centredReach = {
    queryReach: Math.max(Math.abs(r.qLo - mid), Math.abs(r.qHi - mid)),
    keyReach: Math.max(Math.abs(r.kLo - mid), Math.abs(r.kHi - mid)),
    span: reach.span,
  };
  const centredMax = concatMuLimit(format, amplitude, centredReach).muMax;
  if (centredMax > muMax && centredMax >= Math.abs(mu)) {
    fixes.push(`centre the positions (shift 'centre', c = (L-1)/2: the limit becomes x <= ${x(centredMax)})`);
  }
  if (format.name !== 'fp32' && format.name !== 'fp64') {
    const fp32Max = concatMuLimit(FP32, amplitude, reach).muMax;
    if (fp32Max >= Math.abs(mu)) fixes.push(`use fp32 operands (limit x <= ${x(fp32Max)})`);
  }
  fixes.push("use route 'kernel' (the bias as an fp64 distance table added inside the kernel)");
  return (
    `HyPE concat route would overflow ${format.name}: head ${o.h}, pair ${o.t}: |mu| = ${Math.abs(mu).toPrecision(4)} ` +
    `over L = ${L} positions (x = |mu| (L-1) = ${x(Math.abs(mu))}) with |tau| = ${Math.abs(tau).toPrecision(4)} and ` +
    `d = ${d} exceeds the ${format.name} limit ${limit} (${binding}: ${why}). ` +
    `Fix: ${fixes.join('; or ')}`
  );
}
