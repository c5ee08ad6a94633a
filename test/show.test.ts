import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { distanceProfile, parseEncodingRequest, registerShowCommand } from '../src/cli/show.ts';
import { buildProgram } from '../src/cli/main.ts';
import { HypeError } from '../src/errors.ts';
import { alibiSlopes } from '../src/pe/alibi-slopes.ts';
import { getEncodingFactory } from '../src/pe/registry.ts';

const dir = mkdtempSync(join(tmpdir(), 'hype-show-'));

/** Runs `hype show ...args` on a fresh program; returns what it printed. */
async function show(...args: string[]): Promise<string> {
  const program = new Command('hype').exitOverride();
  registerShowCommand(program);
  let printed = '';
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    printed += String(chunk);
    return true;
  });
  try {
    await program.parseAsync(['node', 'hype', 'show', ...args]);
  } finally {
    spy.mockRestore();
  }
  return printed;
}

/** Tag balance of an SVG document: every opened element closes, in order, under one <svg> root. */
function expectWellFormedSvg(svg: string): void {
  expect(svg.startsWith('<svg')).toBe(true);
  expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([A-Za-z][\w:-]*)[^>]*?(\/?)>/g)) {
    const [, closing, name, selfClosing] = m;
    if (selfClosing) continue;
    if (closing) expect(stack.pop()).toBe(name);
    else stack.push(name!);
  }
  expect(stack).toEqual([]);
}

const lineMarks = (svg: string): number => svg.match(/aria-roledescription="line mark"/g)?.length ?? 0;
const texts = (svg: string): string[] => [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!);

afterEach(() => vi.restoreAllMocks());

describe('hype show', () => {
  it('is registered on the hype program', () => {
    expect(buildProgram().commands.map((c) => c.name())).toContain('show');
  });

  it('writes an SVG with one line per head and prints its path', async () => {
    const out = join(dir, 'alibi.svg');
    const printed = await show('alibi', '--length', '24', '--heads', '4', '--head-dim', '8', '--out', out);
    expect(printed.trim()).toBe(out);
    const svg = readFileSync(out, 'utf8');
    expectWellFormedSvg(svg);
    expect(lineMarks(svg)).toBe(4);
    for (let h = 1; h <= 4; h++) expect(texts(svg)).toContain(`head ${h}`);
    expect(svg).toContain('every query and key = (1, ..., 1)'); // the definition is in the subtitle
  });

  it('--compare draws one panel per encoding with a line per head', async () => {
    const out = join(dir, 'compare.svg');
    const list = 'alibi,rope,t5:numBuckets=8:maxDistance=16,sinusoidal';
    await show('--compare', list, '--length', '20', '--heads', '2', '--head-dim', '8', '--out', out);
    const svg = readFileSync(out, 'utf8');
    expectWellFormedSvg(svg);
    expect(lineMarks(svg)).toBe(4 * 2);
    for (const label of list.split(',')) expect(texts(svg)).toContain(label);
    expect(texts(svg)).toContain('head 1');
    expect(texts(svg)).toContain('head 2');
  });

  it('--heatmap draws the causal L x L pattern of one head', async () => {
    const out = join(dir, 'heat.svg');
    await show('rope', '--heatmap', '--head', '2', '--length', '10', '--heads', '2', '--head-dim', '8', '--out', out);
    const svg = readFileSync(out, 'utf8');
    expectWellFormedSvg(svg);
    expect(svg.match(/aria-roledescription="rect mark"/g)?.length).toBe((10 * 11) / 2);
  });

  it('bad encoding names give the registry error, and nothing is written', async () => {
    let registryMessage = '';
    try {
      getEncodingFactory('bogus');
    } catch (e) {
      registryMessage = (e as HypeError).message;
    }
    expect(registryMessage).toMatch(/unknown positional encoding 'bogus'/);
    const out = join(dir, 'never.svg');
    await expect(show('bogus', '--out', out)).rejects.toThrow(registryMessage);
    await expect(show('--compare', 'alibi,bogus', '--out', out)).rejects.toBeInstanceOf(HypeError);
    await expect(show('alibi:oops', '--out', out)).rejects.toThrow(/key=value/);
    await expect(show('--compare', 'alibi,rope', '--heatmap', '--out', out)).rejects.toThrow(/one encoding/);
    await expect(show('alibi', '--length', '1', '--out', out)).rejects.toThrow(/--length/);
    expect(existsSync(out)).toBe(false);
  });
});

describe('distance profile (what the picture plots)', () => {
  const s = { length: 40, heads: 4, headDim: 8, trainLength: 40, seed: 0 };
  it('is 0 for NoPE and -m_h D for ALiBi', () => {
    for (const row of distanceProfile(parseEncodingRequest('none'), s)) for (const y of row) expect(y).toBe(0);
    const slopes = alibiSlopes(4);
    distanceProfile(parseEncodingRequest('alibi'), s).forEach((row, h) =>
      // (content + bias) - content: one rounding of a number of size scale * d = 2.8, ~4e-16
      row.forEach((y, D) => expect(Math.abs(y + slopes[h]! * D)).toBeLessThan(4 * 2.9 * Number.EPSILON)),
    );
  });

  it('is scale * (2 sum_j cos(D theta_j) - d) for RoPE with all-ones content vectors', () => {
    const scale = 1 / Math.sqrt(8);
    const thetas = [0, 1, 2, 3].map((j) => 10000 ** (-j / 4));
    distanceProfile(parseEncodingRequest('rope'), s).forEach((row) =>
      row.forEach((y, D) => {
        const expected = scale * (2 * thetas.reduce((acc, t) => acc + Math.cos(D * t), 0) - 8);
        expect(Math.abs(y - expected)).toBeLessThan(1e-14);
      }),
    );
  });

  it('passes options through: a different RoPE base gives a different profile', () => {
    const a = distanceProfile(parseEncodingRequest('rope'), s)[0]!;
    const b = distanceProfile(parseEncodingRequest('rope:base=50'), s)[0]!;
    expect(Math.max(...a.map((x, i) => Math.abs(x - b[i]!)))).toBeGreaterThan(1e-3);
  });
});
