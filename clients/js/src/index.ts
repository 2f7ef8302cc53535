/**
 * syncgate's JavaScript SDK: `Client` (a device's reconnecting, resuming WebSocket client,
 * browsers and Node 20+) and `Api` (the typed server API client for Node backends).
 */
export * from "./browser.js";
export { Api } from "./api.js";
export type { ApiOptions, paths, components } from "./api.js";
export type { CheckpointStorage } from "./storage.js";
