/**
 * Where the client keeps its checkpoints (the last handled event id per stream).
 *
 * Any object with getItem/setItem (and optionally removeItem) works, sync or async:
 * localStorage in browsers (the default there), MemoryStorage elsewhere.
 */

export interface CheckpointStorage {
  getItem(key: string): string | null | undefined | Promise<string | null | undefined>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem?(key: string): void | Promise<void>;
}

/** A Map behind the storage interface; checkpoints last as long as the process. */
export class MemoryStorage implements CheckpointStorage {
  private readonly map = new Map<string, string>();
  getItem(key: string): string | null {
    return this.map.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.map.set(key, value);
  }
  removeItem(key: string): void {
    this.map.delete(key);
  }
}

/** localStorage when the environment has a usable one, else a MemoryStorage. */
export function defaultStorage(): CheckpointStorage {
  try {
    const ls = (globalThis as { localStorage?: CheckpointStorage }).localStorage;
    if (ls && typeof ls.getItem === "function") {
      ls.getItem("syncgate:probe");
      return ls;
    }
  } catch {
    // Access to localStorage can throw (privacy settings, opaque origins).
  }
  return new MemoryStorage();
}
