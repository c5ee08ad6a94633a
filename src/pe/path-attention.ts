/**
 * The PaTH attention core for given factors (see path.ts for the encoding and its factor network): logits
 * scale * q_p^T H_p ... H_{j+1} k_j with H_t = I - beta_t w_t w_t^T, and their backward to q, k, w and beta.
 *
 * Algorithm: inside its own chunk of PATH_CHUNK positions, each query walks back over the keys, carrying r = q_p
 * and applying one factor per step (r <- r - beta_t (w_t . r) w_t); the logits against earlier chunks are gemms of
 * the walk states with the keys carried to their chunk's end, the states moved back over a chunk by its dense
 * D x D product (see pathAttention). The backward has the same split: the intra-chunk walk is replayed and run
 * adjoint, the cross-chunk part is differentiated through its gemms and then through the chunk products and the
 * carried keys back to every w_t and beta_t. The softmax, P V and their backward run on the backend's attention over explicit scores.
 * The hot loops are plain functions of their arguments (not closures), so V8 keeps arrays and sizes in registers;
 * the *Pair variants run two neighbouring queries or keys side by side so w, k and their gradients load once.
 */
import type { AttentionShape, Backend } from '../backend/backend.ts';
import { asDtype, allocate, type FloatArray } from '../tensor.ts';
import type { AttendContext } from './encoding.ts';
import { ScratchPool, type ExplicitHooks } from '../backend/score-attention.ts';
import { gemmFor } from '../backend/reference.ts';

/** The Householder-like factors of one call: w [B, Hkv, Lk, D] and beta [B, Hkv, Lk]. */
export interface PathFactors {
  w: Float64Array;
  beta: Float64Array;
}

export interface PathCoreGrads {
  dq: FloatArray;
  dk: FloatArray;
  dv: FloatArray;
  dw: Float64Array;
  dbeta: Float64Array;
}

/**
 * The attention itself, given the factors (exported so tests can set w and beta directly, e.g. beta = 0).
 * Causal; query row i sits at position i + queryOffset, which must be a key position. The softmax, P V and their
 * backward run on backend.scoreAttention (its gemms for fp32, plain fp64 loops otherwise); the walks
 * below produce the logits and turn dLogits into dq, dk, dw and dbeta.
 */
