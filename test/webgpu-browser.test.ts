/**
 * The WebGPU backend in a real browser: esbuild bundles test/browser/webgpu-page.ts (the backend's browser-safe
 * modules plus the tiny training model), a local HTTP server on 127.0.0.1 serves it (WebGPU needs a secure context),
 * and puppeteer-core drives Debian's chromium with --enable-unsafe-webgpu (SwiftShader's WebGPU adapter on a
 * CPU-only machine). The page runs fused attention forward and backward on two cases, three AdamW steps of the
 * tiny model, and three training steps of the library's Transformer (HyPE recency) on WebGpuBackend; Node checks every
 * number against the fp64 reference with the same f32 bounds as the Node tests (test/helpers/webgpu-attention-check.ts,
 * test/webgpu-train-step.test.ts), and the Transformer's losses against the native backend's (test/webgpu-train.test.ts).
 *
 * Chromium comes from `.ci/system-deps` (Debian's package; HYPE_CHROMIUM names another binary). Without it, or
 * without a WebGPU adapter in the page, the test FAILS with a message naming the fix; it never skips.
 */
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { build } from 'esbuild';
import puppeteer, { type Browser } from 'puppeteer-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { PageInput } from './browser/webgpu-page.ts';
import { attentionErrors, attentionInputs, type AttentionCase } from './helpers/webgpu-attention-check.ts';
import { initParams, NAMES, referenceTrain } from './helpers/webgpu-tiny-model.ts';
import { loadBackend } from '../src/backend/index.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { TRAIN_DEFAULTS } from '../src/train/config.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { trainingStep } from '../src/train/step.ts';

const CHROMIUM = process.env.HYPE_CHROMIUM ?? '/usr/bin/chromium';
const STEPS = 3;

// One case, rich in what can go wrong (distance table, GQA, causal rows that see no key, batch > 1, dv != d): each
// head-dim class costs SwiftShader ~20 s to compile the four attention pipelines, and the tiny model's attention
// (d 8) shares this case's class (16), so the training steps add no attention compile.
const cases: AttentionCase[] = [
  {
    name: 'browser: causal, negative query offset (rows that see no key), distance table, GQA 4/2, d 16 / dv 12',
    shape: { batch: 2, heads: 4, kvHeads: 2, lq: 9, lk: 5, headDim: 16, valueDim: 12 },
    causal: true,
    queryOffset: -3,
    table: true,
  },
];

interface PageResult {
  ok: boolean;
  error?: string;
  adapter: string;
  features: string[];
  attention: { out: number[]; lse: (number | string)[]; dq: number[]; dk: number[]; dv: number[]; dTable?: number[] }[];
  losses: number[];
  params: Record<string, number[]>;
  transformer: number[];
}

// The Transformer steps: width 16 (head dim 8, the tiny model's attention class), HyPE recency on the concat route.
const TF = {
  config: {
    width: 16,
    layers: 1,
    heads: 2,
    kvHeads: 2,
    mlpWidth: 32,
    trainLength: 8,
    pe: { name: 'hype', options: { preset: 'recency' } },
  },
  train: { ...TRAIN_DEFAULTS, lr: 3e-3, clip: 1 },
  batch: 2,
  length: 8,
  batches: Array.from({ length: 3 }, (_, s) => Array.from({ length: 17 }, (_, i) => 97 + ((i * 3 + s) % 7))),
};

let server: Server | undefined;
let browser: Browser | undefined;

afterAll(async () => {
  await browser?.close();
  server?.close();
});

const inputs = cases.map(attentionInputs);
const p0 = initParams();
let result: PageResult;
const pageLog: string[] = [];

