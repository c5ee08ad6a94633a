/**
 * What the study runs: the encodings under their study names, and the two plans (quick: the README's main job, a
 * few minutes on 2 cores; full: the study, hours). Every number a plan fixes is part of each cell's
 * configuration, so changing a budget starts new cells instead of silently mixing results.
 */
import type { Precision } from '../backend/backend.ts';
import { HypeError } from '../errors.ts';

/** The encoding a study name stands for: a registry name and its options. */
export interface PeChoice {
  name: string;
  options: Record<string, unknown>;
}

export const STUDY_ENCODINGS: Readonly<Record<string, PeChoice>> = {
  none: { name: 'none', options: {} },
  sinusoidal: { name: 'sinusoidal', options: {} },
  learned: { name: 'learned', options: {} },
  rope: { name: 'rope', options: {} },
  hope: { name: 'hope', options: {} },
  // Per-layer u/v and T5 tables, as the study's cells were computed before sharing (SPEC section 10) was offered;
  // their cell keys are unchanged (store.ts). The study issue decides when to recompute them shared.
  xl: { name: 'xl', options: { sharing: 'per-layer' } },
  shaw: { name: 'shaw', options: {} },
  t5: { name: 't5', options: { sharing: 'per-layer' } },
  alibi: { name: 'alibi', options: {} },
  da: { name: 'da', options: {} },
  path: { name: 'path', options: {} },
  'hype-paper': { name: 'hype', options: { preset: 'paper' } },
  'hype-recency': { name: 'hype', options: { preset: 'recency' } },
  'hype-learned': { name: 'hype', options: { preset: 'learned' } },
  // The study's second round (issue 19; SPEC sections 9 and 10). Every entry above keeps its options, so the
  // stored cells keep their keys (store.ts); these are new cells.
  /** The control for hype-learned: ALiBi with trained (log-)slopes, no curvature. */
  'alibi-learned': { name: 'alibi-learned', options: {} },
  /** hype-learned in (slope, curvature) coordinates: both trained, so the curvature can move at a fixed slope. */
  'hype-sc': { name: 'hype', options: { preset: 'learned', parametrisation: 'slope-curvature', train: 'both' } },
  /** Content-dependent concat biases on the unmodified kernel: FoX's forget gates and HyPE with per-query gates. */
  fox: { name: 'fox', options: {} },
  /** hype-learned's options (tau-mu, relative units) plus the gate, so the pair differs only by the gate. */
  'hype-gated': { name: 'hype-gated', options: { preset: 'learned' } },
  /** The references' choice (SPEC section 10): one T5 table, one XL u/v for all layers. */
  't5-shared': { name: 't5', options: { sharing: 'shared' } },
  'xl-shared': { name: 'xl', options: { sharing: 'shared' } },
};

/** Every study encoding: the full plan runs them all (finished cells are found by key and not recomputed). */
export const ALL_ENCODINGS = Object.keys(STUDY_ENCODINGS);
/** The encodings the second round (issue 19) added: `--encodings` with this list runs only their cells. */
export const ROUND_TWO_ENCODINGS = ['alibi-learned', 'hype-sc', 'fox', 'hype-gated', 't5-shared', 'xl-shared'];
/** The quick plan's encodings: no position, the two usual baselines and the two HyPE presets that differ in sign. */
export const QUICK_ENCODINGS = ['none', 'rope', 'alibi', 'hype-recency', 'hype-paper'];
/**
 * What the quick study takes on 2 idle cores, in minutes, as measured on a fresh clone; `--help` prints it and the
 * README must quote the same figure (a test checks).
 */
export const QUICK_STUDY_MINUTES = 5;

export function peChoice(study: string): PeChoice {
  const pe = STUDY_ENCODINGS[study];
  if (!pe) {
    throw new HypeError('argument', `unknown study encoding '${study}'; choose from: ${ALL_ENCODINGS.join(', ')}`);
  }
  return pe;
}

export interface ModelShape {
  width: number;
  layers: number;
  heads: number;
  mlpWidth: number;
}

export interface TrainBudget {
  steps: number;
  batch: number;
  lr: number;
  warmup: number;
}

export interface LmPlan {
  corpora: CorpusName[];
  trainLength: number;
  /** Evaluation lengths as multiples of trainLength. */
  multipliers: number[];
  /** Held-out bytes scored at each length (the first N of the evaluation split; 0 = all). */
  evalBytes: number;
  model: ModelShape;
  budget: TrainBudget;
  /**
   * Training precision of the lm cells (`--precision`): absent or 'fp32' as the stored cells were computed; 'bf16'
   * mixed precision (backend/autocast.ts) makes new cells, their key and run folder naming it (experiments.ts).
   */
  precision?: Precision;
}

