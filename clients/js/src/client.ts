/**
 * The syncgate device client: one WebSocket to `/ws`, kept open across failures.
 *
 * Owns: the connection state machine (connecting / connected / disconnected), reconnects
 * with backoff, the heartbeat watch, token renewal (`refresh` before `exp`, a new token
 * on 4001), checkpoints per stream in `storage` (resume with `since`), handing events to
 * the handlers once each and in order, batched acks, and rooms rejoined after reconnects.
 *
 * Must never: hand an event over again once its handler resolved, move a checkpoint past
 * an event whose handler failed, take a transient id (`EPOCH.tN`) as a checkpoint, `since`
 * or ack, or reconnect after close().
 */

import { backoffDelay } from "./backoff.js";
import { SyncgateError } from "./errors.js";
import { isHandled, isTransientId, jwtExp } from "./ids.js";
import { type CheckpointStorage, defaultStorage } from "./storage.js";

export type State = "connecting" | "connected" | "disconnected";

/** An event as handed to the `event` handlers. */
export interface SyncEvent<T = unknown> {
  id: string;
  /** `user`, `room:NAME` or `broadcast`. */
  stream: string;
  type: string;
  data: T;
  ts: number;
  /** `high` or `low` when published with that priority; absent for `normal`. */
  priority?: "high" | "normal" | "low";
}

/** The server's first frame on every connection. */
export interface Welcome {
  conn_id: string;
  user_id: string;
  client_id: string | null;
  instance_id: string;
  heartbeat_ms: number;
  resumed: number;
  epoch?: string;
  position?: string;
  partial?: boolean;
  trimmed?: number;
}

export type TokenSource = string | (() => string | Promise<string>);

export interface ClientOptions {
  /** `ws://HOST:PORT/ws` (or wss://). */
  url: string;
  /** A JWT, or a function returning one; the function is called again before `exp` and on 4001. */
  token: TokenSource;
  /** A stable id of this device: it owns a server-side cursor and names the checkpoints. */
  clientId?: string;
  /** Checkpoints (last handled id per stream). Default: localStorage, else memory. */
  storage?: CheckpointStorage;
  minReconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** How long join/leave/publish wait for the connection and the answer. Default 10000. */
  requestTimeoutMs?: number;
  /** Ping interval; default the welcome's `heartbeat_ms`. */
  pingIntervalMs?: number;
  /** A connection that hears nothing for this long is dropped; default 2 x the ping interval. */
  heartbeatTimeoutMs?: number;
  /** Acks are sent at most this long after an event was handled. Default 250. */
  ackDelayMs?: number;
  /** ... or as soon as this many events are handled. Default 50. */
  ackBatchSize?: number;
  /** WebSocket constructor; default globalThis.WebSocket, else the `ws` package (Node). */
  WebSocket?: unknown;
  /** Source of `online`/`offline` events; default `window` where there is one. Pass null to ignore. */
  network?: { addEventListener(t: string, f: () => void): void; removeEventListener(t: string, f: () => void): void } | null;
}

interface ClientEvents {
  event: (ev: SyncEvent) => unknown;
  state: (s: State) => void;
  error: (e: SyncgateError) => void;
  welcome: (w: Welcome) => void;
}

/** The reply to a request frame (`ok: true` plus the op's fields). */
export type Reply = Record<string, unknown> & { ok: true };

type Pending = { resolve: (r: Reply) => void; reject: (e: SyncgateError) => void; timer: ReturnType<typeof setTimeout> };
type Sock = {
  readyState: number;
  send(d: string): void;
  close(code?: number, reason?: string): void;
  terminate?: () => void;
  onopen: unknown;
  onmessage: unknown;
  onclose: unknown;
  onerror: unknown;
};

const OPEN = 1;

