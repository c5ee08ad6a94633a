/**
 * 'hype-attention/node': the core API plus what needs Node — choosing a backend by name and the native N-API
 * addon (fused CPU attention), which `npm install` builds from the shipped C++ sources.
 */
export * from '../index.ts';
export { loadBackend, type BackendName, type LoadBackendOptions } from '../backend/index.ts';
export { NativeBackend, nativeAvailable } from '../backend/native.ts';
