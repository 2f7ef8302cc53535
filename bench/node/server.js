// The baseline of the benchmark suite: a minimal broadcast server on Node.js `ws`, what a
// user gets from forty lines of Node. Every WebSocket connection gets every message;
// POST /publish with {"type","data"} broadcasts an event frame shaped like syncgate's
// (so the same load generator measures both). No auth, no rooms, no store, no limits.
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');

let seq = 0;
const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/publish') {
    res.writeHead(404, { 'content-length': '0' });
    return res.end();
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks));
    } catch {
      res.writeHead(400, { 'content-length': '0' });
      return res.end();
    }
    const id = String(++seq);
    // Encoded once, sent to everyone.
    const frame = Buffer.from(JSON.stringify({ op: 'event', id, stream: 'room:bench', type: msg.type, data: msg.data, ts: Date.now() }));
    for (const ws of wss.clients) ws.send(frame, { binary: false });
    const body = JSON.stringify({ id });
    res.writeHead(202, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});

const wss = new WebSocketServer({ server, perMessageDeflate: false });
wss.on('connection', (ws) => ws.on('error', () => {}));

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`node-ws baseline listening on http://127.0.0.1:${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
