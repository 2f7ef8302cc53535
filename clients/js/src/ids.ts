/**
 * Event ids, as far as the SDK must read them: a persisted event's id is
 * `EPOCH.TAG.SEQ` (SEQ grows within a stream); transient ids (`EPOCH.tN`) are in no stream.
 * Used only to tell whether an id was already handled and whether it can be a checkpoint;
 * ids are still sent back as given.
 */

export interface StreamPosition {
  /** `EPOCH.TAG`: which stream (and store epoch) the id belongs to. */
  stream: string;
  seq: number;
}

export function parseId(id: string): StreamPosition | null {
  const parts = id.split(".");
  if (parts.length !== 3) return null;
  const seq = Number(parts[2]);
  if (!Number.isSafeInteger(seq) || seq < 0) return null;
  return { stream: `${parts[0]}.${parts[1]}`, seq };
}

/**
 * Whether `id` is a transient event's (`persist: false`, broadcasts): `EPOCH.tN`, two
 * dot-separated parts, the second starting with `t` (docs/protocol.md, "Event ids"). Such an
 * id is in no stream: the server refuses it as `since` and in `ack`.
 */
export function isTransientId(id: string): boolean {
  const parts = id.split(".");
  return parts.length === 2 && parts[1].startsWith("t");
}

/** Whether `id` is at or before `checkpoint` in the same stream. */
export function isHandled(id: string, checkpoint: string | null | undefined): boolean {
  if (!checkpoint) return false;
  const a = parseId(id);
  const b = parseId(checkpoint);
  return !!a && !!b && a.stream === b.stream && a.seq <= b.seq;
}

/** Unix seconds of a JWT's `exp`, or undefined when it has none or cannot be read. */
export function jwtExp(token: string): number | undefined {
  try {
    const part = token.split(".")[1];
    if (!part) return undefined;
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "===".slice((b64.length + 3) % 4)));
    return typeof json.exp === "number" ? json.exp : undefined;
  } catch {
    return undefined;
  }
}