beforeAll(async () => {
  if (!existsSync(CHROMIUM))
    throw new Error(
      `the browser test needs Chromium at ${CHROMIUM}: install Debian's chromium with \`bash .ci/system-deps\` (as ` +
        'root), or set HYPE_CHROMIUM to a Chromium binary',
    );
  const bundle = await build({
    entryPoints: ['test/browser/webgpu-page.ts'],
    bundle: true,
    platform: 'browser',
    format: 'esm',
    write: false,
    logLevel: 'silent',
  });
  const input: PageInput = {
    attention: cases.map((c, i) => {
      const x = inputs[i]!;
      return {
        case: c,
        inputs: { q: [...x.q], k: [...x.k], v: [...x.v], dOut: [...x.dOut], table: [...x.table], opts: x.opts },
      };
    }),
    train: {
      params: Object.fromEntries(NAMES.map((n) => [n, [...p0[n]]])) as PageInput['train']['params'],
      steps: STEPS,
    },
    transformer: TF,
  };
  const files: Record<string, [string, string]> = {
    '/': [
      'text/html',
      '<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><script type="module" src="/page.js"></script>',
    ],
    '/page.js': ['text/javascript', bundle.outputFiles[0]!.text],
    '/input.json': ['application/json', JSON.stringify(input)],
  };
  const srv = createServer((req, res) => {
    const f = files[req.url ?? ''];
    res.writeHead(f ? 200 : 404, { 'content-type': f?.[0] ?? 'text/plain' });
    res.end(f?.[1] ?? 'not found');
  });
  server = srv;
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;

  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--enable-unsafe-webgpu'],
  });
  const page = await browser.newPage();
  page.on('console', (m) => pageLog.push(`console.${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => pageLog.push(`page error: ${String(e)}`));
  await page.goto(`http://127.0.0.1:${port}/`);
  // The page publishes a promise that always settles (ok or error); wait for it with a deadline of our own.
  await page
    .waitForFunction(() => 'hypeResult' in globalThis, { timeout: 20_000 })
    .catch(() => {
      throw new Error(`the test page never started (no hypeResult):\n${pageLog.join('\n')}`);
    });
  result = (await page.evaluate(() => (globalThis as { hypeResult?: unknown }).hypeResult)) as PageResult;
  if (!result.ok)
    throw new Error(
      `the WebGPU run in Chromium failed: ${result.error}\n(Chromium needs --enable-unsafe-webgpu and a WebGPU ` +
        `adapter: SwiftShader ships with Debian's chromium)\n${pageLog.join('\n')}`,
    );
}, 90_000);

for (const [i, c] of cases.entries()) {
  it(`${c.name}: forward and backward match the fp64 reference`, () => {
    const r = result.attention[i]!;
    const got = { ...r, lse: r.lse.map(Number) }; // '-Infinity' strings back to numbers
    const { ratios, emptyRowMismatches } = attentionErrors(c, inputs[i]!, got);
    for (const [name, e] of Object.entries(ratios)) expect(e, name).toBeLessThanOrEqual(1);
    expect(emptyRowMismatches).toBe(0);
  });
}

it(`${STEPS} training steps of the tiny model in the browser match the fp64 reference`, () => {
  // Bounds as test/webgpu-train-step.test.ts: losses within 1e-4 relative, parameters within 1e-4 absolute (1% of
  // one step's lr). An entry's AdamW update lr * m/sqrt(v) is scale-free in its gradient, so it inherits the gradient
  // entry's relative f32 error, which grows as the entry shrinks against the largest one; here the worst parameter is
  // wk (measured 5.7e-5 on SwiftShader; the others <= 7e-6), the losses agree to ~3e-7 relative.
  const ref = referenceTrain(p0, STEPS);
  expect(result.losses).toHaveLength(STEPS);
  for (let s = 0; s < STEPS; s++)
    expect(Math.abs(result.losses[s]! - ref.losses[s]!)).toBeLessThanOrEqual(1e-4 * ref.losses[s]!);
  expect(ref.losses[STEPS - 1]).toBeLessThan(ref.losses[0]!); // the steps do train
  for (const n of NAMES) {
    const got = result.params[n]!;
    expect(got).toHaveLength(ref.params[n].length);
    let worst = 0;
    for (let j = 0; j < got.length; j++) worst = Math.max(worst, Math.abs(got[j]! - ref.params[n][j]!));
    expect(worst, n).toBeLessThanOrEqual(1e-4);
  }
});

it('three steps of the Transformer on WebGpuBackend in the browser match the native backend', async () => {
  // Bound as test/webgpu-train.test.ts: both sides f32 from the same initialisation, differing in summation order
  // only; 1e-4 relative per step.
  const be = loadBackend('native', { threads: 1 });
  const model = new Transformer(parseModelConfig(TF.config), be);
  const opt = new AdamW(model.parameters(), be);
  const n = TF.batch * TF.length;
  for (const [s, seq] of TF.batches.entries()) {
    const ids = Int32Array.from(seq);
    const input = { tokens: ids.subarray(0, n), targets: ids.subarray(1, n + 1), batch: TF.batch, length: TF.length };
    const { loss } = await trainingStep(model, opt, TF.train, { ...input, lr: TF.train.lr, where: `at step ${s}` });
    expect(Math.abs(result.transformer[s]! - loss), `step ${s}`).toBeLessThanOrEqual(1e-4 * loss);
  }
  expect(result.transformer[2]).toBeLessThan(result.transformer[0]!);
});
