/** The HypeError `fn` throws (failing the test if it throws anything else or nothing), checked for `code`. */
import { expect } from 'vitest';
import { HypeError, type HypeErrorCode } from '../../src/errors.ts';

export function refusal(fn: () => unknown, code: HypeErrorCode = 'argument'): HypeError {
  try {
    fn();
  } catch (e) {
    expect(e, `expected a HypeError, got ${String(e)}`).toBeInstanceOf(HypeError);
    expect((e as HypeError).code, (e as HypeError).message).toBe(code);
    return e as HypeError;
  }
  throw new Error('expected a HypeError, got none');
}
