/** The README's example, through the package entry point only: HyPE by concatenation equals HyPE as a bias. */
import { describe, expect, it } from 'vitest';
import { encodingNames, hype, ReferenceBackend, Rng, type AttentionShape } from '../src/index.ts';

describe('public API', () => {
  it('augment + any kernel with scale 1/sqrt(d) reproduces the exact HyPE bias', () => {
    const shape: AttentionShape = { batch: 1, heads: 4, kvHeads: 4, lq: 33, lk: 33, headDim: 16, valueDim: 16 };
    const n = shape.heads * shape.lq * shape.headDim;
    const rng = new Rng(4);
    const [q, k, v] = [0, 1, 2].map(() => {
      const a = new Float64Array(n);
      rng.fillNormal(a);
      return a;
    }) as [Float64Array, Float64Array, Float64Array];
    const h = hype({ preset: 'recency', heads: 4, kvHeads: 4, headDim: 16, lengthExtra: 128 });
    const aug = h.augment(shape, q, k, { multiple: 8 });
    expect(aug.scale).toBe(1 / 4);
    const backend = new ReferenceBackend();
    const viaConcat = backend.attentionForward(aug.shape, aug.qHat, aug.kHat, aug.vHat ?? v, {
      causal: true,
      scale: aug.scale,
    }).out;
    // The same bias, written out densely from the preset's own exact formula.
    const dense = new Float64Array(shape.heads * shape.lq * shape.lk);
    for (let hh = 0; hh < shape.heads; hh++)
      for (let i = 0; i < shape.lq; i++)
        for (let l = 0; l < shape.lk; l++) dense[(hh * shape.lq + i) * shape.lk + l] = h.bias(hh, i, l);
    const viaBias = backend.attentionForward(shape, q, k, v, {
      causal: true,
      scale: 1 / 4,
      bias: { kind: 'dense', heads: shape.heads, bias: dense },
    }).out;
    let err = 0;
    for (let i = 0; i < viaBias.length; i++) err = Math.max(err, Math.abs(viaBias[i]! - viaConcat[i]!));
    expect(err).toBeLessThan(1e-12);
  });

  it('lists every encoding of SPEC section 7, the section 9 controls alibi-learned and fox, and hype-gated', () => {
    const spec7 = ['none', 'sinusoidal', 'learned', 'rope', 'hope', 'xl', 'shaw', 't5', 'alibi', 'da', 'path', 'hype'];
    expect(new Set(encodingNames())).toEqual(new Set([...spec7, 'alibi-learned', 'fox', 'hype-gated']));
  });
});
