// N-API surface of the addon. TypeScript (src/backend/validate.ts) validates every call first; the checks here are
// a second fence so that no input, however wrong, can make native code read or write out of bounds: they throw a
// JavaScript error instead.
#include <napi.h>

#include <cmath>
#include <exception>
#include <functional>
#include <string>

#include "attention.h"
#include "gemm.h"
#include "layers.h"
#include "pool.h"
#include "simd.h"

namespace {

using hype::AttentionParams;
using hype::BiasGrads;

struct Refusal : std::exception {
  std::string msg;
  explicit Refusal(std::string m) : msg(std::move(m)) {}
  const char* what() const noexcept override { return msg.c_str(); }
};

void require(bool ok, const std::string& msg) {
  if (!ok) throw Refusal("hype native: " + msg);
}

float* f32(const Napi::Value& v, const char* what, size_t n) {
  require(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array,
          std::string(what) + " must be a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  require(a.ElementLength() >= n, std::string(what) + " has " + std::to_string(a.ElementLength()) +
                                      " elements, needs " + std::to_string(n));
  return a.Data();
}

double* f64(const Napi::Value& v, const char* what, size_t n) {
  require(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array,
          std::string(what) + " must be a Float64Array");
  auto a = v.As<Napi::Float64Array>();
  require(a.ElementLength() >= n, std::string(what) + " has " + std::to_string(a.ElementLength()) +
                                      " elements, needs " + std::to_string(n));
  return a.Data();
}

long integer(const Napi::Object& o, const char* key, long lo, long hi) {
  Napi::Value v = o.Get(key);
  require(v.IsNumber(), std::string(key) + " must be a number");
  double x = v.As<Napi::Number>().DoubleValue();
  require(std::isfinite(x) && x == std::floor(x) && x >= double(lo) && x <= double(hi),
          std::string(key) + " must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return long(x);
}

/** Reads shape, options and bias parameters from a plain object, checking every bound the kernels rely on. */
AttentionParams readParams(const Napi::Object& o) {
  AttentionParams p{};
  const long big = 1L << 40;
  p.batch = integer(o, "batch", 1, big);
  p.heads = integer(o, "heads", 1, big);
  p.kvHeads = integer(o, "kvHeads", 1, p.heads);
  require(p.heads % p.kvHeads == 0, "heads must be a multiple of kvHeads");
  p.lq = integer(o, "lq", 1, big);
  p.lk = integer(o, "lk", 1, big);
  p.d = integer(o, "headDim", 1, 1 << 16);
  p.dv = integer(o, "valueDim", 1, 1 << 16);
  p.queryOffset = integer(o, "queryOffset", -big, big);
  Napi::Value causal = o.Get("causal");
  require(causal.IsBoolean(), "causal must be a boolean");
  p.causal = causal.As<Napi::Boolean>().Value();
  Napi::Value scale = o.Get("scale");
  require(scale.IsNumber() && std::isfinite(scale.As<Napi::Number>().DoubleValue()), "scale must be finite");
  p.scale = float(scale.As<Napi::Number>().DoubleValue());
  const long kind = integer(o, "biasKind", 0, 3);
  p.bias.kind = int(kind);
  if (kind == hype::kBiasAlibi) p.bias.slopes = f64(o.Get("slopes"), "slopes", size_t(p.heads));
  if (kind == hype::kBiasHype) {
    p.bias.pairs = int(integer(o, "pairs", 1, 1 << 20));
    p.bias.tau = f64(o.Get("tau"), "tau", size_t(p.heads * p.bias.pairs));
    p.bias.mu = f64(o.Get("mu"), "mu", size_t(p.heads * p.bias.pairs));
  }
  if (kind == hype::kBiasTable) {
    p.bias.buckets = int(integer(o, "buckets", 1, 1 << 24));
    p.bias.values = f64(o.Get("values"), "values", size_t(p.heads * p.bias.buckets));
    Napi::Value bo = o.Get("bucketOf");
    require(bo.IsTypedArray() && bo.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array,
            "bucketOf must be an Int32Array");
    auto arr = bo.As<Napi::Int32Array>();
    // Every distance a visible pair can have must index bucketOf, and every bucket must index values.
    const long first = p.causal ? std::max<long>(0, p.queryOffset - (p.lk - 1)) : p.queryOffset - (p.lk - 1);
    const long last = p.queryOffset + p.lq - 1;
    if (first <= last) {
      require(first + p.lk - 1 >= 0 && last + p.lk - 1 < long(arr.ElementLength()),
              "bucketOf does not cover every reachable distance");
      for (long D = first; D <= last; D++) {
        const int32_t bk = arr[size_t(D + p.lk - 1)];
        require(bk >= 0 && bk < p.bias.buckets, "bucketOf holds a bucket outside [0, buckets)");
      }
    }
    p.bias.bucketOf = arr.Data();
  }
  return p;
}

Napi::Value withGuard(const Napi::CallbackInfo& info, const std::function<Napi::Value()>& body) {
  try {
    return body();
  } catch (const Refusal& e) {
    Napi::Error::New(info.Env(), e.msg).ThrowAsJavaScriptException();
  } catch (const std::bad_alloc&) {
    Napi::Error::New(info.Env(), "hype native: out of memory").ThrowAsJavaScriptException();
  } catch (const std::exception& e) {
    Napi::Error::New(info.Env(), std::string("hype native: ") + e.what()).ThrowAsJavaScriptException();
  }
  return info.Env().Undefined();
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return withGuard(info, [&] {
    require(info.Length() == 1 && info[0].IsNumber(), "setThreads(n) needs a number");
    const double n = info[0].As<Napi::Number>().DoubleValue();
    require(n >= 1 && n <= 1024 && n == std::floor(n), "thread count must be an integer in [1, 1024]");
    hype::Pool::instance().resize(int(n));
    return Napi::Number::New(info.Env(), hype::Pool::instance().size());
  });
}

Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), hype::Pool::instance().size());
}

