/**
 * Held-out evaluation in bits per byte at a chosen context length.
 *
 * Two ways to cut the held-out bytes into windows of `length` tokens (each predicting the next byte):
 * - non-overlapping (default; as in the ALiBi paper): windows start at 0, L, 2L, ...; every byte is scored once,
 *   and a byte's context is only what precedes it inside its window (0 .. L-1 bytes, L/2 on average).
 * - sliding with stride S (1 <= S <= L): windows start at 0, S, 2S, ...; the first window scores all its L
 *   targets, each later one only its last S (the bytes no earlier window scored), so every scored byte after the
 *   first window sees at least L - S bytes of context. Costs about L / S times more compute.
 * Bytes at the end that do not fill a whole window are not scored (at most L bytes, or S with sliding).
 */
import { check, HypeError } from '../errors.ts';
import { STAT_LOSS, STAT_NON_FINITE_LOGITS, type Transformer } from '../model/transformer.ts';
import type { FloatArray } from '../tensor.ts';
import { activationBytes, checkMemory } from './memory.ts';

export interface EvalOptions {
  /** Sliding-window stride; omit for non-overlapping windows. */
  stride?: number;
  /** Windows per forward pass. */
  batch?: number;
  /** Called after each forward pass with (windows done, windows total). */
  onProgress?: (done: number, total: number) => void;
}

export interface EvalResult {
  length: number;
  mode: 'non-overlapping' | 'sliding';
  stride: number;
  windows: number;
  /** Bytes scored. */
  scored: number;
  /** Mean negative log-likelihood per byte, nats. */
  nats: number;
  bitsPerByte: number;
  /** Per-byte perplexity exp(nats). */
  perplexity: number;
}

/** One forward pass of an evaluation: B windows of `length` tokens and their targets. */
interface EvalPass {
  tokens: Int32Array;
  targets: Int32Array;
  batch: number;
  /** For error messages. */
  where: string;
}

const EVAL_FIX = 'the model or its checkpoint is broken; evaluate an earlier checkpoint';

/**
 * The evaluation as a sequence of passes: yields each pass and is resumed with its per-token losses [B * L] (after
 * the driver ran the forward and its checks), so the host and device drivers below share every line of the maths.
 */
function* evaluationPasses(
  model: { config: Transformer['config'] },
  data: Uint8Array,
  length: number,
  options: EvalOptions,
): Generator<EvalPass, EvalResult, FloatArray> {
  check(Number.isInteger(length) && length >= 1, 'argument', `evaluation length must be a positive integer`);
  const sliding = options.stride !== undefined;
  const stride = options.stride ?? length;
  check(
    Number.isInteger(stride) && stride >= 1 && stride <= length,
    'argument',
    `the sliding stride must be an integer in [1, ${length}], got ${stride}`,
  );
  check(
    data.length >= length + 1,
    'io',
    `the held-out split has ${data.length} bytes, fewer than one window of ${length} + 1; evaluate at a shorter ` +
      'length or hold out more (--val-fraction when training)',
  );
  const starts: number[] = [];
  for (let s = 0; s + length + 1 <= data.length; s += stride) starts.push(s);
  const batch = Math.max(1, Math.min(options.batch ?? 8, starts.length));
  checkMemory(
    activationBytes(model.config, batch * length),
    `evaluating ${batch} windows of ${length} bytes per pass`,
    'lower --batch or the evaluation length',
  );
  const tokens = new Int32Array(batch * length);
  const targets = new Int32Array(batch * length);
  let nats = 0;
  let scored = 0;
  for (let w0 = 0; w0 < starts.length; w0 += batch) {
    const nb = Math.min(batch, starts.length - w0);
    for (let b = 0; b < nb; b++) {
      const s = starts[w0 + b]!;
      for (let t = 0; t < length; t++) {
        tokens[b * length + t] = data[s + t]!;
        targets[b * length + t] = data[s + t + 1]!;
      }
    }
    const losses = yield {
      tokens: tokens.subarray(0, nb * length),
      targets: targets.subarray(0, nb * length),
      batch: nb,
      where: `at evaluation length ${length} (held-out windows ${w0 + 1}..${w0 + nb} of ${starts.length})`,
    };
    for (let b = 0; b < nb; b++) {
      const first = w0 + b === 0 ? 0 : length - stride;
      for (let t = first; t < length; t++) nats += losses[b * length + t]!;
      scored += length - first;
    }
    options.onProgress?.(Math.min(w0 + nb, starts.length), starts.length);
  }
  const mean = nats / scored;
  return {
    length,
    mode: sliding ? 'sliding' : 'non-overlapping',
    stride,
    windows: starts.length,
    scored,
    nats: mean,
    bitsPerByte: mean / Math.LN2,
    perplexity: Math.exp(mean),
  };
}

