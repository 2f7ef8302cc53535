// Test harness: the real syncgate binary (target/debug/syncgate) as a child process on a
// free loopback port with its own data dir, HS256 tokens minted with node:crypto, and a
// polling wait with a generous deadline instead of timing assertions.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.JS_SDK_SYNCGATE_BIN ?? resolve(here, "../../../target/debug/syncgate");
export const SECRET = "js-sdk-test-secret-0123456789abcdef";
export const API_KEY = "js-sdk-test-api-key-0123456789";

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const b64url = (b) => Buffer.from(b).toString("base64url");

/** An HS256 JWT for `sub`, valid `ttlS` seconds. */
export function mint(sub, { ttlS = 3600, rooms = [], secret = SECRET } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, exp: now + ttlS, iat: now, rooms }));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

export async function waitFor(cond, what = "condition", ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A syncgate node; `restart()` keeps port and data dir. */
export class Server {
  static async start(env = {}) {
    const s = new Server(await freePort(), mkdtempSync(join(tmpdir(), "syncgate-js-")), env);
    await s.spawn();
    return s;
  }
  constructor(port, dir, env) {
    this.port = port;
    this.dir = dir;
    this.env = env;
    this.base = `http://127.0.0.1:${port}`;
    this.wsUrl = `ws://127.0.0.1:${port}/ws`;
  }
  async spawn() {
    this.child = spawn(BIN, ["serve"], {
      env: {
        // The server refuses unknown SYNCGATE_* variables: pass on none of the caller's.
        ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SYNCGATE_"))),
        SYNCGATE_LISTEN: `127.0.0.1:${this.port}`,
        SYNCGATE_DATA_DIR: this.dir,
        SYNCGATE_JWT_SECRET: SECRET,
        SYNCGATE_API_KEY: API_KEY,
        SYNCGATE_LOG: "warn",
        SYNCGATE_RATE_LIMITS__WS_CONNECT_PER_USER: "off",
        SYNCGATE_RATE_LIMITS__API_PER_USER: "off",
        ...this.env,
      },
      stdio: ["ignore", "ignore", "inherit"],
    });
    this.exited = new Promise((r) => this.child.once("exit", r));
    await waitFor(async () => {
      if (this.child.exitCode !== null) throw new Error(`syncgate exited with ${this.child.exitCode} (is ${BIN} built?)`);
      try {
        return (await fetch(`${this.base}/ready`)).status === 200;
      } catch {
        return false;
      }
    }, "server ready");
  }
  async kill(signal = "SIGKILL") {
    this.child.kill(signal);
    await this.exited;
  }
  async restart() {
    await this.kill("SIGKILL");
    await this.spawn();
  }
  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) await this.kill("SIGKILL");
    rmSync(this.dir, { recursive: true, force: true });
  }
  async api(method, path, body) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }
  async publish(user, type, data) {
    const r = await this.api("POST", "/api/v1/events", { user_id: user, type, data });
    if (r.status !== 202) throw new Error(`publish answered ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.id;
  }
}
