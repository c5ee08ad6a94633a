/**
 * Emulation of the narrow floating-point formats HyPE's concat route may be fed (fp16, bf16), plus fp32 and fp64
 * for symmetry. Values are kept in ordinary JS numbers (or Float32Array / Float64Array); "rounding to fp16" means
 * replacing a number by the nearest fp16 value, so arithmetic on the result behaves as if the operands had been
 * stored in that format.
 *
 * Rounding is IEEE 754 round-to-nearest, ties-to-even, straight from the fp64 input (no double rounding through
 * fp32), with gradual underflow (subnormals kept), overflow to +-Infinity, signed zeros and NaN preserved.
 */

import { check } from '../errors.ts';

export type FloatFormatName = 'fp64' | 'fp32' | 'fp16' | 'bf16';

export interface FloatFormat {
  readonly name: FloatFormatName;
  /** Significand precision p in bits, counting the implicit leading bit (fp16: 11, bf16: 8, fp32: 24). */
  readonly precision: number;
  /** Smallest normal exponent: the smallest normal number is 2^emin. */
  readonly emin: number;
  /** Largest exponent: the largest finite number is (2 - 2^(1-p)) * 2^emax. */
  readonly emax: number;
  /** Largest finite value. */
  readonly max: number;
  /** Smallest positive normal value 2^emin. */
  readonly minNormal: number;
  /** Smallest positive subnormal value 2^(emin - p + 1). */
  readonly minSubnormal: number;
  /** Unit roundoff u = 2^-p: the largest relative error of rounding a normal number to nearest. */
  readonly unitRoundoff: number;
}

function makeFormat(name: FloatFormatName, precision: number, emin: number, emax: number): FloatFormat {
  return {
    name,
    precision,
    emin,
    emax,
    max: (2 - 2 ** (1 - precision)) * 2 ** emax,
    minNormal: 2 ** emin,
    minSubnormal: 2 ** (emin - precision + 1),
    unitRoundoff: 2 ** -precision,
  };
}

export const FP64: FloatFormat = makeFormat('fp64', 53, -1022, 1023);
export const FP32: FloatFormat = makeFormat('fp32', 24, -126, 127);
export const FP16: FloatFormat = makeFormat('fp16', 11, -14, 15);
export const BF16: FloatFormat = makeFormat('bf16', 8, -126, 127);

const FORMATS: Record<FloatFormatName, FloatFormat> = { fp64: FP64, fp32: FP32, fp16: FP16, bf16: BF16 };

/** The format called `name`; any other name (e.g. 'fp8') is refused with the list, never returned as undefined. */
export function floatFormat(name: FloatFormatName): FloatFormat {
  check(
    typeof name === 'string' && isFloatFormatName(name),
    'argument',
    () => `unknown float format ${JSON.stringify(name)}; choose one of ${Object.keys(FORMATS).join(', ')}`,
  );
  return FORMATS[name];
}

const KNOWN = new Set<unknown>(Object.values(FORMATS));

/**
 * Refuses anything but the four format objects (a name such as 'fp16' passed where the object belongs would
 * otherwise round every value to NaN, silently).
 */
function knownFormat(fmt: unknown): void {
  check(
    KNOWN.has(fmt),
    'argument',
    () =>
      `expected a float format object (FP64, FP32, FP16, BF16 or floatFormat(name)), got ${JSON.stringify(fmt)}` +
      (typeof fmt === 'string' ? `; pass floatFormat('${fmt}')` : ''),
  );
}

export function isFloatFormatName(s: string): s is FloatFormatName {
  return Object.hasOwn(FORMATS, s);
}

// Scratch view for reading the exponent field of an fp64 exactly (Math.log2 can be off by one near powers of two).
const scratch = new Float64Array(1);
const scratchHi = new Uint32Array(scratch.buffer, 4, 1);

/** floor(log2(|x|)) for finite x != 0, exactly; fp64 subnormals report -1023 (they are far below any target). */
function exponentOf(x: number): number {
  scratch[0] = x;
  return ((scratchHi[0]! >>> 20) & 0x7ff) - 1023;
}

