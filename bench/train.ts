/**
 * `npm run bench:train`: throughput of one full training step (forward, backward, optimizer update) of the
 * byte-level transformer, side by side in one run:
 *   - ours (the backend 'auto' picks: native when built), with encoding 'none' and with 'hype', each in fp32 and
 *     in bf16 mixed precision (hype train --precision bf16: bf16 matmul and attention operands, fp32 accumulation
 *     and master weights);
 *   - the same model step written in @jax-js/jax (wasm, jit of value-and-grad; Adam inside a second jit);
 *   - the same model step in TensorFlow.js with the wasm backend (tf.train.adam minimize);
 *   - OpenBLAS sgemm GFLOP/s (numpy, ../shared/tools/sgemm_ceiling.py) as the ceiling.
 * Shapes: (a) one block, B=8, L=128, width 128 (4 heads); (b) 6 blocks, width 256, 8 heads, L=256, B=8.
 *
 * Effective GFLOP/s counts the matrix products a training step must do, 3x the forward's (forward + two gemms
 * per gemm in the backward): per token and block 2 C (H+2Hkv)D + 2 C^2 + 4 C F for the projections and MLP, plus
 * causal attention 2 C (L + 1) (q.k and p.v over (L+1)/2 keys on average), and 2 C V for the tied head.
 * Elementwise work (norms, GELU, softmax, Adam) is not counted, so GFLOP/s understates work for every engine alike.
 *
 * Our four engines (none, hype; fp32, bf16) are timed INTERLEAVED: each round runs one step of each in turn, and a
 * row reports the median step (wall and process CPU time), so a load change on a shared machine hits all four alike
 * and their ratios stay readable; the HyPE/none and bf16/fp32 ratios print on both bases (CPU time is the steadier
 * one under load; with --threads N > 1 it sums the threads).
 * Options: --quick (fewer repetitions), --only a|b, --threads N (native and sgemm), --skip jax,tfjs,
 * --seconds S (minimum timed seconds per engine, default 4). Results print as a table; --json <file> saves them.
 * The comparison frameworks differ from ours in two documented ways: they use Adam without decoupled decay
 * (tfjs has no AdamW; the cost is the same elementwise pass) and no gradient clipping.
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { withPrecision } from '../src/backend/autocast.ts';
import type { Precision } from '../src/backend/backend.ts';
import { loadBackend } from '../src/backend/index.ts';
import { parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { AdamW, clipGradients } from '../src/train/optimizer.ts';
import { Rng } from '../src/util/rng.ts';
import { importJax } from './jax-node.ts';

interface Shape {
  id: 'a' | 'b';
  label: string;
  batch: number;
  length: number;
  width: number;
  layers: number;
  heads: number;
}

const SHAPES: Shape[] = [
  { id: 'a', label: '(a) 1 block, B=8, L=128, d=128', batch: 8, length: 128, width: 128, layers: 1, heads: 4 },
  {
    id: 'b',
    label: '(b) 6 blocks, B=8, L=256, d=256, 8 heads',
    batch: 8,
    length: 256,
    width: 256,
    layers: 6,
    heads: 8,
  },
];
const VOCAB = 256;

interface Row {
  shape: string;
  engine: string;
  msPerStep: number;
  tokensPerSecond: number;
  gflops: number;
  steps: number;
  /** Ours only: the median step's process CPU time (ms). */
  cpuMsPerStep?: number;
  /** Loss of the first step: every engine should start near ln 256 = 5.545 (a check that they compute alike). */
  firstLoss: number;
  note?: string;
}

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const value = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const minSeconds = Number(value('--seconds') ?? (flag('--quick') ? 1.5 : 4));
const threads = Number(value('--threads') ?? availableParallelism());
const skip = new Set((value('--skip') ?? '').split(',').filter(Boolean));
const only = value('--only');

function stepFlops(s: Shape): number {
  const C = s.width;
  const F = 4 * C;
  const perTokenBlock = 2 * C * 3 * C + 2 * C * C + 4 * C * F + 2 * C * (s.length + 1);
  const forward = s.batch * s.length * (s.layers * perTokenBlock + 2 * C * VOCAB);
  return 3 * forward;
}

