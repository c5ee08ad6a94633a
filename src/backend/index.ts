/**
 * Picks a backend by name. 'auto' prefers the native addon and falls back to the TypeScript reference when the
 * addon was not built or is a stale build (native.ts checks its kernel interface at load), saying so once on
 * stderr (the library keeps working, only slower). This is the only fallback: 'native' refuses instead.
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

export function loadBackend(name: BackendName = 'auto', opts: LoadBackendOptions = {}): Backend {
  switch (name) {
    case 'native':
      return new NativeBackend(opts);
    case 'reference':
      return new ReferenceBackend();
    case 'auto':
      if (nativeAvailable()) return new NativeBackend(opts);
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
