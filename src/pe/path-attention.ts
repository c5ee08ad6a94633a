/**
 * The PaTH attention core for given factors (see path.ts for the encoding and its factor network): logits
 * scale * q_p^T H_p ... H_{j+1} k_j with H_t = I - beta_t w_t w_t^T, and their backward to q, k, w and beta.
 * Shapes: q [B, H, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv], w [B, Hkv, Lk, D], beta [B, Hkv, Lk].
 *
 * The logits and their backward are the backend's Householder walk (Backend.householderWalk: plain loops on the
 * reference backend, native/householder.cc on the native one); the softmax, P V and their backward are the
 * backend's attention over explicit scores, whose hooks this file fills. The walk runs one batch row at a time,
 * so its logits need O(H Lq Lk) memory beside the engine's probabilities, not another O(B H Lq Lk).
 */
import type { AttentionShape, Backend, HouseholderWalk } from '../backend/backend.ts';
import { WALK_CHUNK } from '../backend/householder-walk.ts';
import { checkFiniteTensor } from '../backend/validate.ts';
import { check } from '../errors.ts';
import { allocate, asDtype, dtypeOf, type FloatArray } from '../tensor.ts';
import type { ExplicitHooks, ScratchPool } from '../backend/score-attention.ts';

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

/** Positions per chunk of the backend's walk (queries walk inside their chunk; earlier chunks are products). */
export const PATH_CHUNK = WALK_CHUNK;

/**
 * The attention itself, given the factors (exported so tests can set w and beta directly, e.g. beta = 0).
 * Causal; query row i sits at position i + queryOffset, which must be a key position. Work is fp32 when q and k
 * both are, else fp64; gradients come back in the dtype of the tensor they belong to.
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
  const { batch: B, heads: H, kvHeads: Hkv, lq, lk, headDim: D } = shape;
  const { w, beta } = factors;
  const work = qInput instanceof Float32Array && kInput instanceof Float32Array ? 'float32' : 'float64';
  const q = asDtype(qInput, work);
  const k = asDtype(kInput, work);
  const LL = lq * lk;
  const one: AttentionShape = { ...shape, batch: 1 };
  // Batch row b of each input, as a batch of one.
  const row = <T extends FloatArray>(x: T, b: number, n: number) => x.subarray(b * n, (b + 1) * n) as T;
  const walks: (HouseholderWalk | undefined)[] = new Array<HouseholderWalk | undefined>(B);
  // The walk's logits of one batch row [H, Lq, Lk], copied head by head into the engine's score buffer.
  const logits = pool ? pool.take('walk-logits', work, H * LL).array : allocate(work, H * LL);
  let logitsOf = -1;
  // The backward: each batch row's dLogits gathered head by head, its walk backward run once all H have come.
  let grads: { dq: FloatArray; dk: FloatArray; dw: Float64Array; dbeta: Float64Array } | null = null;
  const pending = new Map<number, { dLogits: FloatArray; heads: number }>();

  const hooks: ExplicitHooks = {
    ownScores: true,
    logits: (b, h, _kh, S) => {
      if (logitsOf !== b) {
        walks[b] = backend.householderWalk(
          one,
          queryOffset,
          scale,
          row(q, b, H * lq * D),
          row(k, b, Hkv * lk * D),
          row(w, b, Hkv * lk * D),
          row(beta, b, Hkv * lk),
          logits,
        );
        logitsOf = b;
      }
      S.set(logits.subarray(h * LL, (h + 1) * LL));
    },
    backward: (b, h, _kh, dS) => {
      let p = pending.get(b);
      if (!p) pending.set(b, (p = { dLogits: allocate(work, H * LL), heads: 0 }));
      p.dLogits.set(dS, h * LL);
      if (++p.heads === H) {
        const g = grads!;
        walks[b]!.backward(
          p.dLogits,
          row(g.dq, b, H * lq * D),
          row(g.dk, b, Hkv * lk * D),
          row(g.dw, b, Hkv * lk * D),
          row(g.dbeta, b, Hkv * lk),
        );
        pending.delete(b);
      }
      return 0; // dq and dk come from the walk: no plain q.k term
    },
  };
  const core = backend.scoreAttention(shape, q, k, v, { causal: true, queryOffset, scale, scratch: pool }, hooks);

  const backward = (dOut: FloatArray): PathCoreGrads => {
    grads = {
      dq: allocate(work, q.length),
      dk: allocate(work, k.length),
      dw: new Float64Array(w.length),
      dbeta: new Float64Array(beta.length),
    };
    const g = core.backward(dOut);
    check(
      pending.size === 0,
      'argument',
      `path: the backend's attention over explicit scores (${backend.name}) did not hand back dLogits for every ` +
        'head; its backward must call the hooks once per (batch, head)',
    );
    checkFiniteTensor(grads.dq, `path attention (${work}): dq`, [B, H, lq, D]);
    checkFiniteTensor(grads.dk, `path attention (${work}): dk`, [B, Hkv, lk, D]);
    return {
      dq: asDtype(grads.dq, dtypeOf(qInput)),
      dk: asDtype(grads.dk, dtypeOf(kInput)),
      dv: g.dv,
      dw: grads.dw,
      dbeta: grads.dbeta,
    };
  };
  return { out: core.out, backward };
}
