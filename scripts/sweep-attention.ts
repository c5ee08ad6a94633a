/**
 * Randomised agreement sweep: the native fp32 attention kernel against the reference computed in fp64, forward and
 * backward, with distance tables drawn as ALiBi, HyPE and T5-style buckets build them ("modes"). Seeded and reproducible: case n of a mode depends only on
 * (seed, mode, n).
 *
 *   npm run sweep                          # 1,000 cases per mode (none, alibi, hype, table)
 *   npm run sweep -- --cases 50 --modes hype,table --seed 7 --threads 2
 *
 * Error metric, per tensor T (out, lse, dq, dk, dv and the distance table's gradient dtable):
 *   err(T) = max_i |T_native[i] - T_fp64[i]| / scale(T)
 * where the "output scale" scale(T) is the largest cancellation-free magnitude of T: each entry is a sum of terms
 * (out_ic = sum_l P_il V_lc, dq_ic = scale sum_l dS_il K_lc, ...), and we take the sum of their absolute values, with
 * |dS_il| replaced by P_il (|dP_il| + |delta_i|), computed in fp64. It equals max|T_fp64| when nothing cancels and
 * stays meaningful when the true value cancels to ~0 (one visible key gives dq = 0 exactly, which no fp32 kernel
 * reproduces to 1e-17), because fp32 rounding error is proportional to exactly these magnitudes. For lse the scale
 * is the largest |logit| or |lse|. A case passes when every err(T) <= 2e-5 (fp32 unit roundoff is 6e-8; the budget
 * leaves room for sums of ~10^3..10^4 rounded terms). lse rows that see no key must be -Infinity in both.
 *
 * One fp32 limit shapes the draws: a logit of magnitude M carries u*M absolute error in fp32 (u = 6e-8), and so does
 * the stored fp32 lse. When EVERY key a query sees is far away (queries hundreds of positions past a short key
 * range), steep alibi/hype biases make all of its logits ~10^3 and the output error ~1e-4 for any fp32 kernel.
 * So bias parameters are drawn steep (HyPE mu*L up to 20, ALiBi slopes up to 1/2) but capped so the bias at each
 * query's NEAREST visible key stays within 16 logits; far keys still get huge negative (irrelevant) biases. HyPE is
 * antisymmetric, so without a causal mask recency parameters REWARD far future keys exponentially: its largest
 * positive bias over the reachable distances is capped at 16 logits as well.
 * Exit status 1 when any case fails, so it can gate a release.
 */
import { pathToFileURL } from 'node:url';
import {
  distanceSpan,
  type AttentionOptions,
  type AttentionShape,
  type Backend,
  type PositionBias,
} from '../src/backend/backend.ts';
import { biasValue } from '../src/backend/reference-attention.ts';
import { alibiDistanceTable, buildDistanceTable } from '../src/pe/distance-table.ts';
import { hypeDistanceTable } from '../src/pe/hype/table.ts';
import { Rng } from '../src/util/rng.ts';

export const MODES = ['none', 'alibi', 'hype', 'table'] as const;
export type Mode = (typeof MODES)[number];
export const TOLERANCE = 2e-5;

export interface SweepCase {
  shape: AttentionShape;
  opts: AttentionOptions;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dOut: Float32Array;
}

export interface CaseLimits {
  /** Longest Lq / Lk drawn (log-uniform from 1). */
  maxL: number;
  /** Cap on B*H*Lq*Lk*(D+Dv), the fp64 reference's cost; larger draws shrink batch, heads, then lengths. */
  maxWork: number;
}

export const FULL_LIMITS: CaseLimits = { maxL: 2048, maxWork: 1.5e8 };

const SPECIAL_DIMS = [
  1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 66, 96, 127, 128, 129, 130, 255, 256, 259, 260,
];

function logUniformInt(rng: Rng, max: number): number {
  return Math.min(max, Math.max(1, Math.round(Math.exp(rng.uniform() * Math.log(max + 0.5)))));
}

function uniformArray(rng: Rng, n: number, amp: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng.uniform() * 2 - 1) * amp;
  return a;
}

