/**
 * A tiny run folder written by the trainer's own checkpoint code (saveCheckpoint), without training: deployment
 * tests (generate, export) load it back through loadRunModel exactly as they would a trained run.
 */
import { ReferenceBackend } from '../../src/backend/reference.ts';
import { parseModelConfig } from '../../src/model/config.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { saveCheckpoint } from '../../src/train/checkpoint.ts';
import { parseTrainConfig } from '../../src/train/config.ts';
import { AdamW } from '../../src/train/optimizer.ts';
import { Rng } from '../../src/util/rng.ts';

/** Saves a freshly initialised model (config merged over small defaults) as step 0 of a run in `dir`. */
export function writeTinyRun(dir: string, config: Record<string, unknown>): Transformer {
  const backend = new ReferenceBackend();
  const model = new Transformer(
    parseModelConfig({ width: 16, layers: 2, heads: 2, mlpWidth: 32, trainLength: 16, ...config }),
    backend,
  );
  saveCheckpoint(dir, {
    model,
    optimizer: new AdamW(model.parameters(), backend),
    rng: new Rng(1),
    step: 0,
    train: parseTrainConfig({ data: 'corpus.txt' }),
    corpus: { bytes: 0, sha256: '0'.repeat(64) },
  });
  return model;
}