/** Runs `step` (sync or async) twice to warm up, then until minSeconds have passed (at least 3 times). */
async function timeSteps(
  step: () => number | Promise<number>,
): Promise<{ ms: number; steps: number; firstLoss: number }> {
  const firstLoss = await step();
  await step();
  let n = 0;
  const t0 = performance.now();
  while (n < 3 || performance.now() - t0 < minSeconds * 1000) {
    await step();
    n++;
  }
  return { ms: (performance.now() - t0) / n, steps: n, firstLoss };
}

/**
 * Runs sync `steps` interleaved: two warm-up steps each, then rounds of one step of each in turn until every engine
 * has had minSeconds (at least 5 rounds). Per engine: the median step's wall and CPU milliseconds.
 */
function timeInterleaved(
  steps: readonly (() => number)[],
): { ms: number; cpuMs: number; steps: number; firstLoss: number }[] {
  const firstLoss = steps.map((step) => step());
  for (const step of steps) step();
  const wall = steps.map((): number[] => []);
  const cpu = steps.map((): number[] => []);
  const cpuNow = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const t0 = performance.now();
  while (wall[0]!.length < 5 || performance.now() - t0 < steps.length * minSeconds * 1000) {
    steps.forEach((step, i) => {
      const [w, c] = [performance.now(), cpuNow()];
      step();
      wall[i]!.push(performance.now() - w);
      cpu[i]!.push(cpuNow() - c);
    });
  }
  const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  return steps.map((_, i) => ({
    ms: median(wall[i]!),
    cpuMs: median(cpu[i]!),
    steps: wall[i]!.length,
    firstLoss: firstLoss[i]!,
  }));
}

function row(
  s: Shape,
  engine: string,
  t: { ms: number; cpuMs?: number; steps: number; firstLoss: number },
  note?: string,
): Row {
  return {
    firstLoss: t.firstLoss,
    shape: s.label,
    engine,
    msPerStep: t.ms,
    tokensPerSecond: (s.batch * s.length) / (t.ms / 1000),
    gflops: stepFlops(s) / (t.ms / 1000) / 1e9,
    steps: t.steps,
    ...(t.cpuMs === undefined ? {} : { cpuMsPerStep: t.cpuMs }),
    ...(note ? { note } : {}),
  };
}

function randomTokens(s: Shape, seed: number): { tokens: Int32Array; targets: Int32Array } {
  const rng = new Rng(seed);
  const n = s.batch * s.length;
  return {
    tokens: Int32Array.from({ length: n }, () => rng.int(VOCAB)),
    targets: Int32Array.from({ length: n }, () => rng.int(VOCAB)),
  };
}

/** HyPE's concat route with columns split to be exact in bf16 (what `hype train --precision bf16` requires). */
const HYPE_BF16 = 'hype:precision=bf16';

/** Our model's training step for one encoding and precision, and the engine name it reports under. */
function ourStep(s: Shape, pe: string, precision: Precision = 'fp32'): { engine: string; step: () => number } {
  const host = loadBackend('auto', { threads });
  const backend = withPrecision(host, precision);
  const cfg: ModelConfig = parseModelConfig({
    width: s.width,
    layers: s.layers,
    heads: s.heads,
    trainLength: s.length,
    pe,
    dtype: 'float32',
  });
  const model = new Transformer(cfg, backend);
  const train = parseTrainConfig({});
  const opt = new AdamW(model.parameters(), backend);
  const { tokens, targets } = randomTokens(s, 1);
  const step = () => {
    model.zeroGrad();
    const loss = model.forward(tokens, targets, s.batch, s.length);
    model.backward();
    clipGradients(model.parameters(), train.clip);
    opt.update(train, 1e-3);
    return loss;
  };
  return { engine: `ours (${host.name}, ${pe}${precision === 'fp32' ? '' : `, ${precision}`})`, step };
}

