import { describe, expect, it } from 'vitest';
import {
  adamwStep,
  biasAdd,
  biasBackward,
  embeddingBackward,
  embeddingForward,
  geluBackward,
  geluForward,
  layerNormBackward,
  layerNormForward,
  referenceLayerOps,
  softmaxCrossEntropyBackward,
  softmaxCrossEntropyForward,
} from '../src/backend/layers.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';

function randn(n: number, rng: Rng, std = 1): Float64Array {
  const a = new Float64Array(n);
  rng.fillNormal(a, std);
  return a;
}

/** A fixed random weighting w so that sum(w * out) is a scalar loss whose gradient wrt out is w. */
function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

describe('layer norm', () => {
  const rows = 3;
  const width = 7;
  const eps = 1e-5;
  const rng = new Rng(1);
  const x = randn(rows * width, rng);
  const gamma = randn(width, rng);
  const beta = randn(width, rng);
  const w = randn(rows * width, rng);
  const out = new Float64Array(rows * width);
  const mean = new Float64Array(rows);
  const rstd = new Float64Array(rows);
  const loss = () => {
    layerNormForward(x, gamma, beta, out, mean, rstd, rows, width, eps);
    return dot(out, w);
  };

  it('normalises each row to zero mean and unit variance before the affine map', () => {
    const ones = new Float64Array(width).fill(1);
    const zero = new Float64Array(width);
    layerNormForward(x, ones, zero, out, mean, rstd, rows, width, 0);
    for (let r = 0; r < rows; r++) {
      const row = out.subarray(r * width, (r + 1) * width);
      const m = row.reduce((s, v) => s + v, 0) / width;
      const v = row.reduce((s, u) => s + (u - m) ** 2, 0) / width;
      expect(Math.abs(m)).toBeLessThan(1e-14);
      expect(Math.abs(v - 1)).toBeLessThan(1e-13);
    }
  });

  it('backward matches central differences for x, gamma and beta, and accumulates', () => {
    loss();
    const dx = new Float64Array(rows * width).fill(0.5); // pre-filled: dx must accumulate on top
    const dg = new Float64Array(width);
    const db = new Float64Array(width);
    layerNormBackward(w, x, gamma, mean, rstd, dx, dg, db, rows, width);
    for (let i = 0; i < dx.length; i++) dx[i] -= 0.5;
    expect(maxRelativeGradError(loss, x, dx)).toBeLessThan(1e-6);
    expect(maxRelativeGradError(loss, gamma, dg)).toBeLessThan(1e-6);
    expect(maxRelativeGradError(loss, beta, db)).toBeLessThan(1e-6);
  });
});

describe('GELU (tanh approximation)', () => {
  it('matches the closed form at known points', () => {
    const x = Float64Array.from([-30, -3, -1, 0, 0.5, 2, 30]);
    const out = new Float64Array(7);
    geluForward(x, out, 7);
    for (let i = 0; i < 7; i++) {
      const v = x[i]!;
      const want = 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
      expect(Math.abs(out[i]! - want)).toBeLessThanOrEqual(4e-16 * Math.max(1, Math.abs(want))); // a few ulps
    }
    // Close to the exact erf GELU: x Phi(x) at 0.5 = 0.25 (1 + erf(0.5 / sqrt 2)), erf(0.35355...) = 0.3829249225.
    expect(Math.abs(out[4]! - 0.25 * (1 + 0.3829249225))).toBeLessThan(1e-4);
  });

  it('backward matches central differences', () => {
    const rng = new Rng(2);
    const n = 40;
    const x = randn(n, rng, 2);
    const w = randn(n, rng);
    const out = new Float64Array(n);
    const loss = () => {
      geluForward(x, out, n);
      return dot(out, w);
    };
    const dx = new Float64Array(n);
    geluBackward(x, w, dx, n);
    expect(maxRelativeGradError(loss, x, dx)).toBeLessThan(1e-6);
  });
});

