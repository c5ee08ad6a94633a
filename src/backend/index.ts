/**
 * Picks a backend by name. 'auto' prefers the native addon and falls back to the TypeScript reference when the
 * addon was not built or is a stale build (native.ts checks its kernel interface at load), saying so once on
 * stderr (the library keeps working, only slower). This is the only fallback: 'native' refuses instead.
 * 'webgpu' is asked for by name only (auto never picks it): acquiring a device is asynchronous, so
 * loadBackend('webgpu') returns a Promise of the WebGpuBackend (navigator.gpu where it exists, else Dawn through the
 * `webgpu` package), or rejects with one HypeError naming the fix when there is no adapter.
 */
import { HypeError } from '../errors.ts';
import type { Backend } from './backend.ts';
import './bf16.ts'; // registers the host backends' bf16 members (bf16-hooks.ts)
import { NativeBackend, nativeAvailable, nativeLoadError } from './native.ts';
import { ReferenceBackend } from './reference.ts';
import { WebGpuBackend } from './webgpu/backend.ts';
import { acquireNodeGpu } from './webgpu/node.ts';

/** The host backends, loaded synchronously. */
export type BackendName = 'native' | 'reference' | 'auto';
/** Every backend name, the device one included (--backend). */
export type AnyBackendName = BackendName | 'webgpu';
export const BACKEND_NAMES: readonly AnyBackendName[] = ['auto', 'native', 'reference', 'webgpu'];

export interface LoadBackendOptions {
  /** Native worker threads (default: all available cores). Ignored by the reference backend. */
  threads?: number;
}

let warned = false;

export function loadBackend(name: 'webgpu', opts?: LoadBackendOptions): Promise<WebGpuBackend>;
export function loadBackend(name?: BackendName, opts?: LoadBackendOptions): Backend;
export function loadBackend(name: AnyBackendName, opts?: LoadBackendOptions): Backend | Promise<WebGpuBackend>;
export function loadBackend(
  name: AnyBackendName = 'auto',
  opts: LoadBackendOptions = {},
): Backend | Promise<WebGpuBackend> {
  switch (name) {
    case 'webgpu':
      return loadWebGpu();
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
      throw new HypeError(
        'argument',
        `unknown backend ${JSON.stringify(name)}; use 'native', 'reference', 'auto' or 'webgpu'`,
      );
  }
}

/** A browser's navigator.gpu when there is one, else Dawn's (the `webgpu` package) in Node. */
async function loadWebGpu(): Promise<WebGpuBackend> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return WebGpuBackend.create(nav.gpu);
  return new WebGpuBackend(await acquireNodeGpu());
}

export { NativeBackend, nativeAvailable } from './native.ts';
export { ReferenceBackend } from './reference.ts';
export { WebGpuBackend } from './webgpu/backend.ts';
