/**
 * ALiBi's reference head slopes (Press et al. 2021) for any head count. For a power of two H the slopes are the
 * geometric sequence m_h = 2^(-8 (h + 1) / H), h = 0 .. H-1 (1/2 ... 1/256 for 8 heads). Otherwise, with p the
 * largest power of two below H, the reference recipe takes all p slopes of slopes(p) and then every other slope
 * of slopes(2p), starting with the first, until H slopes are listed: slopes(p) + slopes(2p)[0::2][:H-p]. The
 * extra heads therefore fall between the existing ones instead of extending the sequence to ever flatter slopes.
 * Written as one loop over the output (no intermediate lists, no argument spreading), so any head count an array
 * can hold works.
 */
import { check } from '../errors.ts';
import { allocate } from '../tensor.ts';

export function alibiSlopes(heads: number): Float64Array {
  check(
    Number.isInteger(heads) && heads >= 1,
    'argument',
    () => `ALiBi slopes need a positive integer head count, got ${heads}; pass the number of query heads`,
  );
  const slopes = allocate('float64', heads, `ALiBi slopes for ${heads} heads`) as Float64Array;
  let p = 1;
  while (p * 2 <= heads) p *= 2;
  for (let h = 0; h < p; h++) slopes[h] = 2 ** ((-8 * (h + 1)) / p);
  // slopes(2p)[2j] = 2^(-8 (2j + 1) / (2p)): the odd steps of the finer sequence.
  for (let j = 0; p + j < heads; j++) slopes[p + j] = 2 ** ((-8 * (2 * j + 1)) / (2 * p));
  return slopes;
}
