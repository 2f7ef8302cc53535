// The device client against the real server binary: resume, restarts, tokens, rooms,
// failing handlers, the heartbeat watch and the backoff bounds.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { Client, MemoryStorage, SyncgateError, backoffDelay } from "../dist/index.js";
import { rmSync } from "node:fs";
import { Server, mint, waitFor, sleep } from "./helpers.mjs";

const FAST = {
  SYNCGATE_HEARTBEAT__INTERVAL: "500ms",
  SYNCGATE_HEARTBEAT__TIMEOUT: "30s",
  SYNCGATE_AUTH__LEEWAY: "2s", // expiry closes at exp + 2 s: room for a renewal on a loaded machine
};

let server;
before(async () => {
  server = await Server.start(FAST);
});
after(async () => {
  await server.stop();
});

let n = 0;
const uniqueUser = () => `u${process.pid}-${++n}`;

/** A client that records what its handler got, closed at the end of the test. */
function device(t, user, opts = {}) {
  const got = [];
  const states = [];
  const errors = [];
  const c = new Client({
    url: server.wsUrl,
    token: mint(user, { rooms: ["chat:*"] }),
    clientId: "dev-1",
    storage: new MemoryStorage(),
    minReconnectDelayMs: 50,
    maxReconnectDelayMs: 400,
    network: null,
    ...opts,
  });
  if (opts.record !== false) c.on("event", (ev) => got.push(ev));
  c.on("state", (s) => states.push(s));
  c.on("error", (e) => errors.push(e));
  t.after(() => c.close());
  return { c, got, states, errors };
}

const ids = (evs) => evs.map((e) => e.id);

test("zero-event case: a device that saw nothing yet still gets what was published while it was away", async (t) => {
  const user = uniqueUser();
  const storage = new MemoryStorage();
  const first = device(t, user, { storage });
  const w = await first.c.connect();
  assert.equal(w.resumed, 0);
  first.c.close();
  const published = [await server.publish(user, "fav.added", { n: 1 }), await server.publish(user, "fav.added", { n: 2 })];
  // Same storage, and also ephemeral (no client id), where only the checkpoint can help.
  const again = device(t, user, { storage });
  await again.c.connect();
  await waitFor(() => again.got.length >= 2, "both events");
  assert.deepEqual(ids(again.got), published);

  const eph = new MemoryStorage();
  const e1 = device(t, user, { storage: eph, clientId: undefined });
  await e1.c.connect();
  e1.c.close();
  const id3 = await server.publish(user, "fav.added", { n: 3 });
  const e2 = device(t, user, { storage: eph, clientId: undefined });
  await e2.c.connect();
  await waitFor(() => e2.got.length >= 1, "the event published between the two connections");
  assert.deepEqual(ids(e2.got), [id3]);
});

test("kill -9 and restart of the server: no persisted message lost or handled twice, in order", async (t) => {
  const user = uniqueUser();
  const d = device(t, user);
  const seen = new Map();
  d.c.on("event", async (ev) => {
    seen.set(ev.id, (seen.get(ev.id) ?? 0) + 1);
    await sleep(5); // slow enough that some events are handled but not acked at the kill
  });
  await d.c.connect();
  const published = [];
  for (let i = 0; i < 15; i++) published.push(await server.publish(user, "fav.added", { i }));
  await waitFor(() => d.got.length >= 5, "some events before the kill");
  await server.restart();
  for (let i = 15; i < 30; i++) published.push(await server.publish(user, "fav.added", { i }));
  await waitFor(() => d.got.length >= 30, "all 30 events");
  await sleep(300);
  assert.deepEqual(ids(d.got), published, "every event once, in order");
  assert.ok([...seen.values()].every((v) => v === 1));
  assert.ok(d.states.filter((s) => s === "connected").length >= 2, "reconnected");
});

test("resume after offline: offline closes, online reconnects at once and resumes", async (t) => {
  const user = uniqueUser();
  const network = new EventTarget();
  const d = device(t, user, { network, minReconnectDelayMs: 60000, maxReconnectDelayMs: 60000 });
  await d.c.connect();
  const a = await server.publish(user, "fav.added", { n: 1 });
  await waitFor(() => d.got.length === 1, "live event");
  network.dispatchEvent(new Event("offline"));
  assert.equal(d.c.state, "disconnected");
  const b = await server.publish(user, "fav.added", { n: 2 });
  const c = await server.publish(user, "fav.added", { n: 3 });
  await sleep(200);
  assert.equal(d.got.length, 1, "nothing while offline");
  network.dispatchEvent(new Event("online"));
  await waitFor(() => d.got.length === 3, "the two events published while offline");
  assert.deepEqual(ids(d.got), [a, b, c]);
});

