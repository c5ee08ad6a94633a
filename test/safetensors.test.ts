import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import {
  decodeSafetensors,
  encodeSafetensors,
  fromBfloat16,
  fromHalf,
  readSafetensors,
  toBfloat16,
  toHalf,
  writeSafetensors,
} from '../src/interop/safetensors.ts';

const dir = mkdtempSync(join(tmpdir(), 'hype-safetensors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A file assembled by hand from the format description: header length, JSON, data. */
function handMade(header: object, data: Uint8Array, headerLenOverride?: bigint): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  return Buffer.concat([len, json, Buffer.from(data)]);
}

function refusal(fn: () => unknown): HypeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('checkpoint');
    return err as HypeError;
  }
  throw new Error('expected a refusal');
}

describe('safetensors', () => {
  it('reads a hand-assembled file (little-endian F32 and I32, metadata)', () => {
    const data = Buffer.alloc(12);
    data.writeFloatLE(1.5, 0);
    data.writeFloatLE(-2, 4);
    data.writeInt32LE(-7, 8);
    const f = decodeSafetensors(
      handMade(
        {
          __metadata__: { step: '3' },
          w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
          i: { dtype: 'I32', shape: [1, 1], data_offsets: [8, 12] },
        },
        data,
      ),
    );
    expect(f.metadata).toEqual({ step: '3' });
    expect(Array.from(f.tensors.get('w')!.data)).toEqual([1.5, -2]);
    expect(f.tensors.get('i')!.shape).toEqual([1, 1]);
    expect(Array.from(f.tensors.get('i')!.data)).toEqual([-7]);
  });

  it('writes the standard layout: 8-byte aligned header, contiguous offsets', () => {
    const bytes = encodeSafetensors([{ name: 'a', shape: [3], data: Float64Array.from([1, 2, 3]) }], { k: 'v' });
    const n = Number(bytes.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
    expect(header.a).toEqual({ dtype: 'F64', shape: [3], data_offsets: [0, 24] });
    expect(header.__metadata__).toEqual({ k: 'v' });
    expect(bytes.readDoubleLE(8 + n + 16)).toBe(3);
  });

  it('round-trips every dtype through a file, written atomically', () => {
    const path = join(dir, 'all.safetensors');
    const f64 = Float64Array.from([Math.PI, -0, 1e-300, -1e300]);
    const f32 = Float32Array.from([Math.E, -1, 3.4e38, 1e-45]);
    const half = [1, -2.5, 65504, 2 ** -24, 0.1, 1e6];
    const bf = [1, -3, 0.1, 3e38];
    writeSafetensors(path, [
      { name: 'f64', shape: [2, 2], data: f64 },
      { name: 'f32', shape: [4], data: f32 },
      { name: 'f16', shape: [6], data: half, dtype: 'F16' },
      { name: 'bf16', shape: [4], data: bf, dtype: 'BF16' },
      { name: 'i32', shape: [2], data: Int32Array.from([-2147483648, 2147483647]) },
      { name: 'i64', shape: [2], data: [Number.MAX_SAFE_INTEGER, -5], dtype: 'I64' },
      { name: 'u8', shape: [3], data: Uint8Array.from([0, 128, 255]) },
      { name: 'empty', shape: [0, 5], data: new Float32Array(0) },
    ]);
    expect(readdirSync(dir).filter((f) => f.includes('.tmp'))).toEqual([]);
    const f = readSafetensors(path);
    expect(Array.from(f.tensors.get('f64')!.data)).toEqual(Array.from(f64));
    expect(Object.is(f.tensors.get('f64')!.data[1], -0)).toBe(true);
    expect(f.tensors.get('f64')!.shape).toEqual([2, 2]);
    expect(Array.from(f.tensors.get('f32')!.data)).toEqual(Array.from(f32));
    // Half: exact where representable; 0.1 rounds to the nearest half 0.0999755859375; 1e6 overflows to Inf.
    expect(Array.from(f.tensors.get('f16')!.data)).toEqual([1, -2.5, 65504, 2 ** -24, 0.0999755859375, Infinity]);
    expect(Array.from(f.tensors.get('bf16')!.data)).toEqual([1, -3, 0.10009765625, 3.00405527047391e38]);
    expect(Array.from(f.tensors.get('i32')!.data)).toEqual([-2147483648, 2147483647]);
    expect(Array.from(f.tensors.get('i64')!.data)).toEqual([Number.MAX_SAFE_INTEGER, -5]);
    expect(Array.from(f.tensors.get('u8')!.data)).toEqual([0, 128, 255]);
    expect(f.tensors.get('empty')!.shape).toEqual([0, 5]);
  });

  it('half and bfloat16 conversions round to nearest even', () => {
    // 1 + 2^-11 lies exactly halfway between halves 1 and 1 + 2^-10: ties go to the even mantissa (1).
    expect(fromHalf(toHalf(1 + 2 ** -11))).toBe(1);
    expect(fromHalf(toHalf(1 + 3 * 2 ** -11))).toBe(1 + 2 * 2 ** -10);
    expect(fromBfloat16(toBfloat16(1 + 2 ** -8))).toBe(1);
    expect(fromBfloat16(toBfloat16(1 + 3 * 2 ** -8))).toBe(1 + 2 ** -6);
    expect(Number.isNaN(fromHalf(toHalf(NaN)))).toBe(true);
    expect(Number.isNaN(fromBfloat16(toBfloat16(NaN)))).toBe(true);
  });

  const ok = { t: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const eight = new Uint8Array(8);

  it('refuses a file shorter than its header length field', () => {
    expect(refusal(() => decodeSafetensors(new Uint8Array(5))).message).toMatch(/shorter than the 8-byte/);
  });

  it('refuses a header length beyond the file (truncated) without allocating it', () => {
    const full = handMade(ok, eight);
    expect(refusal(() => decodeSafetensors(full.subarray(0, 20))).message).toMatch(/beyond the end of the file/);
    const path = join(dir, 'truncated.safetensors');
    writeFileSync(path, full.subarray(0, full.length - 3));
    expect(refusal(() => readSafetensors(path)).message).toMatch(/beyond the .*data section|trailing|ends at byte/);
  });

  it('refuses an absurd header length (petabytes) before reading it', () => {
    const path = join(dir, 'absurd.safetensors');
    writeFileSync(path, handMade(ok, eight, 2n ** 50n));
    expect(refusal(() => readSafetensors(path)).message).toMatch(/absurd/);
  });

  it('refuses overlapping, out-of-range and holey offsets', () => {
    const overlap = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    expect(refusal(() => decodeSafetensors(handMade(overlap, new Uint8Array(12)))).message).toMatch(/overlaps/);
    const outside = { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } };
    expect(refusal(() => decodeSafetensors(handMade(outside, eight))).message).toMatch(/beyond the 8-byte data/);
    const hole = { a: { dtype: 'F32', shape: [1], data_offsets: [4, 8] } };
    expect(refusal(() => decodeSafetensors(handMade(hole, eight))).message).toMatch(/hole/);
  });

  it('refuses shapes that disagree with their byte range, including absurd shapes', () => {
    const wrong = {
      a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
    };
    const twelve = new Uint8Array(12);
    expect(refusal(() => decodeSafetensors(handMade(wrong, twelve))).message).toMatch(/needs 12 bytes, not 8/);
    const huge = { a: { dtype: 'F64', shape: [1e9, 1e9], data_offsets: [0, 8] } };
    expect(refusal(() => decodeSafetensors(handMade(huge, eight))).message).toMatch(/more bytes than the file/);
  });

  it('refuses bad JSON, unknown dtypes and non-string metadata', () => {
    const bad = Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{"a"')]);
    expect(refusal(() => decodeSafetensors(bad)).message).toMatch(/not valid UTF-8 JSON/);
    const dt = { a: { dtype: 'Q7', shape: [2], data_offsets: [0, 8] } };
    expect(refusal(() => decodeSafetensors(handMade(dt, eight))).message).toMatch(/unsupported dtype/);
    const meta = { __metadata__: { step: 3 }, ...ok };
    expect(refusal(() => decodeSafetensors(handMade(meta, eight))).message).toMatch(/not a string/);
  });

  it('a missing file is an io error naming the path', () => {
    expect(() => readSafetensors(join(dir, 'nope.safetensors'))).toThrow(/nope\.safetensors/);
  });

  it('the written bytes decode to what readFileSync gives back', () => {
    const path = join(dir, 'same.safetensors');
    writeSafetensors(path, [{ name: 'x', shape: [1], data: Float32Array.from([7]) }]);
    expect(decodeSafetensors(readFileSync(path)).tensors.get('x')!.data[0]).toBe(7);
  });
});
