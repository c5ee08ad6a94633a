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

/** A model tensor: data and grad are handles of the model's backend (typed arrays on host backends). */
export class ModelParam<T = FloatArray> implements Param<T> {
  constructor(
    readonly name: string,
    readonly shape: readonly number[],
    readonly decay: boolean,
    readonly data: T,
    readonly grad: T,
  ) {}

  /** A zeroed host parameter of the given dtype. */
  static host(name: string, shape: readonly number[], dtype: DType, decay: boolean): ModelParam {
    return new ModelParam(name, shape, decay, allocate(dtype, numel(shape)), allocate(dtype, numel(shape)));
  }
}

export interface BlockParams<T = FloatArray> {
  ln1Weight: ModelParam<T>;
  ln1Bias: ModelParam<T>;
  /** [C, (H + 2 Hkv) D]: query, key and value projections side by side, each head's D columns contiguous. */
  qkvWeight: ModelParam<T>;
  qkvBias: ModelParam<T>;
  projWeight: ModelParam<T>;
  projBias: ModelParam<T>;
  ln2Weight: ModelParam<T>;
  ln2Bias: ModelParam<T>;
  fcWeight: ModelParam<T>;
  fcBias: ModelParam<T>;
  fcProjWeight: ModelParam<T>;
  fcProjBias: ModelParam<T>;
}

export interface TransformerParams<T = FloatArray> {
  /** Token embedding [256, C], tied with the output head. */
  wte: ModelParam<T>;
  blocks: BlockParams<T>[];
  lnfWeight: ModelParam<T>;
  lnfBias: ModelParam<T>;
}

/** The same structure with every tensor mapped through f (host parameters -> a backend's handles). */
export function mapParams<A, B>(
  params: TransformerParams<A>,
  f: (p: ModelParam<A>) => ModelParam<B>,
): TransformerParams<B> {
  const block = (b: BlockParams<A>): BlockParams<B> =>
    Object.fromEntries(Object.entries(b).map(([k, p]) => [k, f(p as ModelParam<A>)])) as unknown as BlockParams<B>;
  return {
    wte: f(params.wte),
    blocks: params.blocks.map(block),
    lnfWeight: f(params.lnfWeight),
    lnfBias: f(params.lnfBias),
  };
}

export function qkvWidth(cfg: ModelConfig): number {
  const headDim = cfg.width / cfg.heads;
  return (cfg.heads + 2 * cfg.kvHeads) * headDim;
}

/** Allocates every tensor (zeros); `initialiseParams` fills them. */
export function allocateParams(cfg: ModelConfig): TransformerParams {
  const { width: C, mlpWidth: F, dtype } = cfg;
  const Q = qkvWidth(cfg);
  const p = (name: string, shape: number[], decay: boolean) => ModelParam.host(name, shape, dtype, decay);
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
export function listParams<T>(params: TransformerParams<T>): ModelParam<T>[] {
  const out: ModelParam<T>[] = [params.wte];
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
export function renamedParam<T>(p: Param<T>, name: string): Param<T> {
  return { name, shape: p.shape, data: p.data, grad: p.grad, decay: p.decay };
}
