/**
 * Memory the trainer and the evaluator are about to ask for, checked against what the machine has, so an
 * impossible --batch or --length is refused up front with the size named instead of dying in the allocator
 * ("Invalid typed array length", an out-of-memory abort) after a run folder was written.
 *
 * activationBytes counts the buffers Transformer allocates for a forward + backward of `rows` = batch x length
 * tokens (see Activations in src/model/transformer.ts): per layer the residual, two layer norms, qkv, q/k/v,
 * attention output, two MLP widths; then the final norm, logits, losses and the shared gradient scratch. It is a
 * lower bound: attention scratch that an encoding allocates per call (up to heads x length^2 scores for the
 * explicit encodings) comes on top, as do the parameters and optimizer moments (counted separately).
 */
import { freemem } from 'node:os';
import { HypeError } from '../errors.ts';
import type { ModelConfig } from '../model/config.ts';
import { qkvWidth } from '../model/parameters.ts';

const GIB = 2 ** 30;

export function formatBytes(n: number): string {
  if (n >= GIB) return `${(n / GIB).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${Math.ceil(n / 1024)} KiB`;
}

/** Bytes of the activation and gradient buffers of one forward + backward over `rows` tokens (a lower bound). */
export function activationBytes(cfg: ModelConfig, rows: number): number {
  const C = cfg.width;
  const F = cfg.mlpWidth;
  const Q = qkvWidth(cfg);
  const D = C / cfg.heads;
  const perLayer = C + 2 + Q + cfg.heads * D + 2 * cfg.kvHeads * D + C + C + C + 2 + 2 * F + C; // + res[i+1]
  const head = C + C + 2 + 2 * cfg.vocab + 1; // res[0], lnf + stats, logits, dLogits, losses
  const scratch = 4 * C + F + Q; // dRes, dLn, dAtt, dHeads, dWide, dQkv
  const floats = rows * (cfg.layers * perLayer + head + scratch);
  const elem = cfg.dtype === 'float64' ? 8 : 4;
  return floats * elem + rows * 2 * 4; // + Int32 tokens and targets
}

/** Parameters of the transformer itself (encodings add a few more): embedding, blocks, final norm. */
export function parameterEstimate(cfg: ModelConfig): number {
  const C = cfg.width;
  const F = cfg.mlpWidth;
  const Q = qkvWidth(cfg);
  return cfg.vocab * C + cfg.layers * (C * Q + Q + C * C + C + 2 * C * F + F + C + 4 * C) + 2 * C;
}

/** Bytes of training `cfg` on `rows` tokens per step: activations, plus parameters, gradients and AdamW moments. */
export function trainingBytes(cfg: ModelConfig, rows: number): number {
  return activationBytes(cfg, rows) + parameterEstimate(cfg) * 4 * (cfg.dtype === 'float64' ? 8 : 4);
}

/** Memory this process can still take: the OS's available memory, within any container (cgroup) limit. */
export function availableMemory(): number {
  const p = process as unknown as { availableMemory?: () => number };
  return typeof p.availableMemory === 'function' ? p.availableMemory() : freemem();
}

/**
 * Refuses work needing `bytes` when it exceeds the available memory (or, for a tiny machine, any amount past
 * what a JavaScript typed array can address), naming both sizes and `fix`.
 */
export function checkMemory(bytes: number, what: string, fix: string, available = availableMemory()): void {
  if (!Number.isFinite(bytes) || bytes > available) {
    throw new HypeError(
      'argument',
      `${what} needs at least ${Number.isFinite(bytes) ? formatBytes(bytes) : 'an unbounded amount'} of memory, ` +
        `but only ${formatBytes(available)} is available; ${fix}`,
    );
  }
}