test("token renewed in place before exp with the refresh op: the connection stays up", async (t) => {
  const user = uniqueUser();
  let calls = 0;
  const d = device(t, user, {
    token: () => {
      calls++;
      return mint(user, { ttlS: 3 });
    },
  });
  const w = await d.c.connect();
  await sleep(7000); // past two lifetimes of a 3 s token
  assert.ok(calls >= 3, `token function called ${calls} times`);
  assert.deepEqual(d.states, ["connecting", "connected"], "never disconnected");
  assert.equal(d.c.welcome.conn_id, w.conn_id);
  const id = await server.publish(user, "fav.added", {});
  await waitFor(() => d.got.length === 1 && d.got[0].id === id, "still delivering");
});

test("token expired (4001): the token function is called again and the client reconnects", async (t) => {
  const user = uniqueUser();
  let calls = 0;
  const d = device(t, user, {
    token: () => {
      calls++;
      // The renewal before exp gets a token the server refuses, so the first one expires.
      if (calls === 2) return mint(user, { ttlS: 3600, secret: "not-the-servers-secret-0123456789" });
      return mint(user, { ttlS: calls === 1 ? 2 : 3600 });
    },
  });
  await d.c.connect();
  await waitFor(() => d.states.filter((s) => s === "connected").length >= 2, "reconnected after 4001", 20000);
  assert.ok(calls >= 3);
  assert.ok(d.errors.some((e) => e instanceof SyncgateError && e.code === "unauthorized"), "refresh refusal reported");
  const id = await server.publish(user, "fav.added", {});
  await waitFor(() => d.got.some((e) => e.id === id), "delivering on the new connection");
});

test("rooms are rejoined after a reconnect and resume after the last handled room event", async (t) => {
  const user = uniqueUser();
  const room = `chat:${user}`;
  const d = device(t, user, { minReconnectDelayMs: 1500, maxReconnectDelayMs: 1500 });
  await d.c.connect();
  const r = await d.c.join(room);
  assert.equal(r.room, room);
  const pubRoom = async (k) => (await server.api("POST", `/api/v1/rooms/${room}/events`, { type: "msg", data: { k } })).body.id;
  // Zero room events so far; the device is kicked (4009) and reconnects after 1.5 s.
  await server.api("POST", `/api/v1/users/${user}/disconnect`);
  await waitFor(() => d.c.state !== "connected", "disconnected");
  const a = await pubRoom(1);
  const b = await pubRoom(2);
  await waitFor(() => d.got.length >= 2, "room events replayed on rejoin");
  await server.api("POST", `/api/v1/users/${user}/disconnect`);
  await waitFor(() => d.c.state !== "connected", "disconnected again");
  const c = await pubRoom(3);
  await waitFor(() => d.got.length >= 3, "the third");
  await sleep(300);
  assert.deepEqual(ids(d.got), [a, b, c]);
  assert.ok(d.got.every((e) => e.stream === `room:${room}`));
  await d.c.leave(room);
  const e = await d.c.leave(room).catch((x) => x);
  assert.ok(e instanceof SyncgateError && e.code === "not_found", `leave twice: ${e}`);
});

test("a handler that throws: the event is not acked and is handed over again after reconnect", async (t) => {
  const user = uniqueUser();
  const d = device(t, user, { record: false });
  let failOnce = true;
  const attempts = [];
  d.c.on("event", (ev) => {
    attempts.push(ev.id);
    if (ev.data.n === 2 && failOnce) {
      failOnce = false;
      throw new Error("disk full");
    }
    d.got.push(ev);
  });
  await d.c.connect();
  const published = [];
  for (let i = 1; i <= 4; i++) published.push(await server.publish(user, "fav.added", { n: i }));
  await waitFor(() => d.got.length >= 4, "all four handled");
  await sleep(300);
  assert.deepEqual(ids(d.got), published, "each handled once, in order");
  assert.equal(attempts.filter((x) => x === published[1]).length, 2, "the failed one came again");
  assert.ok(d.errors.some((e) => e.code === "handler_failed" && e.eventId === published[1]));
  // Acks followed the handled events: the server's cursor for the device is at the end.
  await waitFor(async () => {
    const r = await server.api("GET", `/api/v1/offline/count?user_id=${user}&client_id=dev-1`);
    return r.status === 200 && r.body.count === 0;
  }, "cursor acked to the last event");
});