/** A bucket function of the kind T5 uses: exact for small |D|, logarithmic beyond, optionally direction-aware. */
function t5Buckets(D: number, buckets: number, bidirectional: boolean, maxDistance: number): number {
  let n = buckets;
  let base = 0;
  if (bidirectional) {
    n = Math.max(1, Math.floor(buckets / 2));
    if (D < 0) base = buckets - n;
  }
  const a = Math.abs(D);
  const exact = Math.max(1, Math.floor(n / 2));
  if (a < exact) return base + Math.min(a, n - 1);
  const logBucket = exact + Math.floor((Math.log(a / exact) / Math.log(maxDistance / exact)) * (n - exact));
  return base + Math.min(n - 1, Math.max(0, logBucket));
}

/** The largest, over queries that see any key, of the distance to the nearest visible key (signed as D). */
function farthestNearestKey(lq: number, lk: number, qo: number, causal: boolean): number[] {
  let worstPos = 0;
  let worstNeg = 0;
  for (let i = 0; i < lq; i++) {
    const hi = i + qo;
    const lo = causal ? Math.max(0, hi - (lk - 1)) : hi - (lk - 1);
    if (lo > hi) continue;
    if (lo > 0) worstPos = Math.max(worstPos, lo);
    if (hi < 0) worstNeg = Math.min(worstNeg, hi);
  }
  return [worstPos, worstNeg];
}

function randomBias(
  rng: Rng,
  mode: Mode,
  H: number,
  lq: number,
  lk: number,
  qo: number,
  causal: boolean,
): PositionBias {
  const L = Math.max(lq + Math.max(qo, 0), lk, 2);
  const geometry = { heads: H, lq, lk, queryOffset: qo, causal };
  const nearest = farthestNearestKey(lq, lk, qo, causal);
  switch (mode) {
    case 'none':
      return { kind: 'none' };
    case 'alibi': {
      const slopes = new Float64Array(H);
      const far = Math.max(1, ...nearest.map(Math.abs));
      for (let h = 0; h < H; h++) {
        slopes[h] = Math.min(2 ** ((-8 * (h + 1)) / H) * (0.1 + 0.9 * rng.uniform()), 16 / far);
      }
      return { kind: 'distance', table: alibiDistanceTable(slopes, geometry) };
    }
    case 'hype': {
      const pairs = 1 + rng.int(3);
      const tau = new Float64Array(H * pairs);
      const mu = new Float64Array(H * pairs);
      for (let j = 0; j < H * pairs; j++) {
        const style = rng.int(3);
        if (style === 0) {
          // recency (SPEC section 3): tau = -m / mu, curvature mu L from 0.25 up to 20 (steep: fp32 concat fails)
          mu[j] = Math.min(2, (0.25 + 19.75 * rng.uniform() ** 2) / L);
          tau[j] = -(2 ** (-1 - 7 * rng.uniform())) / mu[j]!;
        } else if (style === 1) {
          tau[j] = 1; // the paper's literal preset
          mu[j] = 1 / L;
        } else {
          tau[j] = (rng.uniform() * 2 - 1) * 2; // a learned point: either sign, modest curvature
          mu[j] = ((rng.uniform() * 2 - 1) * 3) / L;
        }
      }
      for (let h = 0; h < H; h++) {
        let worst = 0;
        for (const D of nearest) {
          let a = 0;
          for (let k = 0; k < pairs; k++) a += Math.abs(tau[h * pairs + k]! * Math.sinh(mu[h * pairs + k]! * D));
          worst = Math.max(worst, a);
        }
        // The largest positive bias anywhere in reach (sampled; sums of sinh are monotone per term).
        const dLo = causal ? Math.max(0, qo - (lk - 1)) : qo - (lk - 1);
        const dHi = qo + lq - 1;
        for (let t = 0; t <= 64; t++) {
          const D = Math.round(dLo + ((dHi - dLo) * t) / 64);
          let a = 0;
          for (let k = 0; k < pairs; k++) a += tau[h * pairs + k]! * Math.sinh(mu[h * pairs + k]! * D);
          worst = Math.max(worst, a);
        }
        if (worst > 16) for (let k = 0; k < pairs; k++) tau[h * pairs + k] = (tau[h * pairs + k]! * 16) / worst;
      }
      return { kind: 'distance', table: hypeDistanceTable(tau, mu, pairs, geometry) };
    }
    case 'table': {
      const buckets = 1 + rng.int(32);
      const values = new Float64Array(H * buckets);
      for (let i = 0; i < values.length; i++) values[i] = (rng.uniform() * 2 - 1) * 3;
      const bucketOf = new Int32Array(qo + lq + lk - 1);
      const bidirectional = !causal && rng.uniform() < 0.7;
      const random = rng.uniform() < 0.2;
      for (let t = 0; t < bucketOf.length; t++) {
        bucketOf[t] = random ? rng.int(buckets) : t5Buckets(t - (lk - 1), buckets, bidirectional, 128);
      }
      return {
        kind: 'distance',
        table: buildDistanceTable(geometry, (h, D) => values[h * buckets + bucketOf[D + lk - 1]!]!),
      };
    }
  }
}

