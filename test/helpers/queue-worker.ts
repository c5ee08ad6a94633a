/**
 * A `hype worker` for tests, on the reference backend (as the local runs it is compared with):
 * `tsx test/helpers/queue-worker.ts <redis url> <dataDir> <workDir>`. Logs go to stderr prefixed with the pid; stops
 * on SIGTERM after the cell in hand.
 */
import { ReferenceBackend } from '../../src/backend/reference.ts';
import { HypeError } from '../../src/errors.ts';
import { runWorker } from '../../src/study/queue.ts';

const [url, dataDir, workDir] = process.argv.slice(2);
try {
  await runWorker({
    url: url!,
    backend: new ReferenceBackend(),
    dataDir: dataDir!,
    workDir: workDir!,
    concurrency: 1,
    log: (s) => process.stderr.write(`[${process.pid}] ${s}\n`),
  });
} catch (err) {
  if (!(err instanceof HypeError)) throw err;
  process.stderr.write(`hype: ${err.message}\n`);
  process.exitCode = 2;
}
