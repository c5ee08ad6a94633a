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