/** Draws case `index` of `mode` (independent of every other case). */
export function randomCase(seed: number, mode: Mode, index: number, limits: CaseLimits): SweepCase {
  const rng = new Rng(seed * 1_000_003 + MODES.indexOf(mode) * 7_919_993 + index);
  let batch = 1 + rng.int(3);
  let kvHeads = 1 + rng.int(3);
  let group = 1 + rng.int(3);
  let lq = logUniformInt(rng, limits.maxL);
  let lk = rng.uniform() < 0.25 ? lq : logUniformInt(rng, limits.maxL);
  const d = rng.uniform() < 0.5 ? SPECIAL_DIMS[rng.int(SPECIAL_DIMS.length)]! : 1 + rng.int(260);
  const dv = rng.uniform() < 0.7 ? d : 1 + rng.int(260);
  while (batch * kvHeads * group * lq * lk * (d + dv) > limits.maxWork) {
    if (batch > 1) batch--;
    else if (group > 1) group--;
    else if (kvHeads > 1) kvHeads--;
    else if (lq >= lk) lq = Math.ceil(lq / 2);
    else lk = Math.ceil(lk / 2);
  }
  const heads = kvHeads * group;
  const causal = rng.uniform() < 0.5;
  // Mostly the default offset (queries are the last Lq positions); sometimes an explicit one, including offsets
  // that leave early queries with no visible key (causal) — the table needs offsets >= 0.
  let queryOffset: number | undefined;
  if (rng.uniform() < 0.3) queryOffset = mode === 'table' ? rng.int(lk + 1) : rng.int(lk + lq + 1) - lq;
  // A distance table without a causal mask covers distances from -(Lk - 1) only: it needs an offset >= 0.
  if ((mode === 'table' || (mode !== 'none' && !causal)) && (queryOffset ?? lk - lq) < 0) queryOffset = 0;
  const qo = queryOffset ?? lk - lq;
  const scale = (0.5 + 1.5 * rng.uniform()) / Math.sqrt(d);
  const shape: AttentionShape = { batch, heads, kvHeads, lq, lk, headDim: d, valueDim: dv };
  const bias = randomBias(rng, mode, heads, lq, lk, qo, causal);
  const sharp = 0.5 + 3.5 * rng.uniform(); // from diffuse to peaked attention
  return {
    shape,
    opts: { causal, scale, bias, queryOffset },
    q: uniformArray(rng, batch * heads * lq * d, sharp * Math.sqrt(3)),
    k: uniformArray(rng, batch * kvHeads * lk * d, Math.sqrt(3)),
    v: uniformArray(rng, batch * kvHeads * lk * dv, 1),
    dOut: uniformArray(rng, batch * heads * lq * dv, 1),
  };
}

/** err(T) as defined above; Infinity when -Infinity entries disagree or the native result is not finite. */
export function relativeError(got: ArrayLike<number>, want: ArrayLike<number>, scale: number): number {
  let err = 0;
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    const g = got[i]!;
    if (w === -Infinity || g === -Infinity) {
      if (w !== g) return Infinity;
      continue;
    }
    if (!Number.isFinite(g)) return Infinity;
    err = Math.max(err, Math.abs(g - w));
  }
  return err === 0 ? 0 : err / Math.max(scale, 1e-300);
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) if (Number.isFinite(a[i]!)) m = Math.max(m, Math.abs(a[i]!));
  return m;
}

