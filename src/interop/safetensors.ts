/**
 * The safetensors format (as used by Hugging Face): an 8-byte little-endian unsigned header length N, then N bytes
 * of UTF-8 JSON mapping each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional
 * "__metadata__" object of string values), then the raw little-endian tensor bytes; offsets are relative to the
 * first byte after the header. The writer pads the header with spaces to a multiple of 8 bytes, as the reference
 * implementation does, and lays tensors out contiguously in the order given.
 *
 * The reader trusts nothing: the header length is checked against the file size and a hard cap before anything is
 * allocated, every shape is checked against its byte range, and the byte ranges must tile the data section exactly
 * (no overlaps, no holes, nothing out of range). Any violation is one HypeError('checkpoint') naming the problem.
 *
 * Supported dtypes: F64, F32, F16, BF16 (decoded to Float32Array, encoded with round-to-nearest-even), I32, I64
 * (decoded to Float64Array when every value is a safe integer), U8.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { HypeError } from '../errors.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';

export type SafeDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I32' | 'I64' | 'U8';

const BYTES: Record<SafeDType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I32: 4, I64: 8, U8: 1 };

/** Headers are metadata; anything larger than this is not a real header but a corrupt length. */
export const MAX_HEADER_BYTES = 100 * 1024 * 1024;

export type SafeArray = Float64Array | Float32Array | Int32Array | Uint8Array;

export interface SafeTensor {
  dtype: SafeDType;
  shape: number[];
  data: SafeArray;
}

export interface SafeFile {
  tensors: Map<string, SafeTensor>;
  metadata: Record<string, string>;
}

export interface TensorToWrite {
  name: string;
  shape: readonly number[];
  data: ArrayLike<number>;
  /** Defaults from the array type: Float64Array -> F64, Float32Array -> F32, Int32Array -> I32, Uint8Array -> U8. */
  dtype?: SafeDType;
}

function fail(what: string, problem: string): never {
  throw new HypeError(
    'checkpoint',
    `${what}: ${problem}; the file is corrupt or not a safetensors file (re-save it, or use an earlier checkpoint)`,
  );
}

function defaultDtype(data: ArrayLike<number>): SafeDType {
  if (data instanceof Float64Array) return 'F64';
  if (data instanceof Float32Array) return 'F32';
  if (data instanceof Int32Array) return 'I32';
  if (data instanceof Uint8Array) return 'U8';
  return 'F64';
}

