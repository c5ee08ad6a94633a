// The addon's whole N-API surface: every function JavaScript can call, in this one file (kernels live in
// attention.cc, gemm.cc, layers.cc). TypeScript (src/backend/validate.ts, native.ts) validates every call first
// and owns the error messages users see; the checks here only protect memory: argument types, every buffer length
// the kernel will touch, index ranges, and every size product computed here (checked for overflow, so sizes whose
// product wraps are refused instead of passing a short buffer to a kernel). A failed check throws a JavaScript
// Error "hype native: ...".
#include <napi.h>

#include <cmath>
#include <exception>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "bf16.h"
#include "gemm.h"
#include "householder.h"
#include "layers.h"
#include "pool.h"
#include "simd.h"

namespace {

using hype::AttentionParams;

/** Bumped whenever a kernel's signature or semantics change; src/backend/native.ts refuses any other value. */
constexpr int kAbi = 5;

struct Refusal : std::exception {
  std::string msg;
  explicit Refusal(std::string m) : msg(std::move(m)) {}
  const char* what() const noexcept override { return msg.c_str(); }
};

void require(bool ok, const std::string& msg) {
  if (!ok) throw Refusal("hype native: " + msg);
}

// Every size is a non-negative integer below 2^53 (exact in a JS number); products are checked against the same.
constexpr long kMaxSize = 1L << 53;

long times(long a, long b) {
  long r = 0;
  require(a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, &r) && r <= kMaxSize,
          "size overflows: " + std::to_string(a) + " x " + std::to_string(b) + " exceeds 2^53 elements");
  return r;
}
long times(long a, long b, long c) { return times(times(a, b), c); }
long times(long a, long b, long c, long d) { return times(times(a, b, c), d); }
long plus(long a, long b) {
  long r = 0;
  require(!__builtin_add_overflow(a, b, &r) && r <= kMaxSize && r >= -kMaxSize, "size overflows");
  return r;
}

template <typename T, napi_typedarray_type kType>
T* typed(const Napi::Value& v, const char* what, long n, const char* typeName) {
  require(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == kType,
          std::string(what) + " must be a " + typeName);
  auto a = v.As<Napi::TypedArrayOf<T>>();
  require(n >= 0 && a.ElementLength() >= size_t(n),
          std::string(what) + " has " + std::to_string(a.ElementLength()) + " elements, needs " + std::to_string(n));
  return a.Data();
}
float* f32(const Napi::Value& v, const char* what, long n) {
  return typed<float, napi_float32_array>(v, what, n, "Float32Array");
}
double* f64(const Napi::Value& v, const char* what, long n) {
  return typed<double, napi_float64_array>(v, what, n, "Float64Array");
}
uint16_t* u16(const Napi::Value& v, const char* what, long n) {
  return typed<uint16_t, napi_uint16_array>(v, what, n, "Uint16Array of bf16 bits");
}
bool isU16(const Napi::Value& v) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint16_array;
}
int32_t* i32(const Napi::Value& v, const char* what, long n) {
  return typed<int32_t, napi_int32_array>(v, what, n, "Int32Array");
}