export function pathAttention(
  shape: AttentionShape,
  queryOffset: number,
  qInput: FloatArray,
  kInput: FloatArray,
  v: FloatArray,
  factors: PathFactors,
  scale: number,
  backend: Backend,
  pool?: ScratchPool,
): { out: FloatArray; backward(dOut: FloatArray): PathCoreGrads } {
  const { heads: H, kvHeads: Hkv, lq, lk, headDim: D } = shape;
  const { w, beta } = factors;
  const work = qInput instanceof Float32Array && kInput instanceof Float32Array ? 'float32' : 'float64';
  const q = asDtype(qInput, work);
  const k = asDtype(kInput, work);
  const ctx: AttendContext = { backend, shape, causal: true, queryOffset };
  const r = new Float64Array(D);
  const r2 = new Float64Array(D);
  let dw = new Float64Array(0);
  let dbeta = new Float64Array(0);

  const gemm = gemmFor(ctx.backend, q);
  const zs = allocate(work, lq * D); // per query: its walk state at the end of the chunk being scanned
  const zNext = allocate(work, lq * D);
  const lastChunk = Math.floor((queryOffset + lq - 1) / PATH_CHUNK);
  // Per (batch, kv head), every key k_j carried to the end of its chunk (kHat, shared by the heads of a group and
  // kept for the backward), and per (batch, head) the walk states zs as the walk leaves them (kept for the backward).
  const kHatAll = allocate(work, lastChunk > 0 ? shape.batch * Hkv * lk * D : 0);
  const zsKeep = allocate(work, lastChunk > 0 ? shape.batch * H * lq * D : 0);
  // Per (batch, kv head) too, the dense products U_J of the chunks J = 1 .. lastChunk - 1 (uAll, at J D^2 of the
  // pair's lastChunk D^2) and the vectors y_t = (H_{t-1} ... H_s)^T w_t their backward needs (ys, indexed like w).
  const uAll = allocate(work, lastChunk > 1 ? shape.batch * Hkv * lastChunk * D * D : 0);
  const ys = new Float64Array(lastChunk > 1 ? w.length : 0);
  const uRows = new Float64Array(D * D);
  for (let bk = 0; lastChunk > 0 && bk < shape.batch * Hkv; bk++) {
    carryKeys(kHatAll.subarray(bk * lk * D), k, w, beta, bk * lk, lastChunk * PATH_CHUNK, D, r, r2);
    for (let J = 1; J < lastChunk; J++) {
      chunkProduct(uRows, ys, w, beta, bk * lk + J * PATH_CHUNK, PATH_CHUNK, D);
      uAll.set(uRows, (bk * lastChunk + J) * D * D);
    }
  }
  /**
   * Every logit of one (batch, head), by chunks of PATH_CHUNK positions. Within a query's own chunk it walks
   * (walkLogits, stopping at the chunk start, which leaves r at the end of the previous chunk). Across chunks,
   * logit(p, l) = r_p(e) . kHat_l, with r_p(e) the query's walk state at the end e of the key's chunk and
   * kHat_l = H_e ... H_{l+1} k_l (the factors are symmetric), so a whole chunk of keys is one gemm; moving every
   * state back over chunk J is one more, r^T <- r^T U_J with the dense D x D product U_J = H_e ... H_s of its factors.
   */
  const chunkedLogits = (S: FloatArray, qBase: number, kvBase: number): void => {
    walkLogits(S, q, qBase, k, w, beta, kvBase, lq, queryOffset, lk, D, scale, r, zs, r2);
    if (lastChunk === 0) return;
    zsKeep.set(zs, qBase);
    const kHat = kHatAll.subarray(kvBase * D);
    for (let J = lastChunk - 1; J >= 0; J--) {
      const r0 = Math.max(0, (J + 1) * PATH_CHUNK - queryOffset); // first query row past chunk J
      const m = lq - r0;
      const s0 = J * PATH_CHUNK;
      const width = Math.min(lk, s0 + PATH_CHUNK) - s0;
      const z = zs.subarray(r0 * D);
      gemm(false, true, m, width, D, scale, z, D, kHat.subarray(s0 * D), D, 0, S.subarray(r0 * lk + s0), lk);
      if (J === 0) break;
      const u = uAll.subarray(((kvBase / lk) * lastChunk + J) * D * D);
      gemm(false, false, m, D, D, 1, z, D, u, D, 0, zNext, D);
      z.set(zNext.subarray(0, m * D));
    }
  };

  /**
   * The backward of chunkedLogits for one (batch, head), the same split: the cross-chunk logits are differentiated
   * through their gemms, the intra-chunk ones through the walk. From the walk states zs and carried keys kHat
   * the forward kept, the chain Z_{J-1} = Z_J U_J is recomputed first (every Z_J kept). Then, chunk by chunk upwards, dZ_J = scale dS_J kHat_J + dZ_{J-1} U_J^T, dU_J = Z_J^T dZ_{J-1} and
   * dkHat_J = scale dS_J^T Z_J (gemms); dU_J and dkHat go back to w and beta (and k) by the adjoints of chunkProduct
   * and carryKeys, and the final dZ rows start each query's intra-chunk adjoint (walkBackward), which ends in dq.
   */
  const chunkedBackward = (dS: FloatArray, qBase: number, kvBase: number, dq: FloatArray, dk: FloatArray): void => {
    const b = backScratch();
    if (lastChunk > 0) {
      zs.set(zsKeep.subarray(qBase, qBase + lq * D));
      const kHat = kHatAll.subarray(kvBase * D);
      // Forward chain, chunks downwards: Z_J (rows r0(J) ..) stored from zOffset[J].
      let zAt = 0;
      for (let J = lastChunk - 1; J >= 0; J--) {
        const r0 = Math.max(0, (J + 1) * PATH_CHUNK - queryOffset);
        const m = lq - r0;
        const z = zs.subarray(r0 * D);
        b.zOffset[J] = zAt;
        b.zStore.set(z.subarray(0, m * D), zAt);
        zAt += m * D;
        if (J === 0) break;
        gemm(false, false, m, D, D, 1, z, D, uAll.subarray(((kvBase / lk) * lastChunk + J) * D * D), D, 0, zNext, D);
        z.set(zNext.subarray(0, m * D));
      }
      // Backward, chunks upwards. Rows of dZ below r0(J) are final once chunk J is reached: they belong to the
      // queries of chunk J, whose walk started from Z_{J-1}.
      for (let J = 0; J < lastChunk; J++) {
        const r0 = Math.max(0, (J + 1) * PATH_CHUNK - queryOffset);
        const m = lq - r0;
        const s0 = J * PATH_CHUNK;
        const width = Math.min(lk, s0 + PATH_CHUNK) - s0;
        const zJ = b.zStore.subarray(b.zOffset[J]!);
        const dSJ = dS.subarray(r0 * lk + s0);
        const dzJ = b.dz.subarray(r0 * D);
        const kJ = kHat.subarray(s0 * D);
        if (J === 0) {
          gemm(false, false, m, D, width, scale, dSJ, lk, kJ, D, 0, dzJ, D);
        } else {
          gemm(true, false, D, D, m, 1, zJ, D, dzJ, D, 0, b.dU, D);
          const uJ = uAll.subarray(((kvBase / lk) * lastChunk + J) * D * D);
          gemm(false, true, m, D, D, 1, dzJ, D, uJ, D, 0, b.tmp, D);
          gemm(false, false, m, D, width, scale, dSJ, lk, kJ, D, 1, b.tmp, D);
          dzJ.set(b.tmp.subarray(0, m * D));
          chunkProductBackward(b.dU, ys, w, beta, kvBase + s0, width, D, dw, dbeta, b.x, b.v1, b.v2, b.v3, b.v4);
        }
        gemm(true, false, width, D, m, scale, dSJ, lk, zJ, D, 0, b.dkHat.subarray(s0 * D), D);
      }
      carryKeysBackward(
        b.dkHat,
        k,
        w,
        beta,
        kvBase,
        lastChunk * PATH_CHUNK,
        D,
        dk,
        dw,
        dbeta,
        b.states,
        b.v1,
        b.v2,
        b.states2,
        b.v3,
        b.vw2,
      );
    }
    walkBackward(
      dS,
      dq,
      dk,
      q,
      qBase,
      k,
      w,
      beta,
      dw,
      dbeta,
      kvBase,
      lq,
      queryOffset,
      lk,
      D,
      scale,
      b.walk,
      b.wr,
      b.a,
      b.dz,
      b.walk2,
      b.wr2,
      b.a2,
    );
  };
  // Backward scratch, made on the first backward (an evaluation forward never needs it).
  let scratch: ReturnType<typeof makeBackScratch> | null = null;
  const backScratch = () => (scratch ??= makeBackScratch(work, lq, lk, D, lastChunk));

  const hooks: ExplicitHooks = {
    ownScores: true,
    // Each query walks back over the keys carrying r = q_p, applying one factor per step:
    // logit(p, l) = scale r . k_l, then r <- r - beta_l (w_l . r) w_l.
    logits: (b, h, kh, S) => chunkedLogits(S, (b * H + h) * lq * D, (b * Hkv + kh) * lk),
    backward: (b, h, kh, dS, dq, dk) => {
      chunkedBackward(dS, (b * H + h) * lq * D, (b * Hkv + kh) * lk, dq, dk);
      return 0; // dq and dk are complete: no plain q.k term
    },
  };
  const core = ctx.backend.scoreAttention(
    ctx.shape,
    q,
    k,
    v,
    { causal: ctx.causal, queryOffset: ctx.queryOffset, scale, scratch: pool },
    hooks,
  );

  const backward = (dOut: FloatArray): PathCoreGrads => {
    dw = new Float64Array(w.length);
    dbeta = new Float64Array(beta.length);
    const g = core.backward(dOut);
    return { dq: g.dq, dk: g.dk, dv: g.dv, dw, dbeta };
  };
  return { out: core.out, backward };
}

