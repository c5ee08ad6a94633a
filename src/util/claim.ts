/**
 * Claims: which live process owns a piece of shared on-disk work (a study cell, a training run folder, a
 * read-modify-write of study.json). Built on proper-lockfile: the claim is a `<path>.lock` directory created
 * atomically (mkdir) whose mtime its holder refreshes every few seconds; a claim not refreshed for `stale`
 * milliseconds belongs to a dead (or frozen) process and is taken over. So a cell is worked on by exactly one live
 * process, and work left by a killed one is recovered without anyone deleting what a live process still owns.
 *
 * The holder refreshes from a timer, so a synchronous stretch longer than `stale` (one very long evaluation
 * pass) can let another process take the claim over; the first then finds its claim "compromised" and stops
 * with an error at its next check() instead of writing beside the new owner.
 */
import { dirname } from 'node:path';
import lockfile from 'proper-lockfile';
import { HypeError } from '../errors.ts';
import { describeFsError, makeDirs } from './fs-safe.ts';

/**
 * How long a claim may go unrefreshed before it counts as abandoned. HYPE_CLAIM_STALE_MS overrides it (tests of
 * dead-process recovery use a few seconds; proper-lockfile's minimum is 2 s).
 */
export function claimStaleMs(): number {
  const env = Number(process.env.HYPE_CLAIM_STALE_MS);
  return Number.isFinite(env) && env >= 2000 ? env : 60_000;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Claim {
  private lost: Error | null = null;
  private released = false;

  private constructor(
    readonly path: string,
    readonly what: string,
    private readonly unlock: () => Promise<void>,
  ) {}

  /** The claim of `path` (its lock is `<path>.lock`), or null while another live process holds it. */
  static async tryTake(path: string, what: string, staleMs = claimStaleMs()): Promise<Claim | null> {
    makeDirs(dirname(path), `the folder holding ${what} '${path}'`);
    let claim: Claim | null = null;
    try {
      const unlock = await lockfile.lock(path, {
        realpath: false, // the claimed path need not exist yet (a run folder about to be created)
        stale: staleMs,
        retries: 0,
        onCompromised: (err) => {
          if (claim) claim.lost = err;
        },
      });
      claim = new Claim(path, what, unlock);
      return claim;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ELOCKED') return null;
      throw new HypeError(
        'io',
        `cannot lock ${what} '${path}' (creating '${path}.lock': ${describeFsError(err)}); choose a folder you can write to`,
      );
    }
  }

  /**
   * The claim of `path`, waiting while another live process holds it (its work is progressing; a dead holder's
   * claim falls free after claimStaleMs()). `onWait` is called once, when the wait begins.
   */
  static async take(path: string, what: string, onWait?: () => void, pollMs = 1000): Promise<Claim> {
    let waited = false;
    for (;;) {
      const claim = await Claim.tryTake(path, what);
      if (claim) return claim;
      if (!waited) onWait?.();
      waited = true;
      await sleep(pollMs);
    }
  }

  /**
   * The claim of `path`, waiting at most `waitMs` for it (long enough for a killed holder's claim to go stale);
   * null if a live process still holds it then.
   */
  static async takeWithin(
    path: string,
    what: string,
    waitMs: number,
    staleMs: number,
    onWait?: () => void,
  ): Promise<Claim | null> {
    const deadline = Date.now() + waitMs;
    for (let waited = false; ; waited = true) {
      const claim = await Claim.tryTake(path, what, staleMs);
      if (claim || Date.now() > deadline) return claim;
      if (!waited) onWait?.();
      await sleep(250);
    }
  }

  /** True while this process still holds the claim. */
  get held(): boolean {
    return !this.released && this.lost === null;
  }

  /** Refuses to go on once the claim was lost to another process (we looked dead for longer than `stale`). */
  check(): void {
    if (this.lost) {
      throw new HypeError(
        'io',
        `lost the claim on ${this.what} '${this.path}' to another process (this one did not refresh it for ` +
          `${claimStaleMs() / 1000} s); that process carries on with it — rerun to pick up what is left`,
      );
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (this.lost) return;
    try {
      await this.unlock();
    } catch {
      // Already released or taken over: nothing of ours left to remove.
    }
  }
}

/** Runs `f` holding the claim of `path` (waiting for it if needed), and releases it however `f` ends. */
export async function withClaim<T>(
  path: string,
  what: string,
  f: (claim: Claim) => Promise<T> | T,
  onWait?: () => void,
): Promise<T> {
  const claim = await Claim.take(path, what, onWait);
  try {
    return await f(claim);
  } finally {
    await claim.release();
  }
}