/** The cancellation-free magnitudes of every output tensor (see the header), in fp64. */
export function outputScales(c: SweepCase): Record<string, number> {
  const { shape, opts } = c;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: d, valueDim: dv } = shape;
  const bias = opts.bias ?? { kind: 'none' };
  const qo = opts.queryOffset ?? lk - lq;
  const group = H / Hkv;
  const sc = Math.abs(opts.scale);
  const dkMag = new Float64Array(B * Hkv * lk * d);
  const dvMag = new Float64Array(B * Hkv * lk * dv);
  const paramMag: Record<string, Float64Array> = {};
  const span = distanceSpan(lq, lk, qo);
  if (bias.kind === 'distance') paramMag.table = new Float64Array(H * span);
  let outScale = 0;
  let lseScale = 0;
  let dqScale = 0;
  const s = new Float64Array(lk);
  const p = new Float64Array(lk);
  const a = new Float64Array(lk);
  const acc = new Float64Array(Math.max(d, dv));
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const kvh = Math.floor(h / group);
      const qBase = (b * H + h) * lq * d;
      const kBase = (b * Hkv + kvh) * lk * d;
      const vBase = (b * Hkv + kvh) * lk * dv;
      for (let i = 0; i < lq; i++) {
        let max = -Infinity;
        for (let l = 0; l < lk; l++) {
          const D = i + qo - l;
          if (opts.causal && D < 0) {
            s[l] = -Infinity;
            continue;
          }
          let dot = 0;
          for (let x = 0; x < d; x++) dot += c.q[qBase + i * d + x]! * c.k[kBase + l * d + x]!;
          s[l] = opts.scale * dot + biasValue(bias, shape, h, i, l, D);
          max = Math.max(max, s[l]!);
          lseScale = Math.max(lseScale, Math.abs(s[l]!));
        }
        if (max === -Infinity) continue;
        let sum = 0;
        for (let l = 0; l < lk; l++) sum += p[l] = Math.exp(s[l]! - max);
        lseScale = Math.max(lseScale, Math.abs(max + Math.log(sum)));
        const go = (b * H + h) * lq * dv + i * dv;
        let delta = 0;
        const dp = a; // dP first, then the |dS| magnitudes in place
        for (let l = 0; l < lk; l++) {
          p[l] = p[l]! / sum;
          let t = 0;
          for (let x = 0; x < dv; x++) t += c.dOut[go + x]! * c.v[vBase + l * dv + x]!;
          dp[l] = t;
          delta += p[l]! * t;
        }
        for (let l = 0; l < lk; l++) a[l] = p[l]! * (Math.abs(dp[l]!) + Math.abs(delta));
        acc.fill(0, 0, dv);
        for (let l = 0; l < lk; l++) {
          if (p[l] === 0) continue;
          for (let x = 0; x < dv; x++) {
            acc[x] = acc[x]! + p[l]! * Math.abs(c.v[vBase + l * dv + x]!);
            dvMag[vBase + l * dv + x] = dvMag[vBase + l * dv + x]! + p[l]! * Math.abs(c.dOut[go + x]!);
          }
        }
        for (let x = 0; x < dv; x++) outScale = Math.max(outScale, acc[x]!);
        acc.fill(0, 0, d);
        for (let l = 0; l < lk; l++) {
          const al = a[l]!;
          if (al === 0) continue;
          for (let x = 0; x < d; x++) {
            acc[x] = acc[x]! + sc * al * Math.abs(c.k[kBase + l * d + x]!);
            dkMag[kBase + l * d + x] = dkMag[kBase + l * d + x]! + sc * al * Math.abs(c.q[qBase + i * d + x]!);
          }
          if (bias.kind === 'distance') {
            const j = h * span + i + qo - l + lk - 1;
            paramMag.table![j] = paramMag.table![j]! + al;
          }
        }
        for (let x = 0; x < d; x++) dqScale = Math.max(dqScale, acc[x]!);
      }
    }
  }
  const scales: Record<string, number> = {
    out: outScale,
    lse: lseScale,
    dq: dqScale,
    dk: maxAbs(dkMag),
    dv: maxAbs(dvMag),
  };
  for (const [key, m] of Object.entries(paramMag)) scales[`d${key}`] = maxAbs(m);
  return scales;
}

const f64 = (a: Float32Array) => Float64Array.from(a);