/** Positions per chunk of the chunked logits (pathAttention). Windows up to this length walk only. */
export const PATH_CHUNK = 32;

/**
 * Each query walks back over the keys of its own chunk carrying r = q_p, applying one factor per step:
 * logit(p, l) = scale r . k_l, then r <- r - beta_l (w_l . r) w_l. The state after the chunk's first factor (the
 * walk state at the end of the previous chunk) is left in row i of zs. A plain function of its arguments (not a
 * closure), so V8 keeps the arrays and sizes in registers.
 */
function walkLogits(
  S: FloatArray,
  q: FloatArray,
  qBase: number,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  kvBase: number,
  lq: number,
  queryOffset: number,
  lk: number,
  D: number,
  scale: number,
  r: Float64Array,
  zs: FloatArray,
  r2: Float64Array,
): void {
  for (let i = 0; i < lq; i++) {
    const p = i + queryOffset;
    if (i + 1 < lq && (p + 1) % PATH_CHUNK !== 0) {
      // The next query shares this one's chunk: both in one pass.
      walkLogitsPair(S, q, qBase, k, w, beta, kvBase, i, queryOffset, lk, D, scale, r, r2, zs);
      i++;
      continue;
    }
    const start = p - (p % PATH_CHUNK);
    const row = i * lk;
    // One pass per step: r <- r - c w_l also forms the next step's r . k_{l-1} and r . w_{l-1}.
    let rk = 0;
    let rw = 0;
    const pAt = (kvBase + p) * D;
    for (let d = 0; d < D; d++) {
      const x = q[qBase + i * D + d]!;
      r[d] = x;
      rk += x * k[pAt + d]!;
      rw += x * w[pAt + d]!;
    }
    for (let l = p; l >= start; l--) {
      S[row + l] = scale * rk;
      if (l === 0) break;
      const at = (kvBase + l) * D;
      const c = beta[kvBase + l]! * rw;
      if (l === start) {
        for (let d = 0; d < D; d++) r[d] = r[d]! - c * w[at + d]!;
        break;
      }
      let nk = 0;
      let nw = 0;
      for (let d = 0; d < D; d++) {
        const x = r[d]! - c * w[at + d]!;
        r[d] = x;
        nk += x * k[at - D + d]!;
        nw += x * w[at - D + d]!;
      }
      rk = nk;
      rw = nw;
    }
    for (let d = 0; d < D; d++) zs[i * D + d] = r[d]!;
  }
}

/**
 * walkLogits for two neighbouring queries of one chunk (rows i and i + 1, positions p and p + 1): query p + 1's
 * first step alone, then both walks side by side, so that each pass loads w and k once for both.
 */
function walkLogitsPair(
  S: FloatArray,
  q: FloatArray,
  qBase: number,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  kvBase: number,
  i: number,
  queryOffset: number,
  lk: number,
  D: number,
  scale: number,
  r: Float64Array,
  r2: Float64Array,
  zs: FloatArray,
): void {
  const p = i + queryOffset;
  const p2 = p + 1;
  const start = p - (p % PATH_CHUNK);
  const row = i * lk;
  const row2 = row + lk;
  const pAt = (kvBase + p) * D;
  const p2At = pAt + D;
  let rk2 = 0;
  let rw2 = 0;
  for (let d = 0; d < D; d++) {
    const x = q[qBase + (i + 1) * D + d]!;
    r2[d] = x;
    rk2 += x * k[p2At + d]!;
    rw2 += x * w[p2At + d]!;
  }
  S[row2 + p2] = scale * rk2;
  const c0 = beta[kvBase + p2]! * rw2;
  rk2 = 0;
  rw2 = 0;
  let rk = 0;
  let rw = 0;
  for (let d = 0; d < D; d++) {
    const x2 = r2[d]! - c0 * w[p2At + d]!;
    r2[d] = x2;
    const kd = k[pAt + d]!;
    const wd = w[pAt + d]!;
    rk2 += x2 * kd;
    rw2 += x2 * wd;
    const x = q[qBase + i * D + d]!;
    r[d] = x;
    rk += x * kd;
    rw += x * wd;
  }
  for (let l = p; l >= start; l--) {
    S[row + l] = scale * rk;
    S[row2 + l] = scale * rk2;
    if (l === 0) break;
    const at = (kvBase + l) * D;
    const c1 = beta[kvBase + l]! * rw;
    const c2 = beta[kvBase + l]! * rw2;
    if (l === start) {
      for (let d = 0; d < D; d++) {
        r[d] = r[d]! - c1 * w[at + d]!;
        r2[d] = r2[d]! - c2 * w[at + d]!;
      }
      break;
    }
    let nk1 = 0;
    let nw1 = 0;
    let nk2 = 0;
    let nw2 = 0;
    for (let d = 0; d < D; d++) {
      const wd = w[at + d]!;
      const kp = k[at - D + d]!;
      const wp = w[at - D + d]!;
      const x1 = r[d]! - c1 * wd;
      const x2 = r2[d]! - c2 * wd;
      r[d] = x1;
      r2[d] = x2;
      nk1 += x1 * kp;
      nw1 += x1 * wp;
      nk2 += x2 * kp;
      nw2 += x2 * wp;
    }
    rk = nk1;
    rw = nw1;
    rk2 = nk2;
    rw2 = nw2;
  }
  for (let d = 0; d < D; d++) {
    zs[i * D + d] = r[d]!;
    zs[(i + 1) * D + d] = r2[d]!;
  }
}

/**
 * The backward of every query's intra-chunk walk for one (batch, head): replay the walk over the query's own chunk
 * keeping every state r_l (walk) and w_l . r_l (wr), then run the adjoint a = dLoss/dr_l in position order, where
 * r_{l-1} = H_l r_l and logit_l = scale r_l . k_l, accumulating dq, dk (rows of this kv head) and dw, dbeta
 * (indexed like w, beta). The adjoint starts from dz (row i: dLoss/dzs_i, from the cross-chunk backward) for the
 * queries past the first chunk, from 0 in the first chunk.
 */