/** Serialises tensors (in the given order) and string metadata into safetensors bytes. */
export function encodeSafetensors(tensors: readonly TensorToWrite[], metadata: Record<string, string> = {}): Buffer {
  const header: Record<string, unknown> = {};
  if (Object.keys(metadata).length > 0) header.__metadata__ = metadata;
  let offset = 0;
  const plan: { t: TensorToWrite; dtype: SafeDType; begin: number }[] = [];
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name in header) {
      throw new HypeError('argument', `safetensors: tensor name '${t.name}' is reserved or repeated; rename it`);
    }
    const dtype = t.dtype ?? defaultDtype(t.data);
    let n = 1;
    for (const s of t.shape) n *= s;
    if (n !== t.data.length) {
      throw new HypeError('shape', `safetensors: '${t.name}' has ${t.data.length} values but shape [${t.shape}]`);
    }
    const bytes = n * BYTES[dtype];
    header[t.name] = { dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes] };
    plan.push({ t, dtype, begin: offset });
    offset += bytes;
  }
  let json = JSON.stringify(header);
  const jsonBytes = Buffer.byteLength(json, 'utf8');
  json += ' '.repeat((8 - ((8 + jsonBytes) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = Buffer.alloc(8 + headerBytes.length + offset);
  out.writeBigUInt64LE(BigInt(headerBytes.length), 0);
  headerBytes.copy(out, 8);
  const base = 8 + headerBytes.length;
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  for (const { t, dtype, begin } of plan) encodeValues(dv, base + begin, dtype, t.data, t.name);
  return out;
}

function encodeValues(dv: DataView, at: number, dtype: SafeDType, data: ArrayLike<number>, name: string): void {
  const n = data.length;
  switch (dtype) {
    case 'F64':
      for (let i = 0; i < n; i++) dv.setFloat64(at + 8 * i, data[i]!, true);
      return;
    case 'F32':
      for (let i = 0; i < n; i++) dv.setFloat32(at + 4 * i, data[i]!, true);
      return;
    case 'F16':
      for (let i = 0; i < n; i++) dv.setUint16(at + 2 * i, toHalf(data[i]!), true);
      return;
    case 'BF16':
      for (let i = 0; i < n; i++) dv.setUint16(at + 2 * i, toBfloat16(data[i]!), true);
      return;
    case 'I32':
    case 'I64':
    case 'U8':
      for (let i = 0; i < n; i++) {
        const v = data[i]!;
        const ok =
          Number.isInteger(v) &&
          (dtype === 'U8' ? v >= 0 && v <= 255 : dtype === 'I32' ? v === (v | 0) : Number.isSafeInteger(v));
        if (!ok) throw new HypeError('argument', `safetensors: '${name}' value ${v} does not fit ${dtype}`);
        if (dtype === 'U8') dv.setUint8(at + i, v);
        else if (dtype === 'I32') dv.setInt32(at + 4 * i, v, true);
        else dv.setBigInt64(at + 8 * i, BigInt(v), true);
      }
      return;
  }
}

/** Writes a safetensors file atomically (temporary file, then rename). */
export function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata: Record<string, string> = {},
): void {
  writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}

/** Reads and validates a safetensors file; the header length is checked before the header is read. */
export function readSafetensors(path: string): SafeFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new HypeError('io', `cannot open '${path}': ${(err as Error).message}; check the path`);
  }
  try {
    const size = fstatSync(fd).size;
    if (size < 8) fail(path, `only ${size} bytes, shorter than the 8-byte header length`);
    const lenBuf = Buffer.alloc(8);
    readSync(fd, lenBuf, 0, 8, 0);
    const headerLen = lenBuf.readBigUInt64LE(0);
    checkHeaderLength(path, headerLen, size);
    const bytes = Buffer.alloc(size);
    let off = 0;
    while (off < size) {
      const got = readSync(fd, bytes, off, size - off, off);
      if (got === 0) fail(path, `file ended after ${off} of ${size} bytes while reading`);
      off += got;
    }
    return decodeSafetensors(bytes, path);
  } finally {
    closeSync(fd);
  }
}

function checkHeaderLength(what: string, headerLen: bigint, size: number): void {
  if (headerLen < 2n) fail(what, `header length ${headerLen} is too small for a JSON object`);
  if (headerLen > BigInt(MAX_HEADER_BYTES)) {
    fail(what, `header length ${headerLen} bytes is absurd (limit ${MAX_HEADER_BYTES})`);
  }
  if (headerLen > BigInt(size - 8)) {
    fail(what, `header length ${headerLen} reaches beyond the end of the file (${size} bytes): truncated`);
  }
}

