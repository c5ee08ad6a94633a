/**
 * The native backend's head layout moves (splitQkv, mergeQkv, headsToTokens, tokensToHeads: memcpy of head rows in
 * native/layers.cc) against the TypeScript loops of layers.ts and tensor.ts, their reference. They are copies, so
 * the results must be bit-identical (compared as raw bits): random shapes, grouped-query attention (Hkv < H), head
 * rows wider than D (the columns past D must keep their values), a move large enough to split across the pool, and
 * bad input refused with one HypeError.
 */
import { describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { hostTensorOps } from '../src/backend/layers.ts';
import { NativeBackend, nativeAvailable } from '../src/backend/native.ts';

const bits = (a: Float32Array) => Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));

/**
 * Deterministic pseudo-random finite fp32 values of every sign and magnitude (random bit patterns, exponent 255
 * avoided: the TypeScript loops may canonicalise a NaN's payload on the way through a JS number, memcpy keeps it).
 */
function random(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  const u = new Uint32Array(a.buffer);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    // Exponent 255 (Inf/NaN) loses its top exponent bit; zeros, -0 and subnormals stay.
    u[i] = (s & 0x7f800000) === 0x7f800000 ? (s & 0xbfffffff) >>> 0 : s >>> 0;
  }
  a[0] = -0;
  return a;
}

describe.skipIf(!nativeAvailable())('native head layout moves', () => {
  const be = new NativeBackend({ threads: 2 });
  const ref = hostTensorOps;

  // [B, L, H, Hkv, D, qkStride, vStride]: plain, GQA, strided, D = 1, a large move (several pool tasks).
  const shapes = [
    [2, 3, 4, 4, 5, 5, 5],
    [3, 7, 6, 2, 8, 8, 8],
    [2, 5, 4, 1, 6, 9, 7],
    [1, 4, 3, 3, 1, 3, 2],
    [2, 1, 2, 2, 4, 4, 4],
    [4, 48, 8, 2, 32, 40, 36],
  ] as const;

  for (const [B, L, H, Hkv, D, qkS, vS] of shapes) {
    const tag = `B ${B} L ${L} H ${H} Hkv ${Hkv} D ${D} strides ${qkS}/${vS}`;
    const Q = (H + 2 * Hkv) * D;

    it(`splitQkv and mergeQkv match the loops bit for bit (${tag})`, () => {
      const qkv = random(B * L * Q, 1 + B * L);
      const sizes = [B * H * L * qkS, B * Hkv * L * qkS, B * Hkv * L * vS];
      // Both sides start from the same random contents: columns past D must keep them.
      const nat = sizes.map((n, i) => random(n, 17 + i));
      const want = nat.map((a) => a.slice());
      be.splitQkv(qkv, nat[0]!, nat[1]!, nat[2]!, B, L, H, Hkv, D, qkS, vS);
      ref.splitQkv(qkv, want[0]!, want[1]!, want[2]!, B, L, H, Hkv, D, qkS, vS);
      for (let i = 0; i < 3; i++) expect(bits(nat[i]!)).toEqual(bits(want[i]!));

      const grads = sizes.map((n, i) => random(n, 99 + i));
      const dNat = random(B * L * Q, 5);
      const dWant = random(B * L * Q, 6);
      be.mergeQkv(grads[0]!, grads[1]!, grads[2]!, dNat, B, L, H, Hkv, D, qkS, vS);
      ref.mergeQkv(grads[0]!, grads[1]!, grads[2]!, dWant, B, L, H, Hkv, D, qkS, vS);
      expect(bits(dNat)).toEqual(bits(dWant));
    });

    it(`headsToTokens and tokensToHeads match the loops bit for bit (${tag})`, () => {
      const heads = random(B * H * L * qkS, 3);
      const [tNat, tWant] = [random(B * L * H * D, 4), random(B * L * H * D, 8)];
      be.headsToTokens(heads, tNat, B, H, L, D, qkS);
      ref.headsToTokens(heads, tWant, B, H, L, D, qkS);
      expect(bits(tNat)).toEqual(bits(tWant));

      const hNat = random(B * H * L * qkS, 11);
      const hWant = hNat.slice();
      be.tokensToHeads(tNat, hNat, B, H, L, D, qkS);
      ref.tokensToHeads(tNat, hWant, B, H, L, D, qkS);
      expect(bits(hNat)).toEqual(bits(hWant));
    });
  }

  it('runs in the addon, not on the loops of HostBackendBase', () => {
    for (const op of ['splitQkv', 'mergeQkv', 'headsToTokens', 'tokensToHeads'] as const) {
      expect(be[op]).not.toBe(ref[op]);
    }
  });

  it('takes fp64 tensors through the loops (the same numbers)', () => {
    const [B, L, H, D] = [2, 3, 2, 4];
    const x = Float64Array.from({ length: B * L * H * D }, (_, i) => i / 3);
    const [a, b] = [new Float64Array(x.length), new Float64Array(x.length)];
    be.tokensToHeads(x, a, B, H, L, D);
    ref.tokensToHeads(x, b, B, H, L, D);
    expect(Array.from(a)).toEqual(Array.from(b));
  });

  it('refuses bad input with one HypeError naming the problem', () => {
    const [B, L, H, Hkv, D] = [2, 3, 4, 2, 5];
    const qkv = new Float32Array(B * L * (H + 2 * Hkv) * D);
    const q = new Float32Array(B * H * L * D);
    const kv = () => new Float32Array(B * Hkv * L * D);
    const cases: [() => void, RegExp][] = [
      [() => be.splitQkv(qkv.subarray(1), q, kv(), kv(), B, L, H, Hkv, D), /splitQkv: qkv has 239 elements but 240/],
      [() => be.splitQkv(qkv, q, kv().subarray(1), kv(), B, L, H, Hkv, D), /splitQkv: k has 59 elements but 60/],
      [() => be.splitQkv(qkv, q, kv(), kv(), B, L, H, Hkv, D, 6, D), /splitQkv: q has 120 elements but 143/],
      [() => be.splitQkv(qkv, q, kv(), kv(), B, L, H, Hkv, D, D, 4), /row stride of v must be an integer >= D = 5/],
      [() => be.mergeQkv(q, kv(), kv(), qkv.subarray(2), B, L, H, Hkv, D), /mergeQkv: dqkv has 238 elements/],
      [() => be.mergeQkv(q, kv(), kv(), qkv, B, 1.5, H, Hkv, D), /mergeQkv: L must be a non-negative integer/],
      [() => be.headsToTokens(q, new Float32Array(5), B, H, L, D), /headsToTokens: out has 5 elements but 120/],
      [() => be.tokensToHeads(q, q, B, H, L, D), /tokensToHeads: x and out share memory; pass separate tensors/],
      [() => be.splitQkv(qkv, q, kv(), kv(), B, L, -1, Hkv, D), /the head count of q must be a non-negative/],
    ];
    for (const [call, message] of cases) {
      expect(call).toThrow(HypeError);
      expect(call).toThrow(message);
    }
  });
});
