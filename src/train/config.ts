/**
 * Training hyper-parameters: plain JSON data stored in the run folder and in every checkpoint, validated here.
 */
import { HypeError, check } from '../errors.ts';
import { parsePrecision } from '../backend/autocast.ts';
import type { Precision } from '../backend/backend.ts';
import { DEFAULT_CORPUS } from './corpus.ts';

export interface TrainConfig {
  /** Corpus path; a run stores it absolute (TrainingRun.start resolves it), so it works from any folder. */
  data: string;
  /** Fraction of the corpus (its tail) held out for evaluation. */
  valFraction: number;
  /** Sequences per step; each is a random window of the model's trainLength. */
  batch: number;
  /** Total optimisation steps; the cosine schedule ends here. */
  steps: number;
  /** Peak learning rate (reached at the end of warmup). */
  lr: number;
  /** Final learning rate of the cosine decay. */
  minLr: number;
  /** Linear warmup steps (from lr / warmup up to lr); at most `steps`. Omitted: min(50, steps). */
  warmup: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Global gradient-norm clipping threshold (0 disables clipping). */
  clip: number;
  /** Also decay norms, biases and encoding parameters (off by default: only weights and embeddings decay). */
  decayAll: boolean;
  /** Seed of the data sampler (the model's init seed lives in the model config). */
  seed: number;
  /** Write a checkpoint every N steps (0: only at the end). */
  checkpointEvery: number;
  /** How many of the newest checkpoints to keep on disk. */
  keepCheckpoints: number;
  /**
   * 'fp32', or 'bf16' mixed precision (backend/autocast.ts): bf16 matmul and attention operands, fp32 accumulation,
   * statistics, loss, master weights and AdamW state.
   */
  precision: Precision;
}

export const TRAIN_DEFAULTS: TrainConfig = {
  data: DEFAULT_CORPUS,
  valFraction: 0.1,
  batch: 8,
  steps: 1000,
  lr: 1e-3,
  minLr: 1e-4,
  warmup: 50,
  weightDecay: 0.1,
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  clip: 1,
  decayAll: false,
  seed: 1,
  checkpointEvery: 100,
  keepCheckpoints: 2,
  precision: 'fp32',
};

const KEYS = Object.keys(TRAIN_DEFAULTS) as (keyof TrainConfig)[];

export function parseTrainConfig(raw: unknown): TrainConfig {
  check(typeof raw === 'object' && raw !== null && !Array.isArray(raw), 'argument', 'a train config must be an object');
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!(KEYS as string[]).includes(key)) {
      throw new HypeError('argument', `unknown train config key '${key}'; known keys: ${KEYS.join(', ')}`);
    }
  }
  const cfg = { ...TRAIN_DEFAULTS, ...obj } as TrainConfig;
  // The default warmup shrinks to fit a short run; an explicit one longer than the run is refused below.
  if (obj.warmup === undefined && typeof cfg.steps === 'number')
    cfg.warmup = Math.min(TRAIN_DEFAULTS.warmup, cfg.steps);
  const int = (k: keyof TrainConfig, min: number) =>
    check(
      Number.isInteger(cfg[k]) && (cfg[k] as number) >= min,
      'argument',
      `train config '${k}' must be an integer >= ${min}, got ${JSON.stringify(cfg[k])}`,
    );
  const num = (k: keyof TrainConfig, lo: number, hi: number, loOpen = false, hiOpen = false) => {
    const v = cfg[k] as number;
    check(
      typeof v === 'number' && Number.isFinite(v) && (loOpen ? v > lo : v >= lo) && (hiOpen ? v < hi : v <= hi),
      'argument',
      `train config '${k}' must be in ${loOpen ? '(' : '['}${lo}, ${hi}${hiOpen ? ')' : ']'}, got ${JSON.stringify(v)}`,
    );
  };
  check(typeof cfg.data === 'string' && cfg.data.length > 0, 'argument', "train config 'data' must be a file path");
  num('valFraction', 0, 1, true, true);
  int('batch', 1);
  int('steps', 1);
  num('lr', 0, 10, true);
  num('minLr', 0, cfg.lr);
  int('warmup', 0);
  num('weightDecay', 0, 10);
  num('beta1', 0, 1, false, true);
  num('beta2', 0, 1, false, true);
  num('eps', 0, 1, true);
  num('clip', 0, Infinity);
  check(typeof cfg.decayAll === 'boolean', 'argument', "train config 'decayAll' must be true or false");
  int('seed', 0);
  int('checkpointEvery', 0);
  int('keepCheckpoints', 1);
  cfg.precision = parsePrecision(cfg.precision);
  return cfg;
}

/**
 * Refuses a schedule whose warmup is longer than the run (checked when a run starts or its length changes, not
 * when a stored config is read, so runs made before this rule still load).
 */
export function checkSchedule(cfg: Pick<TrainConfig, 'warmup' | 'steps'>): void {
  check(
    cfg.warmup <= cfg.steps,
    'argument',
    `the warmup (${cfg.warmup} steps) is longer than the run (${cfg.steps} steps); pass --warmup <= --steps`,
  );
}

/** Linear warmup to lr over `warmup` steps, then cosine decay to minLr at `steps`. `step` is 1-based. */
export function learningRate(cfg: TrainConfig, step: number): number {
  if (step <= cfg.warmup) return (cfg.lr * step) / cfg.warmup;
  const progress = Math.min(1, (step - cfg.warmup) / Math.max(1, cfg.steps - cfg.warmup));
  return cfg.minLr + 0.5 * (cfg.lr - cfg.minLr) * (1 + Math.cos(Math.PI * progress));
}
