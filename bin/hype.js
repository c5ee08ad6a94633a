#!/usr/bin/env node
// The `hype` command. An installed package runs the compiled CLI in dist/ (built by `prepack`, plain Node). A git
// clone (recognised by its tsconfig.json, which the package does not ship) runs the TypeScript sources through
// tsx, a dev dependency, so edits take effect without a build step and a stale dist/ is never run by mistake.
import { existsSync } from 'node:fs';

const root = new URL('../', import.meta.url);
let main;
if (existsSync(new URL('tsconfig.json', root)) && existsSync(new URL('src/cli/main.ts', root))) {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import(new URL('src/cli/main.ts', root).href));
} else if (existsSync(new URL('dist/cli/main.js', root))) {
  ({ main } = await import(new URL('dist/cli/main.js', root).href));
} else {
  process.stderr.write('hype: the compiled CLI (dist/) is missing; run `npm run build` in the package folder\n');
  process.exit(1);
}
await main(process.argv);
