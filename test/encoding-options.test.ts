/**
 * Encoding options (src/pe/options.ts): every encoding built through defineEncoding refuses unknown keys and
 * mistyped values with one HypeError naming the key and the accepted keys, on every path that reaches a factory
 * (direct create, the registry's text form, a model config, the train command's flags); and the two option syntaxes
 * (JSON, key=value) parse to the same object through one parser.
 */
import { describe, expect, it } from 'vitest';
import { modelConfigFrom } from '../src/cli/train.ts';
import { parseModelConfig } from '../src/model/config.ts';
import type { EncodingDims } from '../src/pe/encoding.ts';
import { parseEncodingOptions, splitTopLevel } from '../src/pe/options.ts';
import { encodingNames, getEncodingFactory, parseEncodingSpec } from '../src/pe/registry.ts';
import { Rng } from '../src/util/rng.ts';
import { refusal } from './helpers/refusal.ts';

const dims: EncodingDims = { heads: 2, kvHeads: 2, headDim: 8, modelDim: 16, trainLength: 16 };

/** Encodings whose factories run the shared option check (HyPE's own refusal lives with HyPE). */
const checked = encodingNames().filter((n) => getEncodingFactory(n).checkOptions !== undefined);

describe('unknown and mistyped encoding options are refused', () => {
  it('every encoding, HyPE included, is built with the shared check', () => {
    expect(checked).toEqual(encodingNames());
  });

  for (const name of checked) {
    it(`${name}: an unknown key names itself and every accepted key, on create and on parse`, () => {
      const factory = getEncodingFactory(name);
      const allowed = Object.keys(factory.defaults);
      for (const fn of [
        () => factory.create(dims, { prest: 'paper' }, new Rng(1)),
        () => parseEncodingSpec(`${name}:prest=paper`),
        () => parseModelConfig({ width: 16, heads: 2, pe: { name, options: { prest: 'paper' } } }),
      ]) {
        const e = refusal(fn);
        expect(e.message).toContain(`'prest'`);
        for (const key of allowed) expect(e.message).toContain(key);
        if (allowed.length === 0) expect(e.message).toMatch(/none/);
      }
      // Inherited object members are not options either.
      expect(refusal(() => factory.create(dims, JSON.parse('{"__proto__": 1}'), new Rng(1))).message).toContain(
        '__proto__',
      );
      expect(refusal(() => factory.create(dims, { constructor: 1 } as never, new Rng(1))).message).toContain(
        'constructor',
      );
    });

    it(`${name}: a value of another type than the default's, or a non-finite number, is refused`, () => {
      const factory = getEncodingFactory(name);
      for (const [key, value] of Object.entries(factory.defaults as Record<string, unknown>)) {
        const wrong = typeof value === 'string' ? 3 : 'three';
        expect(refusal(() => factory.create(dims, { [key]: wrong }, new Rng(1))).message).toContain(`'${key}'`);
        expect(refusal(() => factory.create(dims, { [key]: null }, new Rng(1))).message).toContain(`'${key}'`);
        if (typeof value === 'number') {
          for (const bad of [NaN, Infinity]) {
            expect(refusal(() => factory.create(dims, { [key]: bad }, new Rng(1))).message).toMatch(/finite/);
          }
        }
      }
    });

    it(`${name}: its defaults, written out, are accepted and undefined counts as absent`, () => {
      const factory = getEncodingFactory(name);
      expect(() => factory.create(dims, { ...factory.defaults }, new Rng(1))).not.toThrow();
      expect(() => factory.create(dims, { unused: undefined } as never, new Rng(1))).not.toThrow();
    });
  }
});

describe('options that size a table are bounded', () => {
  it('a size past 2^20 is refused before anything is allocated (1e9 used to allocate and fill gigabytes)', () => {
    const sized = checked.filter((n) => (getEncodingFactory(n) as { sizeKeys?: string[] }).sizeKeys?.length);
    expect(sized.sort()).toEqual(['learned', 'path', 'shaw', 't5', 'xl']);
    for (const name of sized) {
      for (const key of (getEncodingFactory(name) as unknown as { sizeKeys: string[] }).sizeKeys) {
        const e = refusal(() => getEncodingFactory(name).create(dims, { [key]: 1e9 }, new Rng(1)));
        expect(e.message).toContain(`'${key}' = 1000000000 is larger than 1048576`);
        expect(
          refusal(() => getEncodingFactory(name).create(dims, { [key]: 2 ** 20 + 1 }, new Rng(1))).message,
        ).toMatch(/larger than 1048576/);
      }
    }
    // At the bound itself the option is accepted (a learned table of 2^20 positions x 16 dims, 128 MiB).
    expect(() => getEncodingFactory('learned').create(dims, { maxLength: 2 ** 20 }, new Rng(1))).not.toThrow();
  });
});

