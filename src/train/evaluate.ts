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

/** The windows of one evaluation and the buffers its batches are cut into (shared by the sync and async forms). */
interface EvalPlan {
  length: number;
  sliding: boolean;
  stride: number;
  starts: number[];
  batch: number;
  tokens: Int32Array;
  targets: Int32Array;
}

function planEvaluation<T, I>(
  model: Transformer<T, I>,
  data: Uint8Array,
  length: number,
  options: EvalOptions,
): EvalPlan {
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
  return { length, sliding, stride, starts, batch, tokens, targets };
}

/** Fills the plan's tokens and targets with windows w0 .. w0 + nb - 1; returns their subarrays. */
function fillWindows(p: EvalPlan, data: Uint8Array, w0: number, nb: number): [Int32Array, Int32Array] {
  const L = p.length;
  for (let b = 0; b < nb; b++) {
    const s = p.starts[w0 + b]!;
    for (let t = 0; t < L; t++) {
      p.tokens[b * L + t] = data[s + t]!;
      p.targets[b * L + t] = data[s + t + 1]!;
    }
  }
  return [p.tokens.subarray(0, nb * L), p.targets.subarray(0, nb * L)];
}

/** Adds the scored per-token losses of windows w0 .. w0 + nb - 1 (a later sliding window scores its last S). */
function scoreWindows(
  p: EvalPlan,
  losses: ArrayLike<number>,
  w0: number,
  nb: number,
  acc: { nats: number; scored: number },
) {
  const L = p.length;
  for (let b = 0; b < nb; b++) {
    const first = w0 + b === 0 ? 0 : L - p.stride;
    for (let t = first; t < L; t++) acc.nats += losses[b * L + t]!;
    acc.scored += L - first;
  }
}

function evalResult(p: EvalPlan, acc: { nats: number; scored: number }): EvalResult {
  const mean = acc.nats / acc.scored;
  return {
    length: p.length,
    mode: p.sliding ? 'sliding' : 'non-overlapping',
    stride: p.stride,
    windows: p.starts.length,
    scored: acc.scored,
    nats: mean,
    bitsPerByte: mean / Math.LN2,
    perplexity: Math.exp(mean),
  };
}

const where = (p: EvalPlan, w0: number, nb: number) =>
  `at evaluation length ${p.length} (held-out windows ${w0 + 1}..${w0 + nb} of ${p.starts.length})`;
const BROKEN = 'the model or its checkpoint is broken; evaluate an earlier checkpoint';

/** Held-out evaluation on a host backend (the model's losses read in place). */
export function evaluateHeldOut(
  model: Transformer,
  data: Uint8Array,
  length: number,
  options: EvalOptions = {},
): EvalResult {
  const p = planEvaluation(model, data, length, options);
  const acc = { nats: 0, scored: 0 };
  for (let w0 = 0; w0 < p.starts.length; w0 += p.batch) {
    const nb = Math.min(p.batch, p.starts.length - w0);
    const [tokens, targets] = fillWindows(p, data, w0, nb);
    const mean = model.forward(tokens, targets, nb, length);
    // Never a number from NaN: a non-finite logit stops the evaluation (a kernel may skip it in the loss).
    checkOutputs(model, mean, where(p, w0, nb), BROKEN);
    scoreWindows(p, model.tokenLosses(), w0, nb, acc);
    options.onProgress?.(Math.min(w0 + nb, p.starts.length), p.starts.length);
  }
  return evalResult(p, acc);
}

/**
 * evaluateHeldOut on any backend: per batch the model's statistics (mean loss, non-finite logit count) and its
 * per-token losses are read back (the logits only when the count says one is not finite).
 */
export async function evaluateHeldOutAsync<T, I>(
  model: Transformer<T, I>,
  data: Uint8Array,
  length: number,
  options: EvalOptions = {},
): Promise<EvalResult> {
  const p = planEvaluation(model, data, length, options);
  const be = model.backend;
  const acc = { nats: 0, scored: 0 };
  for (let w0 = 0; w0 < p.starts.length; w0 += p.batch) {
    const nb = Math.min(p.batch, p.starts.length - w0);
    const [tokens, targets] = fillWindows(p, data, w0, nb);
    await forwardChecked(model, tokens, targets, nb, length, where(p, w0, nb), BROKEN);
    scoreWindows(p, await be.read(model.lossesHandle(), 0, nb * length), w0, nb, acc);
    options.onProgress?.(Math.min(w0 + nb, p.starts.length), p.starts.length);
  }
  return evalResult(p, acc);
}

/**
 * A forward pass with targets on any backend, checked as checkOutputs does: the statistics (mean loss, non-finite
 * logit count) are read back, and the logits only when the count says one is not finite. Returns the mean loss.
 */
export async function forwardChecked<T, I>(
  model: Transformer<T, I>,
  tokens: Int32Array,
  targets: Int32Array,
  batch: number,
  length: number,
  where: string,
  fix: string,
): Promise<number> {
  const be = model.backend;
  model.enqueueForward(tokens, targets, batch, length);
  be.countNonFinite(model.logitsHandle(), batch * length * model.config.vocab, model.stats, STAT_NON_FINITE_LOGITS);
  const stats = await be.read(model.stats);
  if (stats[STAT_NON_FINITE_LOGITS]! > 0)
    checkLogits(await be.read(model.logitsHandle()), model.config.vocab, where, fix);
  checkLoss(stats[STAT_LOSS]!, where, fix);
  return stats[STAT_LOSS]!;
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
