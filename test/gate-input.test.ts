/**
 * The gate projection of fox and hype-gated (gate-input.ts: z = x w^T + b over a row range of each batch entry, and
 * its backward) against plain fp64 loops: fp64 x to fp64 summation-order rounding, fp32 x on each host backend
 * within the fp32 bound the module states, |dz| <= (K + 1) u sum |terms| for a K-term fp32 dot product (u = 2^-24:
 * w or dz rounded to fp32, then K fp32 products and sums).
 */
import { describe, expect, it } from 'vitest';
import type { Backend } from '../src/backend/backend.ts';
import { loadNativeAddon, NativeBackend } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { gateParam, projectGates, projectGatesBackward } from '../src/pe/gate-input.ts';
import type { FloatArray } from '../src/tensor.ts';
import { Rng } from '../src/util/rng.ts';

const BACKENDS: Backend[] = [new ReferenceBackend(), ...(loadNativeAddon() ? [new NativeBackend({ threads: 2 })] : [])];
const U32 = 2 ** -24;
const [B, LK, C, G] = [2, 7, 24, 3];

/** Exact-enough fp64 sums: the value and the sum of |terms| of each output (the rounding bound's scale). */
function fp64(x: Float64Array, w: FloatArray, b: FloatArray, dz: Float64Array, off: number, n: number) {
  const z = new Float64Array(B * n * G);
  const zAbs = new Float64Array(B * n * G);
  const dw = new Float64Array(G * C);
  const dwAbs = new Float64Array(G * C);
  const dx = new Float64Array(B * LK * C);
  const dxAbs = new Float64Array(B * LK * C);
  for (let bi = 0; bi < B; bi++)
    for (let i = 0; i < n; i++) {
      const xr = (bi * LK + off + i) * C;
      for (let g = 0; g < G; g++) {
        const zi = (bi * n + i) * G + g;
        z[zi] = b[g]!;
        zAbs[zi] = Math.abs(b[g]!);
        for (let c = 0; c < C; c++) {
          z[zi] += w[g * C + c]! * x[xr + c]!;
          zAbs[zi] += Math.abs(w[g * C + c]! * x[xr + c]!);
          dw[g * C + c] += dz[zi]! * x[xr + c]!;
          dwAbs[g * C + c] += Math.abs(dz[zi]! * x[xr + c]!);
          dx[xr + c] += dz[zi]! * w[g * C + c]!;
          dxAbs[xr + c] += Math.abs(dz[zi]! * w[g * C + c]!);
        }
      }
    }
  return { z, zAbs, dw, dwAbs, dx, dxAbs };
}

describe('gate projection (gate-input.ts)', () => {
  const ranges = [
    { off: 0, n: LK, label: 'all rows (one gemm)' },
    { off: 2, n: 4, label: 'rows 2..5 of each entry (a gemm per entry)' },
  ];
  // fp64 arrays take the fp64 loops whatever the backend (gemmFor: the native gemm is fp32 only).
  const cases = [
    ...BACKENDS.map((be) => ({ be, dtype: 'float32' as const })),
    { be: BACKENDS[0]!, dtype: 'float64' as const },
  ];
  for (const { be, dtype } of cases)
    it.each(ranges)(`${be.name} ${dtype}: z, w.grad, b.grad and dx match fp64 loops: $label`, ({ off, n }) => {
      const rng = new Rng(5);
      const x64 = new Float64Array(B * LK * C);
      rng.fillNormal(x64);
      const x = dtype === 'float32' ? Float32Array.from(x64) : x64;
      const xs = Float64Array.from(x); // the values the projection sees
      const w = gateParam('g.w', [G, C]);
      const b = gateParam('g.b', [G]);
      rng.fillNormal(w.data, 0.3);
      rng.fillNormal(b.data);
      const dz = new Float64Array(B * n * G);
      rng.fillNormal(dz);
      const want = fp64(xs, w.data, b.data, dz, off, n);
      const u = dtype === 'float32' ? U32 : 2 ** -53;
      const z = projectGates(be, x, w, b, B, LK, off, n);
      for (let i = 0; i < z.length; i++)
        expect(Math.abs(z[i]! - want.z[i]!)).toBeLessThanOrEqual((C + 2) * u * want.zAbs[i]!);
      w.grad.fill(0.5); // gradients accumulate
      b.grad.fill(0.5);
      const dx = projectGatesBackward(be, x, w, b, dz, B, LK, off, n);
      expect(dx).toBeInstanceOf(x.constructor);
      for (let i = 0; i < dx.length; i++)
        expect(Math.abs(dx[i]! - want.dx[i]!)).toBeLessThanOrEqual((G + 2) * u * want.dxAbs[i]!);
      for (let i = 0; i < G * C; i++)
        expect(Math.abs(w.grad[i]! - 0.5 - want.dw[i]!)).toBeLessThanOrEqual((B * n + 2) * u * want.dwAbs[i]! + 1e-15);
      for (let g = 0; g < G; g++) {
        let s = 0;
        for (let i = 0; i < B * n; i++) s += dz[i * G + g]!;
        expect(b.grad[g]).toBeCloseTo(0.5 + s, 12);
      }
    });
});

