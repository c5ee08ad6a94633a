/**
 * Whole-model gradient check in fp64: the explicit per-layer backward against central differences of the mean
 * loss, for every parameter tensor (a fixed sample of entries per tensor), with each available encoding.
 */
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import type { EncodingFactory } from '../src/pe/encoding.ts';
import { encodingNames, getEncodingFactory } from '../src/pe/registry.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';
import { testLearnedSlopes, testNoPE } from './helpers/test-encodings.ts';

const B = 2;
const L = 5;

function tinyConfig(pe: string, extra: Record<string, unknown> = {}): ModelConfig {
  return parseModelConfig({
    width: 8,
    layers: 2,
    heads: 2,
    mlpWidth: 12,
    trainLength: L,
    dtype: 'float64',
    pe: { name: pe },
    seed: 7,
    ...extra,
  });
}

/** Moves every parameter off its init (biases and norms would otherwise sit at the special values 0 and 1). */
function perturb(model: Transformer, rng: Rng): void {
  for (const p of model.parameters()) {
    for (let i = 0; i < p.data.length; i++) p.data[i] += 0.3 * rng.normal();
  }
}

function gradcheck(model: Transformer, seed: number): { name: string; err: number }[] {
  const rng = new Rng(seed);
  perturb(model, rng);
  const tokens = new Int32Array(B * L);
  const targets = new Int32Array(B * L);
  for (let i = 0; i < B * L; i++) {
    tokens[i] = rng.int(256);
    targets[i] = rng.int(256);
  }
  const loss = () => model.forward(tokens, targets, B, L);
  model.zeroGrad();
  loss();
  model.backward();
  const results: { name: string; err: number }[] = [];
  for (const p of model.parameters()) {
    const analytic = Float64Array.from(p.grad);
    // The embedding: sample rows of tokens that occur (their gradient has the input path too) and others.
    const idx =
      p.name === 'wte'
        ? [...sampleIndices(p.data.length, 12, seed), ...Array.from({ length: 8 }, (_, j) => tokens[0]! * 8 + j)]
        : sampleIndices(p.data.length, 12, seed);
    results.push({ name: p.name, err: maxRelativeGradError(loss, p.data, analytic, idx) });
  }
  return results;
}

function expectAllBelow(results: { name: string; err: number }[], tol: number): void {
  const bad = results.filter((r) => !(r.err <= tol));
  expect(bad).toEqual([]);
}

const backend = new ReferenceBackend();

describe('whole-model gradient check (fp64, central differences)', () => {
  const cases: [string, EncodingFactory<object>][] = [
    ['test-nope', testNoPE],
    ['test-slopes', testLearnedSlopes],
  ];
  for (const [name, factory] of cases) {
    it(`every parameter tensor matches with ${name}`, () => {
      const model = new Transformer(tinyConfig(name), backend, { encodingFactory: factory });
      const results = gradcheck(model, 11);
      // 2 layers x 12 tensors + wte + final norm (+ one slope tensor per block for test-slopes).
      expect(results.length).toBe(27 + (name === 'test-slopes' ? 2 : 0));
      expectAllBelow(results, 1e-6);
    });
  }

  it('grouped-query attention (2 query heads share 1 kv head)', () => {
    const model = new Transformer(tinyConfig('test-nope', { kvHeads: 1 }), backend, { encodingFactory: testNoPE });
    expectAllBelow(gradcheck(model, 12), 1e-6);
  });

  // Every registered encoding (none, rope, alibi, hype, ... as they land) through the whole model.
  for (const name of encodingNames()) {
    it(`every parameter tensor matches with registered encoding '${name}'`, () => {
      expect(getEncodingFactory(name).name).toBe(name);
      const model = new Transformer(tinyConfig(name), backend);
      expectAllBelow(gradcheck(model, 13), 1e-6);
    });
  }
});

describe('whole-model gradient check with encoding options', () => {
  // HyPE's learned preset trains tau and mu (per block) through the whole model; 'paper' flips the bias sign.
  const variants: [string, Record<string, unknown>][] = [
    ['hype', { preset: 'learned' }],
    ['hype', { preset: 'paper' }],
  ];
  for (const [name, options] of variants) {
    it(`${name} ${JSON.stringify(options)}`, () => {
      const model = new Transformer(tinyConfig(name, { pe: { name, options } }), backend);
      if (options.preset === 'learned') expect(model.parameters().some((p) => p.name.includes('.attn.pe.'))).toBe(true);
      expectAllBelow(gradcheck(model, 14), 1e-6);
    });
  }
});

describe('model plumbing', () => {
  it('is deterministic for a seed and differs across seeds', () => {
    const a = new Transformer(tinyConfig('test-nope'), backend, { encodingFactory: testNoPE });
    const b = new Transformer(tinyConfig('test-nope'), backend, { encodingFactory: testNoPE });
    const c = new Transformer(tinyConfig('test-nope', { seed: 8 }), backend, { encodingFactory: testNoPE });
    expect(Array.from(a.params.wte.data)).toEqual(Array.from(b.params.wte.data));
    expect(Array.from(a.params.wte.data)).not.toEqual(Array.from(c.params.wte.data));
  });

  it('starts near the uniform loss ln 256 and is causal (a later token cannot change earlier losses)', () => {
    const model = new Transformer(tinyConfig('test-nope'), backend, { encodingFactory: testNoPE });
    const tokens = Int32Array.from({ length: B * L }, (_, i) => (i * 37) % 256);
    const targets = Int32Array.from({ length: B * L }, (_, i) => (i * 11) % 256);
    const loss = model.forward(tokens, targets, B, L);
    expect(Math.abs(loss - Math.log(256))).toBeLessThan(0.05);
    const before = Float64Array.from(model.tokenLosses());
    tokens[L - 1] = 200; // last position of the first sequence
    model.forward(tokens, targets, B, L);
    const after = model.tokenLosses();
    for (let t = 0; t < L - 1; t++) expect(after[t]).toBe(before[t]);
    expect(after[L - 1]).not.toBe(before[L - 1]);
    for (let t = L; t < 2 * L; t++) expect(after[t]).toBe(before[t]);
  });

  it('handles a new (batch, length) shape and refuses bad inputs clearly', () => {
    const model = new Transformer(tinyConfig('test-nope'), backend, { encodingFactory: testNoPE });
    const t = new Int32Array(3 * 4);
    expect(Number.isFinite(model.forward(t, t, 3, 4))).toBe(true);
    expect(() => model.forward(t, t, 2, 4)).toThrow(/tokens has 12 entries/);
    expect(() => new Transformer(tinyConfig('no-such-encoding'), backend)).toThrow(/unknown positional encoding/);
  });
});
