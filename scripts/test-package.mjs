// The package as a stranger gets it: `npm pack` (prepack builds dist/), install the tarball into a fresh temporary
// project, then type-check a consumer file against the public API (tsc --noEmit, no skipLibCheck), run it, check
// the require() error, run `npx hype --help`, `--version` and a 3-step `hype train`, and bundle the core entry
// with esbuild for the browser (which fails if a Node built-in is reachable from it). CI runs it (.ci/run); about
// a minute on two cores. The addon is not compiled in the consumer (HYPE_SKIP_NATIVE=1) unless HYPE_PACKAGE_NATIVE=1:
// the clone's `npm ci` already builds it from the same sources with the same script, and skipping exercises the
// pure-TypeScript fallback and its one warning. Everything happens in a temporary folder, removed at the end.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('..', import.meta.url));
const bin = (name) => join(repo, 'node_modules', '.bin', name);
const work = mkdtempSync(join(tmpdir(), 'hype-package-'));
const project = join(work, 'consumer');
const native = process.env.HYPE_PACKAGE_NATIVE === '1';
let failed = false;

function run(label, cmd, args, opts = {}) {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { cwd: project, encoding: 'utf8', ...opts, env: { ...process.env, ...opts.env } });
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  const ok = opts.expectFail ? r.status !== 0 : r.status === 0;
  console.log(
    `\n$ ${[cmd === process.execPath ? 'node' : cmd.replace(repo, '<repo>/'), ...args].join(' ')}` +
      `   [${label}: ${ok ? 'ok' : 'FAILED'}, ${((Date.now() - t0) / 1000).toFixed(1)} s]\n${out}`,
  );
  if (!ok) throw new Error(`${label} failed (exit ${r.status})`);
  return out;
}

function expect(cond, what) {
  if (!cond) throw new Error(`expected ${what}`);
}