double number(const Napi::Value& v, const char* what) {
  require(v.IsNumber(), std::string(what) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}
/** An integer in [lo, hi] (bounds within +-2^53). */
long integer(const Napi::Value& v, const char* what, long lo, long hi) {
  const double x = number(v, what);
  require(std::isfinite(x) && x == std::floor(x) && x >= double(lo) && x <= double(hi),
          std::string(what) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return long(x);
}
long dim(const Napi::Value& v, const char* what) { return integer(v, what, 0, kMaxSize); }
double finite(const Napi::Value& v, const char* what) {
  const double x = number(v, what);
  require(std::isfinite(x), std::string(what) + " must be finite");
  return x;
}
bool boolean(const Napi::Value& v, const char* what) {
  require(v.IsBoolean(), std::string(what) + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

void requireIndices(const int32_t* idx, long n, long bound, const char* what) {
  for (long r = 0; r < n; r++)
    require(idx[r] >= 0 && idx[r] < bound, std::string(what) + " " + std::to_string(idx[r]) + " at row " +
                                               std::to_string(r) + " is outside [0, " + std::to_string(bound) + ")");
}

using Body = std::function<Napi::Value(const Napi::CallbackInfo&)>;

/** A JS function that checks its argument count and turns every C++ exception into a JavaScript Error. */
Napi::Function guarded(Napi::Env env, const char* name, size_t argc, const char* usage, Body body) {
  return Napi::Function::New(env, [name, argc, usage, body](const Napi::CallbackInfo& info) -> Napi::Value {
    try {
      require(info.Length() == argc, std::string(name) + usage);
      return body(info);
    } catch (const Refusal& e) {
      Napi::Error::New(info.Env(), e.msg).ThrowAsJavaScriptException();
    } catch (const std::bad_alloc&) {
      Napi::Error::New(info.Env(), "hype native: out of memory").ThrowAsJavaScriptException();
    } catch (const std::exception& e) {
      Napi::Error::New(info.Env(), std::string("hype native: ") + e.what()).ThrowAsJavaScriptException();
    }
    return info.Env().Undefined();
  });
}

// ------------------------------------------------------------------------------------------- attention and gemm

/**
 * The sizes every attention-shaped call shares (batch, heads, kvHeads dividing heads, lq, lk, headDim), each a
 * positive integer within the bounds the kernels rely on; returns that bound for the caller's own checks.
 */
template <typename P>
long readSizes(const Napi::Object& o, P& p) {
  const long big = 1L << 40;
  p.batch = integer(o.Get("batch"), "batch", 1, big);
  p.heads = integer(o.Get("heads"), "heads", 1, big);
  p.kvHeads = integer(o.Get("kvHeads"), "kvHeads", 1, p.heads);
  require(p.heads % p.kvHeads == 0, "heads must be a multiple of kvHeads");
  p.lq = integer(o.Get("lq"), "lq", 1, big);
  p.lk = integer(o.Get("lk"), "lk", 1, big);
  p.d = integer(o.Get("headDim"), "headDim", 1, 1 << 16);
  return big;
}

/** Shape, options and the distance table from a plain object, with every bound the kernels rely on. */
AttentionParams readParams(const Napi::Object& o) {
  AttentionParams p{};
  const long big = readSizes(o, p);
  p.dv = integer(o.Get("valueDim"), "valueDim", 1, 1 << 16);
  p.queryOffset = integer(o.Get("queryOffset"), "queryOffset", -big, big);
  p.causal = boolean(o.Get("causal"), "causal");
  p.scale = float(finite(o.Get("scale"), "scale"));
  Napi::Value table = o.Get("table");
  if (!table.IsNull() && !table.IsUndefined()) {
    require(table.IsTypedArray(), "table must be a Float64Array or Float32Array");
    const long span = std::max(0L, p.queryOffset + p.lq + p.lk - 1);
    const long need = times(p.heads, span);
    // Without the causal mask, distances down to queryOffset - (Lk - 1) are read: they must have entries.
    require(p.causal || p.queryOffset >= 0, "a distance table without a causal mask needs queryOffset >= 0");
    p.bias.span = span;
    if (table.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array)
      p.bias.f64 = f64(table, "table", need);
    else
      p.bias.f32 = f32(table, "table", need);
  }
  return p;
}

/** gemm's scalar arguments (transA, transB, m, n, k, alpha, _, lda, _, ldb, beta, _, ldc) and buffer lengths. */
struct GemmArgs {
  bool ta, tb;
  long m, n, k, lda, ldb, ldc, aNeed, bNeed, cNeed;
  float alpha, beta;
};

GemmArgs gemmArgs(const Napi::CallbackInfo& info) {
  GemmArgs g{};
  g.ta = boolean(info[0], "transA");
  g.tb = boolean(info[1], "transB");
  g.m = dim(info[2], "m");
  g.n = dim(info[3], "n");
  g.k = dim(info[4], "k");
  g.alpha = float(finite(info[5], "alpha"));
  g.lda = dim(info[7], "lda");
  g.ldb = dim(info[9], "ldb");
  g.ldc = dim(info[12], "ldc");
  g.beta = float(finite(info[10], "beta"));
  const long m = g.m, n = g.n, k = g.k;
  require(g.lda >= (g.ta ? m : k) && g.ldb >= (g.tb ? k : n) && g.ldc >= n,
          "a leading dimension is smaller than its row");
  const long aRows = g.ta ? k : m, aCols = g.ta ? m : k, bRows = g.tb ? n : k, bCols = g.tb ? k : n;
  g.aNeed = (aRows == 0 || aCols == 0) ? 0 : plus(times(aRows - 1, g.lda), aCols);
  g.bNeed = (bRows == 0 || bCols == 0) ? 0 : plus(times(bRows - 1, g.ldb), bCols);
  g.cNeed = (m == 0 || n == 0) ? 0 : plus(times(m - 1, g.ldc), n);
  return g;
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  const GemmArgs g = gemmArgs(info);
  const float* a = f32(info[6], "A", g.aNeed);
  const float* b = f32(info[8], "B", g.bNeed);
  float* c = f32(info[11], "C", g.cNeed);
  hype::sgemm(g.ta, g.tb, g.m, g.n, g.k, g.alpha, a, g.lda, b, g.ldb, g.beta, c, g.ldc);
  return info.Env().Undefined();
}

/**
 * An operand of element type T: fp32 (Float32Array), or bf16 bits (Uint16Array) for the bf16 kernels, which also
 * take a Float32Array and round it here (bf16Round, as toBf16) into a buffer kept per operand `slot` and calling
 * thread: mixed precision's operands are fp32 tensors, and this spares it a fresh bf16 copy per call.
 */
template <typename T>
const T* operand(const Napi::Value& v, const char* what, long n, int slot);
template <>
const float* operand<float>(const Napi::Value& v, const char* what, long n, int) {
  return f32(v, what, n);
}
template <>
const uint16_t* operand<uint16_t>(const Napi::Value& v, const char* what, long n, int slot) {
  if (isU16(v)) return u16(v, what, n);
  require(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array,
          std::string(what) + " must be a Uint16Array of bf16 bits or a Float32Array");
  const float* x = f32(v, what, n);
  static thread_local std::vector<uint16_t> kept[4];
  std::vector<uint16_t>& store = kept[slot];
  if (store.size() < size_t(n)) store.resize(size_t(n));
  hype::toBf16Bits(x, store.data(), n);
  return store.data();
}

/**
 * The padded and paired copies the bf16 kernels make have up to (L + 1) (n + 1) elements per head: their sizes must
 * fit as well as the operands'.
 */
void checkPaddedCopies(const AttentionParams& p) {
  times(p.batch, p.heads, p.lq + 1, p.d + 1);
  times(p.batch, p.heads, p.lq + 1, p.dv + 1);
  times(p.batch, p.kvHeads, p.lk + 1, p.d + 1);
  times(p.batch, p.kvHeads, p.lk + 1, p.dv + 1);
}

template <typename T>
Napi::Value AttentionForwardOf(const Napi::CallbackInfo& info,
                               void (*kernel)(const AttentionParams&, const T*, const T*, const T*, float*, float*)) {
  require(info[0].IsObject(), "params must be an object");
  const AttentionParams p = readParams(info[0].As<Napi::Object>());
  if (!std::is_same<T, float>::value) checkPaddedCopies(p);
  const T* q = operand<T>(info[1], "q", times(p.batch, p.heads, p.lq, p.d), 0);
  const T* k = operand<T>(info[2], "k", times(p.batch, p.kvHeads, p.lk, p.d), 1);
  const T* v = operand<T>(info[3], "v", times(p.batch, p.kvHeads, p.lk, p.dv), 2);
  float* out = f32(info[4], "out", times(p.batch, p.heads, p.lq, p.dv));
  float* lse = f32(info[5], "lse", times(p.batch, p.heads, p.lq));
  kernel(p, q, k, v, out, lse);
  return info.Env().Undefined();
}

template <typename T>
Napi::Value AttentionBackwardOf(const Napi::CallbackInfo& info,
                                void (*kernel)(const AttentionParams&, const T*, const T*, const T*, const float*,
                                               const float*, const T*, float*, float*, float*, double*)) {
  require(info[0].IsObject(), "params must be an object");
  const AttentionParams p = readParams(info[0].As<Napi::Object>());
  if (!std::is_same<T, float>::value) checkPaddedCopies(p);
  const long qN = times(p.batch, p.heads, p.lq, p.d), kN = times(p.batch, p.kvHeads, p.lk, p.d);
  const long vN = times(p.batch, p.kvHeads, p.lk, p.dv), oN = times(p.batch, p.heads, p.lq, p.dv);
  const T* q = operand<T>(info[1], "q", qN, 0);
  const T* k = operand<T>(info[2], "k", kN, 1);
  const T* v = operand<T>(info[3], "v", vN, 2);
  const float* out = f32(info[4], "out", oN);
  const float* lse = f32(info[5], "lse", times(p.batch, p.heads, p.lq));
  const T* dout = operand<T>(info[6], "dOut", oN, 3);
  float* dq = f32(info[7], "dq", qN);
  float* dk = f32(info[8], "dk", kN);
  float* dv = f32(info[9], "dv", vN);
  double* dTable = nullptr;
  if (p.bias.any()) dTable = f64(info[10], "dTable", times(p.heads, p.bias.span));
  kernel(p, q, k, v, out, lse, dout, dq, dk, dv, dTable);
  return info.Env().Undefined();
}

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  return AttentionForwardOf<float>(info, hype::attentionForward);
}
Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  return AttentionBackwardOf<float>(info, hype::attentionBackward);
}


// ------------------------------------------------------------------------------------------- bf16 operands

Napi::Value GemmBf16(const Napi::CallbackInfo& info) {
  const GemmArgs g = gemmArgs(info);
  // The kernel packs op(A) and op(B) into pair words (k rounded up to even): those sizes must fit too.
  times(g.m, g.k + 1);
  times(g.k + 1, g.n);
  // A and B each: bf16 bits (Uint16Array) or fp32 values (Float32Array) the kernel rounds to bf16 as it packs them.
  float* c = f32(info[11], "C", g.cNeed);
  const bool aBits = isU16(info[6]), bBits = isU16(info[8]);
  auto run = [&](const auto* a, const auto* b) {
    hype::sgemmBf16(g.ta, g.tb, g.m, g.n, g.k, g.alpha, a, g.lda, b, g.ldb, g.beta, c, g.ldc);
  };
  if (aBits && bBits) run(u16(info[6], "A", g.aNeed), u16(info[8], "B", g.bNeed));
  else if (aBits) run(u16(info[6], "A", g.aNeed), f32(info[8], "B", g.bNeed));
  else if (bBits) run(f32(info[6], "A", g.aNeed), u16(info[8], "B", g.bNeed));
  else run(f32(info[6], "A", g.aNeed), f32(info[8], "B", g.bNeed));
  return info.Env().Undefined();
}

Napi::Value AttentionForwardBf16(const Napi::CallbackInfo& info) {
  return AttentionForwardOf<uint16_t>(info, hype::attentionForwardBf16);
}

Napi::Value AttentionBackwardBf16(const Napi::CallbackInfo& info) {
  return AttentionBackwardOf<uint16_t>(info, hype::attentionBackwardBf16);
}

/**
 * Index of the first NaN/Inf among bf16 bits (exponent field all ones), or -1: a read-only blockwise scan. A
 * Float32Array is scanned for the values whose bf16 rounding is NaN/Inf: NaN, Inf and |x| >= 0x7f7f8000's value
 * (the finite fp32 values beyond bf16's range).
 */
Napi::Value FirstNonFiniteBf16(const Napi::CallbackInfo& info) {
  constexpr long kBlock = 64;
  if (!isU16(info[0])) {
    const uint32_t* u = reinterpret_cast<const uint32_t*>(f32(info[0], "array", 0));
    const long n = long(info[0].As<Napi::Float32Array>().ElementLength());
    long i = 0;
    for (; i + kBlock <= n; i += kBlock) {
      int any = 0;
      for (long j = i; j < i + kBlock; j++) any |= (u[j] & 0x7fffffffu) >= 0x7f7f8000u;
      if (any) break;
    }
    for (; i < n; i++)
      if ((u[i] & 0x7fffffffu) >= 0x7f7f8000u) return Napi::Number::New(info.Env(), double(i));
    return Napi::Number::New(info.Env(), -1);
  }
  const uint16_t* x = u16(info[0], "array", 0);
  const long n = long(info[0].As<Napi::Uint16Array>().ElementLength());
  long i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    int any = 0;
    for (long j = i; j < i + kBlock; j++) any |= (x[j] & 0x7f80) == 0x7f80;  // vectorised: no early exit inside
    if (any) break;
  }
  for (; i < n; i++)
    if ((x[i] & 0x7f80) == 0x7f80) return Napi::Number::New(info.Env(), double(i));
  return Napi::Number::New(info.Env(), -1);
}

/** bits = bf16(x), round to nearest even (NaN stays NaN): the conversion a bf16 tensor is made with. */
Napi::Value ToBf16(const Napi::CallbackInfo& info) {
  const float* x = f32(info[0], "x", 0);
  const long n = long(info[0].As<Napi::Float32Array>().ElementLength());
  hype::toBf16Bits(x, u16(info[1], "bits", n), n);
  return info.Env().Undefined();
}

/** Which bf16 kernel runs now: {supported: the CPU has AVX512-BF16, fast: it is used (HYPE_NO_BF16 unset)}. */
Napi::Value Bf16Info(const Napi::CallbackInfo& info) {
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("supported", hype::bf16Supported());
  o.Set("fast", hype::bf16Fast());
  return o;
}

// ------------------------------------------------------------------------------------------ Householder walk

/** The walk's shape, positions, chunk and scale from a plain object, with every bound the kernels rely on. */
hype::WalkParams readWalkParams(const Napi::Value& v) {
  require(v.IsObject(), "params must be an object");
  const Napi::Object o = v.As<Napi::Object>();
  hype::WalkParams p{};
  readSizes(o, p);
  require(p.lk >= p.lq, "lk must be at least lq");
  // Every query needs a factor at its own position: 0 <= queryOffset <= Lk - Lq.
  p.queryOffset = integer(o.Get("queryOffset"), "queryOffset", 0, p.lk - p.lq);
  p.chunk = integer(o.Get("chunk"), "chunk", 1, 1 << 20);
  p.scale = finite(o.Get("scale"), "scale");
  return p;
}

/** The forward's state arrays (kHat, zs, u in the dtype T of q and k; ys fp64), sized as walkStateSizes. */
template <typename T, napi_typedarray_type kType>
hype::WalkState<T> walkState(const Napi::CallbackInfo& info, int at, const hype::WalkParams& p, const char* typeName) {
  const long last = p.lastChunk();
  const long kvRows = times(p.batch, p.kvHeads, p.lk, p.d);
  return {typed<T, kType>(info[at], "kHat", last > 0 ? kvRows : 0, typeName),
          typed<T, kType>(info[at + 1], "zs", last > 0 ? times(p.batch, p.heads, p.lq, p.d) : 0, typeName),
          typed<T, kType>(info[at + 2], "u", last > 1 ? times(times(p.batch, p.kvHeads, last), p.d, p.d) : 0,
                          typeName),
          f64(info[at + 3], "ys", last > 1 ? kvRows : 0)};
}

template <typename T, napi_typedarray_type kType>
void walkForward(const Napi::CallbackInfo& info, const hype::WalkParams& p, const char* typeName) {
  const long kvN = times(p.batch, p.kvHeads, p.lk, p.d);
  const T* q = typed<T, kType>(info[1], "q", times(p.batch, p.heads, p.lq, p.d), typeName);
  const T* k = typed<T, kType>(info[2], "k", kvN, typeName);
  const double* w = f64(info[3], "w", kvN);
  const double* beta = f64(info[4], "beta", times(p.batch, p.kvHeads, p.lk));
  T* logits = typed<T, kType>(info[5], "logits", times(p.batch, p.heads, p.lq, p.lk), typeName);
  hype::householderWalkForward(p, q, k, w, beta, logits, walkState<T, kType>(info, 6, p, typeName));
}

template <typename T, napi_typedarray_type kType>
void walkBackward(const Napi::CallbackInfo& info, const hype::WalkParams& p, const char* typeName) {
  const long qN = times(p.batch, p.heads, p.lq, p.d), kvN = times(p.batch, p.kvHeads, p.lk, p.d);
  const long betaN = times(p.batch, p.kvHeads, p.lk);
  const T* q = typed<T, kType>(info[1], "q", qN, typeName);
  const T* k = typed<T, kType>(info[2], "k", kvN, typeName);
  const double* w = f64(info[3], "w", kvN);
  const double* beta = f64(info[4], "beta", betaN);
  const T* dLogits = typed<T, kType>(info[5], "dLogits", times(p.batch, p.heads, p.lq, p.lk), typeName);
  const hype::WalkState<T> st = walkState<T, kType>(info, 6, p, typeName);
  T* dq = typed<T, kType>(info[10], "dq", qN, typeName);
  T* dk = typed<T, kType>(info[11], "dk", kvN, typeName);
  double* dw = f64(info[12], "dw", kvN);
  double* dbeta = f64(info[13], "dbeta", betaN);
  hype::householderWalkBackward(p, q, k, w, beta, dLogits, st, dq, dk, dw, dbeta);
}

/** fp32 when q is a Float32Array, else fp64 (every array of that dtype must match). */
bool isF32(const Napi::Value& v) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array;
}

