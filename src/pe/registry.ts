/**
 * Name -> factory for every positional encoding, used by the model, the CLI and the study.
 * To add an encoding: import its factory and list it in FACTORIES (one line each, kept alphabetical).
 */
import { HypeError } from '../errors.ts';
import { alibiEncoding } from './alibi.ts';
import { daFactory } from './da.ts';
import type { EncodingFactory } from './encoding.ts';
import { hopeEncoding } from './hope.ts';
import { hypeEncoding } from './hype/encoding.ts';
import { learnedEncoding } from './learned.ts';
import { noneEncoding } from './none.ts';
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
  daFactory,
  hopeEncoding,
  hypeEncoding,
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
