// Browser tests of the admin web UI: headless Debian chromium (CHROMIUM_PATH) driven by
// playwright-core, against a real target/debug/syncgate (SYNCGATE_BIN) on a free loopback port.
// Devices are real WebSockets opened from a second browser page. Screenshots of every page go
// to target/admin-screenshots/ (paths printed).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer as createHttpServer } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.SYNCGATE_BIN;
const SHOTS = resolve(process.env.SCREENSHOT_DIR || "../../../../target/admin-screenshots");
const SECRET = "browser-test-jwt-secret-0123456789abcdef";
const API_KEY = "browser-test-api-key";
const ADMIN_KEY = "browser-test-admin-key-0123456789";
const DEADLINE = 15000;

let server, base, port, dataDir, browser, ctx, page, devices;
const requested = [];
// The webhook endpoint: refuses with `status` (400: permanent, so jobs are dead-lettered at
// once) and records the bodies it accepted.
const hook = { status: 400, received: [], server: null };

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer().listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => ok(p)); });
    s.on("error", fail);
  });
}

function b64url(v) { return Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url"); }

function token(sub, extra = {}) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url({ sub, exp: Math.floor(Date.now() / 1000) + 3600, rooms: ["lobby"], ...extra });
  const sig = createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

async function apiCall(method, path, body) {
  const r = await fetch(base + path, {
    method, headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: r.status, data: await r.json().catch(() => null) };
}

async function until(what, fn) {
  const end = Date.now() + DEADLINE;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function shot(name) {
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** Opens a page from the navigation and waits until it is shown (its link is current). */
async function go(link) {
  await page.getByRole("link", { name: link, exact: true }).click();
  await page.locator('nav a[aria-current="page"]', { hasText: link }).waitFor();
}

/** Opens a device WebSocket from the devices page; its close code lands in window.codes[name]. */
async function connect(name, user, query, extra) {
  const url = `ws://127.0.0.1:${port}/ws?token=${token(user, extra)}&${query}`;
  await devices.evaluate(([name, url]) => new Promise((ok, fail) => {
    window.sockets ||= {}; window.codes ||= {}; window.frames ||= {};
    const ws = new WebSocket(url);
    window.sockets[name] = ws;
    window.frames[name] = [];
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      window.frames[name].push(f);
      if (f.op === "welcome") ok();
    };
    ws.onclose = (e) => { window.codes[name] = e.code; fail(new Error(`closed ${e.code}`)); };
  }), [name, url]);
}

before(async () => {
  assert.ok(BIN, "SYNCGATE_BIN must point at target/debug/syncgate");
  mkdirSync(SHOTS, { recursive: true });
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  dataDir = mkdtempSync(join(tmpdir(), "sg-admin-ui-"));
  hook.server = createHttpServer((req, res) => {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      if (hook.status === 200) hook.received.push(JSON.parse(body));
      res.writeHead(hook.status).end();
    });
  });
  await new Promise((ok) => hook.server.listen(0, "127.0.0.1", ok));
  const config = join(dataDir, "syncgate.yaml");
  writeFileSync(config, [
    "webhooks:", "  endpoints:", "    - name: app", `      url: http://127.0.0.1:${hook.server.address().port}/hooks`,
    `      secret: whsec_${Buffer.alloc(32, 7).toString("base64")}`, "      events: [connect, disconnect]", "",
  ].join("\n"));
  server = spawn(BIN, ["serve", "--config", config], {
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SYNCGATE_"))), SYNCGATE_LISTEN: `127.0.0.1:${port}`, SYNCGATE_DATA_DIR: dataDir, SYNCGATE_JWT_SECRET: SECRET,
      SYNCGATE_API_KEY: API_KEY, SYNCGATE_ADMIN__KEYS: ADMIN_KEY, SYNCGATE_LOG: "warn",
      SYNCGATE_SERVER__TRUSTED_PROXIES: "127.0.0.0/8",
    },
    stdio: ["ignore", "inherit", "inherit"],
  });
  let exited = null;
  server.on("exit", (code) => { exited = code; });
  await until("the server", () => {
    if (exited !== null) throw new Error(`syncgate exited with ${exited} before it was ready`);
    return fetch(`${base}/ready`).then((r) => r.ok, () => false);
  });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH, args: ["--no-sandbox"] });
  ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  page = await ctx.newPage();
  page.on("request", (r) => requested.push(r.url()));
  devices = await ctx.newPage();
  await devices.goto(`${base}/health`);
  await connect("phone", "alice", "client_id=phone&app_version=2.4.1", { meta: { region: "eu", plan: "pro" } });
  await connect("tablet", "alice", "client_id=tablet&app_version=2.3.0", { meta: { region: "eu" } });
  await connect("laptop", "bob", "client_id=laptop&app_version=2.4.1", { meta: { region: "us" } });
  await devices.evaluate(() => window.sockets.laptop.send(JSON.stringify({ op: "join", room: "lobby" })));
  for (let i = 1; i <= 3; i++) await apiCall("POST", "/api/v1/events", { user_id: "alice", type: "note", data: { n: i } });
  await apiCall("POST", "/api/v1/rooms/lobby/events", { type: "chat", data: { text: "hi all" } });
});

