/** The browser bundle's exports (globalThis.Syncgate): the device client only. */
export { Client } from "./client.js";
export type { ClientOptions, State, SyncEvent, Welcome, Reply, TokenSource } from "./client.js";
export { SyncgateError } from "./errors.js";
export type { ErrorCode } from "./errors.js";
export { MemoryStorage } from "./storage.js";
export { backoffDelay } from "./backoff.js";
