/**
 * File-system steps that fail with one clear HypeError naming the path and the reason, never a Node stack trace,
 * and never loop: Node 20's mkdirSync({recursive: true}) spins forever on some paths (under /proc), so folders
 * are created here one component at a time, each syscall tried once.
 */
import { accessSync, constants, mkdirSync, readFileSync, statSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { HypeError } from '../errors.ts';

const REASONS: Record<string, string> = {
  ENOENT: 'no such file or folder',
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  ENOTDIR: 'a part of the path is a file, not a folder',
  EISDIR: 'it is a folder, not a file',
  EEXIST: 'it already exists',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  ENAMETOOLONG: 'the name is too long',
  ELOOP: 'too many symbolic links',
  EMFILE: 'too many open files',
  EBUSY: 'the resource is busy',
};

/** A file-system error as "permission denied (EACCES)": the reason without Node's stack or syscall prose. */
export function describeFsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string' && REASONS[e.code]) return `${REASONS[e.code]} (${e.code})`;
  return e instanceof Error ? e.message : String(err);
}

/** True for a Node file-system error (it has an errno code such as ENOENT). */
export function isFsError(err: unknown): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string' && 'syscall' in err;
}

function statOrNull(path: string): Stats | null {
  try {
    return statSync(path);
  } catch (err) {
    // ENOTDIR: a parent is a file; the walk up the path finds and names it.
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw err;
  }
}

/**
 * Creates folder `path` and its missing parents (mkdir -p) with at most one mkdir per component; refuses a path
 * that is empty, that is (or lies under) a file, or that cannot be created, naming `what` and the reason.
 */
export function makeDirs(path: string, what: string): void {
  checkFolderPath(path, what);
  const missing: string[] = [];
  try {
    for (let p = resolve(path); !statOrNull(p) && dirname(p) !== p; p = dirname(p)) missing.push(p);
    for (const p of missing.reverse()) {
      try {
        mkdirSync(p);
      } catch (err) {
        // Another process may have created it meanwhile; anything else is final.
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !statOrNull(p)?.isDirectory()) throw err;
      }
    }
  } catch (err) {
    if (err instanceof HypeError) throw err;
    throw new HypeError('io', `cannot create ${what} '${path}' (${describeFsError(err)}); choose another folder`);
  }
}

/**
 * Refuses a folder path that can never work, without creating anything: empty, a file, or under a file. (Whether
 * it can be created is only known by trying: makeDirs.)
 */
export function checkFolderPath(path: string, what: string): void {
  if (typeof path !== 'string' || path.trim() === '') {
    throw new HypeError('argument', `${what}: the path is empty; pass a folder name`);
  }
  const full = resolve(path);
  for (let p = full; ; p = dirname(p)) {
    let st: Stats | null;
    try {
      st = statOrNull(p);
    } catch (err) {
      throw new HypeError('io', `cannot use ${what} '${path}' (${describeFsError(err)}); choose another folder`);
    }
    if (st) {
      if (!st.isDirectory()) {
        throw new HypeError(
          'io',
          p === full
            ? `${what} '${path}' is a file, not a folder; pass a folder path`
            : `${what} '${path}' lies under '${p}', which is a file, not a folder; pass a folder path`,
        );
      }
      return;
    }
    if (dirname(p) === p) return;
  }
}

/** makeDirs, then refuses a folder this process cannot write into. */
export function makeWritableDir(path: string, what: string): void {
  makeDirs(path, what);
  try {
    accessSync(path, constants.W_OK | constants.X_OK);
  } catch (err) {
    throw new HypeError('io', `cannot write into ${what} '${path}' (${describeFsError(err)}); choose another folder`);
  }
}

/** Largest JSON file read whole (configs, cells, run records are kilobytes). */
const MAX_JSON_BYTES = 64 * 2 ** 20;

/**
 * Parses a JSON file; a missing, unreadable, malformed, non-regular (/dev/zero would be read forever) or absurdly
 * large one is one HypeError saying which file and `fix`.
 */
export function readJsonFile(path: string, what: string, fix: string): unknown {
  let text: string;
  try {
    const st = statSync(path);
    if (st.isDirectory()) throw new HypeError('io', `${what} '${path}' is a folder, not a file; ${fix}`);
    if (!st.isFile()) throw new HypeError('io', `${what} '${path}' is not a regular file (a device or pipe); ${fix}`);
    if (st.size > MAX_JSON_BYTES) {
      throw new HypeError('io', `${what} '${path}' has ${st.size} bytes, more than any JSON file hype reads; ${fix}`);
    }
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof HypeError) throw err;
    throw new HypeError('io', `cannot read ${what} '${path}' (${describeFsError(err)}); ${fix}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HypeError('io', `${what} '${path}' is not valid JSON (${(err as Error).message}); ${fix}`);
  }
}
