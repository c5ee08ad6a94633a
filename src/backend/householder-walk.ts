/**
 * The Householder walk (Backend.householderWalk): causal logits through accumulated factors H_t = I - beta_t w_t w_t^T,
 *   logits[b, h, i, l] = scale * q_i^T H_p H_{p-1} ... H_{l+1} k_l,   p = i + queryOffset, l <= p,
 * and their backward to q, k, w and beta. Layouts: q [B, H, Lq, D], k and w [B, Hkv, Lk, D], beta [B, Hkv, Lk],
 * logits and dLogits [B, H, Lq, Lk]; query head h reads kv head floor(h / (H / Hkv)).
 *
 * This file holds the argument checks every backend runs and the reference implementation: plain scalar loops,
 * fp64 throughout (q and k are read as fp64, logits and gradients rounded once on store). The native backend runs
 * the same algorithm in C++ (native/householder.cc), threaded over heads.
 *
 * Algorithm, by chunks of WALK_CHUNK positions. Inside its own chunk each query walks back over the keys carrying
 * r = q_p and applying one factor per step (r <- r - beta_t (w_t . r) w_t); the walk state z_p it reaches at the
 * end of the previous chunk continues across chunks. Against an earlier chunk J (positions s .. e) every logit is
 * z . kHat_l with kHat_l = H_e ... H_{l+1} k_l (the factors are symmetric), so a chunk of keys is one matrix
 * product; the states then move back over chunk J by its dense D x D product U_J = H_e ... H_s (z^T <- z^T U_J).
 * The backward has the same split: the cross-chunk part is differentiated through its products (to dz, dU_J and
 * dkHat), dU_J and dkHat go back to w, beta and k through the adjoints of the chunk products and of the carried
 * keys, and each query's intra-chunk walk is replayed and run adjoint, starting from dz.
 */
import { check } from '../errors.ts';
import type { FloatArray } from '../tensor.ts';
import type { AttentionShape, Backend, HouseholderWalk } from './backend.ts';
import { checkArray, validateShape } from './validate.ts';

/** Positions per chunk: queries walk inside their own chunk; earlier chunks are reached by matrix products. */
export const WALK_CHUNK = 32;

/** Kv head read by query head h (grouped-query attention). */
const kvHead = (shape: AttentionShape, h: number) => Math.floor(h / (shape.heads / shape.kvHeads));

/**
 * The number of chunks below the last query's chunk (those reached by products), and the sizes (fp64 elements)
 * of what a walk keeps for its backward: the carried keys kHat and the vectors y_t of the chunk products (both
 * like w), every query's walk state at the end of the chunk below its own (zs, like q), and the chunk products U_J
 * ([B, Hkv, lastChunk, D, D], slot J = 0 unused).
 */
export function walkStateSizes(shape: AttentionShape, queryOffset: number) {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: D } = shape;
  const lastChunk = Math.floor((queryOffset + lq - 1) / WALK_CHUNK);
  return {
    lastChunk,
    kHat: lastChunk > 0 ? B * Hkv * lk * D : 0,
    zs: lastChunk > 0 ? B * H * lq * D : 0,
    u: lastChunk > 1 ? B * Hkv * lastChunk * D * D : 0,
    ys: lastChunk > 1 ? B * Hkv * lk * D : 0,
  };
}

/** Refuses a walk whose shape, positions, scale, arrays or dtypes the kernels cannot trust (one HypeError). */
export function validateHouseholderWalk(...args: Parameters<Backend['householderWalk']>): void {
  const [shape, queryOffset, scale, q, k, w, beta, logits] = args;
  validateShape(shape);
  const { lq, lk } = shape;
  check(
    Number.isInteger(queryOffset) && queryOffset >= 0 && queryOffset + lq <= lk,
    'argument',
    () =>
      `householder walk: queries at positions ${queryOffset}..${queryOffset + lq - 1} need factors up to their own ` +
      `position, but the keys cover 0..${lk - 1}; use an integer 0 <= queryOffset <= Lk - Lq`,
  );
  check(Number.isFinite(scale), 'argument', `householder walk: scale = ${scale} must be a finite number`);
  checkWalkArrays(shape, q, ['q', q], ['k', k], ['logits', logits], ['w', w], ['beta', beta]);
}