describe('gateForward / gateBackward (the host TensorOps of reference and native)', () => {
  const ref = new ReferenceBackend();
  const [OUTER, LEN, INNER] = [2, 9, 3];
  const n = OUTER * LEN * INNER;
  const fns = [
    { fn: 'logSigmoid' as const, f: (z: number) => Math.log(1 / (1 + Math.exp(-z))) },
    { fn: 'softplus' as const, f: (z: number) => Math.log(1 + Math.exp(z)) },
  ];
  const cases = fns.flatMap((c) => [-1, 0, 4, LEN - 1].map((origin) => ({ ...c, origin })));
  const x = new Float64Array(n);
  new Rng(8).fillNormal(x, 3);

  // Forward: the definition summed directly per entry (no prefix sums), fp64 both sides: ~LEN u |values|, 1e-12.
  it.each(cases)('$fn, origin $origin: forward = definition, backward = central differences', ({ fn, f, origin }) => {
    const out = new Float64Array(n);
    ref.gateForward(x, out, OUTER, LEN, INNER, fn, origin);
    for (let o = 0; o < OUTER; o++)
      for (let t = 0; t < LEN; t++)
        for (let j = 0; j < INNER; j++) {
          const at = (s: number) => x[(o * LEN + s) * INNER + j]!;
          let want = f(at(t));
          if (origin >= 0) {
            want = 0; // sum_{t' <= t} - sum_{t' <= origin} = +-(the entries strictly between, one side inclusive)
            for (let s = origin + 1; s <= t; s++) want += f(at(s));
            for (let s = t + 1; s <= origin; s++) want -= f(at(s));
          }
          expect(Math.abs(out[(o * LEN + t) * INNER + j]! - want)).toBeLessThan(1e-12);
        }
    // Backward of loss = sum(out * W): central differences, step 1e-6 (truncation ~1e-12 |f'''|, roundoff ~1e-10).
    const W = new Float64Array(n);
    new Rng(9).fillNormal(W);
    const loss = (xs: Float64Array) => {
      const o = new Float64Array(n);
      ref.gateForward(xs, o, OUTER, LEN, INNER, fn, origin);
      return o.reduce((s, v, i) => s + v * W[i]!, 0);
    };
    const dx = Float64Array.from(W); // dx may alias dOut: exercised here
    ref.gateBackward(x, dx, dx, OUTER, LEN, INNER, fn, origin);
    for (let i = 0; i < n; i++) {
      const h = 1e-6;
      const xp = Float64Array.from(x);
      const xm = Float64Array.from(x);
      xp[i]! += h;
      xm[i]! -= h;
      expect(Math.abs(dx[i]! - (loss(xp) - loss(xm)) / (2 * h))).toBeLessThan(1e-7);
    }
  });

  it('stays finite and exact in the tails (|z| = 80: no overflow, no cancellation)', () => {
    const z = Float64Array.of(-80, 80);
    const out = new Float64Array(2);
    ref.gateForward(z, out, 1, 2, 1, 'softplus', -1);
    expect(out[0]).toBeCloseTo(Math.exp(-80), 45);
    expect(out[1]).toBe(80);
    ref.gateForward(z, out, 1, 2, 1, 'logSigmoid', -1);
    expect(out[0]).toBe(-80);
    expect(out[1]).toBeCloseTo(-Math.exp(-80), 45);
  });
});
