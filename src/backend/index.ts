/**
 * Picks a backend by name. 'auto' prefers the native addon and falls back to the TypeScript reference when the
 * addon was not built, saying so once on stderr (the library keeps working, only slower).
 */
import { HypeError } from '../errors.ts';
import type { Backend } from './backend.ts';
import { NativeBackend, nativeAvailable, nativeLoadError } from './native.ts';
import { ReferenceBackend } from './reference.ts';

export type BackendName = 'native' | 'reference' | 'auto';

export interface LoadBackendOptions {
  /** Native worker threads (default: all available cores). Ignored by the reference backend. */
  threads?: number;
}

let warned = false;
let warnedStale = false;

/** A native backend, saying once on stderr when its addon is a stale build missing newer kernels. */
function nativeBackend(opts: LoadBackendOptions): NativeBackend {
  const backend = new NativeBackend(opts);
  if (backend.missingKernels.length > 0 && !warnedStale) {
    warnedStale = true;
    process.stderr.write(
      `hype: the native addon was built from older sources and lacks ${backend.missingKernels.join(', ')}; ` +
        'those run on the TypeScript reference (same results, slower). Rebuild it with `npm rebuild`.\n',
    );
  }
  return backend;
}

export function loadBackend(name: BackendName = 'auto', opts: LoadBackendOptions = {}): Backend {
  switch (name) {
    case 'native':
      return nativeBackend(opts);
    case 'reference':
      return new ReferenceBackend();
    case 'auto':
      if (nativeAvailable()) return nativeBackend(opts);
      if (!warned) {
        warned = true;
        process.stderr.write(
          `hype: the native addon is unavailable (${nativeLoadError()}); using the TypeScript reference backend ` +
            `(much slower). Rebuild it with \`npm rebuild\`.\n`,
        );
      }
      return new ReferenceBackend();
    default:
      throw new HypeError('argument', `unknown backend ${JSON.stringify(name)}; use 'native', 'reference' or 'auto'`);
  }
}

export { NativeBackend, nativeAvailable } from './native.ts';
export { ReferenceBackend } from './reference.ts';