/** Refuses a backward whose arrays do not match the forward's shape and dtype (that of `like`, its q). */
export function validateWalkBackward(
  shape: AttentionShape,
  like: FloatArray,
  ...[dLogits, dq, dk, dw, dbeta]: Parameters<HouseholderWalk['backward']>
): void {
  checkWalkArrays(shape, like, ['dq', dq], ['dk', dk], ['dLogits', dLogits], ['dw', dw], ['dbeta', dbeta]);
}

type Named<T> = readonly [string, T];

/**
 * The walk's arrays by role (q-, k- and logits-shaped in the dtype of `like`; w- and beta-shaped in fp64), each
 * checked for its type and length.
 */
function checkWalkArrays(
  shape: AttentionShape,
  like: FloatArray,
  qs: Named<FloatArray>,
  ks: Named<FloatArray>,
  ls: Named<FloatArray>,
  ws: Named<Float64Array>,
  bs: Named<Float64Array>,
): void {
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: D } = shape;
  checkArray(qs[1], qs[0], B * H * lq * D, 'B*H*Lq*D');
  checkArray(ks[1], ks[0], B * Hkv * lk * D, 'B*Hkv*Lk*D');
  checkArray(ls[1], ls[0], B * H * lq * lk, 'B*H*Lq*Lk');
  check(
    [qs, ks, ls].every(([, x]) => x.constructor === like.constructor),
    'argument',
    `householder walk: ${qs[0]}, ${ks[0]} and ${ls[0]} must share the dtype of q (all Float32Array or all ` +
      'Float64Array)',
  );
  for (const [name, x, n, dims] of [
    [ws[0], ws[1], B * Hkv * lk * D, 'B*Hkv*Lk*D'],
    [bs[0], bs[1], B * Hkv * lk, 'B*Hkv*Lk'],
  ] as const) {
    check(x instanceof Float64Array, 'argument', `householder walk: ${name} must be a Float64Array (kept in fp64)`);
    checkArray(x, name, n, dims);
  }
}