after(async () => {
  await browser?.close();
  hook.server?.close();
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("sign-in refuses a wrong key and accepts the admin key", async () => {
  await page.goto(`${base}/admin`);
  const key = page.getByLabel("Admin key");
  assert.equal(await key.getAttribute("type"), "password");
  await key.fill("not-the-admin-key");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "wrong admin key" }).waitFor();
  assert.equal(await page.getByRole("link", { name: "Connections" }).isVisible(), false);
  await shot("signin");
  await key.fill(ADMIN_KEY);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Overview" }).waitFor();
  const cookies = await ctx.cookies();
  const c = cookies.find((c) => c.name === "sg_admin");
  assert.ok(c && c.httpOnly && c.sameSite === "Strict", JSON.stringify(cookies));
});

test("overview shows the node's live figures and a chart", async () => {
  await go("Overview");
  const figures = () => Promise.all(["#ov-connections", "#ov-users", "#ov-rooms"].map((id) => page.locator(id).textContent()));
  await until("3 connections, 2 users, 1 room on the overview", async () => (await figures()).join() === "3,2,1");
  await page.locator(".chart canvas").waitFor();
  const nodes = page.getByRole("table", { name: "Nodes" });
  await nodes.getByText("(this node)").waitFor();
  // The card and the table are filled by separate requests: wait for the card too.
  await until("the nodes card says 1", async () => (await page.locator("#ov-nodes-count").textContent()) === "1");
  assert.equal(await nodes.locator("tbody tr").count(), 1);
  assert.equal(await nodes.locator("tbody tr td").nth(1).textContent(), "3", "the node's connections");
  // Live: a publish moves the messages-out figure without a reload.
  await until("messages out per second above 0", async () => {
    await apiCall("POST", "/api/v1/events", { user_id: "bob", type: "tick", data: {}, persist: false });
    return Number((await page.locator("#ov-out").textContent()).replace(/,/g, "")) > 0;
  });
  // Steady traffic for a few seconds, so the chart (and the screenshot) show a live series.
  let flowing = true;
  const traffic = (async () => {
    for (let i = 0; flowing; i++) {
      const to = i % 3 === 0 ? "/api/v1/events/broadcast" : "/api/v1/events";
      await apiCall("POST", to, { user_id: i % 3 === 0 ? undefined : "bob", type: "tick", data: { i }, persist: i % 3 === 0 ? undefined : false });
      await new Promise((r) => setTimeout(r, 20 + 30 * Math.abs(Math.sin(i / 25))));
    }
  })();
  await page.waitForTimeout(12000);
  await shot("overview");
  flowing = false;
  await traffic;
});

