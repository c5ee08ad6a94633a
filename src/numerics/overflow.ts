/**
 * Overflow limits of HyPE's concatenation route (SPEC section 4). One (mu, tau) pair puts
 *   eta^Q = A * [e^{-mu p}, e^{+mu p}]   (A = |tau| sqrt(d) / 2)   and   eta^K = [-e^{+mu p'}, e^{-mu p'}]
 * into the operands, and the kernel forms the products A e^{+-mu (p - p')} in its accumulator. Three things must
 * stay finite:
 *   1. every eta^Q operand in the operand format:   A e^{|mu| max|p|}  <= max_operand
 *   2. every eta^K operand in the operand format:     e^{|mu| max|p'|} <= max_operand
 *   3. every product in the accumulator:             A e^{|mu| max|p - p'|} <= max_accumulator
 * Position shifts (centring) shrink max|p| and max|p'| but not max|p - p'|, so they relax 1 and 2 only: centring
 * doubles the fp16 limit (fp32 accumulation), and does nothing for fp32 or bf16, where 3 binds first.
 * The accumulator is fp32 for fp32/fp16/bf16 operands (what fused kernels do) and fp64 for fp64 operands.
 */
import { FP32, FP64, type FloatFormat } from './float-formats.ts';

export type OverflowConstraint = 'query-operand' | 'key-operand' | 'accumulator';

export interface ConcatReach {
  /** max |p| over the query positions, after the shift. */
  queryReach: number;
  /** max |p'| over the key positions, after the shift. */
  keyReach: number;
  /** max |p - p'| over every (query, key) pair: the largest distance, unaffected by the shift. */
  span: number;
}

export interface MuLimit {
  /** Largest |mu| for which every operand and product stays finite (0 when even mu = 0 overflows). */
  muMax: number;
  /** Which of the three conditions sets the limit. */
  binding: OverflowConstraint;
}

export function accumulatorFor(operand: FloatFormat): FloatFormat {
  return operand.name === 'fp64' ? FP64 : FP32;
}

/** The largest |mu| for amplitude A = |tau| sqrt(d) / 2 and the given reaches (see the module comment). */
export function concatMuLimit(operand: FloatFormat, amplitude: number, reach: ConcatReach): MuLimit {
  const acc = accumulatorFor(operand);
  const bound = (logRoom: number, distance: number) =>
    logRoom < 0 ? 0 : distance === 0 ? Infinity : logRoom / distance;
  const candidates: [number, OverflowConstraint][] = [
    [bound(Math.log(operand.max / amplitude), reach.queryReach), 'query-operand'],
    [bound(Math.log(operand.max), reach.keyReach), 'key-operand'],
    [bound(Math.log(acc.max / amplitude), reach.span), 'accumulator'],
  ];
  let best = candidates[0]!;
  for (const c of candidates) if (c[0] < best[0]) best = c;
  return { muMax: best[0], binding: best[1] };
}

/** Reaches of a 1-D sequence of L positions 0 .. L-1, uncentred (c = 0, the paper) or centred (c = (L-1)/2). */
export function sequenceReach(length: number, centred: boolean): ConcatReach {
  const span = Math.max(length - 1, 0);
  const r = centred ? span / 2 : span;
  return { queryReach: r, keyReach: r, span };
}

/**
 * The limit on x = |mu| (L - 1) for a sequence (independent of L): the tabulated form of concatMuLimit.
 * fp16, tau = 1: 9.70 (d = 64) and 9.36 (d = 128) uncentred, twice that centred.
 */
export function concatXLimit(operand: FloatFormat, amplitude: number, centred: boolean): MuLimit {
  const { muMax, binding } = concatMuLimit(operand, amplitude, sequenceReach(2, centred));
  return { muMax, binding }; // with L = 2 the distance is 1, so |mu| max equals the x limit
}

/**
 * Uncentred, the x at which eta^K's e^{mu p'} overflows too, so inf - inf = NaN appears in the logits (SPEC: 11.09
 * for fp16). Only meaningful when the query side overflowed first (amplitude >= 1).
 */
export function concatNanX(operand: FloatFormat): number {
  return Math.log(operand.max);
}
