/**
 * A synthetic sequence task for byte-level language models: the model is trained on `bytes` as ordinary next-byte
 * prediction, and graded only where the next byte is determined by the context (`graded` positions).
 */
export interface TaskSequence {
  /** The sequence as bytes (each task uses printable ASCII so sequences are readable when printed). */
  bytes: Uint8Array;
  /**
   * Positions t whose NEXT byte, bytes[t + 1], is determined by bytes[0..t]; a model is correct at t when its
   * prediction at t equals bytes[t + 1].
   */
  graded: Int32Array;
}

export function asciiBytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
