// `npm install` / `npm ci` hook: build the native addon when binding.gyp is present. A failed build must not fail
// the install: the library then runs on the TypeScript backend and says so once at load time.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

if (!existsSync(new URL('../binding.gyp', import.meta.url))) process.exit(0);
const r = spawnSync('npx', ['--no-install', 'node-gyp-build'], { stdio: 'inherit', shell: false });
if (r.status !== 0) {
  console.warn('hype: the native addon did not build; the pure-TypeScript backend will be used (slower).');
}
