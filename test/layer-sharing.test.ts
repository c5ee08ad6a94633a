/**
 * Sharing across layers (SPEC section 10): T5's bias table and Transformer-XL's u and v are one set per model by
 * default (the references' choice), per block with sharing 'per-layer'. Checks the parameter listing, the summed
 * gradient of a shared parameter against fp64 central differences, that configs saved before the option existed
 * (and their checkpoints) still mean per-layer, and that the study's stored per-layer cells keep their keys.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ReferenceBackend } from '../src/backend/reference.ts';
import { parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { peChoice } from '../src/study/plan.ts';
import { cellKey } from '../src/study/store.ts';
import { loadCheckpoint, restoreWeights, saveCheckpoint } from '../src/train/checkpoint.ts';
import { parseTrainConfig } from '../src/train/config.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { Rng } from '../src/util/rng.ts';
import { maxRelativeGradError } from './helpers/gradcheck.ts';

const backend = new ReferenceBackend();
const B = 2;
const L = 5;

function config(pe: string, options?: Record<string, unknown>, layers = 3): ModelConfig {
  return parseModelConfig({
    width: 8,
    layers,
    heads: 2,
    mlpWidth: 12,
    trainLength: L,
    dtype: 'float64',
    pe: options ? { name: pe, options } : { name: pe },
    seed: 5,
  });
}

const peNames = (m: Transformer) =>
  m
    .parameters()
    .map((p) => p.name)
    .filter((n) => n.includes('.pe.'));

describe('sharing across layers', () => {
  it('new configs record the reference choice (shared); per-layer is an option', () => {
    expect(config('t5').pe.options.sharing).toBe('shared');
    expect(config('xl').pe.options.sharing).toBe('shared');
    expect(peNames(new Transformer(config('t5'), backend))).toEqual(['blocks.0.attn.pe.relative_bias']);
    expect(peNames(new Transformer(config('t5', { sharing: 'per-layer' }), backend))).toEqual(
      [0, 1, 2].map((i) => `blocks.${i}.attn.pe.relative_bias`),
    );
    // XL: u and v once (under block 0), W_R in every block.
    expect(peNames(new Transformer(config('xl'), backend))).toEqual([
      'blocks.0.attn.pe.xl.u',
      'blocks.0.attn.pe.xl.v',
      'blocks.0.attn.pe.xl.wR',
      'blocks.1.attn.pe.xl.wR',
      'blocks.2.attn.pe.xl.wR',
    ]);
    expect(peNames(new Transformer(config('xl', { sharing: 'per-layer' }), backend))).toHaveLength(9);
    expect(() => new Transformer(config('t5', { sharing: 'layers' }), backend)).toThrow(
      /t5 sharing must be 'shared'.*or 'per-layer'/,
    );
  });

  for (const pe of ['t5', 'xl']) {
    it(`${pe}: the shared parameters' gradient (summed over 3 layers) matches fp64 central differences`, () => {
      const model = new Transformer(config(pe), backend);
      const rng = new Rng(3);
      for (const p of model.parameters()) for (let i = 0; i < p.data.length; i++) p.data[i] += 0.3 * rng.normal();
      const tokens = Int32Array.from({ length: B * L }, () => rng.int(256));
      const targets = Int32Array.from({ length: B * L }, () => rng.int(256));
      const loss = () => model.forward(tokens, targets, B, L);
      model.zeroGrad();
      loss();
      model.backward();
      const shared = model.parameters().filter((p) => /blocks\.0\.attn\.pe\.(relative_bias|xl\.[uv])$/.test(p.name));
      expect(shared.length).toBe(pe === 't5' ? 1 : 2);
      for (const p of shared) {
        // fp64 with h = 1e-5: truncation and rounding ~1e-10 relative (helpers/gradcheck.ts); 1e-6 leaves margin.
        expect(maxRelativeGradError(loss, p.data, Float64Array.from(p.grad)), p.name).toBeLessThan(1e-6);
      }
    });
  }
});

describe('configs and checkpoints saved before the option existed', () => {
  const root = mkdtempSync(join(tmpdir(), 'hype-sharing-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('an absent sharing option read back from disk means per-layer', () => {
    const raw = { width: 8, layers: 2, heads: 2, pe: { name: 't5', options: {} } };
    expect(parseModelConfig(raw, { saved: true }).pe.options.sharing).toBe('per-layer');
    expect(parseModelConfig(raw).pe.options.sharing).toBe('shared');
  });

  for (const pe of ['t5', 'xl']) {
    it(`${pe}: a per-layer checkpoint whose config has no sharing key loads with its weights`, () => {
      const trained = new Transformer(config(pe, { sharing: 'per-layer' }, 2), backend);
      // What an old run wrote: the same per-layer weights under a config without the key.
      const oldConfig = { ...trained.config, pe: { name: pe, options: {} } };
      const old = Object.create(trained, { config: { value: oldConfig } }) as Transformer;
      const dir = join(root, pe);
      saveCheckpoint(dir, {
        model: old,
        optimizer: new AdamW(trained.parameters(), backend),
        rng: new Rng(1),
        step: 1,
        train: parseTrainConfig({ data: 'corpus.txt' }),
        corpus: { bytes: 1, sha256: '0'.repeat(64) },
      });
      const ck = loadCheckpoint(dir);
      expect(ck.state.model.pe.options.sharing).toBe('per-layer');
      const loaded = new Transformer(ck.state.model, backend);
      restoreWeights(loaded, ck.weights);
      expect(peNames(loaded)).toEqual(peNames(trained));
      const want = trained.parameters();
      loaded.parameters().forEach((p, i) => expect(Array.from(p.data)).toEqual(Array.from(want[i]!.data)));
    });
  }
});

describe('study cells', () => {
  it("stored t5/xl cells (computed per-layer) keep their keys under the plan's explicit per-layer choice", () => {
    let checked = 0;
    for (const set of ['small', 'full']) {
      const dir = join('results', set, 'lm', 'cells');
      if (!existsSync(dir)) continue;
      const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
      for (const f of files) {
        const rec = JSON.parse(readFileSync(join(dir, f), 'utf8')) as { key: string; config: { encoding: string } };
        if (rec.config.encoding !== 't5' && rec.config.encoding !== 'xl') continue;
        const now = { ...rec.config, pe: peChoice(rec.config.encoding) };
        expect(now.pe.options.sharing).toBe('per-layer');
        expect(cellKey(now), f).toBe(rec.key);
        // The shared variant is a different cell, never these numbers.
        expect(cellKey({ ...now, pe: { ...now.pe, options: { sharing: 'shared' } } })).not.toBe(rec.key);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(0);
  });
});
