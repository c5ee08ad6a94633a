// Portable SIMD through GCC/Clang vector extensions: one source, width chosen at compile time from the target
// (-march=native): 16 lanes with AVX-512, 8 with AVX/AVX2, 4 otherwise (SSE, NEON, or scalar emulation by the
// compiler on targets without vectors). Nothing here needs intrinsics, so it compiles anywhere GCC/Clang does.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX512F__) && !defined(HYPE_FORCE_SCALAR)
#include <immintrin.h>
#endif

namespace hype {

#if defined(HYPE_FORCE_SCALAR)
constexpr int VL = 1;
#elif defined(__AVX512F__)
constexpr int VL = 16;
#elif defined(__AVX__)
constexpr int VL = 8;
#else
constexpr int VL = 4;
#endif

typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VL * sizeof(int32_t))));

inline vf load(const float* p) {
  vf r;
  std::memcpy(&r, p, sizeof r);  // compiles to an unaligned vector load
  return r;
}
inline void store(float* p, vf x) { std::memcpy(p, &x, sizeof x); }
inline vf splat(float x) { return vf{} + x; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }
inline vf iota() {
  vf r;
  for (int j = 0; j < VL; j++) r[j] = float(j);
  return r;
}

// exp(x) for x in fp32: range reduction x = n ln2 + r with |r| <= ln2/2, then a degree-7 minimax-style polynomial
// (Cephes expf coefficients; relative error ~1e-7). x < -87 gives exactly 0 (also for -inf), so masked logits
// vanish without producing subnormals. NaN gives NaN: the clamps keep a NaN operand (a NaN logit must poison its
// softmax row, as in the fp64 reference, never count as a weight of e^-87).
inline vf vexp(vf x) {
  const vf lo = splat(-87.0f);
#if defined(__AVX512F__) && !defined(HYPE_FORCE_SCALAR)
  // AVX-512: vscalefps applies 2^n directly (no integer bit assembly), vrndscaleps rounds; about half the µops.
  // The zero-masked forms with every lane selected: the same results, but their passthrough operand is zero, where
  // the unmasked ones pass _mm512_undefined_ps() (which GCC 12 reports as maybe-uninitialised). max/min return
  // their SECOND operand when either is NaN: x goes second so a NaN passes through.
  const __mmask16 all = 0xFFFF;
  const __m512 xc = _mm512_maskz_min_ps(all, _mm512_set1_ps(88.0f), _mm512_maskz_max_ps(all, (__m512)lo, (__m512)x));
  const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512 res = _mm512_maskz_scalef_ps(all, p, n);
  const __mmask16 under = _mm512_cmp_ps_mask((__m512)x, (__m512)lo, _CMP_LT_OQ);
  return (vf)_mm512_maskz_mov_ps((__mmask16)~under, res);
#else
  const vf hi = splat(88.0f);
  const vf xc = x < lo ? lo : (x > hi ? hi : x);  // NaN fails both tests and passes through
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const vf t = xc * 1.44269504088896341f + magic;
  const vf n = t - magic;
  vf r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const vi ni = (vi)t - (vi)magic;  // the rounded integer n
  const vi bits = (ni + 127) << 23;
  const vf res = p * (vf)bits;
  return x < lo ? vf{} : res;
#endif
}

}  // namespace hype
