/**
 * HyPE on a third-party fp16 GPU kernel: the model exported with `--precision fp16` runs on onnxruntime-web's WebGPU
 * execution provider (Dawn in Node; on CPU-only machines Mesa's lavapipe, installed by .ci/system-deps), whose
 * com.microsoft MultiHeadAttention is a fused flash-attention kernel, and its logits are compared with our fp64
 * forward pass. Three exports of the same weights:
 *   none   no position terms: the error fp16 itself sets (the floor F);
 *   split  HyPE recency with split hi/lo columns (6 per pair, SPEC section 8);
 *   plain  the same HyPE model with 2 fp16-rounded columns per pair.
 *
 * The model: d = 8, 4 heads, recency preset with L_extra = 4096, so |tau_h| = m_h L_extra / 0.5 = 2048 ... 32 and
 * the eta amplitudes |tau| sqrt(d) / 2 reach ~2900. Rounding such a column to fp16 (u = 2^-11) moves each product
 * by ~u |tau| sqrt(d) / 2 and the logit, after the 1/sqrt(d) scale, by ~u |tau| / 2 = 0.5 for the steepest head:
 * plain columns must be far above the floor. Split columns leave ~|tau| u^2 = 5e-4 from the split plus the fp32
 * evaluation of exp in the graph and fp32 accumulation (~u32 |tau| sqrt(d) ~ 3e-4 before scaling), both below one
 * fp16 rounding of an O(1) activation (4.9e-4): the bias errors are at most of the size of the roundings every
 * activation already takes, so split's logit error must stay within 2F (F measured on the same weights without
 * position terms; the factor 2 covers the different attention patterns of the two models, whose errors propagate
 * through the same layers).
 *
 * Length 24 < 32: onnxruntime 1.31 then runs its split-reduce flash path (FlashAttentionDecodeQKV + VxReduce); at
 * 32 and above its prefill FlashAttention program runs, which on lavapipe (subgroup size 8) returns wrong rows past
 * the first 8 queries even without position terms (measured: 1e-2 .. 6e-2 off against fp64 on random fp16 inputs,
 * rows 0-7 at 1e-4), so it cannot serve as the yardstick here.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exportOnnx, type OnnxExportOptions } from '../src/interop/onnx-export.ts';
import { Rng } from '../src/util/rng.ts';
import { halfTestModel } from './helpers/half-model.ts';

const root = mkdtempSync(join(tmpdir(), 'hype-ortweb-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const BATCH = 1;
const LENGTH = 24;

function model(pe: string, options: Record<string, unknown>) {
  return halfTestModel(join(root, `run-${pe}`), pe, options);
}

describe('fp16 export on onnxruntime-web WebGPU (Dawn, lavapipe in CI)', () => {
  it('split columns stay within the fp16 floor; plain columns are measurably worse; the fused kernel ran', () => {
    const none = model('none', {});
    const hype = model('hype', { preset: 'recency', lengthExtra: 4096 });
    const rng = new Rng(11);
    const tokens = Array.from({ length: BATCH * LENGTH }, () => rng.int(256));
    const exports: [string, typeof none, OnnxExportOptions][] = [
      ['none', none, { precision: 'fp16' }],
      ['split', hype, { precision: 'fp16', columns: 'split' }],
      ['plain', hype, { precision: 'fp16', columns: 'plain' }],
    ];
    const models = exports.map(([name, m, o]) => {
      const path = join(root, `${name}.onnx`);
      const { bytes, summary } = exportOnnx(m, o);
      writeFileSync(path, bytes);
      if (name !== 'none') expect(summary.qkHeadDim).toBe(16); // 8 + 6 (split) or 8 + 2 (plain), padded to 8
      return { name, path };
    });
    const job = join(root, 'job.json');
    const out = join(root, 'out.json');
    writeFileSync(job, JSON.stringify({ models, tokens, batch: BATCH, length: LENGTH, out }));
    // stdout and stderr into one file, so ort's log lines (stderr) stay in order with the @@model markers (stdout).
    const logPath = join(root, 'child.log');
    const fd = openSync(logPath, 'w');
    const child = spawnSync(
      process.execPath,
      ['--import', 'tsx', join(import.meta.dirname, 'helpers/ort-webgpu-run.ts'), job],
      { stdio: ['ignore', fd, fd] },
    );
    closeSync(fd);
    const log = readFileSync(logPath, 'utf8');
    expect(child.status, `the WebGPU run failed:\n${log.slice(-4000)}`).toBe(0);

    // Which programs ran, per model (ort's info log: 'Starting program "Name[cache key]..."').
    const programs = new Map<string, Set<string>>();
    let current = '';
    for (const line of log.split('\n')) {
      const m = /^@@model (\w+)/.exec(line);
      if (m) current = m[1]!;
      const p = /Starting program "([A-Za-z0-9_]+)/.exec(line);
      if (p && current) (programs.get(current) ?? programs.set(current, new Set()).get(current)!).add(p[1]!);
    }
    for (const { name } of models) {
      const ran = programs.get(name) ?? new Set();
      // The fused split-reduce flash kernel, not the unfused AttentionProbs / InPlaceSoftmax / VxAttentionScore.
      expect([...ran], name).toContain('FlashAttentionDecodeQKV');
      expect([...ran], name).toContain('FlashAttentionDecodeVxReduce');
      expect([...ran], name).not.toContain('AttentionProbs');
      expect([...ran], name).not.toContain('VxAttentionScore');
    }

    const results = (JSON.parse(readFileSync(out, 'utf8')) as { results: { name: string; logits: number[] }[] })
      .results;
    const err: Record<string, number> = {};
    let size = 0;
    for (const [name, m] of exports) {
      m.forward(Int32Array.from(tokens), null, BATCH, LENGTH);
      const ours = m.logits();
      const theirs = results.find((r) => r.name === name)!.logits;
      expect(theirs.length).toBe(ours.length);
      let e = 0;
      for (let j = 0; j < ours.length; j++) {
        e = Math.max(e, Math.abs(theirs[j]! - ours[j]!));
        size = Math.max(size, Math.abs(ours[j]!));
      }
      err[name] = e;
    }
    console.log(
      `[ortweb-fp16] max |logit - fp64| over ${BATCH}x${LENGTH} tokens (max |logit| ${size.toFixed(2)}): ` +
        `none (fp16 floor) ${err.none!.toExponential(2)}, split ${err.split!.toExponential(2)}, ` +
        `plain ${err.plain!.toExponential(2)}; kernels ${[...(programs.get('split') ?? [])].join(', ')}`,
    );
    expect(size).toBeGreaterThan(1);
    expect(err.none!).toBeGreaterThan(0); // fp16 really ran
    expect(err.split!).toBeLessThanOrEqual(2 * err.none!);
    expect(err.plain!).toBeGreaterThan(4 * err.none!);
    expect(err.plain!).toBeGreaterThan(4 * err.split!);
  }, 1_500_000);
});
