// permessage-deflate with Chromium's own WebSocket (Debian's chromium driven by
// playwright-core; run by scripts/test.d/deflate.sh).
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const base = process.env.SG_BASE;
const url = `${base.replace("http", "ws")}/ws?token=${process.env.SG_TOKEN_BROWSER}`;

async function publish(data) {
  const r = await fetch(`${base}/api/v1/events`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${process.env.SG_API_KEY}` },
    body: JSON.stringify({ user_id: "deflate-browser", type: "doc", data }),
  });
  assert.equal(r.status, 202, await r.text());
}

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  // Open the socket in the page; frames are queued in window.frames for the checks below.
  const extensions = await page.evaluate((u) => new Promise((resolve, reject) => {
    const ws = new WebSocket(u);
    window.ws = ws;
    window.frames_ = [];
    window.closeCode = null;
    ws.onmessage = (m) => window.frames_.push(JSON.parse(m.data));
    ws.onclose = (e) => { window.closeCode = e.code; };
    ws.onopen = () => resolve(ws.extensions);
    ws.onerror = () => reject(new Error("WebSocket error"));
  }), url);
  assert.equal(extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  const next = () => page.waitForFunction(() => window.frames_.length > 0, null, { timeout: 5000 })
    .then(() => page.evaluate(() => window.frames_.shift()));
  assert.equal((await next()).op, "welcome");

  const text = "lorem ipsum dolor sit amet ".repeat(8000);
  await publish({ text });
  const ev = await next();
  assert.equal(ev.op, "event");
  assert.equal(ev.data.text, text);

  // Chromium compresses what it sends once the extension is negotiated.
  await page.evaluate(() => window.ws.send(JSON.stringify({ op: "ping", ref: "zipped", pad: "z".repeat(20000) })));
  const pong = await next();
  assert.equal(pong.ref, "zipped");

  await page.evaluate(() => window.ws.send(JSON.stringify({ op: "ping", pad: " ".repeat(70000) })));
  await page.waitForFunction(() => window.closeCode !== null, null, { timeout: 5000 });
  assert.equal(await page.evaluate(() => window.closeCode), 1009);
  console.error("chromium: deflate negotiated, 216 KB event intact, compressed ping answered, bomb closed 1009");
} finally {
  await browser.close();
}