export interface TaskPlan {
  trainLength: number;
  /** Evaluation lengths as multiples of trainLength (flip-flop: [1], the mixes change instead). */
  multipliers: number[];
  /** Generated evaluation sequences per (mix or length). */
  evalSequences: number;
  model: ModelShape;
  budget: TrainBudget;
}

/**
 * How the re-evaluated model's attention operands are held: fp32; bf16 or fp16 on the concat route with plain columns
 * (Qhat, Khat, Vhat rounded, the two bias columns per pair included); bf16-split / fp16-split: the same with split
 * columns (SPEC section 8: hi/lo parts, six per pair); 'bf16-kernel': the kernel route with Q, K, V rounded to bf16
 * and the bias added in fp32, the mitigation SPEC section 4 points to.
 */
export type PrecisionFormat = 'fp32' | 'bf16' | 'fp16' | 'bf16-split' | 'fp16-split' | 'bf16-kernel';

export interface PrecisionPlan {
  /** HyPE study encodings whose trained lm models are re-evaluated with rounded operands. */
  encodings: string[];
  formats: PrecisionFormat[];
  corpus: CorpusName;
}

export interface StudyPlan {
  quick: boolean;
  seeds: number[];
  encodings: string[];
  lm: LmPlan;
  flipflop: TaskPlan;
  recall: TaskPlan;
  precision: PrecisionPlan;
}

export type CorpusName = 'tinyshakespeare' | 'wikitext2';

export const EXPERIMENTS = ['lm', 'flipflop', 'recall', 'precision'] as const;
export type Experiment = (typeof EXPERIMENTS)[number];

/** The PaTH paper's flip-flop model (Table 1 setting): 1 layer, 2 heads, width 64. */
const FLIPFLOP_MODEL: ModelShape = { width: 64, layers: 1, heads: 2, mlpWidth: 256 };

export function quickPlan(): StudyPlan {
  return {
    quick: true,
    seeds: [1],
    encodings: QUICK_ENCODINGS,
    lm: {
      corpora: ['tinyshakespeare'],
      trainLength: 64,
      multipliers: [1, 2, 4, 8, 16],
      evalBytes: 32768,
      model: { width: 64, layers: 2, heads: 4, mlpWidth: 256 },
      budget: { steps: 400, batch: 16, lr: 3e-3, warmup: 40 },
    },
    flipflop: {
      trainLength: 64,
      multipliers: [1],
      evalSequences: 300,
      model: FLIPFLOP_MODEL,
      budget: { steps: 500, batch: 16, lr: 3e-3, warmup: 50 },
    },
    recall: {
      trainLength: 96,
      multipliers: [1, 2, 4, 8],
      evalSequences: 200,
      model: { width: 64, layers: 2, heads: 4, mlpWidth: 256 },
      budget: { steps: 1000, batch: 16, lr: 3e-3, warmup: 50 },
    },
    precision: {
      encodings: ['hype-recency', 'hype-paper'],
      formats: ['fp32', 'bf16', 'bf16-kernel'],
      corpus: 'tinyshakespeare',
    },
  };
}

/**
 * The full study, sized for a 2-core CPU. Measured per lm cell on the native backend: about 2.5 minutes for the
 * encodings that run in the fused kernel, 1.5x that for xl, shaw and da (explicit logits through gemms) and about
 * 7x for path (its Householder walk). Flip-flop and recall cells are a fraction of that (width 64).
 */
export function fullPlan(): StudyPlan {
  return {
    quick: false,
    seeds: [1, 2, 3],
    encodings: ALL_ENCODINGS,
    lm: {
      corpora: ['tinyshakespeare', 'wikitext2'],
      trainLength: 128,
      multipliers: [1, 2, 4, 8, 16],
      evalBytes: 262144,
      model: { width: 128, layers: 2, heads: 4, mlpWidth: 512 },
      budget: { steps: 2000, batch: 16, lr: 2e-3, warmup: 100 },
    },
    flipflop: {
      trainLength: 128,
      multipliers: [1],
      evalSequences: 1000,
      model: FLIPFLOP_MODEL,
      budget: { steps: 2000, batch: 16, lr: 3e-3, warmup: 100 },
    },
    recall: {
      trainLength: 128,
      multipliers: [1, 2, 4, 8, 16],
      evalSequences: 500,
      model: { width: 64, layers: 2, heads: 4, mlpWidth: 256 },
      budget: { steps: 2000, batch: 16, lr: 3e-3, warmup: 100 },
    },
    precision: {
      encodings: ['hype-recency', 'hype-paper', 'hype-learned'],
      formats: ['fp32', 'bf16', 'fp16', 'bf16-split', 'fp16-split', 'bf16-kernel'],
      corpus: 'tinyshakespeare',
    },
  };
}