/** The walk's forward or backward, on the kernel for the dtype of q. */
Napi::Value HouseholderWalk(const Napi::CallbackInfo& info, bool backward) {
  const hype::WalkParams p = readWalkParams(info[0]);
  const bool single = isF32(info[1]);
  if (backward)
    single ? walkBackward<float, napi_float32_array>(info, p, "Float32Array")
           : walkBackward<double, napi_float64_array>(info, p, "Float64Array");
  else
    single ? walkForward<float, napi_float32_array>(info, p, "Float32Array")
           : walkForward<double, napi_float64_array>(info, p, "Float64Array");
  return info.Env().Undefined();
}

/** Index of the first NaN/Inf in a Float32Array (-Infinity allowed on request), or -1: a read-only SIMD scan. */
Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
  const float* x = f32(info[0], "array", 0);
  const long n = long(info[0].As<Napi::Float32Array>().ElementLength());
  const bool allowNegInf = boolean(info[1], "allowNegInf");
  using hype::vf;
  using hype::VL;
  auto bad = [&](float v) { return !(v - v == 0.0f) && !(allowNegInf && v == -INFINITY); };
  long i = 0;
  for (; i + 4 * VL <= n; i += 4 * VL) {
    // x - x is 0 for finite x and NaN for NaN or +-Inf; NaN compares unequal to itself.
    vf acc = vf{};
    for (int u = 0; u < 4; u++) {
      const vf v = hype::load(x + i + u * VL);
      acc += v - v;
    }
    const hype::vi nan = acc != acc;
    bool any = false;
    for (int j = 0; j < VL; j++) any |= nan[j] != 0;
    if (any) {
      for (long j = i; j < i + 4 * VL; j++)
        if (bad(x[j])) return Napi::Number::New(info.Env(), double(j));
    }
  }
  for (; i < n; i++)
    if (bad(x[i])) return Napi::Number::New(info.Env(), double(i));
  return Napi::Number::New(info.Env(), -1);
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  hype::Pool::instance().resize(int(integer(info[0], "thread count", 1, 1024)));
  return Napi::Number::New(info.Env(), hype::Pool::instance().size());
}

Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), hype::Pool::instance().size());
}