/** none and hype, fp32 and bf16 (the columns the trainer asks for under bf16), timed interleaved. */
function benchOurs(s: Shape): Row[] {
  const engines = [ourStep(s, 'none'), ourStep(s, 'hype'), ourStep(s, 'none', 'bf16'), ourStep(s, HYPE_BF16, 'bf16')];
  const times = timeInterleaved(engines.map((e) => e.step));
  return engines.map((e, i) => row(s, e.engine, times[i]!));
}

// ---------------------------------------------------------------------------------------------- @jax-js/jax
async function benchJax(s: Shape): Promise<Row> {
  const jax = await importJax();
  const { numpy: np, nn, jit, valueAndGrad, tree } = jax;
  await jax.init('wasm');
  type A = InstanceType<typeof jax.Array>;
  const rng = new Rng(2);
  const normal = (shape: number[], std: number) => {
    const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
    rng.fillNormal(a, std);
    return np.array(a).reshape(shape);
  };
  const C = s.width;
  const F = 4 * C;
  const H = s.heads;
  const D = C / H;
  const N = s.batch * s.length;
  type Block = {
    g1: A;
    b1: A;
    wq: A;
    wk: A;
    wv: A;
    bq: A;
    bk: A;
    bv: A;
    wo: A;
    bo: A;
    g2: A;
    b2: A;
    w1: A;
    c1: A;
    w2: A;
    c2: A;
  };
  type Params = { wte: A; blocks: Block[]; gf: A; bf: A };
  const ones = (n: number) => np.array(new Float32Array(n).fill(1));
  const zeros = (n: number) => np.array(new Float32Array(n));
  const params: Params = {
    wte: normal([VOCAB, C], 0.02),
    blocks: Array.from({ length: s.layers }, () => ({
      g1: ones(C),
      b1: zeros(C),
      wq: normal([C, C], 0.02),
      wk: normal([C, C], 0.02),
      wv: normal([C, C], 0.02),
      bq: zeros(C),
      bk: zeros(C),
      bv: zeros(C),
      wo: normal([C, C], 0.02),
      bo: zeros(C),
      g2: ones(C),
      b2: zeros(C),
      w1: normal([C, F], 0.02),
      c1: zeros(F),
      w2: normal([F, C], 0.02),
      c2: zeros(C),
    })),
    gf: ones(C),
    bf: zeros(C),
  };
  // Every use of an array consumes it (jax-js ownership), hence .ref on all but the last use.
  const layerNorm = (x: A, g: A, b: A) => {
    const mu = np.mean(x.ref, -1, { keepdims: true });
    const xc = x.sub(mu);
    const v = np.mean(xc.ref.mul(xc.ref), -1, { keepdims: true });
    return xc
      .mul(np.reciprocal(np.sqrt(v.add(1e-5))))
      .mul(g)
      .add(b);
  };
  const loss = (p: Params, tokens: A, targetsOneHot: A) => {
    let x = np.take(p.wte.ref, tokens, 0); // [N, C]
    for (const bl of p.blocks) {
      const h = layerNorm(x.ref, bl.g1, bl.b1);
      const q = np.matmul(h.ref, bl.wq).add(bl.bq).reshape([s.batch, s.length, H, D]);
      const k = np.matmul(h.ref, bl.wk).add(bl.bk).reshape([s.batch, s.length, H, D]);
      const v = np.matmul(h, bl.wv).add(bl.bv).reshape([s.batch, s.length, H, D]);
      const att = nn.dotProductAttention(q, k, v, { isCausal: true }).reshape([N, C]);
      x = x.add(np.matmul(att, bl.wo).add(bl.bo));
      const h2 = layerNorm(x.ref, bl.g2, bl.b2);
      const f = nn.gelu(np.matmul(h2, bl.w1).add(bl.c1));
      x = x.add(np.matmul(f, bl.w2).add(bl.c2));
    }
    const xf = layerNorm(x, p.gf, p.bf);
    const logits = np.matmul(xf, p.wte.transpose([1, 0]));
    return nn
      .logSoftmax(logits, -1)
      .mul(targetsOneHot)
      .sum()
      .mul(-1 / N);
  };
  const lossAndGrad = jit(valueAndGrad(loss));
  const lr = 1e-3;
  const adam = jit((p: Params, g: Params, m: Params, v: Params) => {
    const m2 = tree.map((mi: A, gi: A) => mi.mul(0.9).add(gi.mul(0.1)), m, tree.ref(g)) as Params;
    const v2 = tree.map((vi: A, gi: A) => vi.mul(0.95).add(gi.ref.mul(gi).mul(0.05)), v, g) as Params;
    const p2 = tree.map(
      (pi: A, mi: A, vi: A) => pi.sub(mi.mul(lr).div(np.sqrt(vi).add(1e-8))),
      p,
      tree.ref(m2),
      tree.ref(v2),
    ) as Params;
    return [p2, m2, v2] as const;
  });
  let p = params;
  let m = tree.map((x: A) => np.zerosLike(x.ref), p) as Params;
  let v = tree.map((x: A) => np.zerosLike(x.ref), p) as Params;
  const { tokens, targets } = randomTokens(s, 1);
  const tok = np.array(tokens, { dtype: np.int32 });
  const oneHot = nn.oneHot(np.array(targets, { dtype: np.int32 }), VOCAB);
  const t = await timeSteps(async () => {
    const [value, g] = lossAndGrad(tree.ref(p), tok.ref, oneHot.ref) as [A, Params];
    [p, m, v] = adam(p, g, m, v) as unknown as [Params, Params, Params];
    const loss = (await value.data())[0]!;
    await jax.blockUntilReady(p);
    return loss;
  });
  return row(s, '@jax-js/jax (wasm)', t, 'single-threaded in Node (no Worker global)');
}