export function evaluateHeldOut(
  model: Transformer,
  data: Uint8Array,
  length: number,
  options: EvalOptions = {},
): EvalResult {
  const passes = evaluationPasses(model, data, length, options);
  for (let r = passes.next(); ;) {
    if (r.done) return r.value;
    const p = r.value;
    const mean = model.forward(p.tokens, p.targets, p.batch, length);
    // Never a number from NaN: a non-finite logit stops the evaluation (a kernel may skip it in the loss).
    checkOutputs(model, mean, p.where, EVAL_FIX);
    r = passes.next(model.tokenLosses());
  }
}

/**
 * evaluateHeldOut on any backend: per pass, the statistics (mean loss, non-finite logit count) and the per-token
 * losses are read back (what leaves the backend); the logits only when one is not finite.
 */
export async function evaluateHeldOutAsync<T, I>(
  model: Transformer<T, I>,
  data: Uint8Array,
  length: number,
  options: EvalOptions = {},
): Promise<EvalResult> {
  const be = model.backend;
  const passes = evaluationPasses(model, data, length, options);
  for (let r = passes.next(); ;) {
    if (r.done) return r.value;
    const p = r.value;
    model.enqueueForward(p.tokens, p.targets, p.batch, length);
    const n = p.batch * length;
    be.countNonFinite(model.logitsHandle(), n * model.config.vocab, model.stats, STAT_NON_FINITE_LOGITS);
    const stats = await be.read(model.stats);
    if (stats[STAT_NON_FINITE_LOGITS]! > 0) {
      checkLogits(await be.read(model.logitsHandle()), model.config.vocab, p.where, EVAL_FIX);
    }
    checkLoss(stats[STAT_LOSS]!, p.where, EVAL_FIX);
    r = passes.next(await be.read(model.lossesHandle(), 0, n));
  }
}

/**
 * Refuses a forward pass whose loss (null: run without targets) or logits are not finite, naming where (`at step
 * 12`) and which tensor. The logits are checked too because a cross-entropy kernel may skip a NaN logit and still return a finite loss.
 */
export function checkOutputs(model: Transformer, loss: number | null, where: string, fix: string): void {
  checkLogits(model.logits(), model.config.vocab, where, fix);
  checkLoss(loss, where, fix);
}

/** The logit half of checkOutputs, on a host copy of the logits (the trainer's read-back after a bad count). */
export function checkLogits(logits: FloatArray, V: number, where: string, fix: string): void {
  for (let i = 0; i < logits.length; i++) {
    if (!Number.isFinite(logits[i]!)) {
      throw new HypeError(
        'non-finite',
        `logit ${logits[i]} ${where} (token ${Math.floor(i / V)} of the batch, vocabulary entry ${i % V}): ` +
          `the model's output is not finite; ${fix}`,
      );
    }
  }
}

/** The loss half of checkOutputs. */
export function checkLoss(loss: number | null, where: string, fix: string): void {
  if (loss !== null && !Number.isFinite(loss)) throw new HypeError('non-finite', `loss is ${loss} ${where}; ${fix}`);
}