function walkBackward(
  dS: FloatArray,
  dq: FloatArray,
  dk: FloatArray,
  q: FloatArray,
  qBase: number,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  dw: Float64Array,
  dbeta: Float64Array,
  kvBase: number,
  lq: number,
  queryOffset: number,
  lk: number,
  D: number,
  scale: number,
  walk: Float64Array,
  wr: Float64Array,
  a: Float64Array,
  dz: FloatArray,
  walk2: Float64Array,
  wr2: Float64Array,
  a2: Float64Array,
): void {
  for (let i = 0; i < lq; i++) {
    const p = i + queryOffset;
    if (i + 1 < lq && (p + 1) % PATH_CHUNK !== 0) {
      // The next query shares this one's chunk: both in one pass.
      walkBackwardPair(
        dS,
        dq,
        dk,
        q,
        qBase,
        k,
        w,
        beta,
        dw,
        dbeta,
        kvBase,
        i,
        queryOffset,
        lk,
        D,
        scale,
        walk,
        walk2,
        wr,
        wr2,
        a,
        a2,
        dz,
      );
      i++;
      continue;
    }
    const start = p - (p % PATH_CHUNK);
    const row = i * lk;
    for (let d = 0; d < D; d++) walk[p * D + d] = q[qBase + i * D + d]!;
    // Replay, one pass per step: r_{l-1} = r_l - c w_l also forms w_{l-1} . r_{l-1}.
    let rw = p > 0 ? dot4(walk, p * D, w, (kvBase + p) * D, D) : 0;
    for (let l = p; l > 0; l--) {
      wr[l] = rw;
      if (l === start) break; // the state below the chunk is zs, whose adjoint is dz
      const wAt = (kvBase + l) * D;
      const rAt = l * D;
      const c = beta[kvBase + l]! * rw;
      let next = 0;
      for (let d = 0; d < D; d++) {
        const x = walk[rAt + d]! - c * w[wAt + d]!;
        walk[rAt - D + d] = x;
        next += x * w[wAt - D + d]!;
      }
      rw = next;
    }
    if (start > 0) for (let d = 0; d < D; d++) a[d] = dz[i * D + d]!;
    else a.fill(0);
    let wa = start > 0 ? dot4(a, 0, w, (kvBase + start) * D, D) : 0; // w_l . a for the factor of step l
    for (let l = start; l <= p; l++) {
      const at = (kvBase + l) * D;
      const rAt = l * D;
      const g = scale * dS[row + l]!;
      const nextAt = l < p ? at + D : at; // w_{l+1} for the next step's w . a (read, unused, at the last step)
      let next = 0;
      if (l > 0) {
        const bl = beta[kvBase + l]!;
        const rw = wr[l]!;
        dbeta[kvBase + l]! -= rw * wa;
        const bwa = bl * wa;
        const brw = bl * rw;
        // One pass: the factor's adjoint (dw, a through H_l), the logit's (a += g k_l, dk_l += g r_l), and the
        // next step's w_{l+1} . a.
        for (let d = 0; d < D; d++) {
          const ad = a[d]!;
          const rd = walk[rAt + d]!;
          dw[at + d]! -= brw * ad + bwa * rd;
          const x = ad - bwa * w[at + d]! + g * k[at + d]!;
          a[d] = x;
          next += x * w[nextAt + d]!;
          dk[rAt + d] = dk[rAt + d]! + g * rd;
        }
      } else {
        for (let d = 0; d < D; d++) {
          const x = a[d]! + g * k[at + d]!;
          a[d] = x;
          next += x * w[nextAt + d]!;
          dk[rAt + d] = dk[rAt + d]! + g * walk[rAt + d]!;
        }
      }
      wa = next;
    }
    for (let d = 0; d < D; d++) dq[i * D + d] = dq[i * D + d]! + a[d]!;
  }
}

/**
 * walkBackward for two neighbouring queries of one chunk (rows i and i + 1, positions p and p + 1): the same
 * replay and adjoint, run side by side so that each pass loads w, k, dw and dk once for both. Query p + 1's own
 * first factor is replayed, and its own last step run, alone.
 */