/** Runs one case on both backends and returns err(T) for every tensor. */
export function compareCase(native: Backend, reference: Backend, c: SweepCase): Record<string, number> {
  const { shape, opts } = c;
  const fwd = native.attentionForward(shape, c.q, c.k, c.v, opts);
  const grads = native.attentionBackward(shape, c.q, c.k, c.v, fwd.out, fwd.lse, c.dOut, opts);
  const q = f64(c.q);
  const k = f64(c.k);
  const v = f64(c.v);
  const ref = reference.attentionForward(shape, q, k, v, opts);
  const refGrads = reference.attentionBackward(shape, q, k, v, ref.out, ref.lse, f64(c.dOut), opts);
  const scales = outputScales(c);
  const errors: Record<string, number> = {
    out: relativeError(fwd.out, ref.out, scales.out!),
    lse: relativeError(fwd.lse, ref.lse, scales.lse!),
    dq: relativeError(grads.dq, refGrads.dq, scales.dq!),
    dk: relativeError(grads.dk, refGrads.dk, scales.dk!),
    dv: relativeError(grads.dv, refGrads.dv, scales.dv!),
  };
  const got = grads.dBias as unknown as Record<string, Float64Array | string>;
  const want = refGrads.dBias as unknown as Record<string, Float64Array | string>;
  for (const key of Object.keys(want)) {
    if (key === 'kind') continue;
    errors[`d${key}`] = relativeError(got[key] as Float64Array, want[key] as Float64Array, scales[`d${key}`]!);
  }
  return errors;
}

export function describeCase(c: SweepCase): string {
  const s = c.shape;
  const b = c.opts.bias ?? { kind: 'none' };
  return (
    `B=${s.batch} H=${s.heads} Hkv=${s.kvHeads} Lq=${s.lq} Lk=${s.lk} D=${s.headDim} Dv=${s.valueDim} ` +
    `causal=${c.opts.causal} qo=${c.opts.queryOffset ?? 'default'} bias=${b.kind}`
  );
}

async function main(argv: string[]): Promise<number> {
  const arg = (name: string, fallback: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : fallback;
  };
  const cases = Number(arg('cases', '1000'));
  const seed = Number(arg('seed', '1'));
  const modes = arg('modes', MODES.join(',')).split(',') as Mode[];
  const threads = Number(arg('threads', '0')) || undefined;
  for (const m of modes) if (!MODES.includes(m)) throw new Error(`unknown mode ${m}; use ${MODES.join(', ')}`);
  const { NativeBackend } = await import('../src/backend/native.ts');
  const { ReferenceBackend } = await import('../src/backend/reference.ts');
  const native = new NativeBackend(threads ? { threads } : {});
  const reference = new ReferenceBackend();
  let failures = 0;
  const t0 = Date.now();
  for (const mode of modes) {
    const worst: Record<string, { err: number; index: number }> = {};
    for (let n = 0; n < cases; n++) {
      const c = randomCase(seed, mode, n, FULL_LIMITS);
      const errors = compareCase(native, reference, c);
      for (const [t, e] of Object.entries(errors)) {
        if (!worst[t] || e > worst[t].err) worst[t] = { err: e, index: n };
        if (!(e <= TOLERANCE)) {
          failures++;
          console.log(`FAIL ${mode} #${n} ${t} err=${e.toExponential(2)}: ${describeCase(c)}`);
        }
      }
      if ((n + 1) % 100 === 0) {
        process.stderr.write(`  ${mode}: ${n + 1}/${cases} cases, ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
      }
    }
    console.log(`mode ${mode}: ${cases} cases (seed ${seed}), worst error per tensor (tolerance ${TOLERANCE}):`);
    for (const [t, w] of Object.entries(worst)) {
      console.log(
        `  ${t.padEnd(8)} ${w.err.toExponential(2)}  case #${w.index}: ${describeCase(randomCase(seed, mode, w.index, FULL_LIMITS))}`,
      );
    }
  }
  console.log(
    failures === 0
      ? `all ${cases * modes.length} cases within ${TOLERANCE} (${((Date.now() - t0) / 1000).toFixed(0)} s)`
      : `${failures} tensor comparisons beyond ${TOLERANCE}`,
  );
  return failures === 0 ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : e);
      process.exit(2);
    },
  );
}