/** The reference backend's walk: the algorithm above in plain fp64 loops (validated first). */
export function referenceHouseholderWalk(...args: Parameters<Backend['householderWalk']>): HouseholderWalk {
  validateHouseholderWalk(...args);
  const [shape, queryOffset, scale, qInput, kInput, w, beta, logits] = args;
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: D } = shape;
  const q = Float64Array.from(qInput);
  const k = Float64Array.from(kInput);
  const x: Walk = { q, k, w, beta, lq, lk, D, queryOffset, scale };
  const sizes = walkStateSizes(shape, queryOffset);
  const { lastChunk } = sizes;
  const kHat = new Float64Array(sizes.kHat);
  const zs = new Float64Array(sizes.zs);
  const u = new Float64Array(sizes.u);
  const ys = new Float64Array(sizes.ys);
  const uAt = (bk: number, J: number) => (bk * lastChunk + J) * D * D;
  const C = WALK_CHUNK;
  // Per (batch, kv head): the keys carried to their chunk's end, and the products of the chunks 1 .. lastChunk - 1.
  for (let bk = 0; lastChunk > 0 && bk < B * Hkv; bk++) {
    carryKeys(x, kHat, bk * lk, lastChunk * C);
    for (let J = 1; J < lastChunk; J++) chunkProduct(x, u.subarray(uAt(bk, J)), ys, bk * lk + J * C);
  }
  const S = new Float64Array(lq * lk);
  const z = new Float64Array(lq * D);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const bk = b * Hkv + kvHead(shape, h);
      const qBase = (b * H + h) * lq * D;
      walkLogits(x, S, z, qBase, bk * lk);
      if (lastChunk > 0) zs.set(z, qBase);
      // Across chunks, downwards: logits against chunk J, then every state still below moves over chunk J.
      for (let J = lastChunk - 1; J >= 0; J--) {
        const r0 = firstRowPast(J, queryOffset);
        const s0 = J * C;
        for (let i = r0; i < lq; i++) {
          for (let l = s0; l < s0 + C; l++) S[i * lk + l] = scale * dot(z, i * D, kHat, (bk * lk + l) * D, D);
        }
        if (J > 0) moveStates(z.subarray(r0 * D), lq - r0, u.subarray(uAt(bk, J)), D);
      }
      const out = (b * H + h) * lq * lk;
      for (let i = 0; i < lq; i++) {
        const end = i + queryOffset + 1;
        for (let l = 0; l < end; l++) logits[out + i * lk + l] = S[i * lk + l]!;
      }
    }
  }

  const backward = (dLogits: FloatArray, dq: FloatArray, dk: FloatArray, dw: Float64Array, dbeta: Float64Array) => {
    validateWalkBackward(shape, qInput, dLogits, dq, dk, dw, dbeta);
    const dqAcc = new Float64Array(dq.length);
    const dkAcc = new Float64Array(dk.length);
    const g: WalkGrads = { dq: dqAcc, dk: dkAcc, dw, dbeta };
    const dS = new Float64Array(lq * lk);
    const dz = new Float64Array(lq * D);
    const chain = new Float64Array(Math.max(1, lastChunk) * lq * D); // Z_J at J * lq * D, rows r0(J) ..
    const dU = new Float64Array(D * D);
    const dkHat = new Float64Array(lastChunk * C * D);
    for (let b = 0; b < B; b++) {
      for (let h = 0; h < H; h++) {
        const bk = b * Hkv + kvHead(shape, h);
        const qBase = (b * H + h) * lq * D;
        const dIn = (b * H + h) * lq * lk;
        dS.fill(0);
        for (let i = 0; i < lq; i++) {
          const end = i + queryOffset + 1;
          for (let l = 0; l < end; l++) dS[i * lk + l] = dLogits[dIn + i * lk + l]!;
        }
        dz.fill(0);
        if (lastChunk > 0) {
          // The forward chain again, keeping every Z_J: Z_{J-1} = Z_J U_J on the rows past chunk J - 1.
          z.set(zs.subarray(qBase, qBase + lq * D));
          for (let J = lastChunk - 1; J >= 0; J--) {
            const r0 = firstRowPast(J, queryOffset);
            chain.set(z.subarray(r0 * D), (J * lq + r0) * D);
            if (J > 0) moveStates(z.subarray(r0 * D), lq - r0, u.subarray(uAt(bk, J)), D);
          }
          // Chunks upwards: dZ_J = dZ_{J-1} U_J^T + scale dS_J kHat_J, dU_J = Z_J^T dZ_{J-1}, dkHat_J = scale dS_J^T Z_J.
          // Rows of dz below r0(J) are final once chunk J is reached: those queries' walks started from Z_{J-1}.
          for (let J = 0; J < lastChunk; J++) {
            const r0 = firstRowPast(J, queryOffset);
            const s0 = J * C;
            const zJ = chain.subarray(J * lq * D);
            if (J > 0) {
              // dU_J = Z_J^T dZ_{J-1} and dZ_J = dZ_{J-1} U_J^T, over the rows past chunk J.
              const U = u.subarray(uAt(bk, J));
              dU.fill(0);
              for (let i = r0; i < lq; i++) {
                for (let a = 0; a < D; a++) {
                  for (let c = 0; c < D; c++) dU[a * D + c] = dU[a * D + c]! + zJ[i * D + a]! * dz[i * D + c]!;
                }
                const row = dz.slice(i * D, (i + 1) * D);
                for (let a = 0; a < D; a++) dz[i * D + a] = dot(row, 0, U, a * D, D);
              }
              chunkProductBackward(x, g, dU, ys, bk * lk + s0);
            }
            // The logits against chunk J: dZ_J += scale dS_J kHat_J and dkHat_J = scale dS_J^T Z_J.
            dkHat.fill(0, s0 * D, (s0 + C) * D);
            for (let i = r0; i < lq; i++) {
              for (let l = s0; l < s0 + C; l++) {
                const g = scale * dS[i * lk + l]!;
                for (let d = 0; d < D; d++) {
                  dz[i * D + d] = dz[i * D + d]! + g * kHat[(bk * lk + l) * D + d]!;
                  dkHat[l * D + d] = dkHat[l * D + d]! + g * zJ[i * D + d]!;
                }
              }
            }
          }
          carryKeysBackward(x, g, dkHat, bk * lk, lastChunk * C);
        }
        walkBackward(x, g, dS, dz, qBase, bk * lk);
      }
    }
    for (let j = 0; j < dq.length; j++) dq[j] = dq[j]! + dqAcc[j]!;
    for (let j = 0; j < dk.length; j++) dk[j] = dk[j]! + dkAcc[j]!;
  };
  return { backward };
}