test("connections page shows metadata and Disconnect closes that device with 4009", async () => {
  await go("Connections");
  const search = page.getByRole("searchbox", { name: "User id" });
  await search.fill("alice");
  await search.press("Enter");
  const table = page.getByRole("table", { name: "Connections" });
  await table.getByText("2.4.1").waitFor();
  await table.getByText('"region":"eu"').first().waitFor();
  assert.equal(await table.locator("tbody tr").count(), 2);
  assert.ok(await table.getByText("127.0.0.1").first().isVisible());
  await shot("connections");
  await page.getByRole("button", { name: "Disconnect phone" }).click();
  const code = await until("the phone to close", () => devices.evaluate(() => window.codes.phone));
  assert.equal(code, 4009);
  assert.equal(await devices.evaluate(() => window.sockets.tablet.readyState), 1, "the other device stays connected");
  await until("one row left", async () => (await table.locator("tbody tr").count()) === 1);
});

test("stream page shows head, devices with cursor and lag, and latest messages", async () => {
  await go("Streams");
  const search = page.getByRole("searchbox", { name: "User id" });
  await search.fill("alice");
  await search.press("Enter");
  const devicesTable = page.getByRole("table", { name: "Devices" });
  await devicesTable.getByText("tablet").waitFor();
  // Cells: device, cursor, lag, connected. Neither device acked the three notes; the phone
  // was disconnected by the previous test.
  const row = async (device) => devicesTable.locator("tr", { hasText: device }).locator("td").allTextContents();
  const tablet = await row("tablet");
  assert.equal(tablet[2], "3", `tablet lag: ${tablet}`);
  assert.equal(tablet[3], "yes (1)");
  assert.match(tablet[1], /\./, "the cursor is an event id");
  assert.equal((await row("phone"))[3], "no");
  await page.getByRole("table", { name: "Messages" }).getByText('{"n":3}').waitFor();
  assert.equal(await page.locator(".card .value").first().textContent(), "3", "the head");
  await shot("stream");
});

test("rooms page shows presence and history", async () => {
  await go("Rooms");
  const search = page.getByRole("searchbox", { name: "Room" });
  await search.fill("lobby");
  await search.press("Enter");
  await page.getByRole("link", { name: "bob" }).waitFor();
  await page.getByRole("table", { name: "Messages" }).getByText("hi all").waitFor();
  await shot("rooms");
});

test("queue page shows depths and circuits, and Retry on a dead letter delivers it", async () => {
  // The connect webhooks of the devices were refused with 400 (permanent): dead letters.
  const dead = await until("dead letters", async () => {
    const r = await apiCall("GET", "/api/v1/queue/dead?limit=50");
    return r.data?.jobs?.length >= 2 ? r.data.jobs : null;
  });
  await go("Queue");
  const table = page.getByRole("table", { name: "Dead letters" });
  await table.getByText(dead[0].id).waitFor();
  // A permanent 4xx is the job's fault, not the endpoint's: no circuit opened for it.
  await page.getByRole("heading", { name: "Circuits" }).waitFor();
  assert.equal(await page.locator(".card", { hasText: "Dead letters" }).locator(".value").textContent(), String(dead.length));
  await shot("queue");
  hook.status = 200;
  const target = dead[0];
  await page.getByRole("button", { name: `Retry ${target.id}` }).click();
  const got = await until("the retried webhook at the endpoint", () => hook.received.find((b) => b.id === target.id));
  assert.equal(got.type, target.payload.type);
  await until("the job gone from the dead letters", async () => (await table.getByText(target.id).count()) === 0);
  // Delete one; Retry all sends the rest.
  const other = dead[1];
  await page.getByRole("button", { name: `Delete ${other.id}` }).click();
  await until("the deleted job gone", async () => (await table.getByText(other.id).count()) === 0);
  const left = (await apiCall("GET", "/api/v1/queue/dead?limit=50")).data.jobs;
  assert.ok(!left.some((j) => j.id === other.id));
  if (left.length) {
    await page.getByRole("button", { name: "Retry all" }).click();
    await page.getByRole("status").filter({ hasText: `Queued ${left.length} again` }).waitFor();
    await until("every retried job delivered", () => left.every((j) => hook.received.some((b) => b.id === j.id)));
  }
  assert.ok(!hook.received.some((b) => b.id === other.id), "a deleted dead letter is not sent");
});