// ------------------------------------------------------------------------------------------------ layer ops

Napi::Value LayerNormForward(const Napi::CallbackInfo& info) {
  const long rows = dim(info[6], "rows"), width = dim(info[7], "width");
  const long n = times(rows, width);
  const float eps = float(finite(info[8], "eps"));
  hype::layerNormForward(f32(info[0], "x", n), f32(info[1], "gamma", width), f32(info[2], "beta", width),
                         f32(info[3], "out", n), f32(info[4], "mean", rows), f32(info[5], "rstd", rows), rows, width,
                         eps);
  return info.Env().Undefined();
}

Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  const long rows = dim(info[8], "rows"), width = dim(info[9], "width");
  const long n = times(rows, width);
  hype::layerNormBackward(f32(info[0], "dOut", n), f32(info[1], "x", n), f32(info[2], "gamma", width),
                          f32(info[3], "mean", rows), f32(info[4], "rstd", rows), f32(info[5], "dx", n),
                          f32(info[6], "dGamma", width), f32(info[7], "dBeta", width), rows, width);
  return info.Env().Undefined();
}

Napi::Value GeluForward(const Napi::CallbackInfo& info) {
  const long n = dim(info[2], "n");
  hype::geluForward(f32(info[0], "x", n), f32(info[1], "out", n), n);
  return info.Env().Undefined();
}

