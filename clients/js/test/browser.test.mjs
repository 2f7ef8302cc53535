// Headless Chromium (Debian's chromium, driven by playwright-core; CHROMIUM_PATH from
// scripts/lib/ensure-chromium.sh): the UMD bundle connects and receives, and the
// multi-device example's two tabs stay in sync through a kill -9 and restart of syncgate.
// Writes a screenshot of both tabs under target/ and prints its path.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { SECRET, Server, freePort, mint, waitFor } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
const shotDir = resolve(process.env.CARGO_TARGET_DIR ?? resolve(repo, "target"), "js-sdk");

let server, example, exampleBase, browser;

before(async () => {
  server = await Server.start();
  const port = await freePort();
  exampleBase = `http://127.0.0.1:${port}`;
  example = spawn(process.execPath, [resolve(repo, "examples/multi-device/server.mjs")], {
    env: { ...process.env, SYNCGATE_JWT_SECRET: SECRET, SYNCGATE_WS: server.wsUrl, PORT: String(port) },
    stdio: ["ignore", "ignore", "inherit"],
  });
  await waitFor(async () => {
    try {
      return (await fetch(`${exampleBase}/config.json`)).ok;
    } catch {
      return false;
    }
  }, "example server");
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox"],
  });
});

after(async () => {
  await browser?.close();
  example?.kill("SIGKILL");
  await server?.stop();
});

test("the UMD bundle exposes globalThis.Syncgate, connects and receives", async () => {
  const page = await browser.newPage();
  await page.goto(`${exampleBase}/config.json`); // any page of the example's origin
  await page.addScriptTag({ url: "/syncgate.umd.js" });
  assert.equal(await page.evaluate(() => typeof globalThis.Syncgate?.Client), "function");
  const token = mint("umd-user");
  await page.evaluate(
    async ({ url, token }) => {
      const c = new Syncgate.Client({ url, token, clientId: "umd-1" });
      window.got = [];
      c.on("event", (e) => window.got.push(e));
      window.welcome = await c.connect();
    },
    { url: server.wsUrl, token },
  );
  const id = await server.publish("umd-user", "note", { hello: "browser" });
  await page.waitForFunction((id) => window.got.some((e) => e.id === id), id, { timeout: 20000 });
  const got = await page.evaluate(() => window.got);
  assert.deepEqual(got[0].data, { hello: "browser" });
  assert.equal(got[0].stream, "user");
  // The checkpoint went to localStorage under the client id.
  assert.equal(await page.evaluate(() => localStorage.getItem("syncgate:umd-1:user")), id);
  await page.close();
});

const favorites = (page) => page.locator("#favorites").textContent();

test("multi-device example: two tabs of one user stay in sync through a server restart", async () => {
  const context = await browser.newContext({ viewport: { width: 460, height: 520 } });
  const user = `fan-${process.pid}`;
  const [a, b] = [await context.newPage(), await context.newPage()];
  await a.goto(`${exampleBase}/?user=${user}&device=phone`);
  await b.goto(`${exampleBase}/?user=${user}&device=laptop`);
  for (const p of [a, b]) await p.getByRole("status").filter({ hasText: "connected" }).waitFor({ timeout: 20000 });

  await a.getByRole("button", { name: "Favorite Naima" }).click();
  await waitFor(async () => (await favorites(b)) === "Naima", "laptop follows the phone");

  await server.restart(); // kill -9, same data dir and port
  for (const p of [a, b]) {
    await p.waitForFunction(() => window.syncgateClient?.state === "connected", null, { timeout: 20000 });
  }
  await b.getByRole("button", { name: "Favorite Take Five" }).click();
  await a.getByRole("button", { name: "Favorite So What" }).click();
  await waitFor(async () => (await favorites(a)) === "So What, Naima, Take Five", "phone has all three");
  await waitFor(async () => (await favorites(b)) === "So What, Naima, Take Five", "laptop has all three");
  assert.equal(await b.getByRole("button", { name: "Favorite Take Five" }).getAttribute("aria-pressed"), "true");

  // One picture of both tabs side by side, stitched in the browser.
  mkdirSync(shotDir, { recursive: true });
  const shots = [await a.screenshot(), await b.screenshot()].map((buf) => `data:image/png;base64,${buf.toString("base64")}`);
  const board = await context.newPage();
  await board.setViewportSize({ width: 940, height: 540 });
  await board.setContent(
    `<body style="margin:0;display:flex;gap:20px;background:#ddd">${shots.map((s) => `<img src="${s}" width="460">`).join("")}</body>`,
  );
  const path = resolve(shotDir, "multi-device-two-tabs.png");
  await board.screenshot({ path });
  console.log(`screenshot of the two tabs in sync: ${path}`);
  await context.close();
});
