/**
 * Text generation: sampling rules and the loop that feeds a decoder (cached by default).
 *
 * Sampling semantics (exactly what samplingProbabilities computes):
 * - temperature T > 0: p = softmax(logits / T) over the kept tokens; T = 0 means greedy (argmax, lowest byte
 *   value on ties), independent of top-k.
 * - top-k K >= 1: keep the K largest logits (ties broken by lower byte value, so exactly K are kept) and give every
 *   other token probability 0; K = 0 keeps all.
 * A draw takes one uniform u in [0, 1) from the seeded Rng and returns the first token whose cumulative probability
 * exceeds u, so a seed fixes the whole generation.
 */
import { check } from '../errors.ts';
import type { FloatArray } from '../tensor.ts';
import { Rng } from '../util/rng.ts';
import { CachedDecoder, RecomputeDecoder, type Decoder } from './decode.ts';
import type { Transformer } from './transformer.ts';

export interface SamplingOptions {
  temperature: number;
  /** 0 = no limit. */
  topK: number;
}

export function checkSampling(o: SamplingOptions, vocab: number): void {
  check(
    Number.isFinite(o.temperature) && o.temperature >= 0,
    'argument',
    `temperature must be a finite number >= 0 (0 = greedy), got ${o.temperature}`,
  );
  check(
    Number.isInteger(o.topK) && o.topK >= 0 && o.topK <= vocab,
    'argument',
    `top-k must be an integer in [0, ${vocab}] (0 = no limit), got ${o.topK}`,
  );
}

/** The distribution a draw samples from (see the header). */
export function samplingProbabilities(logits: ArrayLike<number>, o: SamplingOptions): Float64Array {
  const V = logits.length;
  checkSampling(o, V);
  const p = new Float64Array(V);
  if (o.temperature === 0) {
    let best = 0;
    for (let j = 1; j < V; j++) if (logits[j]! > logits[best]!) best = j;
    p[best] = 1;
    return p;
  }
  const order = Array.from({ length: V }, (_, j) => j).sort((x, y) => logits[y]! - logits[x]! || x - y);
  const kept = order.slice(0, o.topK === 0 ? V : o.topK);
  const top = logits[kept[0]!]!;
  let z = 0;
  for (const j of kept) {
    p[j] = Math.exp((logits[j]! - top) / o.temperature);
    z += p[j]!;
  }
  for (const j of kept) p[j] = p[j]! / z;
  return p;
}

export function sampleToken(logits: ArrayLike<number>, o: SamplingOptions, rng: Rng): number {
  const p = samplingProbabilities(logits, o);
  const u = rng.uniform();
  let cum = 0;
  let last = 0;
  for (let j = 0; j < p.length; j++) {
    if (p[j]! === 0) continue;
    cum += p[j]!;
    last = j;
    if (u < cum) return j;
  }
  return last; // u within rounding of 1
}

export interface GenerateOptions extends SamplingOptions {
  /** New tokens to generate. */
  tokens: number;
  seed: number;
  /** Use the KV cache (default) or recompute the whole sequence at every step. */
  cache?: boolean;
  /** Called with each step's next-token logits (a copy) and the token drawn from them. */
  onToken?: (logits: FloatArray, token: number) => void;
}

/**
 * The generation loop as a coroutine: yields each decoder step's input (tokens [1, n], n) and takes back that step's
 * logits [n, vocab]; returns the new bytes. generate and generateAsync drive it with step / stepAsync.
 */
function* generation<T, I>(
  model: Transformer<T, I>,
  prompt: Uint8Array,
  o: GenerateOptions,
): Generator<[Int32Array, number], Uint8Array, FloatArray> {
  check(prompt.length >= 1, 'argument', 'the prompt must hold at least one byte; pass --prompt "..."');
  check(Number.isInteger(o.tokens) && o.tokens >= 0, 'argument', `--tokens must be an integer >= 0, got ${o.tokens}`);
  const V = model.config.vocab;
  checkSampling(o, V);
  const rng = new Rng(o.seed);
  const out = new Uint8Array(o.tokens);
  if (o.tokens === 0) return out;
  const logits = yield [Int32Array.from(prompt), prompt.length];
  let last = logits.subarray((prompt.length - 1) * V, prompt.length * V);
  for (let t = 0; t < o.tokens; t++) {
    const token = sampleToken(last, o, rng);
    o.onToken?.(last.slice(), token);
    out[t] = token;
    if (t === o.tokens - 1) break;
    last = yield [Int32Array.of(token), 1];
  }
  return out;
}

function decoderFor<T, I>(model: Transformer<T, I>, prompt: Uint8Array, o: GenerateOptions) {
  const total = prompt.length + o.tokens;
  return o.cache === false ? new RecomputeDecoder(model, 1, total) : new CachedDecoder(model, 1, total);
}

/** Generates `tokens` bytes after `prompt` (at least one byte) on a host backend. Returns the new bytes. */
export function generate(model: Transformer, prompt: Uint8Array, o: GenerateOptions): Uint8Array {
  const g = generation(model, prompt, o);
  let r = g.next();
  const decoder: Decoder = decoderFor(model, prompt, o);
  while (!r.done) r = g.next(decoder.step(...r.value));
  return r.value;
}

/**
 * generate() on any backend: each step's logits are read back (on a device, the one transfer out of a step; the
 * KV cache stays on the device and is freed at the end).
 */
export async function generateAsync<T, I>(
  model: Transformer<T, I>,
  prompt: Uint8Array,
  o: GenerateOptions,
): Promise<Uint8Array> {
  const g = generation(model, prompt, o);
  let r = g.next();
  const decoder = decoderFor(model, prompt, o);
  try {
    while (!r.done) r = g.next(await decoder.stepAsync(...r.value));
  } finally {
    if (decoder instanceof CachedDecoder) decoder.release();
  }
  return r.value;
}