Napi::Value Gemm(const Napi::CallbackInfo& info) {
  return withGuard(info, [&] {
    require(info.Length() == 13, "gemm takes 13 arguments");
    auto num = [&](int i, const char* what) {
      require(info[i].IsNumber(), std::string(what) + " must be a number");
      return info[i].As<Napi::Number>().DoubleValue();
    };
    auto dim = [&](int i, const char* what) {
      const double x = num(i, what);
      require(x >= 0 && x == std::floor(x) && x < 9e15, std::string(what) + " must be a non-negative integer");
      return long(x);
    };
    require(info[0].IsBoolean() && info[1].IsBoolean(), "transA and transB must be booleans");
    const bool ta = info[0].As<Napi::Boolean>().Value(), tb = info[1].As<Napi::Boolean>().Value();
    const long m = dim(2, "m"), n = dim(3, "n"), k = dim(4, "k");
    const float alpha = float(num(5, "alpha"));
    const long lda = dim(7, "lda"), ldb = dim(9, "ldb"), ldc = dim(12, "ldc");
    const float beta = float(num(10, "beta"));
    require(lda >= (ta ? m : k) && ldb >= (tb ? k : n) && ldc >= n, "a leading dimension is smaller than its row");
    const long aRows = ta ? k : m, aCols = ta ? m : k, bRows = tb ? n : k, bCols = tb ? k : n;
    const size_t aNeed = (aRows == 0 || aCols == 0) ? 0 : size_t((aRows - 1) * lda + aCols);
    const size_t bNeed = (bRows == 0 || bCols == 0) ? 0 : size_t((bRows - 1) * ldb + bCols);
    const size_t cNeed = (m == 0 || n == 0) ? 0 : size_t((m - 1) * ldc + n);
    const float* a = f32(info[6], "A", aNeed);
    const float* b = f32(info[8], "B", bNeed);
    float* c = f32(info[11], "C", cNeed);
    hype::sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return info.Env().Undefined();
  });
}