Napi::Value GeluBackward(const Napi::CallbackInfo& info) {
  const long n = dim(info[3], "n");
  hype::geluBackward(f32(info[0], "x", n), f32(info[1], "dOut", n), f32(info[2], "dx", n), n);
  return info.Env().Undefined();
}

Napi::Value BiasAdd(const Napi::CallbackInfo& info) {
  const long rows = dim(info[2], "rows"), width = dim(info[3], "width");
  hype::biasAdd(f32(info[0], "out", times(rows, width)), f32(info[1], "bias", width), rows, width);
  return info.Env().Undefined();
}

Napi::Value BiasBackward(const Napi::CallbackInfo& info) {
  const long rows = dim(info[2], "rows"), width = dim(info[3], "width");
  hype::biasBackward(f32(info[0], "dOut", times(rows, width)), f32(info[1], "dBias", width), rows, width);
  return info.Env().Undefined();
}

Napi::Value SoftmaxCrossEntropyForward(const Napi::CallbackInfo& info) {
  const long rows = dim(info[3], "rows"), vocab = dim(info[4], "vocab");
  require(rows >= 1 && vocab >= 1, "rows and vocab must be positive");
  const int32_t* t = i32(info[1], "targets", rows);
  requireIndices(t, rows, vocab, "target");
  const double mean = hype::softmaxCrossEntropyForward(f32(info[0], "logits", times(rows, vocab)), t,
                                                       f32(info[2], "losses", rows), rows, vocab);
  return Napi::Number::New(info.Env(), mean);
}

