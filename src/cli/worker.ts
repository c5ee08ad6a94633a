/**
 * `hype worker --queue redis://host:port[/db]`: computes study cells that `hype study ... --queue` enqueued, on this
 * machine, until stopped (Ctrl-C finishes the cells in hand first). See src/study/queue.ts for the failure semantics.
 */
import type { Command } from 'commander';
import { HypeError } from '../errors.ts';
import { checkFolderPath, makeWritableDir } from '../util/fs-safe.ts';
import { positiveInt, STUDY_BACKENDS } from './study.ts';
import { chooseAnyBackend } from './train.ts';

interface WorkerFlags {
  queue: string;
  threads?: string;
  concurrency: string;
  dataDir: string;
  workDir: string;
  backend: string;
}

export function registerWorker(program: Command): void {
  program
    .command('worker')
    .description("compute the study cells queued by 'hype study <what> --queue <url>' (runs until stopped)")
    .requiredOption('--queue <url>', 'the Redis the coordinator enqueued on: redis://host:port[/db]')
    .option('--threads <n>', 'native backend threads per cell (default: all cores)')
    .option('--concurrency <n>', 'cells computed at once', '1')
    .option(
      '--data-dir <dir>',
      'folder holding tinyshakespeare/ and wikitext-2/ (as on the coordinator)',
      '../shared/data',
    )
    .option('--work-dir <dir>', 'folder for the training runs; shared by workers, a retried cell resumes', 'runs/study')
    .option(
      '--backend <name>',
      'compute backend: auto, native, reference, or webgpu (refuses cells of host-only encodings and precision)',
      'auto',
    )
    .action(async (f: WorkerFlags) => {
      if (!STUDY_BACKENDS.includes(f.backend)) {
        throw new HypeError('argument', `unknown backend '${f.backend}'; choose ${STUDY_BACKENDS.join(', ')}`);
      }
      const concurrency = positiveInt(f.concurrency, '--concurrency')!;
      const { parseQueueUrl, runWorker } = await import('../study/queue.ts');
      parseQueueUrl(f.queue);
      checkFolderPath(f.workDir, 'the training-runs folder (--work-dir)');
      makeWritableDir(f.workDir, 'the training-runs folder (--work-dir)');
      const backend = await chooseAnyBackend(f.backend, f.threads);
      await runWorker({
        url: f.queue,
        backend,
        dataDir: f.dataDir,
        workDir: f.workDir,
        concurrency,
        log: (line) => process.stderr.write(`${line}\n`),
      });
    });
}
