/**
 * Checkpoint interoperability (issue 7), beyond test/safetensors.test.ts: the weights a run saves are standard
 * safetensors that an independent reader (written here from the format description alone: u64 LE header length,
 * JSON, little-endian data) gets back bit for bit, in both model dtypes; and forged sizes are refused before any
 * allocation of the size they claim.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { decodeSafetensors, MAX_HEADER_BYTES, readSafetensors } from '../src/interop/safetensors.ts';
import { loadRunModel } from '../src/train/trainer.ts';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { writeTinyRun } from './helpers/tiny-run.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-st-interop-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A minimal independent reader: returns name -> {dtype, shape, bytes}. */
function independentRead(buf: Buffer) {
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, unknown>;
  const out = new Map<string, { dtype: string; shape: number[]; values: number[] }>();
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const { dtype, shape, data_offsets } = e as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const bytes = buf.subarray(8 + n + data_offsets[0], 8 + n + data_offsets[1]);
    const values: number[] = [];
    const size = dtype === 'F64' ? 8 : 4;
    for (let o = 0; o < bytes.length; o += size) values.push(size === 8 ? bytes.readDoubleLE(o) : bytes.readFloatLE(o));
    out.set(name, { dtype, shape, values });
  }
  return { header, out };
}

function headerOnly(header: object, headerLenOverride?: bigint, dataBytes = 0): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  return Buffer.concat([len, json, Buffer.alloc(dataBytes)]);
}

function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('checkpoint');
    return (err as HypeError).message;
  }
  throw new Error('expected a refusal');
}

describe('checkpoint weights are standard safetensors', () => {
  for (const dtype of ['float32', 'float64'] as const) {
    it(`${dtype} model: an independent reader gets every parameter back bit for bit, and the run reloads`, () => {
      const run = join(root, `run-${dtype}`);
      const model = writeTinyRun(run, { pe: { name: 'hype', options: { preset: 'learned' } }, dtype });
      const file = join(run, 'checkpoints', 'step-00000000', 'model.safetensors');
      const { header, out } = independentRead(readFileSync(file));
      const meta = header.__metadata__ as Record<string, string>;
      expect(JSON.parse(meta.config!).dtype).toBe(dtype);
      const params = model.parameters();
      expect([...out.keys()].sort()).toEqual(params.map((p) => p.name).sort());
      for (const p of params) {
        const t = out.get(p.name)!;
        // Model tensors keep the model dtype; encoding parameters (HyPE's tau, mu) are fp64 in every model.
        expect(t.dtype).toBe(p.data instanceof Float64Array ? 'F64' : 'F32');
        expect(t.shape).toEqual([...p.shape]);
        expect(t.values).toEqual(Array.from(p.data));
      }
      const loaded = loadRunModel(run, new ReferenceBackend()).model;
      loaded.parameters().forEach((p, i) => expect(Array.from(p.data)).toEqual(Array.from(params[i]!.data)));
    });
  }
});

describe('forged sizes are refused before allocating what they claim', () => {
  it('a tensor claiming 4 GiB in a tiny file is refused without a 4 GiB allocation', () => {
    const claim = 2 ** 32;
    const forged = headerOnly({ w: { dtype: 'F64', shape: [claim / 8], data_offsets: [0, claim] } }, undefined, 16);
    const before = process.memoryUsage().arrayBuffers;
    expect(refusal(() => decodeSafetensors(forged))).toMatch(/beyond the 16-byte data section/);
    expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(1 << 20);
  });

  it('header lengths: 2^64 - 1, just over the cap, and zero are refused by their length alone', () => {
    const path = join(root, 'forged.safetensors');
    writeFileSync(path, headerOnly({}, 2n ** 64n - 1n));
    expect(refusal(() => readSafetensors(path))).toMatch(/absurd/);
    writeFileSync(path, headerOnly({}, BigInt(MAX_HEADER_BYTES) + 1n));
    expect(refusal(() => readSafetensors(path))).toMatch(/absurd/);
    writeFileSync(path, headerOnly({}, 0n));
    expect(refusal(() => readSafetensors(path))).toMatch(/too small/);
  });

  it('a file cut inside a tensor (truncated download) is refused', () => {
    const run = join(root, 'run-cut');
    writeTinyRun(run, { pe: 'none' });
    const bytes = readFileSync(join(run, 'checkpoints', 'step-00000000', 'model.safetensors'));
    const path = join(root, 'cut.safetensors');
    writeFileSync(path, bytes.subarray(0, bytes.length - 100));
    expect(refusal(() => readSafetensors(path))).toMatch(/beyond the .*data section/);
  });

  it('negative, fractional and reversed offsets, and negative or fractional shapes, are refused', () => {
    const eight = 8;
    for (const offsets of [
      [-8, 0],
      [0, 7.5],
      [8, 0],
    ]) {
      const h = { a: { dtype: 'F32', shape: [2], data_offsets: offsets } };
      expect(refusal(() => decodeSafetensors(headerOnly(h, undefined, eight)))).toMatch(/invalid data_offsets/);
    }
    for (const shape of [[-2], [2.5], 'x']) {
      const h = { a: { dtype: 'F32', shape, data_offsets: [0, 8] } };
      expect(refusal(() => decodeSafetensors(headerOnly(h, undefined, eight)))).toMatch(/invalid shape/);
    }
  });
});
