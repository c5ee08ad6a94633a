/**
 * bf16 mixed-precision training (backend/autocast.ts): the native backend (AVX512-BF16 kernels, or their fp32
 * fallback) against the reference backend's fp64 emulation of the same kernels, 20 steps of a tiny model from one
 * seed; fp32 masters in checkpoints and a bit-identical resume; the operands rounded inside the kernels give the
 * losses and weights of rounding them into bf16 arrays first, bit for bit; the --precision value's one clear error.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { withPrecision } from '../src/backend/autocast.ts';
import type { Backend, Precision } from '../src/backend/backend.ts';
import {
  fromBf16,
  nativeAttentionBackwardBf16,
  nativeAttentionForwardBf16,
  nativeGemmBf16,
  toBf16,
} from '../src/backend/bf16.ts';
import { loadNativeAddon, NativeBackend, nativeLoadError } from '../src/backend/native.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { HypeError } from '../src/errors.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { findEncodingFactory } from '../src/pe/registry.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { readLossLog, TrainingRun } from '../src/train/trainer.ts';

const addon = loadNativeAddon();
if (!addon) {
  if (process.env.CI === 'true') throw new Error(`native addon missing in CI: ${nativeLoadError()}`);
  console.warn(`SKIPPING native bf16 training tests: the addon is not built (${nativeLoadError()})`);
}
const suite = addon ? describe : describe.skip;

const root = mkdtempSync(join(tmpdir(), 'hype-bf16-train-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
const corpus = join(root, 'corpus.txt');
writeFileSync(corpus, 'All the world is a stage, and all the men and women merely players.\n'.repeat(60));

const modelFor = (pe: string) =>
  parseModelConfig({ width: 32, layers: 2, heads: 4, trainLength: 32, pe, seed: 4, dtype: 'float32' });
/** HyPE's concat route with columns split for bf16 operands (exact in bf16: numerics/split-columns.ts). */
const HYPE_SPLIT = 'hype:precision=bf16';
const TRAIN = { data: corpus, batch: 4, steps: 20, lr: 3e-3, warmup: 4, checkpointEvery: 0, seed: 6 };

async function losses(backend: Backend, pe: string, precision: Precision, tag: string): Promise<number[]> {
  const dir = join(root, `${pe.replace(/[:=]/g, '-')}-${precision}-${tag}`);
  await TrainingRun.start(dir, modelFor(pe), { ...TRAIN, precision }, backend).run();
  return readLossLog(dir).map((r) => r.loss);
}

const worstGap = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i]!)));

/**
 * Bounds. Both backends round the same fp32 values to the same bf16 operands; they differ only by the order of
 * fp32 accumulation (fp32 runs agree to 2-3e-8 in train-native.test.ts), plus the bf16 roundings that difference
 * flips (an operand within that distance of a rounding tie moves by one bf16 ulp, 2^-8 relative, on one side
 * only). So at step 1, from identical weights, they must agree far better than bf16 differs from fp32 (bf16's
 * unit roundoff 2^-9 on every operand: measured 7-8e-5 in the loss here, against a 5e-6 gap between the
 * backends): at most a quarter of it. Over 20 steps the flips compound through the updates as any one-ulp
 * perturbation does, so they grow to the size of the bf16 effect itself (measured: gaps 1.2-2.9e-4 against
 * bf16-vs-fp32 differences of 3.3-5.6e-4 over the same steps): bounded by 1e-3 nats, about twice the largest
 * effect and 2^-12 of the loss. A backend that ignored the precision fails the step-1 check at once.
 */
suite('bf16 mixed precision: native kernels vs reference emulation', () => {
  it.each(['none', 'alibi', 'hype:route=kernel', HYPE_SPLIT])(
    '%s: 20 steps agree within the bf16 effect',
    async (pe) => {
      const native = await losses(new NativeBackend(), pe, 'bf16', 'native');
      const reference = await losses(new ReferenceBackend(), pe, 'bf16', 'reference');
      const fp32 = await losses(new NativeBackend(), pe, 'fp32', 'native');
      const gap = worstGap(native, reference);
      const effect = worstGap(native, fp32);
      const gap1 = Math.abs(native[0]! - reference[0]!);
      const effect1 = Math.abs(native[0]! - fp32[0]!);
      console.log(
        `${pe}: step 1 native vs emulation ${gap1.toExponential(2)} (bf16 vs fp32 ${effect1.toExponential(2)}); ` +
          `20 steps ${gap.toExponential(2)} (bf16 vs fp32 ${effect.toExponential(2)})`,
      );
      expect(native.length).toBe(20);
      expect(effect1).toBeGreaterThan(1e-5); // the operands really are rounded to bf16
      expect(gap1).toBeLessThan(effect1 / 4);
      expect(gap).toBeLessThan(1e-3);
      expect(native[19]).toBeLessThan(native[0]! - 0.5); // and it trains
    },
    240_000,
  );
});

