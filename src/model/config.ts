/**
 * A model configuration is plain JSON data: it is written into every run folder and checkpoint, and a model is
 * rebuilt from it alone. `parseModelConfig` fills defaults and refuses anything it does not understand, so a typo
 * in a config file is an error rather than a silently ignored key.
 */
import { HypeError, check } from '../errors.ts';
import { findEncodingFactory, splitEncodingSpec } from '../pe/registry.ts';
import type { DType } from '../tensor.ts';

/** Byte-level: every UTF-8 byte is a token. */
export const BYTE_VOCAB = 256;

export interface ModelConfig {
  /** Always 256 (bytes); stored so a checkpoint says what it was trained on. */
  vocab: number;
  /** Model width C (residual stream). */
  width: number;
  layers: number;
  heads: number;
  /** Key/value heads (grouped-query attention when < heads); heads must be a multiple. */
  kvHeads: number;
  /** Hidden width of the GELU MLP. */
  mlpWidth: number;
  /** The positional encoding: a registry name and options passed to its factory (its defaults fill the rest). */
  pe: { name: string; options: Record<string, unknown> };
  /** Training window length (some encodings derive defaults from it); evaluation may use other lengths. */
  trainLength: number;
  dtype: DType;
  layerNormEps: number;
  /** Standard deviation of the normal init of embeddings and linear weights (residual projections scaled down). */
  initStd: number;
  /** Seed of the parameter initialisation. */
  seed: number;
}

export const MODEL_DEFAULTS: ModelConfig = {
  vocab: BYTE_VOCAB,
  width: 128,
  layers: 4,
  heads: 4,
  kvHeads: 4,
  mlpWidth: 512,
  pe: { name: 'hype', options: {} },
  trainLength: 128,
  dtype: 'float32',
  layerNormEps: 1e-5,
  initStd: 0.02,
  seed: 1,
};

const KEYS = Object.keys(MODEL_DEFAULTS) as (keyof ModelConfig)[];

function positiveInt(v: unknown, key: string): number {
  check(
    typeof v === 'number' && Number.isInteger(v) && v > 0,
    'argument',
    `model config '${key}' must be a positive integer, got ${JSON.stringify(v)}`,
  );
  return v;
}

function positiveNumber(v: unknown, key: string): number {
  check(
    typeof v === 'number' && Number.isFinite(v) && v > 0,
    'argument',
    `model config '${key}' must be a positive finite number, got ${JSON.stringify(v)}`,
  );
  return v;
}

/**
 * Validates a (partial) configuration object and returns a complete one. Omitted keys take MODEL_DEFAULTS;
 * `heads` alone also sets kvHeads, and `width` alone sets mlpWidth = 4 width.
 */
/**
 * `saved`: the config was read back from disk (a run record or checkpoint), so an encoding option absent from it
 * means what it meant when it was written (the factory's savedDefaults, e.g. T5/XL sharing 'per-layer'); a new
 * config records the current default instead. Either way the parsed config names the choice explicitly.
 */
export function parseModelConfig(raw: unknown, { saved = false }: { saved?: boolean } = {}): ModelConfig {
  check(
    typeof raw === 'object' && raw !== null && !Array.isArray(raw),
    'argument',
    'a model config must be a JSON object such as {"width": 128, "layers": 4, "heads": 4, "pe": {"name": "hype"}}',
  );
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!(KEYS as string[]).includes(key)) {
      throw new HypeError('argument', `unknown model config key '${key}'; known keys: ${KEYS.join(', ')}`);
    }
  }
  const width = positiveInt(obj.width ?? MODEL_DEFAULTS.width, 'width');
  const heads = positiveInt(obj.heads ?? MODEL_DEFAULTS.heads, 'heads');
  const kvHeads = positiveInt(obj.kvHeads ?? heads, 'kvHeads');
  const cfg: ModelConfig = {
    vocab: positiveInt(obj.vocab ?? BYTE_VOCAB, 'vocab'),
    width,
    layers: positiveInt(obj.layers ?? MODEL_DEFAULTS.layers, 'layers'),
    heads,
    kvHeads,
    mlpWidth: positiveInt(obj.mlpWidth ?? 4 * width, 'mlpWidth'),
    pe: parsePe(obj.pe ?? MODEL_DEFAULTS.pe, saved),
    trainLength: positiveInt(obj.trainLength ?? MODEL_DEFAULTS.trainLength, 'trainLength'),
    dtype: parseDtype(obj.dtype ?? MODEL_DEFAULTS.dtype),
    layerNormEps: positiveNumber(obj.layerNormEps ?? MODEL_DEFAULTS.layerNormEps, 'layerNormEps'),
    initStd: positiveNumber(obj.initStd ?? MODEL_DEFAULTS.initStd, 'initStd'),
    seed: parseSeed(obj.seed ?? MODEL_DEFAULTS.seed),
  };
  check(cfg.vocab === BYTE_VOCAB, 'argument', `model config 'vocab' must be ${BYTE_VOCAB} (byte-level model)`);
  check(
    width % heads === 0,
    'argument',
    `model width ${width} must be divisible by heads ${heads} (head dim = width / heads); change one of them`,
  );
  check(
    heads % kvHeads === 0,
    'argument',
    `heads ${heads} must be a multiple of kvHeads ${kvHeads} (grouped-query attention); change kvHeads`,
  );
  return cfg;
}

function parsePe(v: unknown, saved: boolean): ModelConfig['pe'] {
  if (typeof v === 'string') v = splitEncodingSpec(v); // 'name' or 'name:options' (pe/options.ts)
  check(
    typeof v === 'object' && v !== null && typeof (v as { name?: unknown }).name === 'string',
    'argument',
    `model config 'pe' must be an encoding name or {"name": ..., "options": {...}}, got ${JSON.stringify(v)}`,
  );
  const { name, options, ...rest } = v as { name: string; options?: unknown };
  check(Object.keys(rest).length === 0, 'argument', `model config 'pe' has unknown keys: ${Object.keys(rest)}`);
  check(
    options === undefined || (typeof options === 'object' && options !== null && !Array.isArray(options)),
    'argument',
    `model config 'pe.options' must be an object, got ${JSON.stringify(options)}`,
  );
  const checked = { ...((options as Record<string, unknown> | undefined) ?? {}) };
  // A registered encoding's option keys and types are checked before anything is built; the name itself is checked
  // where the model is built (a model may be given an encoding factory of its own).
  const factory = findEncodingFactory(name);
  factory?.checkOptions?.(checked);
  for (const [key, then] of Object.entries(factory?.savedDefaults ?? {})) {
    if (checked[key] === undefined) checked[key] = saved ? then : (factory!.defaults as Record<string, unknown>)[key];
  }
  return { name, options: checked };
}

function parseDtype(v: unknown): DType {
  check(
    v === 'float32' || v === 'float64',
    'argument',
    `model config 'dtype' must be 'float32' or 'float64', got ${JSON.stringify(v)}`,
  );
  return v;
}

function parseSeed(v: unknown): number {
  check(
    typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff,
    'argument',
    `model config 'seed' must be an integer in [0, 2^32), got ${JSON.stringify(v)}`,
  );
  return v;
}

/** Whether two configs describe the same architecture (everything but the seed, which only affects init). */
export function sameArchitecture(a: ModelConfig, b: ModelConfig): boolean {
  return canonicalJson({ ...a, seed: 0 }) === canonicalJson({ ...b, seed: 0 });
}

/** JSON with object keys sorted at every level, so equal data always gives the same string. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (typeof v === 'object' && v !== null) {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
