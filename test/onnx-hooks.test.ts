/**
 * ONNX export asks each encoding for its own graph form (PositionalEncoding.toOnnx) instead of switching on names:
 * the documented list ONNX_ENCODINGS must be exactly the registered encodings whose instances have the hook, and an
 * encoding without one is refused with the exporter's message.
 */
import { expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { encodingNames, getEncodingFactory } from '../src/pe/registry.ts';
import { exportOnnx, ONNX_ENCODINGS } from '../src/interop/onnx-export.ts';
import { Rng } from '../src/util/rng.ts';

it('ONNX_ENCODINGS lists exactly the registered encodings with a toOnnx hook', () => {
  const dims = { heads: 4, kvHeads: 4, headDim: 8, modelDim: 32, trainLength: 16, embeddingStd: 0.02 };
  const withHook = encodingNames().filter((name) => getEncodingFactory(name).create(dims, {}, new Rng(1)).toOnnx);
  expect(withHook.sort()).toEqual([...ONNX_ENCODINGS].sort());
});

it('an encoding without toOnnx is refused with the clear error', () => {
  const cfg = parseModelConfig({ width: 16, layers: 1, heads: 2, trainLength: 8, pe: { name: 't5' } });
  const model = new Transformer(cfg, new ReferenceBackend());
  expect(() => exportOnnx(model)).toThrow(
    /ONNX export supports the encodings none, rope, alibi, hype; this run uses 't5'/,
  );
});
