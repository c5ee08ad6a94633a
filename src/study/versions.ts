/** What produced a result: Node, this package's version and the git commit (when run from a checkout). */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Versions {
  node: string;
  package: string;
  /**
   * HEAD commit, with '+dirty' when tracked code (CODE_PATHS) differs from it; null outside a git checkout.
   * Results and prose are left out: a resumed study rewrites its outputs while it runs.
   */
  commit: string | null;
}

/** What can change a result: the sources, the native kernels, the CLI entry and the dependency pins. */
const CODE_PATHS = ['src', 'native', 'bin', 'scripts', 'binding.gyp', 'package.json', 'package-lock.json'];

let cached: Versions | null = null;

export function versions(): Versions {
  if (cached) return cached;
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  let commit: string | null;
  try {
    const cwd = fileURLToPath(new URL('../..', import.meta.url)); // the package's checkout, not the caller's folder
    const git = (...args: string[]) =>
      execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const changed = git('status', '--porcelain', '--untracked-files=no', '--', ...CODE_PATHS);
    commit = git('rev-parse', 'HEAD') + (changed ? '+dirty' : '');
  } catch {
    commit = null; // not a checkout, or no git: the package version still identifies the code
  }
  cached = { node: process.version, package: pkg.version, commit };
  return cached;
}
