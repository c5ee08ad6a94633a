/**
 * ALiBi (Press et al. 2021): no position in q or k; each head h adds a fixed linear penalty to the logits,
 *   bias(h, D) = -m_h |D|,   D = i - l,
 * with the reference slopes m_h of alibi-slopes.ts (2^-1 .. 2^-8 for 8 heads, interleaved for other counts).
 * Two routes (alibi-route.ts): 'kernel' (default) as a distance table [H, span] the kernel adds, never an L x L
 * tensor; 'concat' as two linear Q/K columns per head on an unmodified kernel (exact, causal only; split hi/lo
 * columns in bf16/fp16). Shapes: q [B, H, Lq, d], k [B, Hkv, Lk, d], v [B, Hkv, Lk, dv].
 *
 * Choices the paper leaves open: the slopes are fixed (not trained), as in the paper (alibi-learned.ts trains
 * them); without a causal mask the penalty is symmetric in |D| (the paper defines only the causal case).
 */
import { alibiSlopes } from './alibi-slopes.ts';
import { defineAlibi, type AlibiRouteOptions } from './alibi-route.ts';

export type AlibiOptions = AlibiRouteOptions;

export const alibiEncoding = defineAlibi(
  'alibi',
  "ALiBi (Press et al. 2021): fixed per-head linear distance penalty -m_h |D|, reference slopes; route 'concat' " +
    'runs it exactly on an unmodified kernel through two linear columns',
  (dims) => {
    const slopes = alibiSlopes(dims.heads);
    return { params: [], slopes: () => slopes }; // fixed slopes: their gradient is dropped
  },
);
