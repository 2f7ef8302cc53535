// permessage-deflate with Node's `ws` client (run by scripts/test.d/deflate.sh).
import assert from "node:assert/strict";
import WebSocket from "ws";

const base = process.env.SG_BASE;
const url = `${base.replace("http", "ws")}/ws?token=${process.env.SG_TOKEN_NODE}`;
const user = "deflate-node";

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url); // offers permessage-deflate; client_max_window_bits
    ws.once("upgrade", (res) => { ws.answer = res.headers["sec-websocket-extensions"]; });
    const frames = [];
    let waiter = null;
    ws.on("message", (data) => {
      frames.push(JSON.parse(data.toString()));
      if (waiter) waiter();
    });
    ws.next = async (timeoutMs = 5000) => {
      const deadline = Date.now() + timeoutMs;
      while (frames.length === 0) {
        if (Date.now() > deadline) throw new Error("no frame within 5 s");
        await new Promise((r) => { waiter = r; setTimeout(r, 50); });
      }
      return frames.shift();
    };
    ws.once("open", async () => {
      try {
        const welcome = await ws.next();
        assert.equal(welcome.op, "welcome");
        resolve(ws);
      } catch (e) { reject(e); }
    });
    ws.once("error", reject);
  });
}

async function publish(data) {
  const r = await fetch(`${base}/api/v1/events`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${process.env.SG_API_KEY}` },
    body: JSON.stringify({ user_id: user, type: "doc", data }),
  });
  assert.equal(r.status, 202, await r.text());
}

const ws = await open();
assert.equal(ws.extensions, "permessage-deflate", `negotiated: ${ws.extensions}`);
assert.equal(ws.answer, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");

// A large published message arrives intact, and compressed: far fewer bytes on the wire.
const text = "lorem ipsum dolor sit amet ".repeat(8000); // ~216 KB
const before = ws._socket.bytesRead;
await publish({ text });
const ev = await ws.next();
assert.equal(ev.op, "event");
assert.equal(ev.data.text, text);
const onWire = ws._socket.bytesRead - before;
assert.ok(onWire < text.length / 10, `${onWire} bytes on the wire for ${text.length}`);

// A compressed client message is understood.
ws.send(JSON.stringify({ op: "ping", ref: "zipped", pad: "x".repeat(20000) }), { compress: true });
const pong = await ws.next();
assert.equal(pong.op, "pong");
assert.equal(pong.ref, "zipped");

// A compressed message that inflates past limits.max_frame_bytes (64 KiB) closes with 1009.
const closed = new Promise((resolve) => ws.once("close", (code) => resolve(code)));
ws.send(JSON.stringify({ op: "ping", pad: " ".repeat(70000) }), { compress: true });
assert.equal(await closed, 1009);
console.error("ws: deflate negotiated, 216 KB event in", onWire, "bytes, compressed ping answered, bomb closed 1009");