function walkBackwardPair(
  dS: FloatArray,
  dq: FloatArray,
  dk: FloatArray,
  q: FloatArray,
  qBase: number,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  dw: Float64Array,
  dbeta: Float64Array,
  kvBase: number,
  i: number,
  queryOffset: number,
  lk: number,
  D: number,
  scale: number,
  walk: Float64Array,
  walk2: Float64Array,
  wr: Float64Array,
  wr2: Float64Array,
  a: Float64Array,
  a2: Float64Array,
  dz: FloatArray,
): void {
  const p = i + queryOffset;
  const p2 = p + 1;
  const start = p - (p % PATH_CHUNK);
  const row = i * lk;
  const row2 = row + lk;
  for (let d = 0; d < D; d++) {
    walk[p * D + d] = q[qBase + i * D + d]!;
    walk2[p2 * D + d] = q[qBase + (i + 1) * D + d]!;
  }
  // Replay: query p + 1 through its factor p + 1 alone, then both down to the chunk start.
  let rw2 = dot4(walk2, p2 * D, w, (kvBase + p2) * D, D);
  wr2[p2] = rw2;
  {
    const wAt = (kvBase + p2) * D;
    const c = beta[kvBase + p2]! * rw2;
    let next = 0;
    for (let d = 0; d < D; d++) {
      const x = walk2[p2 * D + d]! - c * w[wAt + d]!;
      walk2[p * D + d] = x;
      next += x * w[wAt - D + d]!;
    }
    rw2 = next;
  }
  let rw = p > 0 ? dot4(walk, p * D, w, (kvBase + p) * D, D) : 0;
  for (let l = p; l > 0; l--) {
    wr[l] = rw;
    wr2[l] = rw2;
    if (l === start) break;
    const wAt = (kvBase + l) * D;
    const rAt = l * D;
    const c1 = beta[kvBase + l]! * rw;
    const c2 = beta[kvBase + l]! * rw2;
    let n1 = 0;
    let n2 = 0;
    for (let d = 0; d < D; d++) {
      const wd = w[wAt + d]!;
      const wp = w[wAt - D + d]!;
      const x1 = walk[rAt + d]! - c1 * wd;
      const x2 = walk2[rAt + d]! - c2 * wd;
      walk[rAt - D + d] = x1;
      walk2[rAt - D + d] = x2;
      n1 += x1 * wp;
      n2 += x2 * wp;
    }
    rw = n1;
    rw2 = n2;
  }
  // Adjoint: both from the chunk start to p, then query p + 1's step p + 1 alone.
  if (start > 0) {
    for (let d = 0; d < D; d++) {
      a[d] = dz[i * D + d]!;
      a2[d] = dz[(i + 1) * D + d]!;
    }
  } else {
    a.fill(0);
    a2.fill(0);
  }
  let wa = start > 0 ? dot4(a, 0, w, (kvBase + start) * D, D) : 0;
  let wa2 = start > 0 ? dot4(a2, 0, w, (kvBase + start) * D, D) : 0;
  for (let l = start; l <= p; l++) {
    const at = (kvBase + l) * D;
    const rAt = l * D;
    const nextAt = at + D; // w_{l+1}, l + 1 <= p + 1
    const g1 = scale * dS[row + l]!;
    const g2 = scale * dS[row2 + l]!;
    let n1 = 0;
    let n2 = 0;
    if (l > 0) {
      const bl = beta[kvBase + l]!;
      const rw1 = wr[l]!;
      const rw2l = wr2[l]!;
      dbeta[kvBase + l]! -= rw1 * wa + rw2l * wa2;
      const bwa1 = bl * wa;
      const brw1 = bl * rw1;
      const bwa2 = bl * wa2;
      const brw2 = bl * rw2l;
      for (let d = 0; d < D; d++) {
        const wd = w[at + d]!;
        const kd = k[at + d]!;
        const wn = w[nextAt + d]!;
        const a1d = a[d]!;
        const a2d = a2[d]!;
        const r1 = walk[rAt + d]!;
        const r2 = walk2[rAt + d]!;
        dw[at + d]! -= brw1 * a1d + bwa1 * r1 + (brw2 * a2d + bwa2 * r2);
        const x1 = a1d - bwa1 * wd + g1 * kd;
        const x2 = a2d - bwa2 * wd + g2 * kd;
        a[d] = x1;
        a2[d] = x2;
        n1 += x1 * wn;
        n2 += x2 * wn;
        dk[rAt + d] = dk[rAt + d]! + (g1 * r1 + g2 * r2);
      }
    } else {
      for (let d = 0; d < D; d++) {
        const kd = k[at + d]!;
        const wn = w[nextAt + d]!;
        const x1 = a[d]! + g1 * kd;
        const x2 = a2[d]! + g2 * kd;
        a[d] = x1;
        a2[d] = x2;
        n1 += x1 * wn;
        n2 += x2 * wn;
        dk[rAt + d] = dk[rAt + d]! + (g1 * walk[rAt + d]! + g2 * walk2[rAt + d]!);
      }
    }
    wa = n1;
    wa2 = n2;
  }
  {
    const at = (kvBase + p2) * D;
    const rAt = p2 * D;
    const g2 = scale * dS[row2 + p2]!;
    const bl = beta[kvBase + p2]!;
    const rw2l = wr2[p2]!;
    dbeta[kvBase + p2]! -= rw2l * wa2;
    const bwa2 = bl * wa2;
    const brw2 = bl * rw2l;
    for (let d = 0; d < D; d++) {
      const a2d = a2[d]!;
      const r2 = walk2[rAt + d]!;
      dw[at + d]! -= brw2 * a2d + bwa2 * r2;
      a2[d] = a2d - bwa2 * w[at + d]! + g2 * k[at + d]!;
      dk[rAt + d] = dk[rAt + d]! + g2 * r2;
    }
  }
  for (let d = 0; d < D; d++) {
    dq[i * D + d] = dq[i * D + d]! + a[d]!;
    dq[(i + 1) * D + d] = dq[(i + 1) * D + d]! + a2[d]!;
  }
}

/** kHat_j = H_e ... H_{j+1} k_j for the keys j < end, e = the last position of j's chunk. */
function carryKeys(
  kHat: FloatArray,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  kvBase: number,
  end: number,
  D: number,
  v: Float64Array,
  v2: Float64Array,
): void {
  for (let j = 0; j < end; j++) {
    const e = j - (j % PATH_CHUNK) + PATH_CHUNK - 1;
    if (j + 2 <= e) {
      // Key j + 1 is carried by factors too: both in one pass.
      carryKeysPair(kHat, k, w, beta, kvBase, j, e, D, v, v2);
      j++;
      continue;
    }
    // One pass per step: v <- v - c w_t also forms the next step's w_{t+1} . v.
    const firstAt = (kvBase + Math.min(j + 1, e)) * D;
    let vw = 0;
    for (let d = 0; d < D; d++) {
      const x = k[(kvBase + j) * D + d]!;
      v[d] = x;
      vw += x * w[firstAt + d]!;
    }
    for (let t = j + 1; t <= e; t++) {
      const wAt = (kvBase + t) * D;
      const nextAt = t < e ? wAt + D : wAt;
      const c = beta[kvBase + t]! * vw;
      let next = 0;
      for (let d = 0; d < D; d++) {
        const x = v[d]! - c * w[wAt + d]!;
        v[d] = x;
        next += x * w[nextAt + d]!;
      }
      vw = next;
    }
    for (let d = 0; d < D; d++) kHat[j * D + d] = v[d]!;
  }
}

