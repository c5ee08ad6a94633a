/**
 * hype-attention: the browser-safe core (no Node built-ins are reachable from here; a test bundles it with esbuild
 * for the browser): tensors, the backend seam, the TypeScript reference backend, every positional encoding, HyPE,
 * the byte-level transformer, and the small vision transformer with its 2-D encodings. Node-only parts live in
 * subpaths: 'hype-attention/node' (loadBackend and the native addon), '/train', '/study', '/interop', '/cli'.
 *
 *   import { hype, ReferenceBackend } from 'hype-attention';
 *   const h = hype({ preset: 'recency', heads: 8, kvHeads: 8, headDim: 64, lengthExtra: 4096 });
 *   const { qHat, kHat, shape, scale } = h.augment(attnShape, q, k);      // concat route, scale = 1/sqrt(d)
 *   const { out } = backend.attentionForward(shape, qHat, kHat, v, { causal: true, scale });
 *
 * Any fused attention kernel can take qHat/kHat with that scale; our own kernels can also add HyPE's bias as a
 * distance table computed in fp64 (route 'kernel'), which keeps steep slopes and long contexts exact in fp32.
 */
export type {
  AttentionForward,
  AttentionGrads,
  AttentionOptions,
  AttentionShape,
  Backend,
  GradTable,
  PositionBias,
  PositionBiasGrad,
  Residence,
} from './backend/backend.ts';
export type { LayerOps, TensorOps } from './backend/layers.ts';
export { ReferenceBackend } from './backend/reference.ts';
export { WebGpuBackend, type GpuHandle, type GpuIntHandle } from './backend/webgpu/backend.ts';
export { HypeError, type HypeErrorCode } from './errors.ts';
export {
  BF16,
  FP16,
  FP32,
  FP64,
  floatFormat,
  roundArray,
  roundTo,
  type FloatFormat,
} from './numerics/float-formats.ts';
export {
  COLUMN_PRECISIONS,
  expandColumns,
  foldColumnGrads,
  splitColumns,
  type ColumnPrecision,
  type ColumnSide,
  type SplitFormat,
} from './numerics/split-columns.ts';
export { alibiSlopes } from './pe/alibi-slopes.ts';
export type {
  AttendContext,
  AttendInputs,
  AttendResult,
  EncodingDims,
  EncodingFactory,
  EncodingSite,
  Param,
  PositionalEncoding,
} from './pe/encoding.ts';
export {
  augment,
  augmentBackward,
  buildEta,
  type Augmented,
  type AugmentOptions,
  type HypeGrads,
  type HypeSpec,
} from './pe/hype/core.ts';
export { hype, hypeEncoding, presetSpec, type HypePreset, type PresetInput } from './pe/hype/encoding.ts';
export { encodingNames, getEncodingFactory } from './pe/registry.ts';
export { BYTE_VOCAB, MODEL_DEFAULTS, parseModelConfig, type ModelConfig } from './model/config.ts';
export { Transformer, type TransformerOptions } from './model/transformer.ts';
export {
  VISION_DEFAULTS,
  VisionTransformer,
  parseVisionConfig,
  type VisionConfig,
  type VisionOptions,
} from './model/vision.ts';
export { getVisionEncoding, visionEncodingNames } from './pe/vision/registry.ts';
export { CachedDecoder, RecomputeDecoder, type Decoder } from './model/decode.ts';
export { generate, generateAsync, type GenerateOptions, type SamplingOptions } from './model/generate.ts';
export { tensor, zeros, type DType, type FloatArray, type Tensor } from './tensor.ts';
export { Rng } from './util/rng.ts';
