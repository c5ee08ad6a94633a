/**
 * The package's entry points, checked from the sources (the packed tarball is checked by scripts/test-package.mjs
 * in CI): the core entry bundles for the browser with no Node built-in reachable, the Node-only entries do not,
 * and each subpath exports what its package.json entry promises.
 */
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const bundle = (entry: string) =>
  build({ entryPoints: [entry], bundle: true, platform: 'browser', format: 'esm', write: false, logLevel: 'silent' });

describe('package entry points', () => {
  it('the core entry bundles for the browser: no Node built-in is reachable from it', async () => {
    const r = await bundle('src/index.ts');
    expect(r.errors).toEqual([]);
    expect(r.outputFiles[0]!.text).not.toMatch(/from\s*["']node:/);
  });

  it('the Node-only entry does not (so the browser check above can fail)', async () => {
    await expect(bundle('src/entries/node.ts')).rejects.toThrow(/Could not resolve "node:/);
  });

  it('every exports subpath has its entry file and the public names', async () => {
    const pkg = JSON.parse(readFileSync('package.json', 'utf8'));
    const subpaths = Object.keys(pkg.exports).filter((k) => k !== './package.json');
    expect(subpaths).toEqual(['.', './node', './train', './study', './interop', './cli']);
    const core = await import('../src/index.ts');
    for (const name of ['hype', 'ReferenceBackend', 'Transformer', 'parseModelConfig', 'encodingNames', 'generate'])
      expect(core).toHaveProperty(name);
    expect(await import('../src/entries/node.ts')).toHaveProperty('loadBackend');
    expect(await import('../src/entries/train.ts')).toHaveProperty('TrainingRun');
    expect(await import('../src/entries/interop.ts')).toHaveProperty('exportOnnx');
    expect(await import('../src/entries/study.ts')).toHaveProperty('runStudy');
    expect(await import('../src/entries/cli.ts')).toHaveProperty('main');
  });
});
