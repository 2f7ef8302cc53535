"""permessage-deflate with Python's `websockets` client (run by scripts/test.d/deflate.sh)."""

import json
import os
import urllib.request

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

BASE = os.environ["SG_BASE"]
URL = BASE.replace("http", "ws", 1) + "/ws?token=" + os.environ["SG_TOKEN_PY"]
USER = "deflate-py"


def publish(data):
    req = urllib.request.Request(
        BASE + "/api/v1/events",
        data=json.dumps({"user_id": USER, "type": "doc", "data": data}).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer " + os.environ["SG_API_KEY"]},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 202, r.status


# max_size: the client's own inbound limit, above the 216 KB event below.
with connect(URL, max_size=1 << 22, open_timeout=5) as ws:
    ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    assert ext.startswith("permessage-deflate"), ext
    assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext, ext
    assert json.loads(ws.recv(timeout=5))["op"] == "welcome"

    text = "lorem ipsum dolor sit amet " * 8000
    publish({"text": text})
    ev = json.loads(ws.recv(timeout=5))
    assert ev["op"] == "event" and ev["data"]["text"] == text

    # websockets compresses every message it sends once the extension is negotiated.
    ws.send(json.dumps({"op": "ping", "ref": "zipped", "pad": "y" * 20000}))
    pong = json.loads(ws.recv(timeout=5))
    assert pong["op"] == "pong" and pong["ref"] == "zipped", pong

    ws.send(json.dumps({"op": "ping", "pad": " " * 70000}))
    try:
        while True:
            ws.recv(timeout=5)
    except ConnectionClosed as e:
        assert e.rcvd is not None and e.rcvd.code == 1009, e
print("websockets: deflate negotiated, 216 KB event intact, compressed ping answered, bomb closed 1009")
