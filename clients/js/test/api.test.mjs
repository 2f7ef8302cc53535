// The server API client (Syncgate.Api) against the real binary, and the drift check: the
// committed src/generated/openapi.ts must be what the served /openapi.json renders to.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Api, Client, MemoryStorage, SyncgateError } from "../dist/index.js";
import { renderTypes } from "../scripts/openapi-types.mjs";
import { API_KEY, Server, mint, waitFor } from "./helpers.mjs";

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server.stop();
});

test("the committed API types match the /openapi.json served by the binary", async () => {
  const spec = await (await fetch(`${server.base}/openapi.json`)).json();
  const fresh = await renderTypes(spec);
  const committed = readFileSync(new URL("../src/generated/openapi.ts", import.meta.url), "utf8");
  assert.ok(
    fresh === committed,
    "src/generated/openapi.ts is out of date with the server's /openapi.json: run `npm run gen` in clients/js and commit it",
  );
});

test("Api publishes to a user, a room and many users; reads presence, stats and offline counts", async (t) => {
  const api = new Api({ baseUrl: server.base, apiKey: API_KEY });
  const got = [];
  const c = new Client({ url: server.wsUrl, token: mint("ana", { rooms: ["club"] }), clientId: "p", storage: new MemoryStorage(), network: null });
  t.after(() => c.close());
  c.on("event", (e) => got.push(e));
  await c.connect();
  await c.join("club");
  const { id } = await api.publish({ user_id: "ana", type: "fav.added", data: { song: 7 } });
  const room = await api.publishRoom("club", { type: "msg", data: "hi" });
  const batch = await api.batch({ user_ids: ["ana", "bob"], type: "fav.added", data: [1, 2] });
  assert.ok(batch.ids.ana && batch.ids.bob);
  await waitFor(() => got.length >= 3, "three events");
  assert.deepEqual(got.map((e) => e.id).sort(), [id, room.id, batch.ids.ana].sort());
  assert.deepEqual(got.find((e) => e.id === id).data, { song: 7 });
  const p = await api.presence("club");
  assert.deepEqual(p.users, ["ana"]);
  assert.equal((await api.userOnline("ana")).online, true);
  assert.ok((await api.roomHistory("club", { limit: 10 })).events.length >= 1);
  assert.equal(typeof (await api.stats()).connections, "number");
  const count = await api.offlineCount({ user_id: "ana", client_id: "p" });
  assert.equal(typeof count.count, "number");
  const again = await api.publish({ user_id: "ana", type: "fav.added", data: 1 }, { idempotencyKey: "k1" });
  assert.deepEqual(await api.publish({ user_id: "ana", type: "fav.added", data: 1 }, { idempotencyKey: "k1" }), again);
});

test("Api errors are SyncgateErrors with the contract's code and the HTTP status", async () => {
  const bad = new Api({ baseUrl: server.base, apiKey: "wrong-key" });
  const e = await bad.stats().catch((x) => x);
  assert.ok(e instanceof SyncgateError);
  assert.equal(e.code, "unauthorized");
  assert.equal(e.status, 401);
  const api = new Api({ baseUrl: server.base, apiKey: API_KEY });
  const e2 = await api.publish({ user_id: "ana", type: "", data: 1 }).catch((x) => x);
  assert.equal(e2.status, 400);
  assert.equal(e2.code, "invalid_message_type");
});