test("a silent server is noticed by the heartbeat watch, and the client reconnects when it is back", async (t) => {
  const user = uniqueUser();
  const d = device(t, user);
  const w = await d.c.connect();
  assert.equal(w.heartbeat_ms, 500);
  server.child.kill("SIGSTOP");
  try {
    await waitFor(() => d.c.state !== "connected", "dead socket noticed", 10000);
  } finally {
    server.child.kill("SIGCONT");
  }
  await waitFor(() => d.c.state === "connected", "reconnected");
  const id = await server.publish(user, "fav.added", {});
  await waitFor(() => d.got.some((e) => e.id === id), "delivering again");
});

test("publish to the user's other devices and typed errors from the server", async (t) => {
  const user = uniqueUser();
  const a = device(t, user, { clientId: "a" });
  const b = device(t, user, { clientId: "b" });
  await a.c.connect();
  await b.c.connect();
  const id = await a.c.publish("fav.added", { song: 1 });
  await waitFor(() => b.got.some((e) => e.id === id), "the other device got it");
  assert.equal(a.got.length, 0, "not echoed to the sender");
  const e = await a.c.join("secret-room").catch((x) => x);
  assert.ok(e instanceof SyncgateError);
  assert.equal(e.code, "forbidden");
});

test("backoff: exponential with full jitter, within the configured bounds", () => {
  for (let attempt = 0; attempt < 20; attempt++) {
    const lo = backoffDelay(attempt, 500, 20000, () => 0);
    const hi = backoffDelay(attempt, 500, 20000, () => 0.999999);
    assert.equal(lo, 500);
    assert.ok(hi <= 20000 && hi >= lo);
    assert.equal(hi, Math.round(500 + 0.999999 * (Math.min(20000, 500 * 2 ** (attempt + 1)) - 500)));
  }
  for (let i = 0; i < 1000; i++) {
    const d = backoffDelay(i % 12, 100, 5000);
    assert.ok(d >= 100 && d <= 5000, `${d}`);
  }
});

test("backoff bounds hold for real reconnects while the server is down", async (t) => {
  const user = uniqueUser();
  const d = device(t, user, { minReconnectDelayMs: 200, maxReconnectDelayMs: 400 });
  await d.c.connect();
  const stamps = [];
  d.c.on("state", (s) => {
    if (s === "connecting") stamps.push(Date.now());
  });
  await server.kill("SIGKILL");
  await waitFor(() => stamps.length >= 4, "several attempts", 20000);
  await server.spawn();
  await waitFor(() => d.c.state === "connected", "reconnected");
  for (let i = 1; i < 4; i++) {
    const gap = stamps[i] - stamps[i - 1];
    assert.ok(gap >= 190, `attempts ${gap} ms apart, below minReconnectDelayMs`);
  }
});

test("an event is acked only after its handler's promise resolved", async (t) => {
  const user = uniqueUser();
  const d = device(t, user, { record: false });
  let release;
  const gate = new Promise((r) => (release = r));
  const handled = [];
  d.c.on("event", async (ev) => {
    await gate;
    handled.push(ev.id);
  });
  await d.c.connect();
  const id = await server.publish(user, "fav.added", {});
  const count = async () => (await server.api("GET", `/api/v1/offline/count?user_id=${user}&client_id=dev-1`)).body.count;
  await sleep(800); // several ack periods
  assert.equal(await count(), 1, "not acked while the handler is pending");
  release();
  await waitFor(async () => (await count()) === 0, "acked after the handler resolved");
  assert.deepEqual(handled, [id]);
});

test("1001 (node shutting down) reconnects at once, not after the backoff", async (t) => {
  const user = uniqueUser();
  const d = device(t, user, { minReconnectDelayMs: 4000, maxReconnectDelayMs: 4000 });
  await d.c.connect();
  const stamps = [];
  d.c.on("state", (s) => stamps.push([s, Date.now()]));
  await server.kill("SIGTERM"); // graceful: connections are closed with 1001
  await waitFor(() => stamps.some(([s]) => s === "connecting"), "a reconnect attempt");
  const down = stamps.find(([s]) => s === "disconnected")[1];
  const retry = stamps.find(([s]) => s === "connecting")[1];
  assert.ok(retry - down < 2000, `first attempt ${retry - down} ms after the 1001 (backoff would be 4000)`);
  await server.spawn();
  await waitFor(() => d.c.state === "connected", "reconnected to the restarted node");
});