/** Round a non-negative number y (< 2^53) to the nearest integer, ties to even. */
function roundHalfEven(y: number): number {
  const f = Math.floor(y);
  const diff = y - f; // exact: y < 2^53 and f is y with its fraction dropped
  if (diff > 0.5) return f + 1;
  if (diff < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * The value of `fmt` nearest to x (ties to even). Works on the magnitude and restores the sign afterwards, so -0 and
 * negative underflow keep their sign.
 */
export function roundTo(fmt: FloatFormat, x: number): number {
  if (fmt !== FP16 && fmt !== BF16 && fmt !== FP32 && fmt !== FP64) knownFormat(fmt); // identity: cheap per value
  if (fmt.precision === 53 || !Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  // The spacing of representable values around a: 2^(e - p + 1) in the binade of a, fixed below the normal range
  // (that fixed spacing is exactly what gradual underflow means).
  const e = Math.max(exponentOf(a), fmt.emin);
  const quantum = 2 ** (e - fmt.precision + 1);
  // a / quantum and k * quantum are exact (powers of two; a / quantum < 2^(p+1) is far inside fp64's integers).
  const r = roundHalfEven(a / quantum) * quantum;
  // A result beyond max can only be 2^(emax+1) or more, which the format cannot hold: that is overflow to inf.
  const rounded = r > fmt.max ? Infinity : r;
  return x < 0 ? -rounded : rounded;
}

export function roundToFp16(x: number): number {
  return roundTo(FP16, x);
}

export function roundToBf16(x: number): number {
  return roundTo(BF16, x);
}

/** Rounds every element of `src` into `dst` (default: a new array of the same type; `dst` may be `src`). */
export function roundArray<A extends Float32Array | Float64Array>(fmt: FloatFormat, src: A, dst?: A): A {
  knownFormat(fmt);
  check(
    (src instanceof Float32Array || src instanceof Float64Array) &&
      (dst === undefined || (dst.constructor === src.constructor && dst.length === src.length)),
    'argument',
    'roundArray takes a Float32Array or Float64Array and, optionally, a destination of the same type and length',
  );
  const out = dst ?? (src.slice() as A);
  if (fmt.name === 'fp32') {
    for (let i = 0; i < src.length; i++) out[i] = Math.fround(src[i]!);
  } else if (fmt.name !== 'fp64') {
    for (let i = 0; i < src.length; i++) out[i] = roundTo(fmt, src[i]!);
  } else if (out !== src) {
    out.set(src);
  }
  return out;
}

/** The 16-bit IEEE binary16 encoding of fp16(x) (NaN encodes as the quiet NaN 0x7e00). */
export function fp16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const r = roundToFp16(x);
  const sign = r < 0 || Object.is(r, -0) ? 0x8000 : 0;
  const a = Math.abs(r);
  if (a === Infinity) return sign | 0x7c00;
  if (a < FP16.minNormal) return sign | (a / FP16.minSubnormal); // subnormal (or zero): the fraction field counts ulps
  const e = exponentOf(a);
  const fraction = (a / 2 ** e - 1) * 1024;
  return sign | ((e + 15) << 10) | fraction;
}

/** The fp16 value with the given 16-bit encoding. */
export function fp16FromBits(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const e = (bits >>> 10) & 0x1f;
  const f = bits & 0x3ff;
  if (e === 0x1f) return f === 0 ? sign * Infinity : NaN;
  if (e === 0) return sign * f * FP16.minSubnormal;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
}

const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);

/** The 16-bit bfloat16 encoding of bf16(x): the top half of the fp32 encoding of the (exactly fp32) rounded value. */
export function bf16Bits(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  f32[0] = roundToBf16(x);
  return f32Bits[0]! >>> 16;
}

/** The bf16 value with the given 16-bit encoding. */
export function bf16FromBits(bits: number): number {
  f32Bits[0] = (bits & 0xffff) << 16;
  return f32[0]!;
}
