/**
 * Renders a vega-lite spec to an SVG string in Node (vega's headless 'none' renderer: no canvas, no browser) and
 * writes it atomically. Every chart the CLI and the study produce goes through here.
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import { HypeError } from '../errors.ts';

/** vega and vega-lite are optional peer dependencies (about 20 MB), loaded when the first chart is drawn. */
async function loadVega() {
  try {
    const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
    return { vega, compile: vegaLite.compile };
  } catch {
    throw new HypeError(
      'dependency',
      'plots need the optional packages vega and vega-lite; install them with `npm install vega vega-lite`',
    );
  }
}

export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  const { vega, compile } = await loadVega();
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Writes `svg` to `path` through a temporary file, so a reader never sees half a picture. */
export function writeSvgFile(path: string, svg: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, svg);
  renameSync(tmp, path);
}
