/**
 * The model's trainable tensors and their initialisation. Every tensor is a named `Param` (the same interface the
 * encodings use for theirs), so the optimizer, gradient clipping and checkpoints treat all of them alike.
 *
 * Linear weights are stored [in, out] (row-major), so y = x W + b is one gemm with no transpose. Note this is the
 * transpose of PyTorch's nn.Linear.weight layout; exporters must transpose where a format expects [out, in].
 */
import type { Param } from '../pe/encoding.ts';
import { allocate, numel, type DType, type FloatArray } from '../tensor.ts';
import type { Rng } from '../util/rng.ts';
import type { ModelConfig } from './config.ts';

export class ModelParam implements Param {
  readonly data: FloatArray;
  readonly grad: FloatArray;
  constructor(
    readonly name: string,
    readonly shape: readonly number[],
    dtype: DType,
    readonly decay: boolean,
  ) {
    this.data = allocate(dtype, numel(shape));
    this.grad = allocate(dtype, numel(shape));
  }
}

export interface BlockParams {
  ln1Weight: ModelParam;
  ln1Bias: ModelParam;
  /** [C, (H + 2 Hkv) D]: query, key and value projections side by side, each head's D columns contiguous. */
  qkvWeight: ModelParam;
  qkvBias: ModelParam;
  projWeight: ModelParam;
  projBias: ModelParam;
  ln2Weight: ModelParam;
  ln2Bias: ModelParam;
  fcWeight: ModelParam;
  fcBias: ModelParam;
  fcProjWeight: ModelParam;
  fcProjBias: ModelParam;
}

export interface TransformerParams {
  /** Token embedding [256, C], tied with the output head. */
  wte: ModelParam;
  blocks: BlockParams[];
  lnfWeight: ModelParam;
  lnfBias: ModelParam;
}

export function qkvWidth(cfg: ModelConfig): number {
  const headDim = cfg.width / cfg.heads;
  return (cfg.heads + 2 * cfg.kvHeads) * headDim;
}

/** Allocates every tensor (zeros); `initialiseParams` fills them. */
export function allocateParams(cfg: ModelConfig): TransformerParams {
  const { width: C, mlpWidth: F, dtype } = cfg;
  const Q = qkvWidth(cfg);
  const p = (name: string, shape: number[], decay: boolean) => new ModelParam(name, shape, dtype, decay);
  const blocks: BlockParams[] = [];
  for (let i = 0; i < cfg.layers; i++) {
    const pre = `blocks.${i}`;
    blocks.push({
      ln1Weight: p(`${pre}.ln1.weight`, [C], false),
      ln1Bias: p(`${pre}.ln1.bias`, [C], false),
      qkvWeight: p(`${pre}.attn.qkv.weight`, [C, Q], true),
      qkvBias: p(`${pre}.attn.qkv.bias`, [Q], false),
      projWeight: p(`${pre}.attn.proj.weight`, [C, C], true),
      projBias: p(`${pre}.attn.proj.bias`, [C], false),
      ln2Weight: p(`${pre}.ln2.weight`, [C], false),
      ln2Bias: p(`${pre}.ln2.bias`, [C], false),
      fcWeight: p(`${pre}.mlp.fc.weight`, [C, F], true),
      fcBias: p(`${pre}.mlp.fc.bias`, [F], false),
      fcProjWeight: p(`${pre}.mlp.proj.weight`, [F, C], true),
      fcProjBias: p(`${pre}.mlp.proj.bias`, [C], false),
    });
  }
  return {
    wte: p('wte', [cfg.vocab, C], true),
    blocks,
    lnfWeight: p('lnf.weight', [C], false),
    lnfBias: p('lnf.bias', [C], false),
  };
}

/**
 * GPT-2 style init: embeddings and weights N(0, initStd^2); the two projections that write into the residual
 * stream get initStd / sqrt(2 layers) so the stream's variance does not grow with depth; biases 0; norms 1 and 0.
 * Tensors are filled in a fixed order from `rng`, so a seed determines the model exactly.
 */
export function initialiseParams(params: TransformerParams, cfg: ModelConfig, rng: Rng): void {
  const std = cfg.initStd;
  const residualStd = std / Math.sqrt(2 * cfg.layers);
  rng.fillNormal(params.wte.data, std);
  for (const b of params.blocks) {
    b.ln1Weight.data.fill(1);
    b.ln1Bias.data.fill(0);
    rng.fillNormal(b.qkvWeight.data, std);
    b.qkvBias.data.fill(0);
    rng.fillNormal(b.projWeight.data, residualStd);
    b.projBias.data.fill(0);
    b.ln2Weight.data.fill(1);
    b.ln2Bias.data.fill(0);
    rng.fillNormal(b.fcWeight.data, std);
    b.fcBias.data.fill(0);
    rng.fillNormal(b.fcProjWeight.data, residualStd);
    b.fcProjBias.data.fill(0);
  }
  params.lnfWeight.data.fill(1);
  params.lnfBias.data.fill(0);
}

/** Every model tensor in a fixed order (the order of checkpoints and of the optimizer state). */
export function listParams(params: TransformerParams): ModelParam[] {
  const out: ModelParam[] = [params.wte];
  for (const b of params.blocks) {
    out.push(
      b.ln1Weight,
      b.ln1Bias,
      b.qkvWeight,
      b.qkvBias,
      b.projWeight,
      b.projBias,
      b.ln2Weight,
      b.ln2Bias,
      b.fcWeight,
      b.fcBias,
      b.fcProjWeight,
      b.fcProjBias,
    );
  }
  out.push(params.lnfWeight, params.lnfBias);
  return out;
}

/** A view of an encoding's parameter under a model-level name (same arrays, so gradients flow through). */
export function renamedParam(p: Param, name: string): Param {
  return { name, shape: p.shape, data: p.data, grad: p.grad, decay: p.decay };
}
