{
  "targets": [
    {
      "target_name": "hype_native",
      "sources": [
        "native/bindings.cc",
        "native/attention.cc",
        "native/gemm.cc",
        "native/bf16.cc",
        "native/householder.cc",
        "native/layers.cc",
        "native/microkernel.cc",
        "native/pool.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags": ["-O3", "-march=native", "-pthread", "-ffp-contract=fast", "-fopenmp-simd"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O3", "-march=native", "-pthread", "-ffp-contract=fast", "-fopenmp-simd"],
      "ldflags": ["-pthread"]
    }
  ]
}
