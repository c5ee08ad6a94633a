/**
 * `hype verify`: the command. The measurements and tables are src/pe/hype/verify.ts.
 */
import type { Command } from 'commander';
import { check } from '../errors.ts';
import { DEFAULT_SAMPLING } from '../pe/hype/precision.ts';
import { DEFAULT_VERIFY, formatReport, runVerify, type VerifySettings } from '../pe/hype/verify.ts';

function parseList(text: string, what: string): number[] {
  const values = text.split(',').map((t) => Number(t.trim()));
  check(
    values.length > 0 && values.every((v) => Number.isFinite(v) && v > 0),
    'argument',
    `--${what} needs a comma-separated list of positive numbers, got '${text}'`,
  );
  return values;
}

export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description(
      "measure the concat route's overflow limits and bias error in fp32/fp16/bf16, and the presets vs ALiBi",
    )
    .option('--json', 'print the full results as JSON instead of tables')
    .option('--dims <list>', 'head dims', '64,128')
    .option('--lengths <list>', 'sequence lengths', DEFAULT_VERIFY.lengths.join(','))
    .option('--mul <list>', 'values of mu * L', DEFAULT_VERIFY.muL.join(','))
    .option('--rows <n>', 'evenly spaced query rows sampled when a length is too long to visit every pair', '64')
    .action((o: { json?: boolean; dims: string; lengths: string; mul: string; rows: string }) => {
      const lengths = parseList(o.lengths, 'lengths');
      check(
        lengths.every((L) => Number.isInteger(L) && L >= 2),
        'argument',
        `--lengths must be integers >= 2, got '${o.lengths}'`,
      );
      const dims = parseList(o.dims, 'dims');
      check(dims.every(Number.isInteger), 'argument', `--dims must be integers, got '${o.dims}'`);
      const rows = Number(o.rows);
      check(Number.isInteger(rows) && rows >= 2, 'argument', `--rows must be an integer >= 2, got '${o.rows}'`);
      const settings: VerifySettings = {
        dims,
        lengths,
        muL: parseList(o.mul, 'mul'),
        sampling: { ...DEFAULT_SAMPLING, rows },
      };
      const report = runVerify(settings);
      process.stdout.write((o.json ? JSON.stringify(report, null, 2) : formatReport(report)) + '\n');
    });
}