describe('one parser for both option syntaxes', () => {
  it('JSON and key=value give the same options, typed', () => {
    const fromPairs = parseEncodingOptions('numBuckets=16:bucketing=causal:initStd=0.5');
    const fromJson = parseEncodingOptions('{"numBuckets":16,"bucketing":"causal","initStd":0.5}');
    expect(fromPairs).toEqual(fromJson);
    expect(parseEncodingOptions('shortConv=false:grid=[2,3]:name="a:b"')).toEqual({
      shortConv: false,
      grid: [2, 3],
      name: 'a:b',
    });
    expect(parseEncodingOptions('  ')).toEqual({});
    expect(parseEncodingSpec('t5:numBuckets=16')).toEqual(parseEncodingSpec('t5:{"numBuckets": 16}'));
    expect(parseEncodingSpec(' rope ')).toEqual({ name: 'rope', options: {} });
  });

  it('refuses malformed text, repeated keys and unknown names, naming both syntaxes', () => {
    expect(refusal(() => parseEncodingOptions('{"base": }')).message).toMatch(/not valid JSON.*key=value/);
    expect(refusal(() => parseEncodingOptions('[1, 2]')).message).toMatch(/key=value/);
    expect(refusal(() => parseEncodingOptions('["a"]')).message).toMatch(/key=value/);
    expect(refusal(() => parseEncodingOptions('base')).message).toMatch(/'base'.*not key=value/);
    expect(refusal(() => parseEncodingOptions('base=1:base=2')).message).toMatch(/'base' is given twice/);
    expect(refusal(() => parseEncodingOptions('grid=[2,')).message).toMatch(/not valid JSON/);
    expect(refusal(() => parseEncodingSpec(':base=1')).message).toMatch(/empty encoding name/);
    expect(refusal(() => parseEncodingSpec('ropee')).message).toMatch(/unknown positional encoding 'ropee'/);
  });

  it('splits lists only outside JSON', () => {
    expect(splitTopLevel('alibi,t5:{"numBuckets":8,"maxDistance":64},rope:base=5', ',')).toEqual([
      'alibi',
      't5:{"numBuckets":8,"maxDistance":64}',
      'rope:base=5',
    ]);
    expect(splitTopLevel('a="x,y",b', ',')).toEqual(['a="x,y"', 'b']);
  });

  it('train: --pe name:options, --pe-options in either syntax, and a key given twice is refused', () => {
    const flags = (f: { pe?: string; peOptions?: string }) => ({ backend: 'reference', ...f });
    const inline = modelConfigFrom(flags({ pe: 'rope:base=500' }));
    const json = modelConfigFrom(flags({ pe: 'rope', peOptions: '{"base":500}' }));
    const pairs = modelConfigFrom(flags({ pe: 'rope', peOptions: 'base=500' }));
    expect(inline.pe).toEqual({ name: 'rope', options: { base: 500 } });
    expect(json.pe).toEqual(inline.pe);
    expect(pairs.pe).toEqual(inline.pe);
    expect(refusal(() => modelConfigFrom(flags({ pe: 'rope:base=5', peOptions: 'base=6' }))).message).toMatch(
      /'base' is given in both/,
    );
    expect(refusal(() => modelConfigFrom(flags({ pe: 'rope:bsae=5' }))).message).toMatch(/no option 'bsae'/);
    // --pe-options alone is checked when the config is parsed (the name may come from --model-config).
    const late = modelConfigFrom(flags({ pe: 'alibi', peOptions: 'slope=1' }));
    expect(refusal(() => parseModelConfig(late)).message).toMatch(/alibi has no option 'slope'; its options are none/);
  });

  it('a model config may name its encoding in the text form', () => {
    expect(parseModelConfig({ pe: 'rope:base=500' }).pe).toEqual({ name: 'rope', options: { base: 500 } });
    expect(refusal(() => parseModelConfig({ pe: 'rope:bsae=500' })).message).toMatch(/no option 'bsae'/);
  });
});