test("Node: a checkpoint of another store epoch (store reset) is dropped, and the client connects", async (t) => {
  const user = uniqueUser();
  const storage = new MemoryStorage();
  const first = device(t, user, { storage });
  await first.c.connect();
  await server.publish(user, "fav.added", {});
  await waitFor(() => first.got.length === 1, "one event");
  first.c.close();
  await server.kill("SIGKILL");
  rmSync(server.dir, { recursive: true, force: true }); // a new store: a new epoch
  await server.spawn();
  const again = device(t, user, { storage });
  await again.c.connect();
  const id = await server.publish(user, "fav.added", { after: "reset" });
  await waitFor(() => again.got.some((e) => e.id === id), "delivering after the reset");
});

test("a transient event (persist: false) is handed over but is no checkpoint: the device resumes after the last persisted one", async (t) => {
  const user = uniqueUser();
  const room = `chat:${user}`;
  // The `ws` socket, recording the URLs it opened and the frames it sent.
  const { WebSocket: WS } = await import("ws");
  const urls = [];
  const sent = [];
  class Recording extends WS {
    constructor(url, ...rest) {
      super(url, ...rest);
      urls.push(new URL(url));
    }
    send(data, ...rest) {
      sent.push(JSON.parse(String(data)));
      return super.send(data, ...rest);
    }
  }
  const storage = new MemoryStorage();
  const d = device(t, user, { storage, WebSocket: Recording, minReconnectDelayMs: 1500, maxReconnectDelayMs: 1500 });
  await d.c.connect();
  await d.c.join(room);
  const pubUser = async (persist, n) => {
    const r = await server.api("POST", "/api/v1/events", { user_id: user, type: "fav.added", data: { n }, persist });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    return r.body.id;
  };
  const pubRoom = async (persist, n) => {
    const r = await server.api("POST", `/api/v1/rooms/${room}/events`, { type: "msg", data: { n }, persist });
    assert.equal(r.status, 202, JSON.stringify(r.body));
    return r.body.id;
  };
  const transient = (id) => id.split(".").length === 2 && id.split(".")[1].startsWith("t");
  const p1 = await pubUser(true, 1);
  const r1 = await pubRoom(true, 1);
  await waitFor(() => d.got.length === 2, "two persisted events");
  const t1 = await pubUser(false, 2);
  const rt1 = await pubRoom(false, 2);
  assert.ok(transient(t1) && transient(rt1), `transient ids: ${t1} ${rt1}`);
  await waitFor(() => d.got.length === 4, "two transient events");
  const count = async () => (await server.api("GET", `/api/v1/offline/count?user_id=${user}&client_id=dev-1`)).body.count;
  await waitFor(async () => (await count()) === 0, "the persisted event acked");
  await sleep(300); // past another ack delay
  assert.equal(await storage.getItem(`syncgate:dev-1:user`), p1, "user checkpoint");
  assert.equal(await storage.getItem(`syncgate:dev-1:room:${room}`), r1, "room checkpoint");

  // Away (kicked with 4009; back after 1.5 s) while one event of each stream is published.
  await server.api("POST", `/api/v1/users/${user}/disconnect`);
  await waitFor(() => d.c.state !== "connected", "disconnected");
  const p2 = await pubUser(true, 3);
  const r2 = await pubRoom(true, 3);
  await waitFor(() => d.got.length >= 6, "the two missed events");
  await sleep(400);
  const of = (stream) => ids(d.got.filter((e) => e.stream === stream));
  assert.deepEqual(of("user"), [p1, t1, p2], "user stream: each once");
  assert.deepEqual(of(`room:${room}`), [r1, rt1, r2], "room: each once");
  assert.deepEqual(d.errors, [], "no refused ack, join or connect");
  assert.equal(d.states.filter((s) => s === "connecting").length, 2, `one connect, one reconnect: ${d.states}`);
  assert.deepEqual(urls.map((u) => u.searchParams.get("since")).slice(1), [p1], "resumed with the persisted id");
  assert.ok(!sent.some((f) => f.op === "ack" && transient(f.id)), "no transient ack");
  assert.deepEqual(sent.filter((f) => f.op === "join").map((f) => f.since), [undefined, r1], "rejoined after the persisted room id");
  await waitFor(async () => (await count()) === 0, "acked to the last");
});
