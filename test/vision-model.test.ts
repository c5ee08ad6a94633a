import { describe, expect, it } from 'vitest';
import { loadNativeAddon, NativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseVisionConfig, VisionTransformer } from '../src/model/vision.ts';
import { visionEncodingNames } from '../src/pe/vision/registry.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError, sampleIndices } from './helpers/gradcheck.ts';
import { refusal } from './helpers/refusal.ts';

const tiny = (pe: string) =>
  parseVisionConfig({
    image: 8,
    patch: 4,
    classes: 3,
    width: 8,
    layers: 2,
    heads: 2,
    mlpWidth: 16,
    pe: { name: pe, options: {} },
    dtype: 'float64',
    seed: 3,
    // Large weights so that position parameters move the loss visibly: with the default 0.02 their gradients are
    // ~1e-8, where the finite differences' own rounding (~1e-16 / h = 1e-11) is a 1e-3 relative error.
    initStd: 0.3,
  });

function batchOf(B: number, S: number, seed: number): { images: Float64Array; labels: Int32Array } {
  const rng = new Rng(seed);
  const images = new Float64Array(B * S * S);
  rng.fillNormal(images);
  return { images, labels: Int32Array.from({ length: B }, () => rng.int(3)) };
}

describe('vision transformer', () => {
  // fp64 reference backend, central differences with h = 1e-5: ~1e-10 relative (gradcheck.ts); asserted at 1e-6.
  it.each(visionEncodingNames())('%s: every parameter gradient matches finite differences (fp64)', (pe) => {
    const model = new VisionTransformer(tiny(pe), new ReferenceBackend());
    // Move trained position parameters off their initial values (HyPE's start at exactly 1 in relative units).
    const jitter = new Rng(11);
    for (const p of model.parameters())
      if (p.name.includes('pe.')) for (let j = 0; j < p.data.length; j++) p.data[j]! *= 0.8 + 0.4 * jitter.uniform();
    const { images, labels } = batchOf(3, 8, 5);
    const loss = () => model.forward(images, labels, 3, 8);
    model.zeroGrad();
    loss();
    model.backward();
    for (const p of model.parameters()) {
      const err = maxRelativeGradError(loss, p.data, Float64Array.from(p.grad), sampleIndices(p.data.length, 6, 2));
      expect(err, p.name).toBeLessThan(1e-6);
    }
  });

  it('runs on a larger grid than it was trained on (upsampled images) and predicts a class per image', () => {
    for (const pe of visionEncodingNames()) {
      const model = new VisionTransformer(tiny(pe), new ReferenceBackend());
      const { images } = batchOf(2, 12, 6);
      expect(Number.isNaN(model.forward(images, null, 2, 12))).toBe(true);
      expect(Array.from(model.logits()).every(Number.isFinite), pe).toBe(true);
      expect(model.predictions().length).toBe(2);
    }
  });

  it('mean pooling makes the output invariant to the order of patches when there is no position signal', () => {
    const model = new VisionTransformer(tiny('none'), new ReferenceBackend());
    const { images } = batchOf(1, 8, 7);
    model.forward(images, null, 1, 8);
    const before = Array.from(model.logits());
    // Swap the left and right 4x4 patches of the top row.
    const swapped = images.slice();
    for (let y = 0; y < 4; y++)
      for (let x = 0; x < 4; x++) {
        swapped[y * 8 + x] = images[y * 8 + x + 4]!;
        swapped[y * 8 + x + 4] = images[y * 8 + x]!;
      }
    model.forward(swapped, null, 1, 8);
    Array.from(model.logits()).forEach((v, j) => expect(v).toBeCloseTo(before[j]!, 12));
    // ... and a 2-D encoding breaks that invariance.
    const rope = new VisionTransformer(tiny('rope-2d'), new ReferenceBackend());
    rope.forward(images, null, 1, 8);
    const r0 = Array.from(rope.logits());
    rope.forward(swapped, null, 1, 8);
    expect(Math.max(...Array.from(rope.logits(), (v, j) => Math.abs(v - r0[j]!)))).toBeGreaterThan(1e-9);
  });

  it('refuses bad configs and image sides with the fix', () => {
    expect(refusal(() => parseVisionConfig({ image: 30, patch: 4 })).message).toMatch(/multiple of the patch/);
    expect(refusal(() => parseVisionConfig({ colour: true })).message).toMatch(/no key 'colour'/);
    expect(refusal(() => parseVisionConfig({ pe: { name: 'rope', options: {} } })).message).toMatch(/image encoding/);
    const model = new VisionTransformer(tiny('none'), new ReferenceBackend());
    expect(refusal(() => model.forward(new Float64Array(2 * 10 * 10), null, 2, 10), 'shape').message).toMatch(/resize/);
  });
});

const addon = loadNativeAddon();
if (!addon && process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
const nativeSuite = addon ? describe : describe.skip;

nativeSuite('vision transformer on the native backend', () => {
  // fp32 kernels against the fp64 reference: after a 2-block model, logits agree to ~1e-6 relative (fp32 unit
  // roundoff 6e-8 times the depth of the sums); asserted at 1e-4 of the logits' scale.
  it.each(visionEncodingNames())('%s: fp32 native logits and gradients match the fp64 reference', (pe) => {
    const cfg32 = { ...tiny(pe), dtype: 'float32' as const };
    const native = new VisionTransformer(cfg32, new NativeBackend({ threads: 1 }));
    const ref = new VisionTransformer(tiny(pe), new ReferenceBackend());
    // Same initial weights (the seed draws the same numbers; fp32 rounds them): copy fp32 values into the fp64 model.
    native.parameters().forEach((p, i) => ref.parameters()[i]!.data.set(p.data));
    const { images, labels } = batchOf(3, 12, 8); // a 3x3 grid: another size than the 2x2 training grid
    const lossN = native.forward(Float32Array.from(images), labels, 3, 12);
    const lossR = ref.forward(images, labels, 3, 12);
    expect(Math.abs(lossN - lossR)).toBeLessThan(1e-4 * Math.max(1, Math.abs(lossR)));
    native.zeroGrad();
    ref.zeroGrad();
    native.backward();
    ref.backward();
    native.parameters().forEach((p, i) => {
      const want = ref.parameters()[i]!.grad;
      const scale = Math.max(1e-6, ...Array.from(want, Math.abs));
      const err = Math.max(...Array.from(p.grad, (g, j) => Math.abs(g - want[j]!)));
      expect(err / scale, p.name).toBeLessThan(1e-3);
    });
  });
});
