/**
 * KV-cache decoding equals full recomputation. A generation of 256 sampled tokens is decoded with the cache (prompt
 * prefilled in one step, then one token per step); every step's logits are compared with one full forward pass
 * over the final sequence. Causal attention makes row t of that pass exactly what recomputing the prefix 0..t
 * would give, so this is the full-recomputation reference without 256 separate passes (the per-step recomputing
 * decoder is compared directly on a shorter run below).
 *
 * fp64 models: the check is of the algorithm (which positions, shifts and rotations the cache uses), so rounding
 * must not hide anything; in fp64 the two computations differ only by summation order, ~1e-15 relative, far below
 * the 1e-5 bound, while any position mistake changes logits by O(0.1) (initStd 0.3 makes attention
 * patterns, and so positions, matter).
 */
import { describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { CachedDecoder, RecomputeDecoder } from '../src/model/decode.ts';
import { generate } from '../src/model/generate.ts';
import { Transformer } from '../src/model/transformer.ts';
import { hypeEncoding } from '../src/pe/hype/encoding.ts';
import { Rng } from '../src/util/rng.ts';

const backend = new ReferenceBackend();
const prompt = new TextEncoder().encode('HyPE!');

function tinyModel(pe: string, options: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  return new Transformer(
    parseModelConfig({
      width: 16,
      layers: 2,
      heads: 2,
      mlpWidth: 32,
      trainLength: 32,
      dtype: 'float64',
      initStd: 0.3,
      seed: 5,
      pe: { name: pe, options },
      ...extra,
    }),
    backend,
  );
}

/** Max |cached - full| over every generated step's logits, and the biggest logit seen (for scale). */
function cachedVsFull(model: Transformer, tokens: number): { maxDiff: number; maxLogit: number } {
  const steps: Float64Array[] = [];
  const out = generate(model, prompt, {
    tokens,
    temperature: 1,
    topK: 0,
    seed: 11,
    onToken: (logits) => steps.push(Float64Array.from(logits)),
  });
  const seq = Int32Array.from([...prompt, ...out]);
  const L = seq.length - 1; // the last generated token is never fed back
  model.forward(seq.subarray(0, L), null, 1, L);
  const full = model.logits();
  const V = model.config.vocab;
  let maxDiff = 0;
  let maxLogit = 0;
  steps.forEach((s, t) => {
    const row = prompt.length - 1 + t;
    for (let j = 0; j < V; j++) {
      maxDiff = Math.max(maxDiff, Math.abs(s[j]! - full[row * V + j]!));
      maxLogit = Math.max(maxLogit, Math.abs(full[row * V + j]!));
    }
  });
  return { maxDiff, maxLogit };
}

describe('KV-cache decoding equals full recomputation (256 generated tokens)', () => {
  const cases: [string, string, Record<string, unknown>, Record<string, unknown>?][] = [
    ['none', 'none', {}],
    ['rope', 'rope', {}],
    ['rope, grouped-query (4 heads, 2 kv heads)', 'rope', {}, { heads: 4, kvHeads: 2 }],
    ['alibi', 'alibi', {}],
    ['alibi, concat route (linear columns, raw keys)', 'alibi', { route: 'concat' }],
    ['alibi-learned', 'alibi-learned', {}],
    ['t5', 't5', {}],
    ['hype recency (concat, cached eta^K, fixed centred shift)', 'hype', { preset: 'recency' }],
    ['hype paper (concat, shift none)', 'hype', { preset: 'paper', shift: 'none' }],
    ['hype recency, grouped-query, padded to 8', 'hype', { preset: 'recency', multiple: 8 }, { heads: 4, kvHeads: 2 }],
    ['hype recency (kernel route, raw keys)', 'hype', { preset: 'recency', route: 'kernel' }],
    ['hype learned, slope-curvature', 'hype', { preset: 'learned', parametrisation: 'slope-curvature' }],
    // Split columns (hi/lo at fp32 granularity, six per pair): the cache keeps the key-side layout [hi, lo, hi].
    ['hype recency, split columns', 'hype', { preset: 'recency', columns: 'split', multiple: 8 }],
  ];
  for (const [label, pe, options, extra] of cases) {
    it(label, () => {
      const { maxDiff, maxLogit } = cachedVsFull(tinyModel(pe, options, extra), 256);
      expect(maxLogit).toBeGreaterThan(0.1); // logits of real size, so a 1e-5 agreement says something
      expect(maxDiff).toBeLessThanOrEqual(1e-5);
      console.log(`[generate-cache] ${label}: max |cached - full| = ${maxDiff.toExponential(2)}`);
    });
  }
});

describe('every other encoding decodes exactly through the cache (40 tokens)', () => {
  for (const pe of ['hope', 'xl', 'shaw', 'da', 'path', 'fox', 'sinusoidal', 'learned']) {
    it(pe, () => {
      const model = tinyModel(pe, pe === 'learned' ? { maxLength: 64 } : {});
      const { maxDiff } = cachedVsFull(model, 40);
      expect(maxDiff).toBeLessThanOrEqual(1e-5);
    });
  }
});

describe("hype-gated decodes exactly through the cache (the gate reads each query's cached block input)", () => {
  it('gates randomised (w ~ N(0, 0.5^2)), so x changes the bias', () => {
    const model = tinyModel('hype-gated', { lengthExtra: 64, curvature: 1 });
    const gates = model.parameters().filter((p) => p.name.endsWith('hype-gated.w'));
    expect(gates).toHaveLength(2);
    gates.forEach((p, i) => new Rng(3 + i).fillNormal(p.data, 0.5));
    const { maxDiff, maxLogit } = cachedVsFull(model, 40);
    expect(maxLogit).toBeGreaterThan(0.1);
    expect(maxDiff).toBeLessThanOrEqual(1e-5);
  });
});

describe('what the cache stores', () => {
  it('rotated keys for rope, augmented keys for hype concat, raw keys for bias encodings', () => {
    const has = (pe: string, opts: Record<string, unknown> = {}) =>
      new CachedDecoder(tinyModel(pe, opts), 1, 8).cachesTransformedKeys(0);
    expect(has('rope')).toBe(true);
    expect(has('hype')).toBe(true);
    expect(has('hype', { route: 'kernel' })).toBe(false);
    expect(has('alibi')).toBe(false);
    expect(has('t5')).toBe(false);
    expect(has('none')).toBe(false);
  });

  it('HyPE caches [K, eta^K] at absolute positions with ONE shift c = centre of the planned positions', () => {
    const enc = hypeEncoding.create(
      { heads: 2, kvHeads: 2, headDim: 4, modelDim: 8, trainLength: 8 },
      { preset: 'recency' },
      new Rng(1),
    );
    const planned = 11; // positions 0..10, so c = 5 for the whole generation
    const hook = enc.cachedAttention!({ batch: 1, maxPositions: planned, dtype: 'float64' })!;
    expect(hook.keyWidth).toBe(6);
    const k = Float64Array.from({ length: 2 * 2 * 4 }, (_, j) => j / 7); // [B=1, Hkv=2, n=2, d=4]
    const rows = hook.cacheKeys(k, 1, 2, 3); // positions 3 and 4
    const mu = 0.5 / (16 * 8); // recency: curvature / lengthExtra, lengthExtra = 16 * trainLength
    for (let h = 0; h < 2; h++)
      for (let r = 0; r < 2; r++) {
        const at = (h * 2 + r) * 6;
        const p = 3 + r - 5;
        expect(Array.from(rows.subarray(at, at + 4))).toEqual(
          Array.from(k.subarray((h * 2 + r) * 4, (h * 2 + r + 1) * 4)),
        );
        expect(rows[at + 4]).toBeCloseTo(-Math.exp(mu * p), 15);
        expect(rows[at + 5]).toBeCloseTo(Math.exp(-mu * p), 15);
      }
  });

  it('a chunked prefill and the per-step recomputing decoder agree with one-token steps', () => {
    const model = tinyModel('hype', { preset: 'recency' });
    const tokens = Int32Array.from({ length: 12 }, (_, i) => (i * 37 + 3) % 256);
    const V = 256;
    const oneByOne = new CachedDecoder(model, 1, 12);
    const recompute = new RecomputeDecoder(model, 1, 12);
    const chunked = new CachedDecoder(model, 1, 12);
    const rowsA: number[] = [];
    const rowsB: number[] = [];
    for (let t = 0; t < 12; t++) {
      rowsA.push(...oneByOne.step(tokens.subarray(t, t + 1), 1));
      rowsB.push(...recompute.step(tokens.subarray(t, t + 1), 1));
    }
    const rowsC = [...chunked.step(tokens.subarray(0, 5), 5), ...chunked.step(tokens.subarray(5), 7)];
    expect(rowsA.length).toBe(12 * V);
    for (let j = 0; j < rowsA.length; j++) {
      expect(Math.abs(rowsA[j]! - rowsB[j]!)).toBeLessThan(1e-12);
      expect(Math.abs(rowsA[j]! - rowsC[j]!)).toBeLessThan(1e-12);
    }
  });
});

describe('refusals', () => {
  it('an absolute encoding past its maximum length gets a clear length error before any work', () => {
    const model = tinyModel('learned', { maxLength: 16 });
    const run = () => generate(model, prompt, { tokens: 20, temperature: 1, topK: 0, seed: 1 });
    expect(run).toThrow(/exceeds the learned encoding's maximum length 16.*--tokens/);
  });

  it("HyPE refuses up front a planned generation whose cached columns would overflow the model's dtype", () => {
    const model = tinyModel('hype', { preset: 'recency', curvature: 60, lengthExtra: 16 }, { dtype: 'float32' });
    expect(() => new CachedDecoder(model, 1, 200)).toThrow(/HyPE|overflow/);
  });

  it('a step beyond the planned length is refused', () => {
    const d = new CachedDecoder(tinyModel('none'), 1, 3);
    d.step(Int32Array.of(1, 2, 3), 3);
    expect(() => d.step(Int32Array.of(4), 1)).toThrow(/planned for 3 positions/);
  });
});
