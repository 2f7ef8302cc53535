// The multi-device example's own tiny server: serves the page and the SDK's browser bundle,
// and mints development tokens (HS256, from SYNCGATE_JWT_SECRET) at GET /token. A real app
// mints tokens in its backend after its own sign-in; never ship the secret to browsers.
//
//   SYNCGATE_JWT_SECRET=... [SYNCGATE_WS=ws://127.0.0.1:8080/ws] [PORT=3000] node server.mjs
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const secret = process.env.SYNCGATE_JWT_SECRET;
if (!secret) {
  console.error("set SYNCGATE_JWT_SECRET to the secret syncgate signs client tokens with");
  process.exit(2);
}
const wsUrl = process.env.SYNCGATE_WS ?? "ws://127.0.0.1:8080/ws";
const port = Number(process.env.PORT ?? 3000);
const TTL_S = Number(process.env.TOKEN_TTL_S ?? 600);

const b64url = (s) => Buffer.from(s).toString("base64url");
function mint(sub) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify({ sub, iat: now, exp: now + TTL_S }));
  return `${head}.${body}.${createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url")}`;
}

const file = (p) => readFileSync(join(here, p));
const bundle = join(here, "../../clients/js/dist/syncgate.umd.js");

const server = createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  const send = (status, type, body) => {
    res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
    res.end(body);
  };
  try {
    if (url.pathname === "/" || url.pathname === "/index.html") return send(200, "text/html; charset=utf-8", file("index.html"));
    if (url.pathname === "/app.js") return send(200, "text/javascript", file("app.js"));
    if (url.pathname === "/syncgate.umd.js") return send(200, "text/javascript", readFileSync(bundle));
    if (url.pathname === "/config.json") return send(200, "application/json", JSON.stringify({ wsUrl }));
    if (url.pathname === "/token") {
      const user = url.searchParams.get("user") || "demo";
      return send(200, "application/json", JSON.stringify({ token: mint(user) }));
    }
    send(404, "text/plain", "not found");
  } catch (e) {
    send(500, "text/plain", String(e));
  }
});
server.listen(port, "127.0.0.1", () => console.log(`multi-device example on http://127.0.0.1:${server.address().port}/ (syncgate at ${wsUrl})`));
