/**
 * The tiny model the fp16 export tests share: d = 8, 4 heads, one layer, saved as a run folder and loaded back as
 * `hype export` does. With HyPE's recency preset and L_extra = 4096, |tau_h| = m_h L_extra / 0.5 reaches 2048.
 */
import { ReferenceBackend } from '../../src/backend/reference.ts';
import type { Transformer } from '../../src/model/transformer.ts';
import { loadRunModel } from '../../src/train/trainer.ts';
import { writeTinyRun } from './tiny-run.ts';

export function halfTestModel(dir: string, pe: string, options: Record<string, unknown> = {}): Transformer {
  writeTinyRun(dir, {
    width: 32,
    heads: 4,
    layers: 1,
    mlpWidth: 64,
    trainLength: 16,
    dtype: 'float64',
    initStd: 0.3,
    seed: 5,
    pe: { name: pe, options },
  });
  return loadRunModel(dir, new ReferenceBackend()).model;
}
