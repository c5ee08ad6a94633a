/**
 * The vision transformer over widened operands: HyPE on patches (hype-2d on the grid, hype-flat on the flattened
 * index) and the symmetric hype-2d-sym write their concat columns into q and k rows the blocks allocate wide enough
 * (operandWidths). The kernel sees the same operands as on plain rows, so three training steps must give the same
 * losses and parameters BIT FOR BIT, on the fp64 reference and the fp32 native backend.
 */
import { describe, expect, it } from 'vitest';
import type { Backend } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseVisionConfig, VisionTransformer } from '../src/model/vision.ts';
import { getVisionEncoding } from '../src/pe/vision/registry.ts';
import type { EncodingFactory } from '../src/pe/encoding.ts';
import type { FloatArray } from '../src/tensor.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { AdamW, clipGradients } from '../src/train/optimizer.ts';
import { Rng } from '../src/util/rng.ts';
import { widthsFactory } from './helpers/widened.ts';

function threeSteps(pe: string, be: Backend, dtype: 'float32' | 'float64', widened: boolean) {
  const cfg = parseVisionConfig({
    image: 12,
    patch: 4,
    classes: 3,
    width: 16,
    layers: 2,
    heads: 2,
    mlpWidth: 32,
    pe: { name: pe, options: {} },
    dtype,
    seed: 3,
  });
  const seen = { widths: false };
  const factory = widthsFactory(getVisionEncoding(pe) as EncodingFactory<object>, widened, seen);
  const model = new VisionTransformer(cfg, be, { encodingFactory: factory });
  const opt = new AdamW(model.parameters(), be);
  const train = parseTrainConfig({});
  const rng = new Rng(7);
  const images = dtype === 'float64' ? new Float64Array(4 * 144) : new Float32Array(4 * 144);
  rng.fillNormal(images);
  const labels = Int32Array.from({ length: 4 }, () => rng.int(3));
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) {
    model.zeroGrad();
    losses.push(model.forward(images, labels, 4, 12));
    model.backward();
    clipGradients(model.parameters(), train.clip);
    opt.update(train, 1e-2);
  }
  expect(seen.widths).toBe(widened);
  return { losses, params: model.parameters().map((p) => Array.from(p.data as FloatArray)) };
}

describe('vision transformer over widened operands', () => {
  const backends: [string, Backend, 'float32' | 'float64'][] = [
    ['reference fp64', new ReferenceBackend(), 'float64'],
    ['native fp32', loadBackend('native'), 'float32'],
  ];
  for (const pe of ['hype-2d', 'hype-flat', 'hype-2d-sym'])
    for (const [name, be, dtype] of backends)
      it(`${pe}, ${name}: three steps equal the plain-row run bit for bit`, () => {
        const plain = threeSteps(pe, be, dtype, false);
        const wide = threeSteps(pe, be, dtype, true);
        expect(wide.losses).toEqual(plain.losses);
        expect(wide.params).toEqual(plain.params);
        expect(plain.losses[2]).not.toBe(plain.losses[0]); // the steps trained
      });
});