/** One walk's inputs (q and k as fp64) and sizes, as the loops below read them. */
interface Walk {
  q: Float64Array;
  k: Float64Array;
  w: Float64Array;
  beta: Float64Array;
  lq: number;
  lk: number;
  D: number;
  queryOffset: number;
  scale: number;
}

/** The fp64 gradient accumulators the adjoints add into (laid out like q, k, w and beta). */
interface WalkGrads {
  dq: Float64Array;
  dk: Float64Array;
  dw: Float64Array;
  dbeta: Float64Array;
}

/** The first query row whose position lies past chunk J (it sees all of chunk J's keys). */
function firstRowPast(J: number, queryOffset: number): number {
  return Math.max(0, (J + 1) * WALK_CHUNK - queryOffset);
}

function dot(a: Float64Array, ao: number, b: Float64Array, bo: number, n: number): number {
  let s = 0;
  for (let c = 0; c < n; c++) s += a[ao + c]! * b[bo + c]!;
  return s;
}

/** v[vo ..] <- H_t v = v - beta_t (w_t . v) w_t for the factor whose w starts at wAt; returns w_t . v (before). */
function applyFactor(v: Float64Array, vo: number, w: Float64Array, wAt: number, betaT: number, D: number): number {
  const wv = dot(w, wAt, v, vo, D);
  const c = betaT * wv;
  for (let d = 0; d < D; d++) v[vo + d] = v[vo + d]! - c * w[wAt + d]!;
  return wv;
}

/** Rows z_r^T <- z_r^T U for the m rows of z (U row-major D x D). */
function moveStates(z: Float64Array, m: number, U: Float64Array, D: number): void {
  const row = new Float64Array(D);
  for (let i = 0; i < m; i++) {
    row.fill(0);
    for (let a = 0; a < D; a++) for (let c = 0; c < D; c++) row[c] = row[c]! + z[i * D + a]! * U[a * D + c]!;
    z.set(row, i * D);
  }
}

/**
 * Each query's walk inside its own chunk: logit(p, l) = scale r . k_l, then r <- H_l r, from l = p down to the
 * chunk start. S gets the logits; z (row i) the state after the chunk's first factor, i.e. at the end of the
 * chunk below (unused for queries in chunk 0).
 */
function walkLogits(x: Walk, S: Float64Array, z: Float64Array, qBase: number, kvBase: number): void {
  const { q, k, w, beta, lq, lk, D, queryOffset, scale } = x;
  for (let i = 0; i < lq; i++) {
    const p = i + queryOffset;
    const start = p - (p % WALK_CHUNK);
    z.set(q.subarray(qBase + i * D, qBase + (i + 1) * D), i * D);
    for (let l = p; l >= start; l--) {
      S[i * lk + l] = scale * dot(z, i * D, k, (kvBase + l) * D, D);
      if (l > 0) applyFactor(z, i * D, w, (kvBase + l) * D, beta[kvBase + l]!, D);
    }
  }
}

/**
 * The adjoint of walkLogits for one (batch, head): per query, replay its walk keeping every state r_l and
 * w_l . r_l, then run the adjoint a = dLoss/dr_l upwards from the chunk start (a = dz_i there, the gradient of the
 * state handed to the earlier chunks, 0 in chunk 0). With r_{l-1} = H_l r_l and logit_l = scale r_l . k_l:
 * a <- H_l a + g k_l (g = scale dS_l), dk_l += g r_l, dbeta_l -= (w_l . r_l)(w_l . a), dw_l -= beta_l ((w_l . r_l) a
 * + (w_l . a) r_l), with a before the factor. Ends in dq_i += a.
 */