/** carryKeys for the keys j and j + 1 < e: key j's first factor alone, then both side by side. */
function carryKeysPair(
  kHat: FloatArray,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  kvBase: number,
  j: number,
  e: number,
  D: number,
  v: Float64Array,
  v2: Float64Array,
): void {
  const firstAt = (kvBase + j + 1) * D;
  let x1 = 0;
  for (let d = 0; d < D; d++) {
    const y = k[(kvBase + j) * D + d]!;
    v[d] = y;
    x1 += y * w[firstAt + d]!;
  }
  const c0 = beta[kvBase + j + 1]! * x1;
  x1 = 0;
  let x2 = 0;
  for (let d = 0; d < D; d++) {
    const y1 = v[d]! - c0 * w[firstAt + d]!;
    v[d] = y1;
    const y2 = k[(kvBase + j + 1) * D + d]!;
    v2[d] = y2;
    const wn = w[firstAt + D + d]!;
    x1 += y1 * wn;
    x2 += y2 * wn;
  }
  for (let t = j + 2; t <= e; t++) {
    const wAt = (kvBase + t) * D;
    const nextAt = t < e ? wAt + D : wAt;
    const c1 = beta[kvBase + t]! * x1;
    const c2 = beta[kvBase + t]! * x2;
    let n1 = 0;
    let n2 = 0;
    for (let d = 0; d < D; d++) {
      const wd = w[wAt + d]!;
      const wn = w[nextAt + d]!;
      const y1 = v[d]! - c1 * wd;
      const y2 = v2[d]! - c2 * wd;
      v[d] = y1;
      v2[d] = y2;
      n1 += y1 * wn;
      n2 += y2 * wn;
    }
    x1 = n1;
    x2 = n2;
  }
  for (let d = 0; d < D; d++) {
    kHat[j * D + d] = v[d]!;
    kHat[(j + 1) * D + d] = v2[d]!;
  }
}

/**
 * U = H_{s+n-1} ... H_{s+1} H_s (row-major D x D) for the n factors from position s (kv-head row index), built as
 * P_t = H_t P_{t-1} = P_{t-1} - beta_t w_t y_t^T with y_t = P_{t-1}^T w_t, which is kept in ys (indexed like w).
 */
function chunkProduct(
  U: Float64Array,
  ys: Float64Array,
  w: Float64Array,
  beta: Float64Array,
  s: number,
  n: number,
  D: number,
): void {
  U.fill(0);
  for (let d = 0; d < D; d++) U[d * D + d] = 1;
  for (let c = 0; c < D; c++) ys[s * D + c] = w[s * D + c]!; // P_{s-1} = I
  for (let t = s; t < s + n; t++) {
    const wAt = t * D;
    const bt = beta[t]!;
    if (t === s + n - 1) {
      for (let a = 0; a < D; a++) {
        const f = bt * w[wAt + a]!;
        for (let c = 0; c < D; c++) U[a * D + c]! -= f * ys[wAt + c]!;
      }
      break;
    }
    // One pass: each row of P_t = P_{t-1} - beta w y_t^T also adds its share of y_{t+1} = P_t^T w_{t+1}.
    const nAt = wAt + D;
    for (let c = 0; c < D; c++) ys[nAt + c] = 0;
    let a = 0;
    for (; a + 2 <= D; a += 2) {
      // Two rows per pass halve the loads and stores of y.
      const f0 = bt * w[wAt + a]!;
      const f1 = bt * w[wAt + a + 1]!;
      const wn0 = w[nAt + a]!;
      const wn1 = w[nAt + a + 1]!;
      const r0 = a * D;
      const r1 = r0 + D;
      for (let c = 0; c < D; c++) {
        const yc = ys[wAt + c]!;
        const x0 = U[r0 + c]! - f0 * yc;
        const x1 = U[r1 + c]! - f1 * yc;
        U[r0 + c] = x0;
        U[r1 + c] = x1;
        ys[nAt + c]! += wn0 * x0 + wn1 * x1;
      }
    }
    for (; a < D; a++) {
      const f = bt * w[wAt + a]!;
      const wn = w[nAt + a]!;
      for (let c = 0; c < D; c++) {
        const x = U[a * D + c]! - f * ys[wAt + c]!;
        U[a * D + c] = x;
        ys[nAt + c]! += wn * x;
      }
    }
  }
}

/**
 * The adjoint of U = H_e ... H_s given dU: with U = A_t H_t P_{t-1} (A_t = H_e ... H_{t+1}), dH_t = X_t P_{t-1}^T
 * where X_t = A_t^T dU, swept downwards from X_e = dU by X_{t-1} = H_t X_t (H_t is symmetric). For
 * H_t = I - beta w w^T: dbeta_t -= w^T dH_t w = w . (X y_t), dw_t -= beta (dH_t + dH_t^T) w
 * = beta (X y_t + P_{t-1} X^T w), with y_t = P_{t-1}^T w_t from chunkProduct; P_{t-1} X^T w is a walk of X^T w up
 * through H_s, ..., H_{t-1} (no partial product is kept).
 */
function chunkProductBackward(
  dU: FloatArray,
  ys: Float64Array,
  w: Float64Array,
  beta: Float64Array,
  s: number,
  n: number,
  D: number,
  dw: Float64Array,
  dbeta: Float64Array,
  X: Float64Array,
  xwA: Float64Array,
  xwB: Float64Array,
  xy: Float64Array,
  v: Float64Array,
): void {
  for (let j = 0; j < D * D; j++) X[j] = dU[j]!;
  // X_{t-1} = X_t - beta_t w_t (X_t^T w_t)^T is applied lazily, inside the next factor's pass over X.
  let xw = xwA;
  let xwPrev = xwB;
  xwPrev.fill(0);
  let prevAt = -1;
  let prevBeta = 0;
  for (let t = s + n - 1; t >= s; t--) {
    const wAt = t * D;
    for (let c = 0; c < D; c++) xw[c] = 0;
    let wxy = 0;
    let a = 0;
    // Two rows per pass halve the loads and stores of xw, xwPrev and y.
    for (; a + 2 <= D; a += 2) {
      const wa0 = w[wAt + a]!;
      const wa1 = w[wAt + a + 1]!;
      const f0 = prevAt < 0 ? 0 : prevBeta * w[prevAt + a]!;
      const f1 = prevAt < 0 ? 0 : prevBeta * w[prevAt + a + 1]!;
      const r0 = a * D;
      const r1 = r0 + D;
      let acc0 = 0;
      let acc1 = 0;
      for (let c = 0; c < D; c++) {
        const xp = xwPrev[c]!;
        const yc = ys[wAt + c]!;
        const x0 = X[r0 + c]! - f0 * xp;
        const x1 = X[r1 + c]! - f1 * xp;
        X[r0 + c] = x0;
        X[r1 + c] = x1;
        xw[c]! += x0 * wa0 + x1 * wa1;
        acc0 += x0 * yc;
        acc1 += x1 * yc;
      }
      xy[a] = acc0;
      xy[a + 1] = acc1;
      wxy += wa0 * acc0 + wa1 * acc1;
    }
    for (; a < D; a++) {
      const wa = w[wAt + a]!;
      const f = prevAt < 0 ? 0 : prevBeta * w[prevAt + a]!;
      let acc = 0;
      for (let c = 0; c < D; c++) {
        const x = X[a * D + c]! - f * xwPrev[c]!;
        X[a * D + c] = x;
        xw[c]! += x * wa;
        acc += x * ys[wAt + c]!;
      }
      xy[a] = acc;
      wxy += wa * acc;
    }
    const bt = beta[t]!;
    dbeta[t]! -= wxy;
    let vw = 0;
    for (let c = 0; c < D; c++) {
      v[c] = xw[c]!;
      vw += xw[c]! * w[s * D + c]!;
    }
    for (let u = s; u < t; u++) {
      const uAt = u * D;
      const c = beta[u]! * vw;
      let next = 0; // w_{u+1} . v, for the next step (w_t after the last: read, unused)
      for (let d = 0; d < D; d++) {
        const x = v[d]! - c * w[uAt + d]!;
        v[d] = x;
        next += x * w[uAt + D + d]!;
      }
      vw = next;
    }
    for (let a = 0; a < D; a++) dw[wAt + a]! -= bt * (xy[a]! + v[a]!);
    prevAt = wAt;
    prevBeta = bt;
    const swap = xw;
    xw = xwPrev;
    xwPrev = swap;
  }
}

