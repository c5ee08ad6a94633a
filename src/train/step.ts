/**
 * One optimisation step on any backend: forward, backward, global-norm clipping and AdamW, all as backend ops on
 * the model's tensors, followed by ONE read-back: the model's statistics [mean loss, gradient norm, non-finite
 * logit count] (transformer.ts STAT_*). The host uploads only the batch's tokens and targets. The checks a step
 * makes (finite logits, loss and gradient norm) are made on that read, with the messages the host checks give; on
 * a failure the step's update has already been applied on the backend, and the caller stops the run there.
 */
import { HypeError } from '../errors.ts';
import type { Transformer } from '../model/transformer.ts';
import { STAT_GRAD_NORM, STAT_LOSS, STAT_NON_FINITE_LOGITS } from '../model/transformer.ts';
import type { FloatArray } from '../tensor.ts';
import type { TrainConfig } from './config.ts';
import { checkLogits, checkLoss } from './evaluate.ts';
import { checkGradNorm, type AdamW } from './optimizer.ts';

export interface StepInput {
  tokens: Int32Array;
  targets: Int32Array;
  batch: number;
  length: number;
  /** Learning rate of this step (the schedule's value). */
  lr: number;
  /** Says where in the run, for error messages: 'at step 12'. */
  where: string;
}

/** The step's work on the backend, with nothing read back: stats hold its loss and gradient norm afterwards. */
export function enqueueStep<T, I>(model: Transformer<T, I>, opt: AdamW<T, I>, train: TrainConfig, s: StepInput): void {
  enqueueForwardHalf(model, s);
  enqueueBackwardHalf(model);
  enqueueUpdate(model, opt, train, s);
}

function enqueueForwardHalf<T, I>(model: Transformer<T, I>, s: StepInput): void {
  model.zeroGrad();
  model.enqueueForward(s.tokens, s.targets, s.batch, s.length);
  const n = s.batch * s.length * model.config.vocab;
  model.backend.countNonFinite(model.logitsHandle(), n, model.stats, STAT_NON_FINITE_LOGITS);
}

function enqueueBackwardHalf<T, I>(model: Transformer<T, I>): void {
  model.backward();
  const grads = model.parameters().map((p) => p.grad);
  model.backend.globalNorm(grads, model.stats, STAT_GRAD_NORM);
}

function enqueueUpdate<T, I>(model: Transformer<T, I>, opt: AdamW<T, I>, train: TrainConfig, s: StepInput): void {
  const grads = model.parameters().map((p) => p.grad);
  model.backend.clipByNorm(grads, model.stats, STAT_GRAD_NORM, train.clip);
  opt.update(train, s.lr);
}

const FIX = 'lower the learning rate (--lr) or resume from an earlier checkpoint';

/** The forward's checks on the statistics (and, only when one is bad, the logits themselves). */
async function checkForward<T, I>(model: Transformer<T, I>, stats: FloatArray, where: string): Promise<void> {
  if (stats[STAT_NON_FINITE_LOGITS]! > 0) {
    checkLogits(await model.backend.read(model.logitsHandle()), model.config.vocab, where, FIX);
  }
  checkLoss(stats[STAT_LOSS]!, where, FIX);
}

/** The gradient norm's check, naming the step. */
function checkNorm(norm: number, where: string): void {
  try {
    checkGradNorm(norm);
  } catch (err) {
    if (err instanceof HypeError) throw new HypeError(err.code, `${where}: ${err.message}`);
    throw err;
  }
}

/**
 * enqueueStep, then the one read of the statistics and the step's checks; returns the loss and gradient norm. On
 * a host backend the checks run where they did before the seam had handles, on the statistics in place (no
 * transfer): the forward's before the backward (so a diverged forward is reported as such, not by the backward's
 * input checks), the norm's before the update (the parameters stay as they were). On a device they run on the
 * one read at the end, after the update.
 */
export async function trainingStep<T, I>(
  model: Transformer<T, I>,
  opt: AdamW<T, I>,
  train: TrainConfig,
  s: StepInput,
): Promise<{ loss: number; gradNorm: number }> {
  const be = model.backend;
  enqueueForwardHalf(model, s);
  const inPlace = be.hostView(model.stats);
  if (inPlace) await checkForward(model, inPlace, s.where);
  enqueueBackwardHalf(model);
  if (inPlace) checkNorm(inPlace[STAT_GRAD_NORM]!, s.where);
  enqueueUpdate(model, opt, train, s);
  const stats = await be.read(model.stats);
  if (!inPlace) {
    await checkForward(model, stats, s.where);
    checkNorm(stats[STAT_GRAD_NORM]!, s.where);
  }
  return { loss: stats[STAT_LOSS]!, gradNorm: stats[STAT_GRAD_NORM]! };
}
