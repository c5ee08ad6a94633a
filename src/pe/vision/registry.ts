/**
 * Name -> factory for the encodings an image model (model/vision.ts) accepts: the 2-D encodings of this folder,
 * flattened 1-D HyPE, and NoPE (the 1-D 'none', which has no positions to map). Each is a PositionalEncoding like
 * the 1-D ones; attention calls carry the patch grid in AttendContext.grid.
 */
import { HypeError } from '../../errors.ts';
import type { EncodingFactory } from '../encoding.ts';
import { noneEncoding } from '../none.ts';
import { alibi2dEncoding } from './alibi-2d.ts';
import { hype2dSymEncoding } from './hype-2d-sym.ts';
import { hype2dEncoding } from './hype-2d.ts';
import { hypeFlatEncoding } from './hype-flat.ts';
import { learned2dEncoding } from './learned-2d.ts';
import { rope2dEncoding } from './rope-2d.ts';
import { sincos2dEncoding } from './sincos-2d.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFactory = EncodingFactory<any>;

const FACTORIES: readonly AnyFactory[] = [
  alibi2dEncoding,
  hype2dEncoding,
  hype2dSymEncoding,
  hypeFlatEncoding,
  learned2dEncoding,
  noneEncoding,
  rope2dEncoding,
  sincos2dEncoding,
];

const byName = new Map<string, AnyFactory>(FACTORIES.map((f) => [f.name, f]));

export function visionEncodingNames(): string[] {
  return [...byName.keys()];
}

export function findVisionEncoding(name: string): AnyFactory | undefined {
  return byName.get(name);
}

export function getVisionEncoding(name: string): AnyFactory {
  const f = byName.get(name);
  if (!f) {
    throw new HypeError(
      'argument',
      `unknown image encoding '${name}'; choose one of: ${visionEncodingNames().join(', ')}`,
    );
  }
  return f;
}
