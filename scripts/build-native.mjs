// `npm install` / `npm ci` hook: build the native addon when binding.gyp is present. A failed build must not fail
// the install: the library then runs on the TypeScript backend and says so once at load time.
// The compiler's output (about 1,500 lines) is kept back on success and shown in full only when the build fails.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

if (!existsSync(new URL('../binding.gyp', import.meta.url))) process.exit(0);
const r = spawnSync('npx', ['--no-install', 'node-gyp-build'], {
  stdio: ['ignore', 'pipe', 'pipe'],
  shell: false,
  encoding: 'utf8',
  maxBuffer: 256 * 1024 * 1024,
});
if (r.status === 0) {
  console.log('hype: native addon ready');
} else {
  process.stderr.write(`${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? `${r.error.message}\n` : ''}`);
  console.warn('hype: the native addon did not build; the pure-TypeScript backend will be used (slower).');
}