export class Client {
  private readonly opts: Required<
    Pick<ClientOptions, "minReconnectDelayMs" | "maxReconnectDelayMs" | "requestTimeoutMs" | "ackDelayMs" | "ackBatchSize">
  > &
    ClientOptions;
  private readonly storage: CheckpointStorage;
  private readonly handlers: { [K in keyof ClientEvents]: Set<ClientEvents[K]> } = {
    event: new Set(),
    state: new Set(),
    error: new Set(),
    welcome: new Set(),
  };
  private ws: Sock | null = null;
  /** Counts sockets; frames of an older socket are ignored. */
  private gen = 0;
  private _state: State = "disconnected";
  private stopped = true;
  private offline = false;
  private attempt = 0;
  private welcomed = false;
  private lastHeard = 0;
  private nextRef = 0;
  private readonly pending = new Map<string, Pending>();
  private readonly rooms = new Set<string>();
  private roomJoins = new Map<string, Promise<Reply>>();
  private queue: SyncEvent[] = [];
  private draining = false;
  private ackId: string | null = null;
  private ackCount = 0;
  private token: { value: string; exp?: number } | null = null;
  private renewToken = false;
  private badCheckpoint = false;
  private readonly timers: { retry?: unknown; ping?: unknown; ack?: unknown; refresh?: unknown } = {};
  private waiters: Array<{ resolve: (w: Welcome) => void; reject: (e: SyncgateError) => void }> = [];
  private _welcome: Welcome | null = null;
  private readonly onOnline = () => {
    this.offline = false;
    if (!this.stopped && !this.ws) {
      this.clearTimer("retry");
      this.attempt = 0;
      void this.open();
    }
  };
  private readonly onOffline = () => {
    this.offline = true;
    if (this.ws) this.drop(1000, "offline");
  };

  constructor(options: ClientOptions) {
    this.opts = {
      minReconnectDelayMs: 500,
      maxReconnectDelayMs: 20000,
      requestTimeoutMs: 10000,
      ackDelayMs: 250,
      ackBatchSize: 50,
      ...options,
    };
    this.storage = options.storage ?? defaultStorage();
  }

  get state(): State {
    return this._state;
  }

  /** The welcome of the current (or last) connection. */
  get welcome(): Welcome | null {
    return this._welcome;
  }

