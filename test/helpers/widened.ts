/**
 * What the widened-operand tests share (hype-widened, gate-widened, vision-widened): random operands, widening and
 * narrowing head rows, an encoding factory that hides or keeps operandWidths (widthsFactory), and a short training
 * run of a transformer over plain or widened q, k, v buffers, returning its losses and parameters for a bit-for-bit
 * check.
 */
import { expect } from 'vitest';
import { withPrecision } from '../../src/backend/autocast.ts';
import { loadBackend } from '../../src/backend/index.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { Transformer } from '../../src/model/transformer.ts';
import type { AttendContext, EncodingFactory, PositionalEncoding } from '../../src/pe/encoding.ts';
import type { FloatArray } from '../../src/tensor.ts';
import { parseTrainConfig } from '../../src/train/config.ts';
import { AdamW, clipGradients } from '../../src/train/optimizer.ts';
import { Rng } from '../../src/util/rng.ts';

export const randomArray = (rng: Rng, n: number, f64: boolean): FloatArray => {
  const a = f64 ? new Float64Array(n) : new Float32Array(n);
  rng.fillNormal(a);
  return a;
};

/** Rows of width `from` -> rows of width `to`, extra columns filled with `fill`. */
export function widen(x: FloatArray, rows: number, from: number, to: number, fill: number): FloatArray {
  const out = x instanceof Float64Array ? new Float64Array(rows * to) : new Float32Array(rows * to);
  out.fill(fill);
  for (let r = 0; r < rows; r++) out.set(x.subarray(r * from, (r + 1) * from), r * to);
  return out;
}

/** The first `to` columns of rows of width `from`, as plain numbers. */
export function narrow(x: FloatArray, rows: number, from: number, to: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < rows; r++) out.push(...x.subarray(r * from, r * from + to));
  return out;
}

/** `base` with operandWidths hidden (plain rows) or kept, recording whether attend saw widened inputs. */
export function widthsFactory(
  base: EncodingFactory<object>,
  widened: boolean,
  seen: { widths: boolean },
): EncodingFactory<object> {
  return {
    ...base,
    create(d, o, rng) {
      const enc = base.create(d, o, rng);
      return new Proxy(enc, {
        get(target, prop) {
          if (prop === 'operandWidths' && !widened) return undefined;
          const value: unknown = Reflect.get(target, prop, target);
          if (prop !== 'attend') return typeof value === 'function' ? value.bind(target) : value;
          return (ctx: AttendContext, inputs: { widths?: unknown }) => {
            if (inputs.widths) seen.widths = true;
            return (value as PositionalEncoding['attend']).call(target, ctx, inputs as never);
          };
        },
      });
    },
  };
}

/**
 * Three training steps of a small transformer (width 24, 2 layers, 4 heads / 2 kv heads, B 2, L 16, native backend
 * at `precision`) with encoding `name` and `options` from `base`, over widened or plain buffers (asserted).
 */
export function threeSteps(
  base: EncodingFactory<object>,
  name: string,
  options: object,
  precision: 'fp32' | 'bf16',
  widened: boolean,
): { losses: number[]; params: number[][] } {
  const [B, L] = [2, 16];
  const rng = new Rng(5);
  const tokens = Int32Array.from({ length: B * L }, () => rng.int(256));
  const targets = Int32Array.from({ length: B * L }, () => rng.int(256));
  const train = parseTrainConfig({});
  const seen = { widths: false };
  const cfg = parseModelConfig({
    width: 24,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    trainLength: L,
    dtype: 'float32',
    pe: { name, options },
  });
  const be = withPrecision(loadBackend('native'), precision);
  const model = new Transformer(cfg, be, { encodingFactory: widthsFactory(base, widened, seen) });
  const opt = new AdamW(model.parameters(), be);
  const losses: number[] = [];
  for (let s = 0; s < 3; s++) {
    model.zeroGrad();
    losses.push(model.forward(tokens, targets, B, L));
    model.backward();
    clipGradients(model.parameters(), train.clip);
    opt.update(train, 1e-3);
  }
  expect(seen.widths).toBe(widened);
  return { losses, params: model.parameters().map((p) => Array.from(p.data as FloatArray)) };
}
