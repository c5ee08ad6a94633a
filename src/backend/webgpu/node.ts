/**
 * Node-only entry: the `webgpu` package (Dawn) supplies the `GPU` object that browsers expose as navigator.gpu.
 * Kept apart so the backend itself never imports a Node-only module.
 */
import { HypeError } from '../../errors.ts';
import { acquireGpu, LAVAPIPE_FIX, type AcquireOptions, type GpuContext } from './context.ts';

/** A GpuContext on Dawn's first adapter (lavapipe on a CPU-only machine), or one HypeError naming the fix. */
export async function acquireNodeGpu(opts: AcquireOptions = {}): Promise<GpuContext> {
  let create: (options: string[]) => GPU;
  try {
    ({ create } = await import('webgpu'));
  } catch (e) {
    throw new HypeError(
      'device',
      `the \`webgpu\` package (Dawn for Node) could not be loaded (${String(e)}); ${LAVAPIPE_FIX}`,
    );
  }
  return acquireGpu(create([]), opts);
}
