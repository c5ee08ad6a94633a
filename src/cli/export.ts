/**
 * `hype export <run> --onnx model.onnx`: writes the run's model as an ONNX graph whose attention is onnxruntime's
 * fused com.microsoft MultiHeadAttention (src/interop/onnx-export.ts), and prints what the graph contains.
 */
import type { Command } from 'commander';
import { HypeError } from '../errors.ts';
import { exportOnnx } from '../interop/onnx-export.ts';
import { loadRunModel } from '../train/trainer.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { chooseBackend } from './train.ts';

interface ExportFlags {
  onnx?: string;
  pad?: string;
}

export async function runExport(runDir: string, f: ExportFlags): Promise<void> {
  if (!f.onnx) throw new HypeError('argument', 'say where to write the model: --onnx model.onnx');
  let padMultiple: number | undefined;
  if (f.pad !== undefined) {
    padMultiple = Number(f.pad);
    if (!Number.isInteger(padMultiple) || padMultiple < 1) {
      throw new HypeError('argument', `--pad must be a positive integer (e.g. 8), got '${f.pad}'`);
    }
  }
  const { model, dir } = loadRunModel(runDir, await chooseBackend('reference'));
  const { bytes, summary: s } = exportOnnx(model, { padMultiple });
  writeFileAtomic(f.onnx, bytes);
  const attention =
    s.encoding === 'hype'
      ? `Q, K augmented in-graph to head dim ${s.qkHeadDim} (d = ${s.headDim} + HyPE columns${s.qkHeadDim > s.headDim + 2 ? ' + zero padding' : ''}), no bias input`
      : s.encoding === 'alibi'
        ? 'attention_bias -m_h |i - l| computed in-graph'
        : s.encoding === 'rope'
          ? 'q, k rotated in-graph'
          : 'plain';
  process.stdout.write(
    `wrote ${f.onnx} (${bytes.length} bytes) from ${dir}\n` +
      `  inputs tokens int64 [batch, length] -> logits float32 [batch, length, 256]; opset ${s.opset} + com.microsoft\n` +
      `  ${s.layers} x com.microsoft MultiHeadAttention, ${s.heads} heads, causal, scale ${typeof s.scale === 'number' ? s.scale.toPrecision(6) : s.scale}: ${attention}\n`,
  );
}

export function registerExport(program: Command): void {
  program
    .command('export')
    .description("write a run's model as ONNX (attention on onnxruntime's fused MultiHeadAttention)")
    .argument('<run>', 'run folder written by hype train')
    .option('--onnx <file>', 'output ONNX file (required)')
    .option('--pad <m>', "HyPE: zero-pad the augmented head dim to a multiple of m (default: the encoding's)")
    .action(async (run: string, flags: ExportFlags) => {
      await runExport(run, flags);
    });
}
