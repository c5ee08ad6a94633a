/** What produced a result: Node, this package's version and the git commit (when run from a checkout). */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface Versions {
  node: string;
  package: string;
  /**
   * HEAD commit, with '+dirty' when tracked files other than study outputs (results/, RESULTS.md) differ from it;
   * null outside a git checkout. Outputs are left out because a resumed study rewrites them while it runs.
   */
  commit: string | null;
}

let cached: Versions | null = null;

export function versions(): Versions {
  if (cached) return cached;
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  let commit: string | null;
  try {
    const cwd = fileURLToPath(new URL('../..', import.meta.url)); // the package's checkout, not the caller's folder
    const git = (...args: string[]) =>
      execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const changed = git(
      'status',
      '--porcelain',
      '--untracked-files=no',
      '--',
      '.',
      ':(exclude)results',
      ':(exclude)RESULTS.md',
    );
    commit = git('rev-parse', 'HEAD') + (changed ? '+dirty' : '');
  } catch {
    commit = null; // not a checkout, or no git: the package version still identifies the code
  }
  cached = { node: process.version, package: pkg.version, commit };
  return cached;
}
