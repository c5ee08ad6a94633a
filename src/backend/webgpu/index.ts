/**
 * The WebGPU backend's browser-safe surface: device acquisition from a `GPU` object, GPU-resident tensors, and the
 * kernels (gemm, fused attention forward/backward, layer and tensor ops) and WebGpuBackend, the Backend over them.
 * Node callers get the `GPU` object from node.ts.
 */
export { acquireGpu, GpuContext, LAVAPIPE_FIX, packUniforms } from './context.ts';
export type { AcquireOptions, GpuDType, GpuTensor } from './context.ts';
export { gpuGemm } from './gemm.ts';
export type { GemmLayout } from './gemm.ts';
export { gpuAttentionBackward, gpuAttentionForward } from './attention.ts';
export type { GpuAttentionGrads, GpuAttentionOptions, GpuAttentionShape } from './attention.ts';
export * from './layers.ts';
export * from './tensor-ops.ts';
export { WebGpuBackend } from './backend.ts';
export type { GpuHandle, GpuIntHandle } from './backend.ts';