try {
  const pack = spawnSync('npm', ['pack', '--pack-destination', work], { cwd: repo, encoding: 'utf8' });
  if (pack.status !== 0) throw new Error(`npm pack failed:\n${pack.stdout}${pack.stderr}`);
  const tarball = join(
    work,
    readdirSync(work).find((f) => f.endsWith('.tgz')),
  );
  const files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).split('\n');
  for (const f of [
    'LICENSE',
    'README.md',
    'CHANGELOG.md',
    'dist/index.js',
    'dist/index.d.ts',
    'bin/hype.js',
    'scripts/build-native.mjs',
    'binding.gyp',
    'native/bindings.cc',
    'cjs/index.cjs',
  ])
    // prettier-ignore
    expect(files.includes(`package/${f}`), `${f} in the tarball`);
  // No tsconfig.json: bin/hype.js takes its presence as the mark of a git clone (and then runs the sources).
  expect(!files.some((f) => /^package\/(tsconfig|test\/|bench\/|results\/)/.test(f)), 'no clone-only files');
  console.log(`packed ${tarball.slice(work.length + 1)}: ${files.filter(Boolean).length} files`);

  execFileSync('mkdir', ['-p', project]);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  writeFileSync(
    join(project, 'corpus.txt'),
    "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n".repeat(60),
  );
  run('install', 'npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', tarball], {
    env: native ? {} : { HYPE_SKIP_NATIVE: '1' },
  });

  // Types: every public subpath, checked strictly against the shipped declarations (no skipLibCheck).
  writeFileSync(
    join(project, 'consumer.ts'),
    `import { encodingNames, hype, parseModelConfig, ReferenceBackend, Transformer, type AttentionShape } from 'hype-attention';
import { loadBackend, type Backend } from 'hype-attention/node';
import { TrainingRun, loadCorpus, type TrainConfig } from 'hype-attention/train';
import { encodeSafetensors, exportOnnx } from 'hype-attention/interop';
import { quickPlan } from 'hype-attention/study';
import { buildProgram } from 'hype-attention/cli';

const shape: AttentionShape = { batch: 1, heads: 2, kvHeads: 2, lq: 4, lk: 4, headDim: 8, valueDim: 8 };
const h = hype({ preset: 'recency', heads: 2, kvHeads: 2, headDim: 8, lengthExtra: 64 });
const q = new Float64Array(2 * 4 * 8).fill(0.5);
const aug = h.augment(shape, q, q);
const out: Float64Array | Float32Array = new ReferenceBackend().attentionForward(aug.shape, aug.qHat, aug.kHat, aug.vHat ?? q, {
  causal: true,
  scale: aug.scale,
}).out;
const backend: Backend = loadBackend('reference');
const model = new Transformer(parseModelConfig({ width: 16, layers: 1, heads: 2, trainLength: 16, pe: { name: 'hype' } }), backend);
const cfg: Partial<TrainConfig> = { steps: 3 };
export const all = [encodingNames(), out, model.parameterCount(), cfg, TrainingRun, loadCorpus, encodeSafetensors, exportOnnx, quickPlan, buildProgram];
`,
  );
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: ['node'],
        typeRoots: [join(repo, 'node_modules', '@types')],
      },
      files: ['consumer.ts'],
    }),
  );
  run('types', bin('tsc'), ['-p', 'tsconfig.json']);

  // Runtime: the same API from plain JavaScript, and the ESM-only message for require().
  writeFileSync(
    join(project, 'consumer.mjs'),
    `import { hype, parseModelConfig, Transformer } from 'hype-attention';
import { loadBackend } from 'hype-attention/node';
const model = new Transformer(parseModelConfig({ width: 16, layers: 1, heads: 2, trainLength: 16, pe: { name: 'hype' } }), loadBackend('auto', { threads: 1 }));
const tokens = Int32Array.from({ length: 16 }, (_, i) => 97 + i);
const loss = model.forward(tokens, tokens, 1, 16);
console.log('untrained loss', loss.toFixed(4), 'nats (ln 256 =', Math.log(256).toFixed(4) + ');', typeof hype);
// Every subpath loads without the optional packages (vega, vega-lite, protobufjs), which are not installed here.
for (const sub of ['train', 'study', 'interop', 'cli']) await import('hype-attention/' + sub);
`,
  );
  const loss = run('runtime', process.execPath, ['consumer.mjs']);
  // Small random weights give nearly uniform predictions over 256 bytes: a loss near ln 256 = 5.545 nats.
  const nats = Number(/untrained loss ([\d.]+)/.exec(loss)?.[1]);
  expect(Math.abs(nats - Math.log(256)) < 0.6, `an untrained loss near ln 256, got ${nats}`);
  const req = run('require', process.execPath, ['-e', "require('hype-attention')"], { expectFail: true });
  expect(/ES module and cannot be loaded with require\(\)/.test(req), 'the ESM-only message');

  // The command, as installed: no tsx anywhere in the consumer.
  run('no tsx', process.execPath, ['-e', "import('tsx').then(() => process.exit(1), () => process.exit(0))"]);
  expect(/Usage: hype/.test(run('help', 'npx', ['--no-install', 'hype', '--help'])), 'usage text');
  run('version', 'npx', ['--no-install', 'hype', '--version']);
  const train = run('train', 'npx', ['--no-install', 'hype', 'train', '--pe', 'hype:preset=recency', '--steps', '3',
    '--data', 'corpus.txt', '--width', '16', '--layers', '1', '--heads', '2', '--length', '32', '--batch', '2',
    '--run-dir', 'run', '--threads', '1']); // prettier-ignore
  expect(/finished at step 3\/3/.test(train), 'a finished 3-step run');
  expect(/held-out loss/.test(train), 'a held-out evaluation line');

  // Optional parts are not installed here: each says what to install, in one line.
  const show = run('show without vega', 'npx', ['--no-install', 'hype', 'show', 'alibi', '--out', 'a.svg'], {
    expectFail: true,
  });
  expect(/hype: plots need .*`npm install vega vega-lite`/.test(show), 'the vega message');
  const onnx = run('export without protobufjs', 'npx', ['--no-install', 'hype', 'export', 'run', '--onnx', 'm.onnx'], {
    expectFail: true,
  });
  expect(/`npm install protobufjs`/.test(onnx), 'the protobufjs message');
  expect(!/\n\s+at /.test(show + onnx), 'no stack trace');

  // Browser: bundle the core entry as a browser app would; a reachable Node built-in fails the bundle.
  writeFileSync(join(project, 'browser.js'), "export { hype, Transformer, ReferenceBackend } from 'hype-attention';\n");
  run('browser bundle', bin('esbuild'), ['browser.js', '--bundle', '--platform=browser', '--format=esm',
    '--outfile=bundle.js', '--log-level=warning']); // prettier-ignore
} catch (err) {
  failed = true;
  console.error(`\npackage test FAILED: ${err.message}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
if (failed) process.exit(1);
console.log('\npackage test passed');