/**
 * Mixed precision as it ran before the kernels took fp32 operands: every gemm and attention operand converted into
 * a fresh array of bf16 bits (toBf16) and the bits handed to the kernels.
 */
function roundingFirst(): Backend {
  const be = new NativeBackend();
  const f32 = (x: unknown) => x as Float32Array;
  const bits = (x: unknown) => toBf16(f32(x));
  return new Proxy(be, {
    get(target, prop) {
      if (prop === 'gemmBf16')
        return (...a: Parameters<Backend['gemm']>) =>
          nativeGemmBf16(
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
            a[5],
            bits(a[6]),
            a[7],
            bits(a[8]),
            a[9],
            a[10],
            f32(a[11]),
            a[12],
          );
      if (prop === 'attentionForward')
        return (...[shape, q, k, v, opts]: Parameters<Backend['attentionForward']>) =>
          opts.operands === 'bf16'
            ? nativeAttentionForwardBf16(shape, bits(q), bits(k), bits(v), opts)
            : target.attentionForward(shape, q, k, v, opts);
      if (prop === 'attentionBackward')
        return (...[shape, q, k, v, out, lse, dOut, opts]: Parameters<Backend['attentionBackward']>) => {
          if (opts.operands !== 'bf16') return target.attentionBackward(shape, q, k, v, out, lse, dOut, opts);
          const g = nativeAttentionBackwardBf16(shape, bits(q), bits(k), bits(v), f32(out), f32(lse), bits(dOut), opts);
          if (opts.biasGrad === false) g.dBias = { kind: 'none' };
          return g;
        };
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
}

suite('bf16 mixed precision: operands rounded in the kernels', () => {
  it.each(['none', 'hype:route=kernel', HYPE_SPLIT])(
    '%s: the losses and weights of rounding into bf16 arrays first, bit for bit (AVX512-BF16 and fallback)',
    async (pe) => {
      const train = { ...TRAIN, steps: 5, precision: 'bf16' as const };
      for (const fallback of [false, true]) {
        if (fallback) process.env.HYPE_NO_BF16 = '1';
        try {
          const tag = `${pe.replace(/[:=]/g, '-')}-${fallback ? 'fallback' : 'fast'}`;
          const runs = [new NativeBackend(), roundingFirst()].map((be, i) =>
            TrainingRun.start(join(root, `fused-${tag}-${i}`), modelFor(pe), train, be),
          );
          for (const r of runs) await r.run();
          const [fused, first] = runs.map((r) => readLossLog(r.runDir).map((x) => x.loss));
          expect(fused!.length).toBe(5);
          expect(fused).toEqual(first);
          const [wa, wb] = runs.map((r) => r.model.parameters().map((p) => Array.from(p.data as Float32Array)));
          expect(wa).toEqual(wb);
        } finally {
          delete process.env.HYPE_NO_BF16;
        }
      }
    },
    120_000,
  );
});

suite('bf16 mixed precision: checkpoints', () => {
  it('keep fp32 master weights, and a resumed run repeats the uninterrupted losses bit for bit', async () => {
    const train = { ...TRAIN, steps: 12, checkpointEvery: 5, precision: 'bf16' as const };
    const whole = join(root, 'resume-whole');
    const wholeRun = TrainingRun.start(whole, modelFor(HYPE_SPLIT), train, new NativeBackend());
    await wholeRun.run();
    const split = join(root, 'resume-split');
    await TrainingRun.start(split, modelFor(HYPE_SPLIT), train, new NativeBackend()).run({ stopAfter: 7 });
    const resumed = TrainingRun.resume(split, new NativeBackend());
    expect(resumed.train.precision).toBe('bf16');
    expect(resumed.model.backend.name).toMatch(/bf16/);
    await resumed.run();
    expect(readLossLog(split).map((r) => r.loss)).toEqual(readLossLog(whole).map((r) => r.loss));
    // The masters are fp32: most trained weights are not bf16 values (a bf16 store would make all of them so).
    const w = wholeRun.model.parameters().find((p) => p.name.endsWith('qkv.weight'))!.data as Float32Array;
    const off = w.filter((x, i) => x !== fromBf16(toBf16(w.subarray(i, i + 1)))[0]).length;
    expect(off).toBeGreaterThan(w.length / 2);
  }, 120_000);
});

describe('--precision', () => {
  it('a bad value gets one clear error naming the choices', () => {
    expect(() => parseTrainConfig({ precision: 'fp16' })).toThrow(HypeError);
    expect(() => parseTrainConfig({ precision: 'fp16' })).toThrow(/unknown precision "fp16"; choose --precision fp32/);
    expect(parseTrainConfig({}).precision).toBe('fp32');
  });

  it('bf16 needs a float32 model', () => {
    const cfg = parseModelConfig({ width: 16, layers: 1, heads: 2, trainLength: 8, dtype: 'float64' });
    const start = () =>
      TrainingRun.start(join(root, 'f64'), cfg, { ...TRAIN, precision: 'bf16' }, new ReferenceBackend());
    expect(start).toThrow(/--precision bf16 needs a float32 model/);
  });

  it("HyPE's concat route needs columns built for bf16", () => {
    const start = () => TrainingRun.start(join(root, 'plain'), modelFor('hype'), { ...TRAIN, precision: 'bf16' }, be());
    const be = () => new ReferenceBackend();
    expect(start).toThrow(/--pe hype:precision=bf16 \(columns split to be exact in bf16\) or --pe hype:route=kernel/);
  });

  it('every fp32-column concat route is refused under bf16 by its own encoding; split columns and kernel routes pass', () => {
    const start = (dir: string, pe: string) => () =>
      TrainingRun.start(join(root, dir), modelFor(pe), { ...TRAIN, precision: 'bf16' }, new ReferenceBackend());
    expect(start('alibi-concat', 'alibi:route=concat')).toThrow(/--pe alibi:precision=bf16 .* or --pe alibi \(route/);
    expect(start('fox', 'fox')).toThrow(/fox's concat route .* --pe fox:precision=bf16/);
    expect(start('gated', 'hype-gated')).toThrow(/--pe hype-gated:precision=bf16/);
    // Columns built for bf16 but left whole (plain) would be rounded whole: refused too, by every concat route.
    for (const [name, options] of [
      ['hype', { precision: 'bf16', columns: 'plain' }],
      ['hype', { format: 'bf16', columns: 'plain' }],
      ['alibi', { route: 'concat', precision: 'bf16', columns: 'plain' }],
      ['fox', { precision: 'bf16', columns: 'plain' }],
      ['hype-gated', { precision: 'bf16', columns: 'plain' }],
    ] as const) {
      expect(findEncodingFactory(name)!.bf16Refusal!(options), `${name} ${JSON.stringify(options)}`).toMatch(
        new RegExp(`^${name}: columns=plain under --precision bf16 .* drop columns=plain`),
      );
    }
    for (const [name, options] of [
      ['alibi', {}],
      ['alibi', { route: 'concat', precision: 'bf16' }],
      ['fox', { precision: 'bf16' }],
      ['hype', { route: 'kernel' }],
      ['hype', { format: 'bf16' }],
      ['hype', { precision: 'bf16', columns: 'split' }],
    ] as const) {
      expect(findEncodingFactory(name)!.bf16Refusal?.(options) ?? null, `${name} ${JSON.stringify(options)}`).toBe(
        null,
      );
    }
  });

  it('fp32 is the backend itself; bf16 routes gemm and attention to the bf16 members', () => {
    const be = new ReferenceBackend();
    expect(withPrecision(be, 'fp32')).toBe(be);
    const mixed = withPrecision(be, 'bf16');
    const a = Float32Array.of(1 + 2 ** -12, 3);
    const b = Float32Array.of(1, 1);
    const c = new Float32Array(1);
    mixed.gemm(false, false, 1, 1, 2, 1, a, 2, b, 1, 0, c, 1);
    expect(c[0]).toBe(4); // 1 + 2^-12 rounds to 1 in bf16
    be.gemm(false, false, 1, 1, 2, 1, a, 2, b, 1, 0, c, 1);
    expect(c[0]).toBe(4 + 2 ** -12);
  });
});
