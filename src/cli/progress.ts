/**
 * One progress-bar style for long commands. cli-progress writes nothing when stderr is not a terminal unless
 * noTTYOutput is set; then it prints one line per `notTTYSchedule` milliseconds, so logs of batch jobs still show
 * progress.
 */
import cliProgress from 'cli-progress';

export function progressBar(label: string, fields: string): cliProgress.SingleBar {
  return new cliProgress.SingleBar(
    {
      format: `${label} |{bar}| {value}/{total} ${fields} | ETA {eta_formatted}`,
      barsize: 24,
      hideCursor: true,
      noTTYOutput: true,
      notTTYSchedule: 5000,
      etaBuffer: 50,
      stream: process.stderr,
    },
    cliProgress.Presets.shades_classic,
  );
}
