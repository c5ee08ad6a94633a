// `npm install` / `npm ci` hook (also `npm rebuild`): builds the native addon from native/ with node-gyp, unless
// build/ already holds an addon built from exactly these sources for this Node ABI — a SHA-256 of binding.gyp, every
// file under native/, the node-addon-api version and the ABI, stored beside the addon — so a changed native/ is
// always rebuilt and an unchanged one is not rebuilt for nothing. node-gyp's own chatter ("gyp info ...") goes to
// build/native-build.log; compiler warnings and errors are printed. A failed build does not fail the install: the
// library then runs on the TypeScript reference backend and says so once, here and at load time.
// HYPE_SKIP_NATIVE=1 skips the build (the same fallback, on purpose); deleting build/ forces a rebuild.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const buildDir = join(root, 'build');
const addon = join(buildDir, 'Release', 'hype_native.node');
const stampFile = join(buildDir, 'native-sources.sha256');
const logFile = join(buildDir, 'native-build.log');
const fallback = 'the pure-TypeScript reference backend will be used (same results, much slower)';

if (!existsSync(join(root, 'binding.gyp'))) process.exit(0);
if (process.env.HYPE_SKIP_NATIVE === '1') {
  console.warn(`hype: HYPE_SKIP_NATIVE=1, native addon not built; ${fallback}.`);
  process.exit(0);
}

function sourcesHash() {
  const h = createHash('sha256');
  const add = (rel) =>
    h
      .update(rel)
      .update('\0')
      .update(readFileSync(join(root, rel)))
      .update('\0');
  add('binding.gyp');
  for (const f of readdirSync(join(root, 'native'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath ?? e.path, e.name).slice(root.length))
    .sort())
    add(f);
  let addonApi = 'unknown';
  try {
    addonApi = createRequire(join(root, 'package.json'))('node-addon-api/package.json').version;
  } catch {
    // node-addon-api missing: the build below fails and says why
  }
  h.update(`node-addon-api ${addonApi}; abi ${process.versions.modules}; ${process.platform}-${process.arch}`);
  return h.digest('hex');
}

const hash = sourcesHash();
if (existsSync(addon) && existsSync(stampFile) && readFileSync(stampFile, 'utf8').trim() === hash) {
  console.log('hype: native addon is up to date with native/ (not rebuilt)');
  process.exit(0);
}

// npm hands lifecycle scripts the path of its bundled node-gyp; outside npm, use the one npx finds.
const gyp = process.env.npm_config_node_gyp;
const [cmd, args] = gyp ? [process.execPath, [gyp, 'rebuild']] : ['npx', ['--yes', 'node-gyp', 'rebuild']];
console.log('hype: building the native addon from native/ (g++, about a minute)...');
const t0 = Date.now();
rmSync(stampFile, { force: true });
const r = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 });
const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
mkdirSync(buildDir, { recursive: true });
writeFileSync(logFile, output);
const shown = output
  .split('\n')
  .filter((l) => l.trim() && !/^gyp (info|http)|^\s*(CXX|SOLINK_MODULE|SOLINK|COPY|LINK|make)\b/.test(l));
if (r.status === 0 && existsSync(addon)) {
  writeFileSync(stampFile, hash + '\n');
  if (shown.length > 0) console.warn(shown.join('\n'));
  console.log(`hype: native addon built in ${((Date.now() - t0) / 1000).toFixed(0)} s (log: build/native-build.log)`);
} else {
  const why = r.error ? r.error.message : shown.slice(-15).join('\n');
  console.warn(`${why}\nhype: the native addon did not build (full log: build/native-build.log); ${fallback}.`);
}
