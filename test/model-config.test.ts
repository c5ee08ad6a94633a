import { describe, expect, it } from 'vitest';
import { HypeError } from '../src/errors.ts';
import { canonicalJson, parseModelConfig, sameArchitecture } from '../src/model/config.ts';

function argumentError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HypeError);
    expect((err as HypeError).code).toBe('argument');
    return (err as HypeError).message;
  }
  throw new Error('expected a refusal');
}

describe('model config', () => {
  it('fills defaults: kvHeads from heads, mlpWidth from width, pe from a bare name', () => {
    const c = parseModelConfig({ width: 64, heads: 8, pe: 'alibi' });
    expect(c.kvHeads).toBe(8);
    expect(c.mlpWidth).toBe(256);
    expect(c.pe).toEqual({ name: 'alibi', options: {} });
    expect(c.vocab).toBe(256);
    // Plain data: survives JSON and parses to the same config.
    expect(parseModelConfig(JSON.parse(JSON.stringify(c)))).toEqual(c);
  });

  it('refuses unknown keys, bad numbers and inconsistent head counts, naming the fix', () => {
    expect(argumentError(() => parseModelConfig({ widht: 64 }))).toMatch(/unknown model config key 'widht'/);
    expect(argumentError(() => parseModelConfig({ layers: 1.5 }))).toMatch(/'layers' must be a positive integer/);
    expect(argumentError(() => parseModelConfig({ width: 30, heads: 4 }))).toMatch(/divisible by heads/);
    expect(argumentError(() => parseModelConfig({ heads: 4, kvHeads: 3 }))).toMatch(/multiple of kvHeads/);
    expect(argumentError(() => parseModelConfig({ dtype: 'float16' }))).toMatch(/'float32' or 'float64'/);
    expect(argumentError(() => parseModelConfig({ vocab: 512 }))).toMatch(/byte-level/);
    expect(argumentError(() => parseModelConfig({ pe: { name: 'hype', extra: 1 } }))).toMatch(/unknown keys/);
    expect(argumentError(() => parseModelConfig([]))).toMatch(/JSON object/);
  });

  it('compares architectures independently of key order and seed', () => {
    const a = parseModelConfig({ pe: { name: 'hype', options: { preset: 'learned', lengthExtra: 512 } }, seed: 1 });
    const b = parseModelConfig({ seed: 2, pe: { options: { lengthExtra: 512, preset: 'learned' }, name: 'hype' } });
    expect(sameArchitecture(a, b)).toBe(true);
    expect(sameArchitecture(a, { ...b, layers: 5 })).toBe(false);
    expect(canonicalJson({ b: 1, a: [2, { d: 3, c: 4 }] })).toBe('{"a":[2,{"c":4,"d":3}],"b":1}');
  });
});