Napi::Value AttentionForward(const Napi::CallbackInfo& info) {
  return withGuard(info, [&] {
    require(info.Length() == 6 && info[0].IsObject(), "attentionForward(params, q, k, v, out, lse)");
    const AttentionParams p = readParams(info[0].As<Napi::Object>());
    const size_t bh = size_t(p.batch * p.heads), bkv = size_t(p.batch * p.kvHeads);
    const float* q = f32(info[1], "q", bh * p.lq * p.d);
    const float* k = f32(info[2], "k", bkv * p.lk * p.d);
    const float* v = f32(info[3], "v", bkv * p.lk * p.dv);
    float* out = f32(info[4], "out", bh * p.lq * p.dv);
    float* lse = f32(info[5], "lse", bh * p.lq);
    hype::attentionForward(p, q, k, v, out, lse);
    return info.Env().Undefined();
  });
}

Napi::Value AttentionBackward(const Napi::CallbackInfo& info) {
  return withGuard(info, [&] {
    require(info.Length() == 11 && info[0].IsObject(),
            "attentionBackward(params, q, k, v, out, lse, dOut, dq, dk, dv, biasGrads)");
    const AttentionParams p = readParams(info[0].As<Napi::Object>());
    const size_t bh = size_t(p.batch * p.heads), bkv = size_t(p.batch * p.kvHeads);
    const float* q = f32(info[1], "q", bh * p.lq * p.d);
    const float* k = f32(info[2], "k", bkv * p.lk * p.d);
    const float* v = f32(info[3], "v", bkv * p.lk * p.dv);
    const float* out = f32(info[4], "out", bh * p.lq * p.dv);
    const float* lse = f32(info[5], "lse", bh * p.lq);
    const float* dout = f32(info[6], "dOut", bh * p.lq * p.dv);
    float* dq = f32(info[7], "dq", bh * p.lq * p.d);
    float* dk = f32(info[8], "dk", bkv * p.lk * p.d);
    float* dv = f32(info[9], "dv", bkv * p.lk * p.dv);
    require(info[10].IsObject(), "biasGrads must be an object");
    Napi::Object go = info[10].As<Napi::Object>();
    BiasGrads g;
    if (p.bias.kind == hype::kBiasAlibi) g.slopes = f64(go.Get("slopes"), "dSlopes", size_t(p.heads));
    if (p.bias.kind == hype::kBiasHype) {
      g.tau = f64(go.Get("tau"), "dTau", size_t(p.heads * p.bias.pairs));
      g.mu = f64(go.Get("mu"), "dMu", size_t(p.heads * p.bias.pairs));
    }
    if (p.bias.kind == hype::kBiasTable) g.values = f64(go.Get("values"), "dValues", size_t(p.heads * p.bias.buckets));
    hype::attentionBackward(p, q, k, v, out, lse, dout, dq, dk, dv, g);
    return info.Env().Undefined();
  });
}

/** Index of the first NaN/Inf in a Float32Array (-Infinity allowed on request), or -1: a read-only SIMD scan. */
Napi::Value FirstNonFinite(const Napi::CallbackInfo& info) {
  return withGuard(info, [&] {
    require(info.Length() == 2 && info[1].IsBoolean(), "firstNonFinite(array, allowNegInf)");
    const float* x = f32(info[0], "array", 0);
    const long n = long(info[0].As<Napi::Float32Array>().ElementLength());
    const bool allowNegInf = info[1].As<Napi::Boolean>().Value();
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
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("firstNonFinite", Napi::Function::New(env, FirstNonFinite));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("threads", Napi::Function::New(env, Threads));
  exports.Set("gemm", Napi::Function::New(env, Gemm));
  exports.Set("attentionForward", Napi::Function::New(env, AttentionForward));
  exports.Set("attentionBackward", Napi::Function::New(env, AttentionBackward));
  exports.Set("vectorWidth", Napi::Number::New(env, hype::VL));
  hype::registerLayerOps(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(hype_native, Init)