function walkBackward(x: Walk, g: WalkGrads, dS: Float64Array, dz: Float64Array, qBase: number, kvBase: number): void {
  const { q, k, w, beta, lq, lk, D, queryOffset, scale } = x;
  const { dq, dk, dw, dbeta } = g;
  const states = new Float64Array(WALK_CHUNK * D); // r_l at (l - start) * D
  const wr = new Float64Array(WALK_CHUNK); // w_l . r_l
  const a = new Float64Array(D);
  const r = new Float64Array(D);
  for (let i = 0; i < lq; i++) {
    const p = i + queryOffset;
    const start = p - (p % WALK_CHUNK);
    r.set(q.subarray(qBase + i * D, qBase + (i + 1) * D));
    for (let l = p; l >= start; l--) {
      states.set(r, (l - start) * D);
      if (l > 0) wr[l - start] = applyFactor(r, 0, w, (kvBase + l) * D, beta[kvBase + l]!, D);
    }
    for (let d = 0; d < D; d++) a[d] = start > 0 ? dz[i * D + d]! : 0;
    for (let l = start; l <= p; l++) {
      const at = (kvBase + l) * D;
      const rAt = (l - start) * D;
      if (l > 0) {
        const wa = dot(w, at, a, 0, D);
        const rw = wr[l - start]!;
        const bl = beta[kvBase + l]!;
        dbeta[kvBase + l] = dbeta[kvBase + l]! - rw * wa;
        for (let d = 0; d < D; d++) {
          dw[at + d] = dw[at + d]! - bl * (rw * a[d]! + wa * states[rAt + d]!);
          a[d] = a[d]! - bl * wa * w[at + d]!;
        }
      }
      const g = scale * dS[i * lk + l]!;
      for (let d = 0; d < D; d++) {
        a[d] = a[d]! + g * k[at + d]!;
        dk[at + d] = dk[at + d]! + g * states[rAt + d]!;
      }
    }
    for (let d = 0; d < D; d++) dq[qBase + i * D + d] = dq[qBase + i * D + d]! + a[d]!;
  }
}

/** kHat_j = H_e ... H_{j+1} k_j for the keys j < end of one (batch, kv head), e = the last position of j's chunk. */
function carryKeys(x: Walk, kHat: Float64Array, kvBase: number, end: number): void {
  const { k, w, beta, D } = x;
  for (let j = 0; j < end; j++) {
    const e = j - (j % WALK_CHUNK) + WALK_CHUNK - 1;
    const at = (kvBase + j) * D;
    kHat.set(k.subarray(at, at + D), at);
    for (let t = j + 1; t <= e; t++) applyFactor(kHat, at, w, (kvBase + t) * D, beta[kvBase + t]!, D);
  }
}

/**
 * The adjoint of carryKeys given dkHat (rows j < end of one kv head): per key, replay its carry (the state before
 * each factor, and w_t . v), then run the adjoint from dkHat_j down through H_e, ..., H_{j+1} into dk_j,
 * accumulating dw and dbeta as in walkBackward.
 */