/**
 * The adjoint of carryKeys given dkHat: per key, replay its carry (states before each factor in `states`, w . v in
 * vw), then run the adjoint down from dkHat_j to dk_j through H_e, ..., H_{j+1}, accumulating dw and dbeta.
 */
function carryKeysBackward(
  dkHat: FloatArray,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  kvBase: number,
  end: number,
  D: number,
  dk: FloatArray,
  dw: Float64Array,
  dbeta: Float64Array,
  states: Float64Array,
  a: Float64Array,
  vw: Float64Array,
  states2: Float64Array,
  a2: Float64Array,
  vw2: Float64Array,
): void {
  for (let j = 0; j < end; j++) {
    const e = j - (j % PATH_CHUNK) + PATH_CHUNK - 1;
    if (e === j) {
      // The last key of a chunk is carried by no factor: kHat_j = k_j.
      for (let d = 0; d < D; d++) dk[j * D + d] = dk[j * D + d]! + dkHat[j * D + d]!;
      continue;
    }
    if (j + 2 <= e) {
      // Key j + 1 is carried by factors too: both in one pass.
      carryKeysBackwardPair(dkHat, k, w, beta, kvBase, j, D, dk, dw, dbeta, states, states2, a, a2, vw, vw2);
      j++;
      continue;
    }
    // Replay (the state before each factor, and w_t . v), one pass per step as in walkBackward.
    const firstAt = (kvBase + j + 1) * D;
    let x = 0;
    for (let d = 0; d < D; d++) {
      const y = k[(kvBase + j) * D + d]!;
      states[d] = y;
      x += y * w[firstAt + d]!;
    }
    for (let t = j + 1; ; t++) {
      vw[t - j - 1] = x;
      if (t === e) break; // the carried key itself is not needed
      const wAt = (kvBase + t) * D;
      const vAt = (t - j - 1) * D;
      const c = beta[kvBase + t]! * x;
      let next = 0;
      for (let d = 0; d < D; d++) {
        const y = states[vAt + d]! - c * w[wAt + d]!;
        states[vAt + D + d] = y;
        next += y * w[wAt + D + d]!;
      }
      x = next;
    }
    const lastAt = (kvBase + e) * D;
    let wa = 0;
    for (let d = 0; d < D; d++) {
      const y = dkHat[j * D + d]!;
      a[d] = y;
      wa += y * w[lastAt + d]!;
    }
    for (let t = e; t > j; t--) {
      const wAt = (kvBase + t) * D;
      const vAt = (t - j - 1) * D;
      const prevAt = t - 1 > j ? wAt - D : wAt; // w_{t-1} for the next step's w . a (unused after the last)
      const xt = vw[t - j - 1]!;
      const bt = beta[kvBase + t]!;
      dbeta[kvBase + t]! -= xt * wa;
      const bx = bt * xt;
      const bwa = bt * wa;
      let next = 0;
      for (let d = 0; d < D; d++) {
        const ad = a[d]!;
        dw[wAt + d]! -= bx * ad + bwa * states[vAt + d]!;
        const y = ad - bwa * w[wAt + d]!;
        a[d] = y;
        next += y * w[prevAt + d]!;
      }
      wa = next;
    }
    for (let d = 0; d < D; d++) dk[j * D + d] = dk[j * D + d]! + a[d]!;
  }
}

/**
 * carryKeysBackward for the keys j and j + 1 of one chunk when both are carried by factors (j + 2 <= e): key j's
 * first factor alone, then both side by side, so that each pass loads w and dw once for both. States and w . v
 * are kept at the factor's place in the chunk.
 */