Napi::Value SoftmaxCrossEntropyBackward(const Napi::CallbackInfo& info) {
  const long rows = dim(info[3], "rows"), vocab = dim(info[4], "vocab");
  require(vocab >= 1 || rows == 0, "vocab must be positive");
  const int32_t* t = i32(info[1], "targets", rows);
  requireIndices(t, rows, vocab, "target");
  hype::softmaxCrossEntropyBackward(f32(info[0], "logits", times(rows, vocab)), t,
                                    f32(info[2], "dLogits", times(rows, vocab)), rows, vocab,
                                    float(finite(info[5], "dLoss")));
  return info.Env().Undefined();
}

Napi::Value PrefixSoftmaxRows(const Napi::CallbackInfo& info) {
  const long rows = dim(info[1], "rows"), cols = dim(info[2], "cols");
  float* x = f32(info[0], "x", times(rows, cols));
  const int32_t* vis = i32(info[3], "visible", rows);
  for (long r = 0; r < rows; r++)
    require(vis[r] >= 0 && vis[r] <= cols, "visible " + std::to_string(vis[r]) + " at row " + std::to_string(r) +
                                               " is outside [0, " + std::to_string(cols) + "]");
  hype::prefixSoftmaxRows(x, rows, cols, vis);
  return info.Env().Undefined();
}

