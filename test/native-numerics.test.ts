/**
 * Native numerics at the edges, against the reference's behaviour: NaN and +Inf logits poison the cross-entropy
 * (never dropped), finite inputs whose fp32 logits overflow never mix a masked key into causal attention (the
 * forward is refused on both backends), one shared refusal for oversized head dims, and sizes whose products
 * overflow 64 bits refused by the raw addon instead of crashing the process.
 */
import { describe, expect, it } from 'vitest';
import type { AttentionShape } from '../src/backend/backend.ts';
import { loadNativeAddon, NativeBackend, nativeLoadError, type NativeAddon } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';

const addon = loadNativeAddon();
if (!addon && process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
const suite = addon ? describe : describe.skip;

function refusal(fn: () => unknown): HypeError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(HypeError);
    return e as HypeError;
  }
  throw new Error('expected a HypeError');
}

suite('native numerics agree with the reference at the edges', () => {
  const native = new NativeBackend({ threads: 2 });
  const reference = new ReferenceBackend();
  const raw = addon as NativeAddon;

  it('softmax cross-entropy propagates a NaN or +Infinity logit (loss and gradient), as the reference does', () => {
    for (const bad of [NaN, Infinity]) {
      for (const at of [0, 2, 17]) {
        // 20 logits: a full 16-lane vector and a scalar tail, so the bad value is tried in both paths.
        const logits = Float32Array.from({ length: 20 }, (_, j) => 0.01 * j);
        logits[at] = bad;
        const targets = Int32Array.of(1);
        for (const backend of [native, reference]) {
          const losses = new Float32Array(1);
          expect(backend.softmaxCrossEntropyForward(logits, targets, losses, 1, 20)).toBeNaN();
          expect(losses[0]).toBeNaN();
          const d = new Float32Array(20);
          backend.softmaxCrossEntropyBackward(logits, targets, d, 1, 20, 1);
          expect(d.some(Number.isNaN), `${backend.name}, ${bad} at ${at}`).toBe(true);
        }
      }
    }
    // The case, straight through the addon: it returned 1.1086 before.
    expect(
      raw.softmaxCrossEntropyForward(
        Float32Array.of(NaN, 0.01, 0.02, 0.03),
        Int32Array.of(1),
        new Float32Array(1),
        1,
        4,
      ),
    ).toBeNaN();
  });

  it('never mixes a masked key into causal attention when fp32 logits overflow, and refuses the forward', () => {
    // Key 1 is in query 0's future. q0.k1 = 6e38 overflows fp32 (max 3.4e38); q0.k0 = 3e38 does not.
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 2, lk: 2, headDim: 1, valueDim: 2 };
    const q = Float32Array.of(3e38, 3e38);
    const k = Float32Array.of(1, 2);
    const v = Float32Array.of(1, 2, 3, 4);
    const params = { ...shape, headDim: 1, causal: true, scale: 1, queryOffset: 0, table: null };
    const out = new Float32Array(4);
    const lse = new Float32Array(2);
    raw.attentionForward(params, q, k, v, out, lse);
    // Row 0 sees only key 0: out = v0 exactly (it was v1 = [3, 4] before); row 1's +inf logit makes NaN, as in fp64.
    expect(Array.from(out.subarray(0, 2))).toEqual([1, 2]);
    expect(lse[0]).toBe(Math.fround(3e38));
    expect(lse[1]).toBeNaN();
    for (const backend of [native, reference]) {
      const e = refusal(() => backend.attentionForward(shape, q, k, v, { causal: true, scale: 1 }));
      expect(e.code).toBe('overflow');
      expect(e.message).toMatch(/logits overflowed float32 at batch 0, head 0, query row 1/);
      // A finite scale beyond fp32's range: every logit overflows.
      const f = refusal(() =>
        backend.attentionForward(shape, Float32Array.of(1, 1), k, v, { causal: true, scale: 1e39 }),
      );
      expect(f.code).toBe('overflow');
    }
  });

  it('refuses a head dim above 65536 with the same HypeError on both backends', () => {
    const shape: AttentionShape = { batch: 1, heads: 1, kvHeads: 1, lq: 1, lk: 1, headDim: 70000, valueDim: 1 };
    const q = new Float32Array(70000);
    for (const backend of [native, reference]) {
      const e = refusal(() => backend.attentionForward(shape, q, q, new Float32Array(1), { causal: true, scale: 1 }));
      expect(e.code).toBe('shape');
      expect(e.message).toMatch(/headDim is 70000, above the supported 65536/);
    }
  });

  it('the raw addon refuses sizes whose products overflow instead of crashing the process', () => {
    const small = new Float32Array(4);
    expect(() => raw.gemm(false, false, 2 ** 32 + 1, 1, 1, 1, small, 1, small, 1, 0, small, 1)).toThrow(
      /hype native: A has 4 elements, needs 4294967297/,
    );
    expect(() => raw.gemm(false, false, 2 ** 40, 2 ** 20, 1, 1, small, 1, small, 2 ** 20, 0, small, 2 ** 20)).toThrow(
      /size overflows/,
    );
    const huge = {
      batch: 2 ** 24,
      heads: 2 ** 24,
      kvHeads: 1,
      lq: 65536,
      lk: 65536,
      headDim: 64,
      valueDim: 64,
      causal: true,
      scale: 1,
      queryOffset: 0,
      table: null,
    };
    expect(() => raw.attentionForward(huge, small, small, small, small, small)).toThrow(/size overflows/);
    expect(() =>
      raw.attentionBackward(huge, small, small, small, small, small, small, small, small, small, null),
    ).toThrow(/size overflows/);
    const wideTable = { ...huge, batch: 1, heads: 2 ** 30, lq: 2 ** 30, lk: 2 ** 30, table: new Float64Array(1) };
    expect(() => raw.attentionForward(wideTable, small, small, small, small, small)).toThrow(/size overflows/);
  });
});