test("publish console publishes to a user's stream", async () => {
  await go("Publish");
  await page.getByLabel("User id").fill("alice");
  await page.getByLabel("Type").fill("console.test");
  await page.getByRole("button", { name: "Publish" }).click();
  await page.getByRole("status").filter({ hasText: "Published (202)" }).waitFor();
  await shot("publish");
  const got = await until("the event at the tablet",
    () => devices.evaluate(() => window.frames.tablet.find((f) => f.type === "console.test")));
  assert.equal(got.stream, "user");
});

test("publish console broadcasts with a where filter to matching devices only", async () => {
  await page.getByLabel("Target").selectOption("broadcast");
  await page.getByLabel("Type").fill("us.only");
  await page.getByLabel("Where (JSON)").fill('{"region": "us"}');
  await page.getByRole("button", { name: "Publish" }).click();
  await page.getByRole("status").filter({ hasText: "Published (202)" }).waitFor();
  await until("the broadcast at bob's laptop",
    () => devices.evaluate(() => window.frames.laptop.find((f) => f.type === "us.only")));
  // A marker broadcast to everyone, after it: the tablet (region eu) sees the marker only.
  await apiCall("POST", "/api/v1/events/broadcast", { type: "marker", data: {} });
  await until("the marker at the tablet", () => devices.evaluate(() => window.frames.tablet.find((f) => f.type === "marker")));
  assert.equal(await devices.evaluate(() => window.frames.tablet.some((f) => f.type === "us.only")), false);
});

test("a state-changing request from another origin is refused", async () => {
  // 1. With the session cookie but from a foreign Origin and without the CSRF token.
  // With the session cookie and even the right CSRF token, but from a foreign Origin; and
  // from this origin without the token.
  const cookie = (await ctx.cookies()).find((c) => c.name === "sg_admin");
  const csrf = await page.evaluate(async () => (await (await fetch("/api/v1/admin/session")).json()).csrf_token);
  assert.ok(csrf);
  const post = (headers) => fetch(`${base}/api/v1/users/alice/disconnect`, {
    method: "POST", headers: { Cookie: `sg_admin=${cookie.value}`, ...headers },
  });
  assert.equal((await post({ Origin: "http://evil.example", "X-CSRF-Token": csrf })).status, 403);
  assert.equal((await post({ Origin: base })).status, 403, "no CSRF token");
  assert.equal((await post({ Origin: base, "X-CSRF-Token": "not-the-token" })).status, 403);
  // 2. A page on another origin (localhost is another site than 127.0.0.1) posting with credentials.
  const other = await ctx.newPage();
  await other.goto(`http://localhost:${port}/health`);
  const status = await other.evaluate(async (url) => {
    try { return (await fetch(url, { method: "POST", credentials: "include" })).status; } catch { return "blocked"; }
  }, `${base}/api/v1/users/alice/disconnect`);
  await other.evaluate((url) => fetch(url, { method: "POST", credentials: "include", mode: "no-cors" }).catch(() => {}),
    `${base}/api/v1/users/alice/disconnect`);
  await other.close();
  assert.ok(status === 401 || status === 403 || status === "blocked", `got ${status}`);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(await devices.evaluate(() => window.sockets.tablet.readyState), 1, "the device is still connected");
  const online = await apiCall("GET", "/api/v1/users/alice/online");
  assert.equal(online.data.connections, 1);
});

test("every request the admin page made went to this host", () => {
  assert.ok(requested.length > 20, `only ${requested.length} requests seen`);
  const elsewhere = requested.filter((u) => !u.startsWith(`${base}/`));
  assert.deepEqual(elsewhere, []);
  for (const asset of ["app.js", "pages.js", "ui.js", "uplot.esm.js", "style.css"]) {
    assert.ok(requested.includes(`${base}/admin/assets/${asset}`), `${asset} served by the node`);
  }
});