Napi::Value AdamwStep(const Napi::CallbackInfo& info) {
  const long n = dim(info[4], "n");
  require(info[5].IsObject(), "the AdamW hyperparameters must be an object");
  const Napi::Object o = info[5].As<Napi::Object>();
  hype::AdamWScalars h{finite(o.Get("lr"), "lr"),   finite(o.Get("beta1"), "beta1"),
                       finite(o.Get("beta2"), "beta2"), finite(o.Get("eps"), "eps"),
                       finite(o.Get("weightDecay"), "weightDecay"), double(dim(o.Get("step"), "step"))};
  require(h.step >= 1, "step must be at least 1");
  require(h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1, "betas must be in [0, 1)");
  hype::adamwStep(f32(info[0], "param", n), f32(info[1], "grad", n), f32(info[2], "m", n), f32(info[3], "v", n), n,
                  h);
  return info.Env().Undefined();
}

Napi::Value EmbeddingForward(const Napi::CallbackInfo& info) {
  const long n = dim(info[3], "n"), width = dim(info[4], "width"), vocab = dim(info[5], "vocab");
  const int32_t* t = i32(info[1], "tokens", n);
  requireIndices(t, n, vocab, "token");
  hype::embeddingForward(f32(info[0], "table", times(vocab, width)), t, f32(info[2], "out", times(n, width)), n,
                         width);
  return info.Env().Undefined();
}

