// The pages of the admin UI. Each renders into `root` and refreshes its figures with
// `every()`; all data comes from the HTTP API (see docs/admin.md for which route feeds what).
import uPlot from "./uplot.esm.js";
import { api, every, el } from "./app.js";
import { queue } from "./queue.js";
import { ago, card, duration, empty, errorBox, events, header, json, kv, num, searchForm, set, table } from "./ui.js";

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------
// Overview

function overview(root) {
  root.append(
    header("Overview", "Live figures, refreshed every second: the cards and the chart are this node's, the table lists every node."),
    el("div", { class: "cards" },
      card("Nodes", "ov-nodes-count"), card("Connections", "ov-connections"), card("Users online", "ov-users"),
      card("Rooms", "ov-rooms"), card("Messages in / s", "ov-in"), card("Messages out / s", "ov-out"),
      card("Queue depth", "ov-queue", " ")),
    el("section", { class: "panel" }, el("h2", {}, "Messages per second"), el("div", { id: "chart", class: "chart" })),
    el("section", { class: "panel" }, el("h2", {}, "Nodes"), el("div", { id: "ov-nodes" })));
  const WINDOW = 60; // seconds shown
  const data = [[], [], []];
  const chartEl = document.getElementById("chart");
  const line = (label, stroke, fill) => ({ label, stroke, fill, width: 2, points: { show: false } });
  const plot = new uPlot({
    width: Math.max(320, chartEl.clientWidth), height: 240,
    legend: { live: false },
    scales: {
      x: { time: true, range: () => { const t = Date.now() / 1000; return [t - WINDOW, t]; } },
      y: { range: (u, min, max) => [0, Math.max(5, max * 1.2)] },
    },
    axes: [{ stroke: "#57606a", grid: { stroke: "#eaeef2" } }, { stroke: "#57606a", grid: { stroke: "#eaeef2" } }],
    series: [{}, line("messages in / s", "#1f6feb", "rgba(31,111,235,0.08)"), line("messages out / s", "#1a7f37")],
  }, data, chartEl);
  const ro = new ResizeObserver(() => plot.setSize({ width: Math.max(320, chartEl.clientWidth), height: 240 }));
  ro.observe(chartEl);
  let last = null;
  every(1000, async () => {
    const r = await api("GET", "/api/v1/stats");
    if (!r.ok) return;
    const s = r.data, now = Date.now() / 1000;
    set("ov-connections", num(s.connections));
    set("ov-users", num(s.users));
    set("ov-rooms", num(s.rooms));
    if (last) {
      const dt = Math.max(0.001, now - last.t);
      const rin = Math.max(0, (s.messages_in - last.in) / dt), rout = Math.max(0, (s.messages_out - last.out) / dt);
      set("ov-in", num(rin));
      set("ov-out", num(rout));
      data[0].push(now); data[1].push(rin); data[2].push(rout);
      while (data[0].length && data[0][0] < now - WINDOW) data.forEach((d) => d.shift());
      plot.setData(data);
    }
    last = { t: now, in: s.messages_in, out: s.messages_out };
    const q = await api("GET", "/api/v1/queue/stats");
    if (q.ok) {
      const d = q.data.depth;
      set("ov-queue", num(d.express + d.urgent + d.normal));
      set("ov-queue-hint", `${num(q.data.delayed)} delayed · ${num(q.data.dead)} dead`);
    }
    const n = await api("GET", "/api/v1/nodes");
    const box = document.getElementById("ov-nodes");
    if (!n.ok) return box.replaceChildren(errorBox(n));
    set("ov-nodes-count", num(n.data.nodes.length));
    box.replaceChildren(table(
      ["Node", "Connections", "Users", "Rooms", "Messages in", "Messages out", "Uptime"],
      n.data.nodes.map((x) => el("tr", {},
        el("td", {}, x.instance_id, x.instance_id === s.instance_id ? el("span", { class: "muted" }, " (this node)") : null),
        el("td", {}, num(x.connections)), el("td", {}, num(x.users)), el("td", {}, num(x.rooms)),
        el("td", {}, num(x.messages_in)), el("td", {}, num(x.messages_out)), el("td", {}, duration(x.uptime_s)))),
      "Nodes"));
  });
}

// ---------------------------------------------------------------------------------------
// Connections

