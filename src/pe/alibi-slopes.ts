/**
 * ALiBi's reference head slopes (Press et al. 2021) for any head count. For a power of two H the slopes are the
 * geometric sequence m_h = 2^(-8 (h + 1) / H), h = 0 .. H-1 (1/2 ... 1/256 for 8 heads). Otherwise, with p the
 * largest power of two below H, the reference recipe takes all p slopes of slopes(p) and then every other slope
 * of slopes(2p), starting with the first, until H slopes are listed: slopes(p) + slopes(2p)[0::2][:H-p]. The
 * extra heads therefore fall between the existing ones instead of extending the sequence to ever flatter slopes.
 */
import { check } from '../errors.ts';

function powerOfTwoSlopes(n: number): number[] {
  return Array.from({ length: n }, (_, h) => 2 ** ((-8 * (h + 1)) / n));
}

export function alibiSlopes(heads: number): Float64Array {
  check(
    Number.isInteger(heads) && heads >= 1,
    'argument',
    () => `ALiBi slopes need a positive integer head count, got ${heads}; pass the number of query heads`,
  );
  const p = 2 ** Math.floor(Math.log2(heads));
  const slopes = powerOfTwoSlopes(p);
  if (p < heads) {
    const finer = powerOfTwoSlopes(2 * p).filter((_, i) => i % 2 === 0);
    slopes.push(...finer.slice(0, heads - p));
  }
  return Float64Array.from(slopes);
}