Napi::Value EmbeddingBackward(const Napi::CallbackInfo& info) {
  const long n = dim(info[3], "n"), width = dim(info[4], "width");
  const int32_t* t = i32(info[1], "tokens", n);
  require(width >= 1, "width must be positive");
  // The table's row count is implied by its length (the op's signature carries no vocab).
  f32(info[2], "dTable", 0);  // type check
  const long vocab = long(info[2].As<Napi::Float32Array>().ElementLength()) / width;
  requireIndices(t, n, vocab, "token");
  hype::embeddingBackward(f32(info[0], "dOut", times(n, width)), t, f32(info[2], "dTable", times(vocab, width)), n,
                          width);
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  struct Entry {
    const char* name;
    size_t argc;
    const char* usage;
    Body body;
  };
  const Entry entries[] = {
      {"firstNonFinite", 2, "(array, allowNegInf)", FirstNonFinite},
      {"setThreads", 1, "(n)", SetThreads},
      {"threads", 0, "()", Threads},
      {"gemm", 13, "(transA, transB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)", Gemm},
      {"attentionForward", 6, "(params, q, k, v, out, lse)", AttentionForward},
      {"attentionBackward", 11, "(params, q, k, v, out, lse, dOut, dq, dk, dv, dTable)", AttentionBackward},
      {"gemmBf16", 13, "(transA, transB, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc)", GemmBf16},
      {"attentionForwardBf16", 6, "(params, q, k, v, out, lse)", AttentionForwardBf16},
      {"attentionBackwardBf16", 11, "(params, q, k, v, out, lse, dOut, dq, dk, dv, dTable)", AttentionBackwardBf16},
      {"bf16Info", 0, "()", Bf16Info},
      {"firstNonFiniteBf16", 1, "(bits)", FirstNonFiniteBf16},
      {"toBf16", 2, "(x, bits)", ToBf16},
      {"layerNormForward", 9, "(x, gamma, beta, out, mean, rstd, rows, width, eps)", LayerNormForward},
      {"layerNormBackward", 10, "(dOut, x, gamma, mean, rstd, dx, dGamma, dBeta, rows, width)", LayerNormBackward},
      {"geluForward", 3, "(x, out, n)", GeluForward},
      {"geluBackward", 4, "(x, dOut, dx, n)", GeluBackward},
      {"biasAdd", 4, "(out, bias, rows, width)", BiasAdd},
      {"biasBackward", 4, "(dOut, dBias, rows, width)", BiasBackward},
      {"softmaxCrossEntropyForward", 5, "(logits, targets, losses, rows, vocab)", SoftmaxCrossEntropyForward},
      {"softmaxCrossEntropyBackward", 6, "(logits, targets, dLogits, rows, vocab, dLoss)",
       SoftmaxCrossEntropyBackward},
      {"prefixSoftmaxRows", 4, "(x, rows, cols, visible)", PrefixSoftmaxRows},
      {"adamwStep", 6, "(param, grad, m, v, n, {lr, beta1, beta2, eps, weightDecay, step})", AdamwStep},
      {"embeddingForward", 6, "(table, tokens, out, n, width, vocab)", EmbeddingForward},
      {"embeddingBackward", 5, "(dOut, tokens, dTable, n, width)", EmbeddingBackward},
      {"householderWalkForward", 10, "(params, q, k, w, beta, logits, kHat, zs, u, ys)",
       [](const Napi::CallbackInfo& info) { return HouseholderWalk(info, false); }},
      {"householderWalkBackward", 14, "(params, q, k, w, beta, dLogits, kHat, zs, u, ys, dq, dk, dw, dbeta)",
       [](const Napi::CallbackInfo& info) { return HouseholderWalk(info, true); }},
  };
  for (const Entry& e : entries) exports.Set(e.name, guarded(env, e.name, e.argc, e.usage, e.body));
  exports.Set("vectorWidth", Napi::Number::New(env, hype::VL));
  exports.Set("abi", Napi::Number::New(env, kAbi));
  return exports;
}

}  // namespace

NODE_API_MODULE(hype_native, Init)