function carryKeysBackwardPair(
  dkHat: FloatArray,
  k: FloatArray,
  w: Float64Array,
  beta: Float64Array,
  kvBase: number,
  j: number,
  D: number,
  dk: FloatArray,
  dw: Float64Array,
  dbeta: Float64Array,
  states: Float64Array,
  states2: Float64Array,
  a: Float64Array,
  a2: Float64Array,
  vw: Float64Array,
  vw2: Float64Array,
): void {
  const e = j - (j % PATH_CHUNK) + PATH_CHUNK - 1;
  const cs = e + 1 - PATH_CHUNK; // the chunk's first position: factor t's slot is t - cs
  // Replay: key j through factor j + 1 alone, then both up to the chunk end.
  const firstAt = (kvBase + j + 1) * D;
  let x1 = 0;
  for (let d = 0; d < D; d++) {
    const y = k[(kvBase + j) * D + d]!;
    states[(j + 1 - cs) * D + d] = y;
    x1 += y * w[firstAt + d]!;
  }
  vw[j + 1 - cs] = x1;
  const c0 = beta[kvBase + j + 1]! * x1;
  x1 = 0;
  let x2 = 0;
  for (let d = 0; d < D; d++) {
    const y1 = states[(j + 1 - cs) * D + d]! - c0 * w[firstAt + d]!;
    states[(j + 2 - cs) * D + d] = y1;
    const y2 = k[(kvBase + j + 1) * D + d]!;
    states2[(j + 2 - cs) * D + d] = y2;
    const wn = w[firstAt + D + d]!;
    x1 += y1 * wn;
    x2 += y2 * wn;
  }
  for (let t = j + 2; ; t++) {
    vw[t - cs] = x1;
    vw2[t - cs] = x2;
    if (t === e) break;
    const wAt = (kvBase + t) * D;
    const vAt = (t - cs) * D;
    const c1 = beta[kvBase + t]! * x1;
    const c2 = beta[kvBase + t]! * x2;
    let n1 = 0;
    let n2 = 0;
    for (let d = 0; d < D; d++) {
      const wd = w[wAt + d]!;
      const wn = w[wAt + D + d]!;
      const y1 = states[vAt + d]! - c1 * wd;
      const y2 = states2[vAt + d]! - c2 * wd;
      states[vAt + D + d] = y1;
      states2[vAt + D + d] = y2;
      n1 += y1 * wn;
      n2 += y2 * wn;
    }
    x1 = n1;
    x2 = n2;
  }
  // Adjoint: both down to factor j + 2, then key j through factor j + 1 alone.
  const lastAt = (kvBase + e) * D;
  let wa1 = 0;
  let wa2 = 0;
  for (let d = 0; d < D; d++) {
    const y1 = dkHat[j * D + d]!;
    const y2 = dkHat[(j + 1) * D + d]!;
    a[d] = y1;
    a2[d] = y2;
    wa1 += y1 * w[lastAt + d]!;
    wa2 += y2 * w[lastAt + d]!;
  }
  for (let t = e; t > j + 1; t--) {
    const wAt = (kvBase + t) * D;
    const vAt = (t - cs) * D;
    const xt1 = vw[t - cs]!;
    const xt2 = vw2[t - cs]!;
    const bt = beta[kvBase + t]!;
    dbeta[kvBase + t]! -= xt1 * wa1 + xt2 * wa2;
    const bx1 = bt * xt1;
    const bwa1 = bt * wa1;
    const bx2 = bt * xt2;
    const bwa2 = bt * wa2;
    let n1 = 0;
    let n2 = 0;
    for (let d = 0; d < D; d++) {
      const wd = w[wAt + d]!;
      const wp = w[wAt - D + d]!; // w_{t-1}, t - 1 >= j + 1
      const a1d = a[d]!;
      const a2d = a2[d]!;
      dw[wAt + d]! -= bx1 * a1d + bwa1 * states[vAt + d]! + (bx2 * a2d + bwa2 * states2[vAt + d]!);
      const y1 = a1d - bwa1 * wd;
      const y2 = a2d - bwa2 * wd;
      a[d] = y1;
      a2[d] = y2;
      n1 += y1 * wp;
      n2 += y2 * wp;
    }
    wa1 = n1;
    wa2 = n2;
  }
  {
    const t = j + 1;
    const wAt = (kvBase + t) * D;
    const vAt = (t - cs) * D;
    const xt1 = vw[t - cs]!;
    const bt = beta[kvBase + t]!;
    dbeta[kvBase + t]! -= xt1 * wa1;
    const bx1 = bt * xt1;
    const bwa1 = bt * wa1;
    for (let d = 0; d < D; d++) {
      const a1d = a[d]!;
      dw[wAt + d]! -= bx1 * a1d + bwa1 * states[vAt + d]!;
      a[d] = a1d - bwa1 * w[wAt + d]!;
    }
  }
  for (let d = 0; d < D; d++) {
    dk[j * D + d] = dk[j * D + d]! + a[d]!;
    dk[(j + 1) * D + d] = dk[(j + 1) * D + d]! + a2[d]!;
  }
}

/** Work buffers of chunkedBackward for one pathAttention call, sized for its chunk count. */
function makeBackScratch(work: 'float32' | 'float64', lq: number, lk: number, D: number, lastChunk: number) {
  const carried = lastChunk * PATH_CHUNK; // positions of the chunks below the last one
  return {
    zStore: allocate(work, Math.max(1, lastChunk * lq * D)), // Z_J, J = lastChunk - 1 .. 0, rows r0(J) ..
    zOffset: new Int32Array(Math.max(1, lastChunk)),
    dz: allocate(work, lq * D),
    tmp: allocate(work, lq * D),
    dU: allocate(work, D * D),
    dkHat: allocate(work, Math.max(1, carried * D)),
    x: new Float64Array(D * D),
    v1: new Float64Array(Math.max(D, PATH_CHUNK)),
    v2: new Float64Array(Math.max(D, PATH_CHUNK)),
    v3: new Float64Array(D),
    v4: new Float64Array(D),
    walk: new Float64Array(lk * D), // walk[l] = the running vector r_l used for logit(p, l)
    wr: new Float64Array(lk), // w_l . r_l, the coefficient of factor l in the walk
    a: new Float64Array(D),
    walk2: new Float64Array(lk * D),
    wr2: new Float64Array(lk),
    a2: new Float64Array(D),
    states: new Float64Array(PATH_CHUNK * D),
    states2: new Float64Array(PATH_CHUNK * D),
    vw2: new Float64Array(PATH_CHUNK),
  };
}

/** a[ao ..] . b[bo ..] over n entries, in four partial sums (one makes the sum a serial chain of additions). */
function dot4(a: Float64Array, ao: number, b: Float64Array, bo: number, n: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let c = 0;
  for (; c + 4 <= n; c += 4) {
    s0 += a[ao + c]! * b[bo + c]!;
    s1 += a[ao + c + 1]! * b[bo + c + 1]!;
    s2 += a[ao + c + 2]! * b[bo + c + 2]!;
    s3 += a[ao + c + 3]! * b[bo + c + 3]!;
  }
  for (; c < n; c++) s0 += a[ao + c]! * b[bo + c]!;
  return s0 + s1 + (s2 + s3);
}
