/**
 * The report's bf16 mixed-precision section (issue 18), from the cells' JSON alone: each lm cell trained with
 * `hype study lm --precision bf16` is paired with the fp32 cell of the same corpus, encoding, seed and plan, and
 * their held-out bits per byte are compared at 1x and at the longest length: bf16 minus fp32, and whether that
 * stays within the issue's tolerance. Without bf16 cells the section says so in one line.
 */
import type { LengthEval, LmConfig, LmResult } from './experiments.ts';
import { ALL_ENCODINGS } from './plan.ts';
import { formatInterval, meanInterval } from './stats.ts';
import { stableStringify, type CellRecord } from './store.ts';

/** The issue's quality requirement: |bf16 - fp32| held-out bits per byte at most this (declared, not fitted). */
export const BF16_BPB_TOLERANCE = 0.02;

type LmCell = CellRecord<LmConfig, LmResult>;

/** What a cell's plan is, apart from its precision (the pe options differ only by the bf16 column layout). */
const planOf = (c: LmConfig) => stableStringify({ ...c, pe: undefined, precision: undefined });

const bpbAt = (evals: readonly LengthEval<{ bitsPerByte: number }>[] | undefined, m: number): number | null => {
  const e = evals?.find((x) => x.multiplier === m);
  return e && e.ok ? e.bitsPerByte : null;
};

const rank = (e: string) => (ALL_ENCODINGS.includes(e) ? ALL_ENCODINGS.indexOf(e) : ALL_ENCODINGS.length);

export interface Bf16Pair {
  corpus: string;
  encoding: string;
  seed: number;
  /** The multipliers compared: 1 and the longest both cells scored. */
  multipliers: [number, number];
  fp32: [number | null, number | null];
  bf16: [number | null, number | null];
  /** The bf16 cell's weights scored in fp32 (absent in a cell without them). */
  bf16Fp32Eval: [number | null, number | null];
}

/** The bf16 cells paired with their fp32 cells; bf16 cells without one are returned apart. */
export function bf16Pairs(fp32: readonly LmCell[], bf16: readonly LmCell[]): { pairs: Bf16Pair[]; unpaired: LmCell[] } {
  const byPlan = new Map(fp32.map((c) => [planOf(c.config), c]));
  const pairs: Bf16Pair[] = [];
  const unpaired: LmCell[] = [];
  for (const b of bf16) {
    const f = byPlan.get(planOf(b.config));
    if (!f) {
      unpaired.push(b);
      continue;
    }
    const long = Math.max(...b.config.multipliers);
    const at = (evals: LmResult['evals'] | undefined): [number | null, number | null] => [
      bpbAt(evals, 1),
      bpbAt(evals, long),
    ];
    pairs.push({
      corpus: b.config.corpus,
      encoding: b.config.encoding,
      seed: b.config.seed,
      multipliers: [1, long],
      fp32: at(f.result.evals),
      bf16: at(b.result.evals),
      bf16Fp32Eval: at(b.result.fp32Evals),
    });
  }
  pairs.sort((x, y) => x.corpus.localeCompare(y.corpus) || rank(x.encoding) - rank(y.encoding) || x.seed - y.seed);
  return { pairs, unpaired };
}

const num = (x: number | null) => (x === null ? 'cannot evaluate' : x.toFixed(4));
const diff = (b: number | null, f: number | null) => (b === null || f === null ? null : b - f);
const signed = (d: number | null) => (d === null ? '—' : `${d >= 0 ? '+' : '−'}${Math.abs(d).toFixed(4)}`);
/** Within the tolerance at both lengths; null when a length has no pair of numbers. */
const within = (p: Bf16Pair): boolean | null => {
  const ds = [0, 1].map((i) => diff(p.bf16[i]!, p.fp32[i]!));
  return ds.some((d) => d === null) ? null : ds.every((d) => Math.abs(d!) <= BF16_BPB_TOLERANCE);
};

/** Per corpus and encoding with two or more pairs: the mean bf16 - fp32 difference and its 95% interval. */
function pairedMeans(pairs: readonly Bf16Pair[]): string[] {
  const out: string[] = [];
  const corpora = new Set(pairs.map((p) => p.corpus)).size;
  for (const g of [...new Set(pairs.map((p) => `${p.corpus}\u0000${p.encoding}`))]) {
    const [corpus, encoding] = g.split('\u0000') as [string, string];
    const mine = pairs.filter((p) => p.corpus === corpus && p.encoding === encoding);
    const at = (i: number) => mine.map((p) => diff(p.bf16[i]!, p.fp32[i]!)).filter((d): d is number => d !== null);
    if (at(0).length < 2 && at(1).length < 2) continue;
    const show = (ds: number[]) => (ds.length < 2 ? '—' : formatInterval(meanInterval(ds), 4));
    out.push(`${corpora > 1 ? `${corpus} ` : ''}${encoding} ${show(at(0))} / ${show(at(1))} (${mine.length} seeds)`);
  }
  return out;
}

/**
 * Per paired corpus and encoding, the max - min of the fp32 cells' bits per byte over their seeds at 1x and the
 * longest length ('none 0.0630 / 0.0287 (3 seeds)'), for encodings with at least two fp32 seeds of the same plan.
 */