  on<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): this {
    this.handlers[name].add(fn);
    return this;
  }

  off<K extends keyof ClientEvents>(name: K, fn: ClientEvents[K]): this {
    this.handlers[name].delete(fn);
    return this;
  }

  /** Starts the client; resolves on the first welcome. Failed attempts are retried with backoff. */
  connect(): Promise<Welcome> {
    const p = new Promise<Welcome>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.stopped) {
      this.stopped = false;
      const net = this.opts.network === undefined ? defaultNetwork() : this.opts.network;
      net?.addEventListener("online", this.onOnline);
      net?.addEventListener("offline", this.onOffline);
      void this.open();
    } else if (this.welcomed && this._welcome) {
      this.resolveWaiters(this._welcome);
    }
    return p;
  }

  /** Joins a room now and after every reconnect, resuming after the last handled room event. */
  async join(room: string, opts: { since?: string } = {}): Promise<Reply> {
    if (opts.since !== undefined && isTransientId(opts.since)) {
      throw new SyncgateError("invalid_request", `since ${opts.since} is a transient event's id: it is in no stream`);
    }
    if (opts.since !== undefined) await this.storage.setItem(this.key(`room:${room}`), opts.since);
    this.rooms.add(room);
    await this.whenConnected();
    let p = this.roomJoins.get(room);
    if (!p) {
      p = this.sendJoin(room);
      this.roomJoins.set(room, p);
    }
    return p;
  }

  async leave(room: string): Promise<Reply> {
    this.rooms.delete(room);
    this.roomJoins.delete(room);
    await this.storage.removeItem?.(this.key(`room:${room}`));
    // Not connected: there is nothing to leave on the server, and no rejoin will happen.
    if (!this.welcomed) return { ok: true, room };
    return this.request({ op: "leave", room });
  }

  /** Publishes to the user's own stream (their other devices), or to a room. Resolves with the id. */
  async publish(type: string, data: unknown, opts: { room?: string } = {}): Promise<string> {
    const r = await this.request({ op: "publish", type, data, ...(opts.room ? { room: opts.room } : {}) });
    return String(r.id);
  }

  /** Stops for good: flushes the pending ack, closes with 1000, no reconnect. */
  close(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.flushAck();
    for (const t of ["retry", "ping", "ack", "refresh"] as const) this.clearTimer(t);
    const net = this.opts.network === undefined ? defaultNetwork() : this.opts.network;
    net?.removeEventListener("online", this.onOnline);
    net?.removeEventListener("offline", this.onOffline);
    if (this.ws) this.drop(1000, "client closed");
    else this.setState("disconnected");
    const err = new SyncgateError("closed", "the client was closed");
    for (const w of this.waiters.splice(0)) w.reject(err);
  }

  // ---- connection lifecycle ----

  private async open(): Promise<void> {
    if (this.stopped || this.offline || this.ws) return;
    this.setState("connecting");
    const gen = ++this.gen;
    let ws: Sock;
    let url: URL;
    try {
      const token = await this.currentToken();
      url = new URL(this.opts.url);
      url.searchParams.set("token", token);
      if (this.opts.clientId) url.searchParams.set("client_id", this.opts.clientId);
      const since = await this.checkpoint("user");
      if (since) url.searchParams.set("since", since);
      const WS = await webSocketImpl(this.opts.WebSocket);
      if (this.stopped || gen !== this.gen) return;
      ws = new WS(url.toString()) as Sock;
    } catch (e) {
      if (gen !== this.gen) return;
      this.emit("error", new SyncgateError("connect_failed", `cannot connect: ${String(e)}`, { cause: e }));
      this.afterClose(gen, 1006);
      return;
    }
    this.ws = ws;
    this.welcomed = false;
    ws.onmessage = (m: { data: unknown }) => {
      if (gen === this.gen) this.onFrame(String(m.data));
    };
    ws.onclose = (c: { code?: number; reason?: string }) => {
      if (gen === this.gen) this.afterClose(gen, c.code ?? 1006, c.reason);
    };
    ws.onerror = (e: { message?: string }) => {
      // Followed by a close. Node's `ws` tells the HTTP status of a refused upgrade (browsers
      // do not): a 400 with `since` means the checkpoint is unusable (another store epoch).
      if (gen === this.gen && /server response: 400/.test(String(e?.message)) && url.searchParams.has("since")) {
        this.badCheckpoint = true;
      }
    };
  }

  /** Drops the current socket at once (its late events are ignored) and handles the close. */
  private drop(code: number, reason: string): void {
    const ws = this.ws;
    if (!ws) return;
    const gen = this.gen;
    try {
      ws.close(code, reason);
    } catch {
      ws.terminate?.();
    }
    this.afterClose(gen, code, reason);
  }

  private afterClose(gen: number, code: number, reason?: string): void {
    if (gen !== this.gen) return;
    this.gen++; // frames or closes of this socket arriving later are ignored
    const wasWelcomed = this.welcomed;
    this.ws = null;
    this.welcomed = false;
    this.queue = [];
    this.roomJoins = new Map();
    this.clearTimer("ping");
    this.clearTimer("refresh");
    const err = new SyncgateError("disconnected", `connection closed (${code}${reason ? ` ${reason}` : ""})`, { closeCode: code });
    for (const [ref, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(err);
      this.pending.delete(ref);
    }
    this.setState("disconnected");
    if (this.stopped || this.offline) return;
    if (typeof this.opts.token === "function" && (code === 4001 || !wasWelcomed)) this.renewToken = true;
    if (this.badCheckpoint) {
      this.badCheckpoint = false;
      // Resume from the server's cursor for this client id instead.
      const key = this.key("user");
      void (this.storage.removeItem ? this.storage.removeItem(key) : this.storage.setItem(key, ""));
    }
    let delay: number;
    if (code === 1001 || code === 4001) {
      delay = 0; // node shutting down: reconnect elsewhere at once; token expired: new token now
      this.attempt = 0;
    } else {
      delay = backoffDelay(this.attempt++, this.opts.minReconnectDelayMs, this.opts.maxReconnectDelayMs);
    }
    this.timers.retry = setTimeout(() => void this.open(), delay);
  }

  private onFrame(text: string): void {
    this.lastHeard = Date.now();
    let f: Record<string, unknown>;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    switch (f.op) {
      case "welcome":
        void this.onWelcome(f as unknown as Welcome);
        return;
      case "event":
        this.queue.push(f as unknown as SyncEvent);
        void this.drain();
        return;
      case "reply":
      case "pong":
      case "error": {
        const ref = typeof f.ref === "string" ? f.ref : undefined;
        const p = ref ? this.pending.get(ref) : undefined;
        if (!p) {
          if (f.op === "error") this.emit("error", new SyncgateError(f.code as never, String(f.message)));
          return;
        }
        this.pending.delete(ref!);
        clearTimeout(p.timer);
        if (f.op === "error") p.reject(new SyncgateError(f.code as never, String(f.message)));
        else p.resolve(f as Reply);
        return;
      }
    }
  }

  private async onWelcome(w: Welcome): Promise<void> {
    const gen = this.gen;
    // The welcome's position is the first checkpoint: a device that reconnects before any
    // event arrived resumes from it rather than from wherever the stream is then.
    if (w.position && !(await this.checkpoint("user"))) {
      await this.storage.setItem(this.key("user"), w.position);
    }
    if (gen !== this.gen) return;
    this._welcome = w;
    this.welcomed = true;
    this.attempt = 0;
    this.setState("connected");
    this.emit("welcome", w);
    this.startHeartbeat(w.heartbeat_ms);
    this.scheduleRefresh();
    this.flushAck();
    for (const room of this.rooms) {
      const p = this.sendJoin(room);
      this.roomJoins.set(room, p);
      p.catch((e: SyncgateError) => {
        if (e.code !== "disconnected") this.emit("error", e);
      });
    }
    this.resolveWaiters(w);
  }

  private resolveWaiters(w: Welcome): void {
    for (const x of this.waiters.splice(0)) x.resolve(w);
  }

  private startHeartbeat(serverMs: number): void {
    const every = this.opts.pingIntervalMs ?? (serverMs > 0 ? serverMs : 30000);
    const deadAfter = this.opts.heartbeatTimeoutMs ?? 2 * every;
    this.clearTimer("ping");
    this.timers.ping = setInterval(() => {
      if (Date.now() - this.lastHeard > deadAfter) this.drop(4000, "heartbeat timeout");
      else this.send({ op: "ping" });
    }, Math.min(every, deadAfter / 2));
  }

  // ---- events ----

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queue.length > 0) {
        const gen = this.gen;
        const ev = this.queue.shift()!;
        // A transient event (`persist: false`) is handed over but is in no stream: it is not
        // skipped, checkpointed nor acked, and the stream's checkpoint stays where it was.
        const persisted = (ev.stream === "user" || ev.stream.startsWith("room:")) && !isTransientId(ev.id);
        const key = this.key(ev.stream);
        if (persisted && isHandled(ev.id, await this.checkpoint(ev.stream))) continue;
        try {
          await Promise.all([...this.handlers.event].map((h) => h(ev)));
        } catch (e) {
          // Not acked, checkpoint unchanged: the event comes again after a reconnect.
          this.emit("error", new SyncgateError("handler_failed", `event handler failed on ${ev.id}: ${String(e)}`, { eventId: ev.id, cause: e }));
          if (gen === this.gen) this.drop(4000, "handler failed");
          continue;
        }
        if (!persisted) continue;
        await this.storage.setItem(key, ev.id);
        if (ev.stream === "user" && this.opts.clientId) this.queueAck(ev.id);
      }
    } finally {
      this.draining = false;
    }
  }

  private queueAck(id: string): void {
    this.ackId = id;
    if (++this.ackCount >= this.opts.ackBatchSize) this.flushAck();
    else if (this.timers.ack === undefined) this.timers.ack = setTimeout(() => this.flushAck(), this.opts.ackDelayMs);
  }

  private flushAck(): void {
    this.clearTimer("ack");
    if (this.ackId && this.welcomed && this.send({ op: "ack", id: this.ackId })) {
      this.ackId = null;
      this.ackCount = 0;
    }
  }

  // ---- requests ----

  private send(frame: object): boolean {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  private async request(frame: Record<string, unknown>): Promise<Reply> {
    await this.whenConnected();
    const ref = `c${++this.nextRef}`;
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(ref);
        reject(new SyncgateError("timeout", `no answer to ${String(frame.op)} in ${this.opts.requestTimeoutMs} ms`));
      }, this.opts.requestTimeoutMs);
      this.pending.set(ref, { resolve, reject, timer });
      if (!this.send({ ...frame, ref })) {
        clearTimeout(timer);
        this.pending.delete(ref);
        reject(new SyncgateError("disconnected", "not connected"));
      }
    });
  }

  private async sendJoin(room: string): Promise<Reply> {
    const key = this.key(`room:${room}`);
    const since = await this.checkpoint(`room:${room}`);
    const r = await this.request({ op: "join", room, ...(since ? { since } : {}) });
    // The join's position is the room's first checkpoint (same reason as the welcome's).
    if (typeof r.position === "string" && !(await this.checkpoint(`room:${room}`))) await this.storage.setItem(key, r.position);
    return r;
  }

  private whenConnected(): Promise<void> {
    if (this.welcomed) return Promise.resolve();
    if (this.stopped) return Promise.reject(new SyncgateError("closed", "the client is not started; call connect()"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== entry);
        reject(new SyncgateError("timeout", `not connected within ${this.opts.requestTimeoutMs} ms`));
      }, this.opts.requestTimeoutMs);
      const entry = {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (e: SyncgateError) => (clearTimeout(timer), reject(e)),
      };
      this.waiters.push(entry);
    });
  }

  // ---- tokens ----

  private async currentToken(): Promise<string> {
    const src = this.opts.token;
    if (typeof src === "string") return src;
    const expired = this.token?.exp !== undefined && this.token.exp * 1000 <= Date.now();
    if (!this.token || this.renewToken || expired) {
      const value = await src();
      this.token = { value, exp: jwtExp(value) };
      this.renewToken = false;
    }
    return this.token.value;
  }

  /** Renews a function-sourced token in place 60 s before `exp` (at 80% of the rest for short ones). */
  private scheduleRefresh(): void {
    this.clearTimer("refresh");
    const src = this.opts.token;
    const exp = typeof src === "function" ? this.token?.exp : undefined;
    if (typeof src !== "function" || exp === undefined) return;
    const left = exp * 1000 - Date.now();
    const delay = Math.max(0, Math.max(left * 0.8, left - 60000));
    this.timers.refresh = setTimeout(async () => {
      try {
        const value = await src();
        const r = await this.request({ op: "refresh", token: value });
        this.token = { value, exp: typeof r.exp === "number" ? r.exp : jwtExp(value) };
        this.scheduleRefresh();
      } catch (e) {
        // The server closes with 4001 at expiry; the reconnect then asks for a new token.
        this.emit("error", e instanceof SyncgateError ? e : new SyncgateError("unauthorized", `token refresh failed: ${String(e)}`, { cause: e }));
      }
    }, Math.min(delay, 2 ** 31 - 1));
  }

  // ---- helpers ----

  private key(stream: string): string {
    return `syncgate:${this.opts.clientId ?? "-"}:${stream}`;
  }

  /** The stream's checkpoint; a transient id (earlier versions of this SDK saved them) counts as none. */
  private async checkpoint(stream: string): Promise<string | null> {
    const id = await this.storage.getItem(this.key(stream));
    return id && !isTransientId(id) ? id : null;
  }

  private setState(s: State): void {
    if (s === this._state) return;
    this._state = s;
    this.emit("state", s);
  }

  private emit<K extends "state" | "error" | "welcome">(name: K, arg: Parameters<ClientEvents[K]>[0]): void {
    for (const h of this.handlers[name]) {
      try {
        (h as (a: unknown) => void)(arg);
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  private clearTimer(name: keyof Client["timers"]): void {
    const t = this.timers[name];
    if (t !== undefined) {
      clearTimeout(t as ReturnType<typeof setTimeout>);
      clearInterval(t as ReturnType<typeof setInterval>);
      this.timers[name] = undefined;
    }
  }
}

function defaultNetwork(): ClientOptions["network"] {
  const w = (globalThis as { window?: ClientOptions["network"] }).window;
  return w && typeof w.addEventListener === "function" ? w : null;
}

let cachedWs: unknown;

/** The WebSocket constructor: given, global (browsers, Node 22+), else the `ws` package. */
async function webSocketImpl(given: unknown): Promise<new (url: string) => unknown> {
  if (given) return given as new (url: string) => unknown;
  const g = (globalThis as { WebSocket?: unknown }).WebSocket;
  if (g) return g as new (url: string) => unknown;
  if (!cachedWs) {
    const name = "ws"; // not resolved by bundlers: browsers never get here
    const mod = (await import(/* @vite-ignore */ name)) as { WebSocket?: unknown; default?: unknown };
    cachedWs = mod.WebSocket ?? mod.default;
  }
  return cachedWs as new (url: string) => unknown;
}
