/**
 * What the ONNX export tests share: tiny run folders written by the trainer's checkpoint code and loaded back through
 * loadRunModel (as `hype export` does), and the comparison of the exported model run by onnxruntime-node with our
 * forward pass (max |onnx - ours| over every logit, and the largest |logit|).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, expect } from 'vitest';
import { ReferenceBackend } from '../../src/backend/reference.ts';
import { exportOnnx, type OnnxExportOptions } from '../../src/interop/onnx-export.ts';
import type { Transformer } from '../../src/model/transformer.ts';
import { loadRunModel } from '../../src/train/trainer.ts';
import { Rng } from '../../src/util/rng.ts';
import { writeTinyRun } from './tiny-run.ts';

export const root = mkdtempSync(join(tmpdir(), 'hype-onnx-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let runs = 0;
export function savedModel(pe: string, options: Record<string, unknown> = {}, extra: Record<string, unknown> = {}) {
  const dir = join(root, `run-${runs++}`);
  writeTinyRun(dir, {
    width: 32,
    heads: 4,
    mlpWidth: 64,
    trainLength: 16,
    dtype: 'float64',
    initStd: 0.3,
    seed: 3,
    pe: { name: pe, options },
    ...extra,
  });
  return { dir, model: loadRunModel(dir, new ReferenceBackend()).model };
}

export function randomTokens(batch: number, length: number, seed: number): Int32Array {
  const rng = new Rng(seed);
  return Int32Array.from({ length: batch * length }, () => rng.int(256));
}

export async function onnxLogits(bytes: Uint8Array, tokens: Int32Array, batch: number, length: number) {
  const session = await ort.InferenceSession.create(bytes);
  try {
    const feed = new ort.Tensor(
      'int64',
      BigInt64Array.from(tokens, (t) => BigInt(t)),
      [batch, length],
    );
    const out = await session.run({ tokens: feed });
    return out.logits!.data as Float32Array;
  } finally {
    await session.release();
  }
}

/** Max |onnx - ours| and the largest |logit| over every position of every sequence. */
export async function compare(model: Transformer, o: OnnxExportOptions = {}, batch = 2, length = 24) {
  const { bytes } = exportOnnx(model, o);
  const tokens = randomTokens(batch, length, 7 + length);
  model.forward(tokens, null, batch, length);
  const ours = model.logits();
  const theirs = await onnxLogits(bytes, tokens, batch, length);
  expect(theirs.length).toBe(ours.length);
  let diff = 0;
  let size = 0;
  for (let j = 0; j < ours.length; j++) {
    diff = Math.max(diff, Math.abs(theirs[j]! - ours[j]!));
    size = Math.max(size, Math.abs(ours[j]!));
  }
  return { diff, size };
}