function connections(root, [user]) {
  root.append(header("Connections", "A user's devices across the deployment, with what each connection recorded."),
    searchForm("conn-user", "User id", "e.g. alice", user, (u) => { location.hash = `#/connections/${enc(u)}`; }),
    el("div", { id: "conn-body" }));
  const body = document.getElementById("conn-body");
  if (!user) {
    body.append(empty("Type a user id above to see their connections. Users online now:"), el("div", { id: "online" }));
    every(2000, async () => {
      const r = await api("GET", "/api/v1/online-users?limit=50");
      const box = document.getElementById("online");
      if (!r.ok) return box.replaceChildren(errorBox(r));
      box.replaceChildren(r.data.users.length
        ? el("ul", { class: "chips" }, r.data.users.map((u) => el("li", {}, el("a", { href: `#/connections/${enc(u)}` }, u))))
        : el("p", { class: "muted" }, "Nobody is connected. Connect a device to /ws with a token from `syncgate token --user alice`."));
    });
    return;
  }
  every(2000, async () => {
    const r = await api("GET", `/api/v1/users/${enc(user)}/connections`);
    if (!r.ok) return body.replaceChildren(errorBox(r));
    const list = r.data.connections;
    const rows = list.map((c) => el("tr", {},
      el("td", {}, el("code", {}, c.conn_id)),
      el("td", {}, c.client_id || el("span", { class: "muted" }, "ephemeral")),
      el("td", {}, c.node), el("td", {}, c.ip || "–"),
      el("td", { class: "ua", title: c.user_agent || "" }, c.user_agent || "–"),
      el("td", {}, c.app_version || "–"), el("td", {}, ago(c.connected_at)),
      el("td", {}, c.rooms.length ? c.rooms.join(", ") : "–"),
      el("td", {}, Object.keys(c.meta).length ? json(c.meta) : "–"),
      el("td", {}, el("button", {
        type: "button", class: "danger", "aria-label": `Disconnect ${c.client_id || c.conn_id}`,
        onclick: async (e) => {
          e.target.disabled = true;
          const q = `?conn_id=${enc(c.conn_id)}&node=${enc(c.node)}`;
          const res = await api("POST", `/api/v1/users/${enc(user)}/disconnect${q}`);
          e.target.textContent = res.ok ? "Disconnected" : "Failed";
        },
      }, "Disconnect"))));
    body.replaceChildren(
      el("p", { class: "summary" }, `${list.length} connection${list.length === 1 ? "" : "s"} of `, el("strong", {}, user), " · ",
        el("a", { href: `#/stream/${enc(user)}` }, "Stream of this user")),
      list.length ? table(["Conn", "Device", "Node", "IP", "User agent", "App", "Connected", "Rooms", "Meta", ""], rows, "Connections")
        : empty(`${user} has no open connection. Devices appear here as soon as they connect to /ws.`));
  });
}

// ---------------------------------------------------------------------------------------
// Stream of a user

function stream(root, [user]) {
  root.append(header("Stream", "A user's durable stream: its head, each device's cursor and lag, the latest messages."),
    searchForm("stream-user", "User id", "e.g. alice", user, (u) => { location.hash = `#/stream/${enc(u)}`; }),
    el("div", { id: "stream-body" }));
  const body = document.getElementById("stream-body");
  if (!user) return body.append(empty("Type a user id above to see their stream and devices."));
  every(2000, async () => {
    const r = await api("GET", `/api/v1/users/${enc(user)}/stream?limit=20`);
    if (!r.ok) return body.replaceChildren(errorBox(r));
    const s = r.data;
    body.replaceChildren(
      el("div", { class: "cards" }, kv("Head", num(s.head)), kv("Oldest kept", s.head ? num(s.first) : "–"), kv("Devices", num(s.devices.length))),
      el("section", { class: "panel" }, el("h2", {}, "Devices"), s.devices.length
        ? table(["Device", "Cursor", "Lag", "Connected"], s.devices.map((d) => el("tr", {},
          el("td", {}, d.client_id), el("td", {}, el("code", {}, d.cursor)),
          el("td", { class: d.lag ? "warn" : "" }, num(d.lag)),
          el("td", {}, d.connected ? `yes (${d.connected})` : "no"))), "Devices")
        : empty("No device has a cursor yet: connect with ?client_id= to get one.")),
      el("section", { class: "panel" }, el("h2", {}, "Latest messages"), s.events.length
        ? events(s.events) : empty("The stream is empty. Publish to this user from the Publish page.")));
  });
}

// ---------------------------------------------------------------------------------------
// Rooms

