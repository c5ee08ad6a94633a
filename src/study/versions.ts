/** What produced a result: Node, this package's version and the git commit (when run from a checkout). */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface Versions {
  node: string;
  package: string;
  /** HEAD commit, with '+dirty' when tracked files differ from it; null outside a git checkout. */
  commit: string | null;
}

let cached: Versions | null = null;

export function versions(): Versions {
  if (cached) return cached;
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  let commit: string | null;
  try {
    const git = (...args: string[]) =>
      execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    commit = git('rev-parse', 'HEAD') + (git('status', '--porcelain', '--untracked-files=no') ? '+dirty' : '');
  } catch {
    commit = null; // not a checkout, or no git: the package version still identifies the code
  }
  cached = { node: process.version, package: pkg.version, commit };
  return cached;
}
