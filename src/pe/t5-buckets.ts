/**
 * T5's relative-position buckets (Raffel et al. 2020; the reference definition of relative_position_bucket in the
 * T5 / Mesh TensorFlow code), reproduced exactly. `relativePosition` is key position minus query position, l - i'
 * = -D (negative for past keys).
 *
 * Bidirectional: half the buckets for keys behind the query, half (offset by numBuckets/2) for keys ahead; then
 * |relativePosition|. Causal: keys ahead all fall into bucket 0 (never distinguished from D = 0) and the distance
 * behind uses every bucket. Within a half of n buckets, distances below n/2 get a bucket each; larger distances
 * share logarithmically wider buckets up to maxDistance, and everything beyond goes to the last bucket:
 *   bucket = n/2 + floor( ln(dist / (n/2)) / ln(maxDistance / (n/2)) * (n - n/2) ),  capped at n - 1.
 */
import { check } from '../errors.ts';

export function t5Bucket(
  relativePosition: number,
  bidirectional: boolean,
  numBuckets: number,
  maxDistance: number,
): number {
  let n = numBuckets;
  let offset = 0;
  let dist: number;
  if (bidirectional) {
    n = Math.floor(n / 2);
    if (relativePosition > 0) offset = n;
    dist = Math.abs(relativePosition);
  } else {
    dist = -Math.min(relativePosition, 0);
  }
  const maxExact = Math.floor(n / 2);
  if (dist < maxExact) return offset + dist;
  const large = maxExact + Math.floor((Math.log(dist / maxExact) / Math.log(maxDistance / maxExact)) * (n - maxExact));
  return offset + Math.min(large, n - 1);
}

/** Refuses bucket settings for which the reference formula is undefined (log of 0 or a division by ln 1). */
export function checkT5BucketOptions(numBuckets: number, maxDistance: number, bidirectional: boolean): void {
  const half = bidirectional ? Math.floor(numBuckets / 2) : numBuckets;
  check(
    Number.isInteger(numBuckets) && half >= 2,
    'argument',
    `t5 numBuckets must be an integer >= ${bidirectional ? 4 : 2} for ${bidirectional ? 'bidirectional' : 'causal'} ` +
      `bucketing, got ${numBuckets}`,
  );
  check(
    Number.isFinite(maxDistance) && maxDistance > Math.floor(half / 2),
    'argument',
    `t5 maxDistance must exceed the ${Math.floor(half / 2)} exact buckets, got ${maxDistance}; raise maxDistance`,
  );
}