function rooms(root, [room]) {
  root.append(header("Rooms", "Who is in a room, and its history."),
    searchForm("room-name", "Room", "e.g. lobby", room, (r) => { location.hash = `#/rooms/${enc(r)}`; }),
    el("div", { id: "room-body" }));
  const body = document.getElementById("room-body");
  if (!room) return body.append(empty("Type a room name above to see its members and history."));
  every(2000, async () => {
    const [p, h] = await Promise.all([api("GET", `/api/v1/rooms/${enc(room)}/presence`),
      api("GET", `/api/v1/rooms/${enc(room)}/history?limit=50`)]);
    if (!p.ok) return body.replaceChildren(errorBox(p));
    const hist = h.ok ? h.data.events.slice().reverse() : [];
    body.replaceChildren(
      el("div", { class: "cards" }, kv("Users", num(p.data.users.length)), kv("Connections", num(p.data.connections))),
      el("section", { class: "panel" }, el("h2", {}, "Presence"), p.data.users.length
        ? el("ul", { class: "chips" }, p.data.users.map((u) => el("li", {}, el("a", { href: `#/connections/${enc(u)}` }, u))))
        : empty(`Nobody is in ${room}. Members appear when a device sends {"op":"join","room":"${room}"}.`)),
      el("section", { class: "panel" }, el("h2", {}, "History"), hist.length ? events(hist)
        : empty("No stored messages. Persisted room publishes are kept here.")));
  });
}

// ---------------------------------------------------------------------------------------
// Publish console

function publish(root) {
  const result = el("div", { id: "publish-result", "aria-live": "polite" });
  const form = el("form", { class: "publish", onsubmit: async (e) => {
    e.preventDefault();
    const f = e.target.elements;
    let data, where;
    try {
      data = JSON.parse(f.data.value || "null");
      where = f.where.value.trim() ? JSON.parse(f.where.value) : undefined;
    } catch (err) {
      return result.replaceChildren(el("p", { class: "error", role: "alert" }, `Not valid JSON: ${err.message}`));
    }
    const target = f.target.value, to = f.to.value.trim(), type = f.type.value.trim();
    let path, body;
    if (target === "user") { path = "/api/v1/events"; body = { user_id: to, type, data, persist: f.persist.checked }; }
    else if (target === "room") { path = `/api/v1/rooms/${enc(to)}/events`; body = { type, data, persist: f.persist.checked }; }
    else { path = "/api/v1/events/broadcast"; body = { type, data }; if (where) body.where = where; }
    const r = await api("POST", path, body);
    result.replaceChildren(el("p", { class: r.ok ? "ok" : "error", role: r.ok ? "status" : "alert" },
      r.ok ? `Published (${r.status}): ` : `Refused (${r.status}): `, json(r.data)));
  } },
  el("div", { class: "row" },
    el("label", { for: "pub-target" }, "Target"),
    el("select", { id: "pub-target", name: "target", onchange: (e) => toggle(e.target.value) },
      el("option", { value: "user" }, "A user's stream"), el("option", { value: "room" }, "A room"), el("option", { value: "broadcast" }, "Everyone (broadcast)"))),
  el("div", { class: "row", id: "row-to" }, el("label", { for: "pub-to", id: "pub-to-label" }, "User id"), el("input", { id: "pub-to", name: "to", placeholder: "alice" })),
  el("div", { class: "row" }, el("label", { for: "pub-type" }, "Type"), el("input", { id: "pub-type", name: "type", value: "notice", required: true })),
  el("div", { class: "row" }, el("label", { for: "pub-data" }, "Data (JSON)"), el("textarea", { id: "pub-data", name: "data", rows: 5 }, '{"text": "hello from the admin console"}')),
  el("div", { class: "row", id: "row-persist" }, el("label", { for: "pub-persist" }, "Persist"), el("input", { id: "pub-persist", name: "persist", type: "checkbox", checked: true })),
  el("div", { class: "row", id: "row-where", hidden: true }, el("label", { for: "pub-where" }, "Where (JSON)"), el("input", { id: "pub-where", name: "where", placeholder: '{"region": ["eu", "us"]}' })),
  el("div", { class: "row" }, el("span"), el("button", { type: "submit" }, "Publish")));
  root.append(header("Publish", "Send a message as a backend would, through the server API."), el("section", { class: "panel" }, form), result);
  function toggle(t) {
    document.getElementById("row-to").hidden = t === "broadcast";
    document.getElementById("row-persist").hidden = t === "broadcast";
    document.getElementById("row-where").hidden = t !== "broadcast";
    document.getElementById("pub-to-label").textContent = t === "room" ? "Room" : "User id";
    document.getElementById("pub-to").required = t !== "broadcast";
  }
  toggle("user");
}

export const pages = { overview, connections, stream, rooms, queue, publish };
