/**
 * The `hype` command line. Each command lives in its own module and registers itself here; errors the library
 * raises on purpose (HypeError) and failures of the environment (a refused file-system call, memory exhausted)
 * print as one line and exit 2; anything else is a bug and shows its stack.
 */
import { readFileSync } from 'node:fs';
import { Command, CommanderError } from 'commander';
import { HypeError } from '../errors.ts';
import { describeFsError, isFsError } from '../util/fs-safe.ts';
import { registerShowCommand } from './show.ts';
import { registerStudy } from './study.ts';
import { registerEval } from './eval.ts';
import { registerExport } from './export.ts';
import { registerGenerate } from './generate.ts';
import { registerTrain } from './train.ts';
import { registerTrainVision } from './train-vision.ts';
import { registerVerify } from './verify.ts';
import { registerWorker } from './worker.ts';

/** The package's version, read from its package.json (two levels up from src/cli/ and from dist/cli/ alike). */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string })
    .version;
}

export function buildProgram(): Command {
  const program = new Command('hype')
    .description('HyPE: hyperbolic positional encoding, fused CPU attention and the study of positional encodings')
    .version(packageVersion(), '-V, --version', 'print the version of hype-attention')
    .exitOverride()
    .showHelpAfterError();
  registerTrain(program);
  registerTrainVision(program);
  registerEval(program);
  registerShowCommand(program);
  registerVerify(program);
  registerStudy(program);
  registerGenerate(program);
  registerExport(program);
  registerWorker(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode;
      return;
    }
    const message = err instanceof HypeError ? err.message : environmentError(err);
    if (message !== null) {
      process.stderr.write(`hype: ${message}\n`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
}

/**
 * Failures of the environment rather than of hype (a file-system call refused, memory exhausted) that no check
 * caught earlier: one line naming the path and the reason, not a stack. Anything else is a bug (null).
 */
function environmentError(err: unknown): string | null {
  if (isFsError(err)) {
    const e = err as NodeJS.ErrnoException;
    return `cannot ${e.syscall ?? 'access'} '${e.path ?? '?'}': ${describeFsError(e)}`;
  }
  if (
    err instanceof RangeError &&
    /typed array length|Array buffer allocation failed|Invalid array length/.test(err.message)
  ) {
    return `out of memory (${err.message}); lower --batch, --length or the model size`;
  }
  return null;
}