// ----------------------------------------------------------------------------------- TensorFlow.js (wasm)
async function benchTfjs(s: Shape): Promise<Row> {
  const tf = await import('@tensorflow/tfjs');
  const wasm = await import('@tensorflow/tfjs-backend-wasm');
  const require = createRequire(import.meta.url);
  wasm.setWasmPaths(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')) + '/dist/');
  await tf.setBackend('wasm');
  const C = s.width;
  const F = 4 * C;
  const H = s.heads;
  const D = C / H;
  const N = s.batch * s.length;
  const L = s.length;
  const w = (shape: number[], std: number) => tf.variable(tf.randomNormal(shape, 0, std, 'float32', 3));
  const c = (shape: number[], v: number) => tf.variable(tf.fill(shape, v));
  const wte = w([VOCAB, C], 0.02);
  const blocks = Array.from({ length: s.layers }, () => ({
    g1: c([C], 1), b1: c([C], 0), wqkv: w([C, 3 * C], 0.02), bqkv: c([3 * C], 0), wo: w([C, C], 0.02), bo: c([C], 0),
    g2: c([C], 1), b2: c([C], 0), w1: w([C, F], 0.02), c1: c([F], 0), w2: w([F, C], 0.02), c2: c([C], 0),
  })); // prettier-ignore
  const gf = c([C], 1);
  const bf = c([C], 0);
  const mask = tf.tidy(() =>
    tf.linalg
      .bandPart(tf.ones([L, L]), -1, 0)
      .sub(1)
      .mul(1e9),
  ); // 0 on/below diagonal
  const layerNorm = (x: import('@tensorflow/tfjs').Tensor, g: import('@tensorflow/tfjs').Tensor, b: import('@tensorflow/tfjs').Tensor) => {
    const { mean, variance } = tf.moments(x, -1, true);
    return x.sub(mean).mul(tf.rsqrt(variance.add(1e-5))).mul(g).add(b);
  }; // prettier-ignore
  const gelu = (x: import('@tensorflow/tfjs').Tensor) =>
    x.mul(0.5).mul(tf.tanh(x.add(x.pow(3).mul(0.044715)).mul(Math.sqrt(2 / Math.PI))).add(1));
  const { tokens, targets } = randomTokens(s, 1);
  const tokOneHot = tf.oneHot(tf.tensor1d(tokens, 'int32'), VOCAB).toFloat();
  const oneHot = tf.oneHot(tf.tensor1d(targets, 'int32'), VOCAB);
  const opt = tf.train.adam(1e-3, 0.9, 0.95, 1e-8);
  const heads = (t: import('@tensorflow/tfjs').Tensor) => t.reshape([s.batch, L, H, D]).transpose([0, 2, 1, 3]);
  const lossFn = () => {
    // tfjs-wasm has no gradient for gather (UnsortedSegmentSum is missing), so the embedding is a one-hot matmul.
    let x = tf.matMul(tokOneHot, wte);
    for (const bl of blocks) {
      const h = layerNorm(x, bl.g1, bl.b1);
      const qkv = tf.matMul(h, bl.wqkv).add(bl.bqkv);
      const [q, k, v] = tf.split(qkv, 3, -1).map(heads);
      const scores = tf
        .matMul(q!, k!, false, true)
        .mul(1 / Math.sqrt(D))
        .add(mask);
      const att = tf.matMul(tf.softmax(scores), v!).transpose([0, 2, 1, 3]).reshape([N, C]);
      x = x.add(tf.matMul(att, bl.wo).add(bl.bo));
      const f = gelu(tf.matMul(layerNorm(x, bl.g2, bl.b2), bl.w1).add(bl.c1));
      x = x.add(tf.matMul(f, bl.w2).add(bl.c2));
    }
    const logits = tf.matMul(layerNorm(x, gf, bf), wte, false, true);
    return tf.losses.softmaxCrossEntropy(oneHot, logits) as import('@tensorflow/tfjs').Scalar;
  };
  const t = await timeSteps(() => {
    const l = opt.minimize(lossFn, true)!;
    const loss = l.dataSync()[0]!;
    l.dispose();
    return loss;
  });
  return row(s, 'TensorFlow.js (wasm)', t, 'no threads in Node');
}

function sgemmCeiling(): number | null {
  const tool = resolve(process.cwd(), '../shared/tools/sgemm_ceiling.py');
  const r = spawnSync('python3', [tool, '--threads', String(threads), '--size', '1024'], { encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`sgemm ceiling unavailable (${r.stderr || r.stdout || r.error}); ratios to it omitted\n`);
    return null;
  }
  return JSON.parse(r.stdout.trim().split('\n').pop()!).gflops_median;
}

const cell = (v: string, width: number) => v.padStart(width);

async function main(): Promise<void> {
  const rows: Row[] = [];
  // The machine is shared, so the ceiling moves with the load: measure it right before and right after our own
  // rows of each shape and quote ours against the mean of the two.
  const ceilings = new Map<string, { before: number | null; after: number | null; mean: number | null }>();
  for (const s of SHAPES) {
    if (only && only !== s.id) continue;
    process.stderr.write(`${s.label}: ${(stepFlops(s) / 1e9).toFixed(2)} GFLOP per step\n`);
    const before = sgemmCeiling();
    rows.push(...benchOurs(s));
    const after = sgemmCeiling();
    const mean = before !== null && after !== null ? (before + after) / 2 : (before ?? after);
    ceilings.set(s.label, { before, after, mean });
    if (!skip.has('jax')) rows.push(await benchJax(s));
    if (!skip.has('tfjs')) rows.push(await benchTfjs(s));
  }
  const lines: string[] = [`threads: ${threads}`];
  for (const [label, c] of ceilings) {
    const f = (x: number | null) => (x === null ? '-' : x.toFixed(1));
    lines.push(`OpenBLAS sgemm 1024^3 around ${label}: ${f(c.before)} before, ${f(c.after)} after (GFLOP/s median)`);
  }
  lines.push(
    'shape                                     engine                                    ms/step   CPU ms   tokens/s  GFLOP/s' +
      '  % sgemm  ours(none)/this  loss@1',
  );
  for (const r of rows) {
    const ours = rows.find((x) => x.shape === r.shape && x.engine.startsWith('ours') && x.engine.endsWith('none)'));
    const ceiling = ceilings.get(r.shape)?.mean ?? null;
    lines.push(
      r.shape.padEnd(42) +
        r.engine.padEnd(42) +
        cell(r.msPerStep.toFixed(1), 8) +
        cell(r.cpuMsPerStep === undefined ? '-' : r.cpuMsPerStep.toFixed(1), 9) +
        cell(String(Math.round(r.tokensPerSecond)), 11) +
        cell(r.gflops.toFixed(2), 9) +
        cell(ceiling ? ((100 * r.gflops) / ceiling).toFixed(1) : '-', 9) +
        cell(ours ? (ours.tokensPerSecond / r.tokensPerSecond).toFixed(2) : '-', 17) +
        cell(r.firstLoss.toFixed(3), 8),
    );
  }
  lines.push('targets (issue 5): >= 35% of sgemm, >= 5x jax-js, >= 30x TensorFlow.js');
  for (const s of SHAPES) {
    const ours = rows.find((x) => x.shape === s.label && x.engine.endsWith('none)'));
    if (!ours) continue;
    const jaxRow = rows.find((x) => x.shape === s.label && x.engine.startsWith('@jax'));
    const tfRow = rows.find((x) => x.shape === s.label && x.engine.startsWith('TensorFlow'));
    const verdict = (ok: boolean) => (ok ? 'met' : 'MISSED');
    const parts = [];
    const ceiling = ceilings.get(s.label)?.mean ?? null;
    if (ceiling) {
      const pct = (100 * ours.gflops) / ceiling;
      parts.push(`${pct.toFixed(1)}% of sgemm (${verdict(pct >= 35)})`);
    }
    if (jaxRow) {
      const x = ours.tokensPerSecond / jaxRow.tokensPerSecond;
      parts.push(`${x.toFixed(2)}x jax-js (${verdict(x >= 5)})`);
    }
    if (tfRow) {
      const x = ours.tokensPerSecond / tfRow.tokensPerSecond;
      parts.push(`${x.toFixed(2)}x TensorFlow.js (${verdict(x >= 30)})`);
    }
    lines.push(`${s.id}: ${parts.join(', ')}`);
    const ourRow = (engineEnd: string) =>
      rows.find((x) => x.shape === s.label && x.engine.startsWith('ours') && x.engine.endsWith(engineEnd));
    const x = (r: number | null) => (r === null ? '-' : r.toFixed(2) + 'x');
    const met = (r: number | null, ok: (r: number) => boolean) => (r === null ? '' : ` (${verdict(ok(r))})`);
    // Speed ratios a/b (how many times faster a is) on the wall and the CPU-time basis of the interleaved medians.
    for (const [basis, cost] of [
      ['wall', (r: Row) => r.msPerStep],
      ['CPU time', (r: Row) => r.cpuMsPerStep],
    ] as const) {
      const speed = (a: Row | undefined, b: Row | undefined) => {
        const [ca, cb] = [a && cost(a), b && cost(b)];
        return ca !== undefined && cb !== undefined ? cb / ca : null;
      };
      const bf16 = [speed(ourRow('none, bf16)'), ours), speed(ourRow(`${HYPE_BF16}, bf16)`), ourRow('hype)'))];
      const hypeCost = [speed(ours, ourRow('hype)')), speed(ourRow('none, bf16)'), ourRow(`${HYPE_BF16}, bf16)`))];
      lines.push(
        `${s.id} (${basis}): bf16 mixed-precision step vs fp32 step: none ${x(bf16[0]!)}` +
          `${met(bf16[0]!, (r) => r >= 1.4)}, hype ${x(bf16[1]!)}${met(bf16[1]!, (r) => r >= 1.4)} (target >= 1.4x); ` +
          `HyPE step / none step: fp32 ${x(hypeCost[0]!)}${met(hypeCost[0]!, (r) => r <= 1.05)}, bf16 ` +
          `${x(hypeCost[1]!)}${met(hypeCost[1]!, (r) => r <= 1.05)} (target <= 1.05x)`,
      );
    }
  }
  process.stdout.write(lines.join('\n') + '\n');
  const json = value('--json');
  if (json)
    writeFileSync(json, JSON.stringify({ threads, ceilings: Object.fromEntries(ceilings), rows }, null, 1) + '\n');
}

await main();
