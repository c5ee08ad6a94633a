import { describe, expect, it } from 'vitest';
import {
  BF16,
  FP16,
  FP32,
  bf16Bits,
  bf16FromBits,
  fp16Bits,
  fp16FromBits,
  roundArray,
  roundTo,
  roundToBf16,
  roundToFp16,
} from '../src/numerics/float-formats.ts';
import { Rng } from '../src/util/rng.ts';

const hex = (b: number) => '0x' + b.toString(16).padStart(4, '0');

describe('fp16 rounding against known binary16 bit patterns', () => {
  const cases: [string, number, number][] = [
    ['one', 1, 0x3c00],
    ['minus two', -2, 0xc000],
    ['0.1 (rounds down)', 0.1, 0x2e66],
    ['1/3', 1 / 3, 0x3555],
    ['pi', Math.PI, 0x4248],
    ['largest finite', 65504, 0x7bff],
    ['just below the overflow tie', 65519.99, 0x7bff],
    ['overflow tie 65520 goes to even = inf', 65520, 0x7c00],
    ['far overflow', 1e6, 0x7c00],
    ['negative overflow', -70000, 0xfc00],
    ['infinity', Infinity, 0x7c00],
    ['smallest normal', 2 ** -14, 0x0400],
    ['largest subnormal', 1023 * 2 ** -24, 0x03ff],
    ['smallest subnormal', 2 ** -24, 0x0001],
    ['half the smallest subnormal: tie to even zero', 2 ** -25, 0x0000],
    ['just above that tie', 2 ** -25 * (1 + 2 ** -20), 0x0001],
    ['1.5 ulp subnormal tie goes to even 2 ulps', 3 * 2 ** -25, 0x0002],
    ['tie 1 + 2^-11 goes to even 1', 1 + 2 ** -11, 0x3c00],
    ['tie 1 + 3 * 2^-11 goes to even 1 + 2^-9', 1 + 3 * 2 ** -11, 0x3c02],
    // Via fp32 this would round twice (the 2^-40 is lost first) and land on the even neighbour 1.
    ['no double rounding through fp32', 1 + 2 ** -11 + 2 ** -40, 0x3c01],
    ['negative zero', -0, 0x8000],
    ['negative underflow keeps its sign', -(2 ** -30), 0x8000],
  ];
  for (const [name, x, bits] of cases) {
    it(`${name}: ${x} -> ${hex(bits)}`, () => {
      expect(hex(fp16Bits(x))).toBe(hex(bits));
      const back = fp16FromBits(bits);
      expect(Object.is(roundToFp16(x), back)).toBe(true);
    });
  }

  it('keeps NaN', () => {
    expect(Number.isNaN(roundToFp16(NaN))).toBe(true);
    expect(hex(fp16Bits(NaN))).toBe('0x7e00');
  });

  it('every fp16 value round-trips through its bits, and midpoints between neighbours tie to even', () => {
    for (let b = 0; b < 0x7c00; b++) {
      const x = fp16FromBits(b);
      expect(fp16Bits(x)).toBe(b);
      expect(fp16Bits(-x)).toBe(b | 0x8000);
      if (b + 1 < 0x7c00) {
        const mid = (x + fp16FromBits(b + 1)) / 2; // exact in fp64
        expect(fp16Bits(mid)).toBe(b % 2 === 0 ? b : b + 1);
      }
    }
  });
});

describe('bf16 rounding against known bfloat16 bit patterns', () => {
  const cases: [string, number, number][] = [
    ['one', 1, 0x3f80],
    ['pi (rounds down)', Math.PI, 0x4049],
    ['0.1 (rounds up)', 0.1, 0x3dcd],
    ['minus 3', -3, 0xc040],
    ['tie 1 + 2^-8 goes to even 1', 1 + 2 ** -8, 0x3f80],
    ['tie 1 + 3 * 2^-8 goes to even 1 + 2^-6', 1 + 3 * 2 ** -8, 0x3f82],
    ['largest finite', BF16.max, 0x7f7f],
    ['overflow tie goes to even = inf', (2 - 2 ** -8) * 2 ** 127, 0x7f80],
    ['below the overflow tie stays finite', (2 - 2 ** -8 - 2 ** -20) * 2 ** 127, 0x7f7f],
    ['smallest normal', 2 ** -126, 0x0080],
    ['smallest subnormal', 2 ** -133, 0x0001],
    ['tie at half the smallest subnormal goes to zero', 2 ** -134, 0x0000],
    ['1.5 ulp subnormal tie goes to even 2 ulps', 3 * 2 ** -134, 0x0002],
    ['negative zero', -0, 0x8000],
    ['-inf', -Infinity, 0xff80],
  ];
  for (const [name, x, bits] of cases) {
    it(`${name}: ${x} -> ${hex(bits)}`, () => {
      expect(hex(bf16Bits(x))).toBe(hex(bits));
      expect(Object.is(roundToBf16(x), bf16FromBits(bits))).toBe(true);
    });
  }

  it('keeps NaN', () => {
    expect(Number.isNaN(roundToBf16(NaN))).toBe(true);
  });
});

describe('the generic rounding routine', () => {
  it('reproduces the hardware fp32 rounding (Math.fround) on random normals, subnormals and exact ties', () => {
    const rng = new Rng(7);
    let checked = 0;
    for (let t = 0; t < 20000; t++) {
      const mag = 2 ** (rng.int(300) - 160); // spans fp32 subnormals, normals and overflow
      const x = (rng.uniform() - 0.5) * mag;
      expect(Object.is(roundTo(FP32, x), Math.fround(x))).toBe(true);
      // An exact tie between two fp32 neighbours.
      const lo = Math.fround(x);
      const up = lo + (x >= 0 ? 1 : -1) * 2 ** (Math.max(Math.floor(Math.log2(Math.abs(lo) || 2 ** -149)), -126) - 23);
      if (Number.isFinite(up) && Number.isFinite(lo) && Math.fround(up) === up) {
        const mid = (lo + up) / 2;
        expect(Object.is(roundTo(FP32, mid), Math.fround(mid))).toBe(true);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(15000);
  });

  it('has the documented constants', () => {
    expect(FP16.max).toBe(65504);
    expect(FP16.unitRoundoff).toBe(2 ** -11);
    expect(BF16.unitRoundoff).toBe(2 ** -8);
    expect(FP32.unitRoundoff).toBe(2 ** -24);
    expect(FP32.max).toBe(3.4028234663852886e38);
    expect(BF16.max).toBe(3.3895313892515355e38);
    expect(FP16.minSubnormal).toBe(5.960464477539063e-8);
  });

  it('rounds arrays element by element, in place when asked', () => {
    const a = Float64Array.from([1 + 2 ** -11, 65520, -0.1]);
    const r = roundArray(FP16, a);
    expect(Array.from(r)).toEqual([1, Infinity, fp16FromBits(0xae66)]);
    expect(a[1]).toBe(65520);
    roundArray(BF16, a, a);
    expect(a[0]).toBe(1);
  });
});