describe('softmax cross-entropy', () => {
  const rows = 4;
  const vocab = 9;
  const rng = new Rng(3);
  const logits = randn(rows * vocab, rng, 3);
  const targets = Int32Array.from([0, 8, 3, 3]);
  const losses = new Float64Array(rows);

  it('forward equals -log softmax at the target, stable for huge logits', () => {
    const mean = softmaxCrossEntropyForward(logits, targets, losses, rows, vocab);
    let want = 0;
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let j = 0; j < vocab; j++) s += Math.exp(logits[r * vocab + j]!);
      want += -Math.log(Math.exp(logits[r * vocab + targets[r]!]!) / s);
    }
    expect(Math.abs(mean - want / rows)).toBeLessThan(1e-14);
    const big = logits.map((v) => v + 1000);
    expect(softmaxCrossEntropyForward(big, targets, losses, rows, vocab)).toBeCloseTo(mean, 10);
  });

  it('backward matches central differences (and may run in place)', () => {
    const loss = () => softmaxCrossEntropyForward(logits, targets, losses, rows, vocab);
    const d = Float64Array.from(logits);
    softmaxCrossEntropyBackward(d, targets, d, rows, vocab, 1 / rows);
    expect(maxRelativeGradError(loss, logits, d)).toBeLessThan(1e-6);
  });

  it('refuses a target outside the vocabulary', () => {
    expect(() => softmaxCrossEntropyForward(logits, Int32Array.from([0, 9, 0, 0]), losses, rows, vocab)).toThrow(
      /outside/,
    );
  });
});

describe('embedding and bias', () => {
  it('gather forward and scatter-add backward are adjoint', () => {
    const rng = new Rng(4);
    const vocab = 5;
    const width = 3;
    const tokens = Int32Array.from([4, 1, 4, 0]);
    const table = randn(vocab * width, rng);
    const out = new Float64Array(tokens.length * width);
    const w = randn(out.length, rng);
    const loss = () => {
      embeddingForward(table, tokens, out, tokens.length, width, vocab);
      return dot(out, w);
    };
    const dTable = new Float64Array(table.length);
    embeddingBackward(w, tokens, dTable, tokens.length, width);
    expect(maxRelativeGradError(loss, table, dTable)).toBeLessThan(1e-6);
    expect(() => embeddingForward(table, Int32Array.from([5]), out, 1, width, vocab)).toThrow(/outside/);
  });

  it('bias add and its column-sum backward', () => {
    const rng = new Rng(5);
    const rows = 4;
    const width = 3;
    const base = randn(rows * width, rng);
    const bias = randn(width, rng);
    const w = randn(rows * width, rng);
    const loss = () => {
      const out = Float64Array.from(base);
      biasAdd(out, bias, rows, width);
      return dot(out, w);
    };
    const dBias = new Float64Array(width);
    biasBackward(w, dBias, rows, width);
    expect(maxRelativeGradError(loss, bias, dBias)).toBeLessThan(1e-6);
  });
});

describe('AdamW', () => {
  it('matches the textbook update, with decay applied to the parameter (decoupled)', () => {
    const p = Float64Array.from([1, -2]);
    const g = Float64Array.from([0.5, 0.25]);
    const m = new Float64Array(2);
    const v = new Float64Array(2);
    const h = { lr: 0.1, beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.01, step: 1 };
    adamwStep(p, g, m, v, 2, h);
    // Step 1: mhat = g, vhat = g^2, so the Adam part is sign(g) * |g| / (|g| + eps).
    for (let i = 0; i < 2; i++) {
      const p0 = [1, -2][i]!;
      const gi = [0.5, 0.25][i]!;
      expect(p[i]).toBeCloseTo(p0 - 0.1 * (gi / (Math.abs(gi) + 1e-8) + 0.01 * p0), 14);
    }
    // With a zero gradient only the decay acts: p <- p (1 - lr wd) once the moments are zero.
    const q = Float64Array.from([3]);
    adamwStep(q, new Float64Array(1), new Float64Array(1), new Float64Array(1), 1, { ...h, step: 5 });
    expect(q[0]).toBeCloseTo(3 * (1 - 0.1 * 0.01), 14);
  });
});

describe('every Backend member is required', () => {
  it('the reference backend offers every layer op itself', () => {
    const be = new ReferenceBackend() as unknown as Record<string, unknown>;
    for (const [key, fn] of Object.entries(referenceLayerOps)) expect(be[key]).toBe(fn);
  });
});
