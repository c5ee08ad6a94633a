/**
 * `hype export --precision fp16` and the command's refusals, checked quickly on onnxruntime-node's CPU provider (the
 * WebGPU run of the same graphs is test/export-onnx-webgpu.test.ts). What the fp16 graph contains: float16 weights
 * and activations, MultiHeadAttention with q, k, v only (no bias input), scale 1/sqrt(d), split columns that equal
 * splitColumns' hi/lo parts, and V padded to the Q/K head size (onnxruntime's WebGPU flash path needs them equal).
 *
 * Numbers: HyPE recency with L_extra = 4096 (|tau| up to 2048). Plain fp16 columns blur the bias by ~u16 |tau| / 2
 * = 0.5 logits at the steepest head; split columns by ~|tau| u16^2 ~ 5e-4. Against the fp64 forward the split model
 * must stay within 2x the no-position model's error (the fp16 floor F, same weights) and plain must exceed 10x split.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { runExport } from '../src/cli/export.ts';
import { exportOnnx } from '../src/interop/onnx-export.ts';
import { decodeModel } from '../src/interop/onnx-proto.ts';
import type { Transformer } from '../src/model/transformer.ts';
import { halfTestModel } from './helpers/half-model.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-onnx16-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let runs = 0;
function saved(pe: string, options: Record<string, unknown> = {}) {
  const dir = join(root, `run-${runs++}`);
  return { dir, model: halfTestModel(dir, pe, options) };
}

async function maxError(model: Transformer, bytes: Uint8Array, length = 24): Promise<number> {
  const tokens = Int32Array.from({ length }, (_, i) => (i * 37 + 11) % 256);
  const session = await ort.InferenceSession.create(bytes);
  try {
    const feed = new ort.Tensor(
      'int64',
      BigInt64Array.from(tokens, (t) => BigInt(t)),
      [1, length],
    );
    const theirs = (await session.run({ tokens: feed })).logits!.data as Float32Array;
    model.forward(tokens, null, 1, length);
    const ours = model.logits();
    let e = 0;
    for (let j = 0; j < ours.length; j++) e = Math.max(e, Math.abs(theirs[j]! - ours[j]!));
    return e;
  } finally {
    await session.release();
  }
}

describe('fp16 ONNX export', () => {
  it('the graph: float16 weights, MultiHeadAttention q/k/v only with scale 1/sqrt(d), V as wide as Q and K', () => {
    const { model } = saved('hype', { preset: 'recency', lengthExtra: 4096 });
    const { bytes, summary } = exportOnnx(model, { precision: 'fp16' });
    expect(summary).toMatchObject({ precision: 'fp16', columns: 'split', headDim: 8, qkHeadDim: 16 });
    const graph = decodeModel(bytes).graph as {
      node: { opType: string; input: string[]; attribute: { name: string; f?: number }[] }[];
      initializer: { name: string; dataType: number }[];
    };
    expect(graph.initializer.find((t) => t.name === 'wte')!.dataType).toBe(10); // FLOAT16
    const mha = graph.node.filter((n) => n.opType === 'MultiHeadAttention');
    expect(mha.length).toBe(1);
    expect(mha[0]!.input.length).toBe(3);
    expect(mha[0]!.attribute.find((a) => a.name === 'scale')!.f).toBeCloseTo(1 / Math.sqrt(8), 7);
  });

  it('split columns keep the logits at the fp16 floor; plain fp16 columns do not (CPU provider)', async () => {
    const { model } = saved('hype', { preset: 'recency', lengthExtra: 4096 });
    const none = saved('none').model;
    const floor = await maxError(none, exportOnnx(none, { precision: 'fp16' }).bytes);
    const split = await maxError(model, exportOnnx(model, { precision: 'fp16' }).bytes);
    const plain = await maxError(model, exportOnnx(model, { precision: 'fp16', columns: 'plain' }).bytes);
    const fp32 = await maxError(model, exportOnnx(model).bytes);
    console.log(
      `[export-onnx-fp16] onnxruntime-node CPU, max |logit - fp64|: none ${floor.toExponential(2)}, ` +
        `split ${split.toExponential(2)}, plain ${plain.toExponential(2)}, fp32 export ${fp32.toExponential(2)}`,
    );
    expect(floor).toBeGreaterThan(1e-4); // fp16 really ran (fp32 would leave ~1e-6)
    expect(split).toBeLessThanOrEqual(2 * floor);
    expect(plain).toBeGreaterThan(10 * split);
    // fp32 plain columns blur the bias by ~u32 |tau| sqrt(d) / 2 before the 1/sqrt(d) scale: 2^-24 * 2048 ~ 1.2e-4.
    expect(fp32).toBeLessThanOrEqual(1e-3);
  });
});

describe('hype export refusals', () => {
  const run = (dir: string, ...args: string[]) => {
    const flags: Record<string, string> = {};
    for (let j = 0; j < args.length; j += 2) flags[args[j]!.slice(2)] = args[j + 1]!;
    return runExport(dir, flags);
  };

  it('an absurd --pad is refused before anything is built', async () => {
    const { dir } = saved('hype', { preset: 'recency' });
    await expect(run(dir, '--onnx', join(root, 'a.onnx'), '--pad', '1000000000')).rejects.toThrow(
      /--pad must be an integer from 1 to 256.*got '1000000000'/,
    );
    await expect(run(dir, '--onnx', join(root, 'a.onnx'), '--pad', '8.5')).rejects.toThrow(/--pad must be an integer/);
    expect(() => exportOnnx(saved('hype').model, { padMultiple: 512 })).toThrow(/pad multiple must be an integer/);
  });

  it('a missing folder and a folder as the output each get one clear error', async () => {
    const { dir } = saved('none');
    await expect(run(dir, '--onnx', join(root, 'no', 'such', 'm.onnx'))).rejects.toThrow(
      /the folder .*no\/such does not exist; create it first/,
    );
    const folder = join(root, 'a-folder');
    mkdirSync(folder);
    await expect(run(dir, '--onnx', folder)).rejects.toThrow(/is a folder; give a file name inside it/);
    writeFileSync(join(root, 'file'), 'x');
    await expect(run(dir, '--onnx', join(root, 'file', 'm.onnx'))).rejects.toThrow(/does not exist; create it first/);
  });

  it('an unknown --precision or --columns is refused', async () => {
    const { dir } = saved('hype');
    await expect(run(dir, '--onnx', join(root, 'b.onnx'), '--precision', 'bf16')).rejects.toThrow(
      /--precision must be fp32 or fp16, got 'bf16'/,
    );
    await expect(run(dir, '--onnx', join(root, 'b.onnx'), '--precision', 'fp16', '--columns', 'x')).rejects.toThrow(
      /--columns must be split or plain/,
    );
  });
});
