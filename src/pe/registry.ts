/**
 * Name -> factory for every positional encoding, used by the model, the CLI and the study, and the parser of an
 * encoding written as text: `name`, `name:key=value:key=value` or `name:{"key": value}` (options.ts).
 * To add an encoding: build its factory with defineEncoding (options.ts), import it and list it in FACTORIES (one
 * line each, kept alphabetical).
 */
import { HypeError } from '../errors.ts';
import { alibiEncoding } from './alibi.ts';
import { alibiLearnedEncoding } from './alibi-learned.ts';
import { daFactory } from './da.ts';
import type { EncodingFactory } from './encoding.ts';
import { foxFactory } from './fox.ts';
import { hopeEncoding } from './hope.ts';
import { hypeEncoding } from './hype/encoding.ts';
import { hypeGatedFactory } from './hype-gated.ts';
import { learnedEncoding } from './learned.ts';
import { noneEncoding } from './none.ts';
import { parseEncodingOptions } from './options.ts';
import { pathFactory } from './path.ts';
import { ropeEncoding } from './rope.ts';
import { shawFactory } from './shaw.ts';
import { sinusoidalEncoding } from './sinusoidal.ts';
import { t5Encoding } from './t5.ts';
import { xlFactory } from './xl.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFactory = EncodingFactory<any>;

const FACTORIES: readonly AnyFactory[] = [
  alibiEncoding,
  alibiLearnedEncoding,
  daFactory,
  foxFactory,
  hopeEncoding,
  hypeEncoding,
  hypeGatedFactory,
  learnedEncoding,
  noneEncoding,
  pathFactory,
  ropeEncoding,
  shawFactory,
  sinusoidalEncoding,
  t5Encoding,
  xlFactory,
];

const byName = new Map<string, AnyFactory>(FACTORIES.map((f) => [f.name, f]));

export function encodingNames(): string[] {
  return [...byName.keys()];
}

export function getEncodingFactory(name: string): AnyFactory {
  const f = byName.get(name);
  if (!f) {
    throw new HypeError(
      'argument',
      `unknown positional encoding '${name}'; choose one of: ${encodingNames().join(', ')}`,
    );
  }
  return f;
}

/** An encoding and its options, as text: `name`, `name:key=value:...` or `name:{...json...}`. */
export interface EncodingSpec {
  name: string;
  options: Record<string, unknown>;
}

/** `name[:options]` split into the name and its parsed options (syntax only: the name is not looked up). */
export function splitEncodingSpec(text: string): EncodingSpec {
  const trimmed = text.trim();
  const colon = trimmed.indexOf(':');
  const name = (colon < 0 ? trimmed : trimmed.slice(0, colon)).trim();
  if (name === '') {
    throw new HypeError('argument', `empty encoding name in '${text}'; write e.g. alibi or hype:preset=recency`);
  }
  return { name, options: colon < 0 ? {} : parseEncodingOptions(trimmed.slice(colon + 1)) };
}

/** The registered factory called `name`, or undefined (models may also be built with a factory of their own). */
export function findEncodingFactory(name: string): AnyFactory | undefined {
  return byName.get(name);
}

/**
 * Parses `name[:options]` (options in either syntax of options.ts) and checks the name and the option keys and types
 * against the factory, so a misspelt encoding or option is refused before anything is built or trained.
 */
export function parseEncodingSpec(text: string): EncodingSpec {
  const spec = splitEncodingSpec(text);
  getEncodingFactory(spec.name).checkOptions?.(spec.options);
  return spec;
}