/** Parses safetensors bytes (a whole file) with the checks described at the top of this module. */
export function decodeSafetensors(bytes: Uint8Array, what = 'safetensors data'): SafeFile {
  if (bytes.length < 8) fail(what, `only ${bytes.length} bytes, shorter than the 8-byte header length`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLenBig = dv.getBigUint64(0, true);
  checkHeaderLength(what, headerLenBig, bytes.length);
  const headerLen = Number(headerLenBig);
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(8, dataStart)));
  } catch (err) {
    fail(what, `header is not valid UTF-8 JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(what, 'header is not a JSON object');

  const metadata: Record<string, string> = {};
  const entries: { name: string; dtype: SafeDType; shape: number[]; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(what, '__metadata__ is not an object');
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(what, `__metadata__.${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    if (typeof raw !== 'object' || raw === null) fail(what, `entry '${name}' is not an object`);
    const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
    if (typeof dtype !== 'string' || !(dtype in BYTES)) {
      fail(what, `tensor '${name}' has unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(BYTES)})`);
    }
    if (!Array.isArray(shape) || !shape.every((s) => Number.isSafeInteger(s) && s >= 0)) {
      fail(what, `tensor '${name}' has an invalid shape ${JSON.stringify(shape)}`);
    }
    if (
      !Array.isArray(offsets) ||
      offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(what, `tensor '${name}' has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (end > dataLen) fail(what, `tensor '${name}' ends at byte ${end}, beyond the ${dataLen}-byte data section`);
    // The element count is bounded by the byte range before it is trusted (no allocation from a forged shape).
    let n = (shape as number[]).includes(0) ? 0 : 1;
    for (const s of shape as number[]) {
      n *= s;
      if (n * BYTES[dtype as SafeDType] > dataLen) {
        fail(what, `tensor '${name}' shape [${shape}] needs more bytes than the file holds`);
      }
    }
    if (n * BYTES[dtype as SafeDType] !== end - begin) {
      fail(
        what,
        `tensor '${name}' shape [${shape}] of ${dtype} needs ${n * BYTES[dtype as SafeDType]} bytes, not ${end - begin}`,
      );
    }
    entries.push({ name, dtype: dtype as SafeDType, shape: shape as number[], begin, end });
  }
  // The byte ranges must tile the data section: sorted, each starting where the previous ended.
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let pos = 0;
  for (const e of sorted) {
    if (e.begin < pos) fail(what, `tensor '${e.name}' overlaps the previous tensor (starts at ${e.begin} < ${pos})`);
    if (e.begin > pos) fail(what, `a hole of ${e.begin - pos} unused bytes precedes tensor '${e.name}'`);
    pos = e.end;
  }
  if (pos !== dataLen) fail(what, `${dataLen - pos} trailing bytes after the last tensor`);

  const tensors = new Map<string, SafeTensor>();
  for (const e of entries) {
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: decodeValues(dv, dataStart + e.begin, e, what) });
  }
  return { tensors, metadata };
}

function decodeValues(
  dv: DataView,
  at: number,
  e: { name: string; dtype: SafeDType; begin: number; end: number },
  what: string,
): SafeArray {
  const n = (e.end - e.begin) / BYTES[e.dtype];
  switch (e.dtype) {
    case 'F64': {
      const out = new Float64Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(at + 8 * i, true);
      return out;
    }
    case 'F32': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getFloat32(at + 4 * i, true);
      return out;
    }
    case 'F16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = fromHalf(dv.getUint16(at + 2 * i, true));
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = fromBfloat16(dv.getUint16(at + 2 * i, true));
      return out;
    }
    case 'I32': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getInt32(at + 4 * i, true);
      return out;
    }
    case 'I64': {
      const out = new Float64Array(n);
      for (let i = 0; i < n; i++) {
        const v = dv.getBigInt64(at + 8 * i, true);
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
          fail(what, `tensor '${e.name}' holds ${v}, beyond the integers a double represents exactly`);
        }
        out[i] = Number(v);
      }
      return out;
    }
    case 'U8':
      return Uint8Array.from(new Uint8Array(dv.buffer, dv.byteOffset + at, n));
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** fp32 -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN). */
export function toBfloat16(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7fffffff) > 0x7f800000) return ((bits >>> 16) | 0x40) & 0xffff;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fromBfloat16(h: number): number {
  u32[0] = h << 16;
  return f32[0]!;
}

/** double -> IEEE half bits, round to nearest even, overflow to infinity, gradual underflow to subnormals. */
export function toHalf(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00; // rounds up past the largest half (65504)
  if (a < 2 ** -14) {
    // Subnormal: a multiple of 2^-24, rounded to nearest even.
    return sign | roundHalfEven(a / 2 ** -24);
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a)
    e--; // guard log2 rounding
  else if (2 ** (e + 1) <= a) e++;
  let m = roundHalfEven((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

export function fromHalf(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

function roundHalfEven(v: number): number {
  const f = Math.floor(v);
  const r = v - f;
  if (r > 0.5) return f + 1;
  if (r < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}
