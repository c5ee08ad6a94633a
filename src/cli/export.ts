/**
 * `hype export <run> --onnx model.onnx`: writes the run's model as an ONNX graph whose attention is onnxruntime's
 * fused com.microsoft MultiHeadAttention (src/interop/onnx-export.ts), and prints what the graph contains.
 */
import { existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { HypeError } from '../errors.ts';
import { exportOnnx, MAX_PAD_MULTIPLE } from '../interop/onnx-export.ts';
import { loadRunModel } from '../train/trainer.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { chooseBackend } from './train.ts';

interface ExportFlags {
  onnx?: string;
  pad?: string;
  precision?: string;
  columns?: string;
}

export async function runExport(runDir: string, f: ExportFlags): Promise<void> {
  if (!f.onnx) throw new HypeError('argument', 'say where to write the model: --onnx model.onnx');
  let padMultiple: number | undefined;
  if (f.pad !== undefined) {
    padMultiple = /^\s*\d+\s*$/.test(f.pad) ? Number(f.pad) : NaN;
    if (!Number.isInteger(padMultiple) || padMultiple < 1 || padMultiple > MAX_PAD_MULTIPLE) {
      throw new HypeError(
        'argument',
        `--pad must be an integer from 1 to ${MAX_PAD_MULTIPLE} (kernels want 4 or 8), got '${f.pad}'`,
      );
    }
  }
  const precision = f.precision ?? 'fp32';
  if (precision !== 'fp32' && precision !== 'fp16') {
    throw new HypeError('argument', `--precision must be fp32 or fp16, got '${precision}'`);
  }
  const columns = f.columns ?? 'split';
  if (columns !== 'split' && columns !== 'plain') {
    throw new HypeError('argument', `--columns must be split or plain, got '${columns}'`);
  }
  if (f.columns !== undefined && precision !== 'fp16') {
    throw new HypeError('argument', '--columns applies to --precision fp16 only (fp32 uses plain columns)');
  }
  checkOutputPath(f.onnx);
  const { model, dir } = loadRunModel(runDir, await chooseBackend('reference'));
  const { bytes, summary: s } = exportOnnx(model, { padMultiple, precision, columns });
  writeFileAtomic(f.onnx, bytes);
  const hypeCols = s.columns === 'split' ? 'split hi/lo HyPE columns, 6 per pair' : 'HyPE columns';
  const attention =
    s.encoding === 'hype'
      ? `Q, K augmented in-graph to head dim ${s.qkHeadDim} (d = ${s.headDim} + ${hypeCols} + zero padding to the multiple, if any), no bias input${s.precision === 'fp16' ? `, V zero-padded to ${s.qkHeadDim}` : ''}`
      : s.encoding === 'alibi'
        ? 'attention_bias -m_h |i - l| computed in-graph'
        : s.encoding === 'rope'
          ? 'q, k rotated in-graph'
          : 'plain';
  process.stdout.write(
    `wrote ${f.onnx} (${bytes.length} bytes) from ${dir}\n` +
      `  inputs tokens int64 [batch, length] -> logits float32 [batch, length, 256]; ${s.precision} weights and ` +
      `activations; opset ${s.opset} + com.microsoft\n` +
      `  ${s.layers} x com.microsoft MultiHeadAttention, ${s.heads} heads, causal, scale ${typeof s.scale === 'number' ? s.scale.toPrecision(6) : s.scale}: ${attention}\n`,
  );
}

/** One clear error for an output path whose folder is missing or that names a folder. */
function checkOutputPath(file: string): void {
  const path = resolve(file);
  if (existsSync(path) && statSync(path).isDirectory()) {
    throw new HypeError('argument', `--onnx ${file} is a folder; give a file name inside it, e.g. ${file}/model.onnx`);
  }
  const dir = dirname(path);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new HypeError('io', `--onnx ${file}: the folder ${dirname(file)} does not exist; create it first (mkdir -p)`);
  }
}

export function registerExport(program: Command): void {
  program
    .command('export')
    .description("write a run's model as ONNX (attention on onnxruntime's fused MultiHeadAttention)")
    .argument('<run>', 'run folder written by hype train')
    .option('--onnx <file>', 'output ONNX file (required)')
    .option('--precision <p>', 'fp32 (default) or fp16 weights and activations (logits stay float32)')
    .option('--columns <c>', 'HyPE with --precision fp16: split (default, 6 columns per pair) or plain (2)')
    .option(
      '--pad <m>',
      `HyPE: zero-pad the augmented head dim to a multiple of m, 1 to ${MAX_PAD_MULTIPLE} (default: the encoding's; 8 in fp16)`,
    )
    .action(async (run: string, flags: ExportFlags) => {
      await runExport(run, flags);
    });
}