function carryKeysBackward(x: Walk, g: WalkGrads, dkHat: Float64Array, kvBase: number, end: number): void {
  const { k, w, beta, D } = x;
  const { dk, dw, dbeta } = g;
  const states = new Float64Array(WALK_CHUNK * D); // the state before factor t at (t - j - 1) * D
  const vw = new Float64Array(WALK_CHUNK);
  const a = new Float64Array(D);
  for (let j = 0; j < end; j++) {
    const e = j - (j % WALK_CHUNK) + WALK_CHUNK - 1;
    const v = a; // the replay runs in a, which then restarts as the adjoint
    v.set(k.subarray((kvBase + j) * D, (kvBase + j + 1) * D));
    for (let t = j + 1; t <= e; t++) {
      states.set(v, (t - j - 1) * D);
      vw[t - j - 1] = applyFactor(v, 0, w, (kvBase + t) * D, beta[kvBase + t]!, D);
    }
    a.set(dkHat.subarray(j * D, (j + 1) * D));
    for (let t = e; t > j; t--) {
      const wAt = (kvBase + t) * D;
      const sAt = (t - j - 1) * D;
      const bt = beta[kvBase + t]!;
      const xt = vw[t - j - 1]!;
      const wa = dot(w, wAt, a, 0, D);
      dbeta[kvBase + t] = dbeta[kvBase + t]! - xt * wa;
      for (let d = 0; d < D; d++) {
        dw[wAt + d] = dw[wAt + d]! - bt * (xt * a[d]! + wa * states[sAt + d]!);
        a[d] = a[d]! - bt * wa * w[wAt + d]!;
      }
    }
    for (let d = 0; d < D; d++) dk[(kvBase + j) * D + d] = dk[(kvBase + j) * D + d]! + a[d]!;
  }
}

/**
 * U = H_{s+n-1} ... H_{s+1} H_s (row-major D x D) for the n factors from row s (a kv-head row index), built as
 * P_t = H_t P_{t-1} = P_{t-1} - beta_t w_t y_t^T with y_t = P_{t-1}^T w_t (kept in ys, indexed like w).
 */
function chunkProduct(x: Walk, U: Float64Array, ys: Float64Array, s: number): void {
  const { w, beta, D } = x;
  const n = WALK_CHUNK;
  U.fill(0, 0, D * D);
  for (let d = 0; d < D; d++) U[d * D + d] = 1;
  for (let t = s; t < s + n; t++) {
    const wAt = t * D;
    for (let c = 0; c < D; c++) {
      let y = 0;
      for (let a = 0; a < D; a++) y += U[a * D + c]! * w[wAt + a]!;
      ys[wAt + c] = y;
    }
    for (let a = 0; a < D; a++) {
      const f = beta[t]! * w[wAt + a]!;
      for (let c = 0; c < D; c++) U[a * D + c] = U[a * D + c]! - f * ys[wAt + c]!;
    }
  }
}

/**
 * The adjoint of chunkProduct given dU. With U = A_t H_t P_{t-1} (A_t = H_e ... H_{t+1}), dH_t = X_t P_{t-1}^T
 * where X_t = A_t^T dU, swept downwards from X_e = dU by X_{t-1} = H_t X_t. For H_t = I - beta w w^T:
 * dbeta_t -= w^T X y_t and dw_t -= beta (X y_t + P_{t-1} X^T w), the last a walk of X^T w up through H_s .. H_{t-1}.
 */
function chunkProductBackward(x: Walk, g: WalkGrads, dU: Float64Array, ys: Float64Array, s: number): void {
  const { w, beta, D } = x;
  const { dw, dbeta } = g;
  const n = WALK_CHUNK;
  const X = Float64Array.from(dU.subarray(0, D * D));
  const xy = new Float64Array(D);
  const xw = new Float64Array(D);
  const v = new Float64Array(D);
  for (let t = s + n - 1; t >= s; t--) {
    const wAt = t * D;
    const bt = beta[t]!;
    for (let a = 0; a < D; a++) xy[a] = dot(X, a * D, ys, wAt, D);
    xw.fill(0);
    for (let a = 0; a < D; a++) for (let c = 0; c < D; c++) xw[c] = xw[c]! + X[a * D + c]! * w[wAt + a]!;
    dbeta[t] = dbeta[t]! - dot(w, wAt, xy, 0, D);
    v.set(xw);
    for (let u = s; u < t; u++) applyFactor(v, 0, w, u * D, beta[u]!, D);
    for (let a = 0; a < D; a++) dw[wAt + a] = dw[wAt + a]! - bt * (xy[a]! + v[a]!);
    for (let a = 0; a < D; a++) {
      const f = bt * w[wAt + a]!;
      for (let c = 0; c < D; c++) X[a * D + c] = X[a * D + c]! - f * xw[c]!;
    }
  }
}
