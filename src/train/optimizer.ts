/**
 * AdamW over a list of named parameters, with global gradient-norm clipping. The state (first and second moments,
 * in each parameter's own dtype, and the step count) is what a checkpoint must save to resume bit for bit. The
 * moments are tensors of the parameters' backend (T), updated there by its adamwStep; the host functions below
 * (globalGradNorm, clipGradients) serve host callers, while a training step clips on the backend
 * (Backend.globalNorm and clipByNorm, trainer.ts).
 */
import type { Backend } from '../backend/backend.ts';
import { HypeError } from '../errors.ts';
import type { Param } from '../pe/encoding.ts';
import type { FloatArray } from '../tensor.ts';
import type { TrainConfig } from './config.ts';

export class AdamW<T = FloatArray, I = Int32Array> {
  readonly m: T[];
  readonly v: T[];
  /** Number of updates applied so far. */
  step = 0;

  constructor(
    readonly params: readonly Param<T>[],
    readonly backend: Backend<T, I>,
  ) {
    const be = backend;
    this.m = params.map((p) => be.allocate(be.dtypeOf(p.data), be.sizeOf(p.data), `the AdamW moments of ${p.name}`));
    this.v = params.map((p) => be.allocate(be.dtypeOf(p.data), be.sizeOf(p.data), `the AdamW moments of ${p.name}`));
  }

  /**
   * One update with learning rate `lr`. Weight decay applies to parameters marked `decay` (weights and the
   * embedding), or to every parameter when cfg.decayAll.
   */
  update(cfg: TrainConfig, lr: number): void {
    this.step++;
    const be = this.backend;
    this.params.forEach((p, i) => {
      be.adamwStep(p.data, p.grad, this.m[i]!, this.v[i]!, be.sizeOf(p.data), {
        lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weightDecay: p.decay || cfg.decayAll ? cfg.weightDecay : 0,
        step: this.step,
      });
    });
  }
}

/** The L2 norm of all gradients together, accumulated in double precision. */
export function globalGradNorm(params: readonly Param[]): number {
  let s = 0;
  for (const p of params) {
    const g = p.grad;
    for (let i = 0; i < g.length; i++) s += g[i]! * g[i]!;
  }
  return Math.sqrt(s);
}

/**
 * Scales every gradient by clip / norm when the global norm exceeds `clip` (0 disables). Returns the norm before
 * clipping. A non-finite norm stops training: the update would write NaN into every parameter.
 */
export function clipGradients(params: readonly Param[], clip: number): number {
  const norm = globalGradNorm(params);
  checkGradNorm(norm);
  if (clip > 0 && norm > clip) {
    const scale = clip / norm;
    for (const p of params) {
      const g = p.grad;
      for (let i = 0; i < g.length; i++) g[i] *= scale;
    }
  }
  return norm;
}

/** Refuses a non-finite gradient norm: the update would write NaN into every parameter. */
export function checkGradNorm(norm: number): void {
  if (!Number.isFinite(norm)) {
    throw new HypeError(
      'non-finite',
      `the gradient norm is ${norm}: training diverged; lower the learning rate (--lr) or enable clipping (--clip)`,
    );
  }
}