function seedSpread(fp32: readonly LmCell[], bf16: readonly LmCell[], pairs: readonly Bf16Pair[]): string[] {
  const plans = new Set(bf16.map((c) => planOf({ ...c.config, seed: 0 })));
  const out: string[] = [];
  const groups = [...new Set(pairs.map((p) => `${p.corpus}\u0000${p.encoding}`))];
  for (const g of groups) {
    const [corpus, encoding] = g.split('\u0000') as [string, string];
    const { multipliers } = pairs.find((p) => p.corpus === corpus && p.encoding === encoding)!;
    const cells = fp32.filter(
      (c) =>
        c.config.corpus === corpus && c.config.encoding === encoding && plans.has(planOf({ ...c.config, seed: 0 })),
    );
    if (cells.length < 2) continue;
    const range = (m: number) => {
      const xs = cells.map((c) => bpbAt(c.result.evals, m)).filter((x): x is number => x !== null);
      return xs.length < 2 ? '—' : (Math.max(...xs) - Math.min(...xs)).toFixed(4);
    };
    const where = new Set(pairs.map((p) => p.corpus)).size > 1 ? `${corpus} ` : '';
    out.push(`${where}${encoding} ${range(multipliers[0])} / ${range(multipliers[1])} (${cells.length} seeds)`);
  }
  return out;
}

export function bf16Section(fp32: readonly LmCell[], bf16: readonly LmCell[]): string[] {
  const lines = ['## bf16 mixed precision against fp32 (lm, bits per byte)', ''];
  if (bf16.length === 0) {
    return [...lines, 'Not run: no bf16 lm cells in this folder (`hype study lm --precision bf16` computes them).'];
  }
  const { pairs, unpaired } = bf16Pairs(fp32, bf16);
  lines.push(
    'Each bf16 cell trains the same model as an fp32 cell (same corpus, encoding, seed, data order and plan) in ' +
      'bf16 mixed precision as PyTorch autocast does it (`hype train --precision bf16`): every matmul and the ' +
      'attention operands rounded to bf16, with fp32 accumulation, softmax statistics, loss, gradients, master ' +
      'weights and AdamW; HyPE and other concat routes build split bias columns for bf16 (SPEC section 8), ' +
      'kernel routes add their fp32 bias inside the kernel. Its held-out bits per byte are scored under the same ' +
      `autocast. Requirement: |bf16 − fp32| ≤ ${BF16_BPB_TOLERANCE} at 1x and at the longest length, per seed. ` +
      'The last column scores the bf16-trained weights in fp32, separating what bf16 training changed from what ' +
      'bf16 scoring adds.',
    '',
  );
  if (pairs.length > 0) {
    const [m1, mL] = pairs[0]!.multipliers;
    lines.push(
      `| corpus | encoding | seed | fp32 ${m1}x | bf16 ${m1}x | Δ ${m1}x | fp32 ${mL}x | bf16 ${mL}x | Δ ${mL}x | ` +
        `within ${BF16_BPB_TOLERANCE} | bf16 weights in fp32, ${m1}x / ${mL}x |`,
      '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |',
    );
    for (const p of pairs) {
      const w = within(p);
      lines.push(
        `| ${p.corpus} | ${p.encoding} | ${p.seed} | ${num(p.fp32[0])} | ${num(p.bf16[0])} | ` +
          `${signed(diff(p.bf16[0], p.fp32[0]))} | ${num(p.fp32[1])} | ${num(p.bf16[1])} | ` +
          `${signed(diff(p.bf16[1], p.fp32[1]))} | ${w === null ? '—' : w ? 'yes' : '**no**'} | ` +
          `${p.bf16Fp32Eval.map((x) => (x === null ? '—' : x.toFixed(4))).join(' / ')} |`,
      );
    }
    const judged = pairs.map(within).filter((w) => w !== null);
    const ok = judged.filter(Boolean).length;
    const worst = Math.max(...pairs.flatMap((p) => [0, 1].map((i) => Math.abs(diff(p.bf16[i]!, p.fp32[i]!) ?? 0))));
    const encs = [...new Set(pairs.map((p) => p.encoding))].join(', ');
    const seeds = [...new Set(pairs.map((p) => p.seed))].sort((a, b) => a - b).join(', ');
    lines.push(
      '',
      judged.length === 0
        ? 'No pair has bits per byte at both lengths, so none is judged.'
        : `${ok} of ${judged.length} pairs (${encs}; seed${seeds.includes(',') ? 's' : ''} ${seeds}) are within ` +
            `${BF16_BPB_TOLERANCE} bits per byte at both lengths; the largest |difference| is ${worst.toFixed(4)}. ` +
            'Each row is one seed, so the requirement is checked run by run.',
    );
    const means = pairedMeans(pairs);
    if (means.length > 0) {
      lines.push(
        '',
        `Paired bf16 − fp32 over seeds, mean ± 95% interval at ${m1}x / ${mL}x: ${means.join('; ')}; an ` +
          "interval that excludes 0 says bf16 shifts that encoding's bits per byte one way.",
      );
    }
    const spread = seedSpread(fp32, bf16, pairs);
    if (spread.length > 0) {
      lines.push(
        '',
        `For scale, the fp32 cells' spread across seeds (max − min) at ${m1}x / ${mL}x: ${spread.join('; ')}.`,
      );
    }
  }
  if (unpaired.length > 0) {
    lines.push(
      '',
      `No fp32 cell of the same plan for: ${unpaired
        .map((c) => `${c.config.corpus} ${c.config.encoding} seed ${c.config.seed}`)
        .join('; ')} (run \`hype study lm\` with the same flags, without --precision).`,
    );
  }
  return lines;
}
