/**
 * Runs ONNX models on onnxruntime-web's WebGPU execution provider under Dawn (the `webgpu` package) in Node, as a
 * child process of a test: ort's info log names every WebGPU program it starts, and the parent reads them from this
 * process's output (a child keeps Dawn and ort's wasm threads out of the test workers).
 *
 * argv: a JSON file { models: [{ name, path }], tokens: number[], batch, length, out } -> writes `out` as JSON
 * { results: [{ name, logits: number[] }] } (logits float32 [batch, length, 256]).
 *
 * Two shims make ort-web's browser build work in Node: navigator.gpu is Dawn's GPU object, and queue.writeBuffer
 * gets a copy of any view on a SharedArrayBuffer (ort's wasm heap is shared memory; Dawn's binding refuses it with
 * "Invalid argument").
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { create, globals } from 'webgpu';

Object.assign(globalThis, globals);
const gpu = create([]);
Object.defineProperty(globalThis, 'navigator', { value: { gpu }, configurable: true, writable: true });
type WriteBuffer = (buf: unknown, off: number, data: unknown, dataOff?: number, size?: number) => void;
const queueProto = (globals as unknown as { GPUQueue: { prototype: { writeBuffer: WriteBuffer } } }).GPUQueue.prototype;
const writeBuffer = queueProto.writeBuffer;
queueProto.writeBuffer = function (this: unknown, buf, off, data, dataOff = 0, size) {
  if (ArrayBuffer.isView(data) && data.buffer instanceof SharedArrayBuffer) {
    const bpe = (data as unknown as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1;
    const n = size ?? data.byteLength / bpe - dataOff;
    const copy = new Uint8Array(data.buffer, data.byteOffset + dataOff * bpe, n * bpe).slice();
    return writeBuffer.call(this, buf, off, copy, 0, copy.byteLength);
  }
  return writeBuffer.call(this, buf, off, data, dataOff, size);
};

const ort = await import('onnxruntime-web/webgpu');
const job = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as {
  models: { name: string; path: string }[];
  tokens: number[];
  batch: number;
  length: number;
  out: string;
};
const results: { name: string; logits: number[] }[] = [];
for (const m of job.models) {
  process.stdout.write(`@@model ${m.name}\n`);
  // Severity 1 (info) logs "Starting program <name>[...]" for every WebGPU program and each node's placement.
  const session = await ort.InferenceSession.create(readFileSync(m.path), {
    executionProviders: ['webgpu'],
    logSeverityLevel: 1,
  });
  const feed = new ort.Tensor('int64', BigInt64Array.from(job.tokens, BigInt), [job.batch, job.length]);
  const out = await session.run({ tokens: feed });
  results.push({ name: m.name, logits: Array.from(out.logits!.data as Float32Array) });
  await session.release();
}
writeFileSync(job.out, JSON.stringify({ results }));
process.stdout.write('@@done\n');
