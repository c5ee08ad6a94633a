/**
 * Encoding options: the one check every factory runs on the options it is given, and the one parser for the two
 * ways people write them (the CLI's `--pe-options`, `hype show`, a model config's string form):
 *   JSON               {"preset":"recency","lengthExtra":4096}
 *   key=value pairs    preset=recency:lengthExtra=4096      (':'-separated; true/false/numbers typed, [..] as JSON)
 * A misspelt key used to be ignored silently (the encoding trained with its default), so unknown keys are refused
 * with the list of keys the encoding accepts, and a value whose type differs from the option's default is refused
 * with the expected type, before any encoding is built.
 */
import { check, HypeError } from '../errors.ts';
import type { EncodingDims, EncodingFactory, PositionalEncoding } from './encoding.ts';
import type { Rng } from '../util/rng.ts';

/** A factory description for `defineEncoding`: `defaults` lists every option with a default. */
export interface EncodingDefinition<O extends object> extends EncodingFactory<O> {
  /** Options accepted that have no default (absent means "derived"), e.g. a length taken from the model. */
  readonly optionalKeys?: readonly string[];
  /** Options that size a parameter table (a length, a clip distance, a width): at most MAX_SIZE_OPTION. */
  readonly sizeKeys?: readonly string[];
}

/**
 * The largest value a sizing option may take: 2^20 positions. Attention here is quadratic, so 2^20 positions cost
 * ~10^12 operations per head and layer, and a table sized beyond that is gigabytes of parameters no run can train;
 * such a value is a typo (1e9 for 1e3), refused before gigabytes are allocated and filled.
 */
export const MAX_SIZE_OPTION = 2 ** 20;

function typeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

/**
 * Refuses keys `factory` does not accept and values whose type differs from the default's (numbers must also be
 * finite). `undefined` values count as absent, as an object spread would treat them.
 */
export function checkEncodingOptions(
  factory: Pick<EncodingDefinition<object>, 'name' | 'defaults' | 'optionalKeys' | 'sizeKeys'>,
  options: unknown,
): void {
  check(
    typeof options === 'object' && options !== null && !Array.isArray(options),
    'argument',
    () => `${factory.name} options must be an object of key/value pairs, got ${JSON.stringify(options)}`,
  );
  const defaults = factory.defaults as Record<string, unknown>;
  const allowed = [...Object.keys(defaults), ...(factory.optionalKeys ?? [])];
  for (const [key, value] of Object.entries(options)) {
    if (value === undefined) continue;
    if (!allowed.includes(key)) {
      throw new HypeError(
        'argument',
        `${factory.name} has no option '${key}'; its options are ` +
          (allowed.length === 0 ? 'none (pass {})' : allowed.join(', ')),
      );
    }
    if (!Object.hasOwn(defaults, key)) continue;
    const want = typeName(defaults[key]);
    const got = typeName(value);
    check(
      got === want,
      'argument',
      () =>
        `${factory.name} option '${key}' must be a ${want} (default ${JSON.stringify(defaults[key])}), got ${JSON.stringify(value)}`,
    );
    check(
      typeof value !== 'number' || Number.isFinite(value),
      'argument',
      () => `${factory.name} option '${key}' must be a finite number, got ${String(value)}`,
    );
    check(
      !factory.sizeKeys?.includes(key) || (value as number) <= MAX_SIZE_OPTION,
      'argument',
      () =>
        `${factory.name} option '${key}' = ${String(value)} is larger than ${MAX_SIZE_OPTION} (2^20): it sizes a ` +
        'parameter table, and quadratic attention cannot use one that large; check the value',
    );
  }
}

/** An encoding factory whose `create` first runs `checkEncodingOptions`: every registry entry is built with this. */
export function defineEncoding<O extends object>(definition: EncodingDefinition<O>): EncodingFactory<O> {
  const checkOptions = (options: unknown): void => checkEncodingOptions(definition, options);
  return {
    ...definition,
    checkOptions,
    create(dims: EncodingDims, options: Partial<O>, rng: Rng): PositionalEncoding {
      checkOptions(options);
      return definition.create(dims, options, rng);
    },
  };
}

/** Refuses a `sharing` option other than 'shared' or 'per-layer'. */
export function checkSharing(encoding: string, sharing: unknown): void {
  check(
    sharing === 'shared' || sharing === 'per-layer',
    'argument',
    () =>
      `${encoding} sharing must be 'shared' (one set for all layers, as the reference) or 'per-layer', got ` +
      JSON.stringify(sharing),
  );
}

function parseValue(raw: string, where: string): unknown {
  const text = raw.trim();
  if (text === 'true') return true;
  if (text === 'false') return false;
  if (text.startsWith('[') || text.startsWith('{') || text.startsWith('"')) {
    try {
      return JSON.parse(text);
    } catch {
      throw new HypeError('argument', `option value ${text} in '${where}' is not valid JSON`);
    }
  }
  const n = Number(text);
  return text !== '' && Number.isFinite(n) ? n : text;
}

/** Splits `text` at `sep` outside brackets, braces and quotes (so JSON values keep their commas and colons). */
export function splitTopLevel(text: string, sep: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (quoted) {
      if (c === '\\') i++;
      else if (c === '"') quoted = false;
    } else if (c === '"') quoted = true;
    else if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === sep && depth === 0) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

const SYNTAX = `write options as JSON ('{"preset":"recency"}') or as key=value pairs ('preset=recency:lengthExtra=4096')`;

/** Options text in either syntax (header) -> a plain object; '' gives {}. Keys given twice are refused. */
export function parseEncodingOptions(text: string): Record<string, unknown> {
  const trimmed = text.trim();
  if (trimmed === '') return {};
  if (trimmed.startsWith('{')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch (e) {
      throw new HypeError(
        'argument',
        `encoding options '${trimmed}' are not valid JSON (${(e as Error).message}); ${SYNTAX}`,
      );
    }
    check(
      typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed),
      'argument',
      () => `encoding options '${trimmed}' must be a JSON object; ${SYNTAX}`,
    );
    return parsed as Record<string, unknown>;
  }
  const options = new Map<string, unknown>();
  for (const pair of splitTopLevel(trimmed, ':')) {
    const eq = pair.indexOf('=');
    const key = pair.slice(0, Math.max(eq, 0)).trim();
    check(
      eq > 0 && key !== '',
      'argument',
      () => `encoding option '${pair}' in '${trimmed}' is not key=value; ${SYNTAX}`,
    );
    check(!options.has(key), 'argument', () => `encoding option '${key}' is given twice in '${trimmed}'`);
    options.set(key, parseValue(pair.slice(eq + 1), trimmed));
  }
  return Object.fromEntries(options);
}
