/**
 * One error type for every refusal the library makes. Messages name the problem and the fix; `code` lets callers
 * and tests tell refusals apart without parsing prose.
 */
export class HypeError extends Error {
  constructor(
    readonly code: HypeErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'HypeError';
  }
}

export type HypeErrorCode =
  | 'shape' // tensor shapes do not fit together
  | 'non-finite' // NaN or Inf where a finite number is required
  | 'overflow' // a parameter choice would overflow the chosen dtype
  | 'argument' // a bad option, flag or parameter value
  | 'length' // a sequence longer than an encoding or model supports
  | 'io' // missing, empty or unreadable file
  | 'checkpoint' // corrupt or mismatched checkpoint
  | 'memory' // an array larger than one typed array can hold, or than the memory available
  | 'native' // the native addon is missing or refused the call
  | 'dependency' // an optional package (vega, protobufjs) is not installed
  | 'device'; // no GPU adapter, a shape beyond the adapter's limits, or a lost device

/** Throws a `HypeError` with `code` unless `ok`. */
export function check(ok: boolean, code: HypeErrorCode, message: string | (() => string)): asserts ok {
  if (!ok) throw new HypeError(code, typeof message === 'string' ? message : message());
}

/** Refuses the first NaN/Inf in `data`, naming `what` and the flat index where it sits. */
export function checkFinite(data: ArrayLike<number>, what: string): void {
  for (let i = 0; i < data.length; i++) {
    const x = data[i]!;
    if (!Number.isFinite(x)) {
      throw new HypeError(
        'non-finite',
        `${what} contains ${x} at flat index ${i}; every value must be finite (check the inputs or the learning rate)`,
      );
    }
  }
}
