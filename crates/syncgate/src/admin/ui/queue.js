// The Queue page: the outbound queue's depths and circuits, and its dead letters with Retry,
// Delete and Retry all. Data: GET /api/v1/queue/stats and /api/v1/queue/dead.
import { api, every, el } from "./app.js";
import { ago, empty, errorBox, header, kv, num, table } from "./ui.js";

const enc = encodeURIComponent;

export function queue(root) {
  root.append(header("Queue", "The outbound queue (webhooks, push): what waits, what is in flight, each endpoint's circuit, and the dead letters."),
    el("div", { id: "queue-body" }));
  const body = document.getElementById("queue-body");
  const status = el("p", { class: "summary", role: "status", "aria-live": "polite" });
  const top = el("div"), rest = el("div");
  let shown = null;
  const refresh = async () => {
    const [s, d] = await Promise.all([api("GET", "/api/v1/queue/stats"), api("GET", "/api/v1/queue/dead?limit=50")]);
    if (!s.ok || !d.ok) {
      shown = null;
      return body.replaceChildren(errorBox(s.ok ? d : s));
    }
    if (!body.contains(top)) body.replaceChildren(top, rest);
    top.replaceChildren(figures(s.data));
    // Tables are rebuilt only when they change, so buttons stay put under the pointer.
    const key = JSON.stringify([s.data.circuits, d.data.jobs]);
    if (key !== shown) {
      shown = key;
      rest.replaceChildren(circuits(s.data.circuits), deadLetters(d.data.jobs, status, refresh));
    }
  };
  every(2000, refresh);
}

function figures(s) {
  return el("div", { class: "cards" },
    kv("Express", num(s.depth.express)), kv("Urgent", num(s.depth.urgent)), kv("Normal", num(s.depth.normal)),
    kv("Delayed", num(s.delayed)), kv("In flight", num(s.in_flight)), kv("Dead letters", num(s.dead)),
    kv("Oldest job", s.oldest_age_ms ? `${num(s.oldest_age_ms / 1000)} s` : "–"));
}

function circuits(list) {
  return el("section", { class: "panel" }, el("h2", {}, "Circuits"), list.length
    ? table(["Endpoint", "State", "Consecutive failures"], list.map((c) => el("tr", {},
      el("td", {}, c.endpoint), el("td", {}, el("span", { class: `state ${c.state}` }, c.state.replace("_", "-"))),
      el("td", {}, num(c.failures)))), "Circuits")
    : empty("No endpoint has been called yet. Circuits appear once webhooks.endpoints receive jobs."));
}

function deadLetters(jobs, status, refresh) {
  const act = async (button, method, path, done) => {
    button.disabled = true;
    const r = await api(method, path);
    status.textContent = r.ok ? done(r.data) : `Refused (${r.status}): ${r.data?.error?.message || ""}`;
    await refresh();
  };
  const rows = jobs.map((j) => el("tr", {},
    el("td", {}, el("code", {}, j.id)), el("td", {}, j.kind), el("td", {}, j.endpoint || "–"), el("td", {}, num(j.attempts)),
    el("td", { class: "ua", title: j.last_error || "" }, j.last_error || "–"), el("td", {}, ago(j.failed_at)),
    el("td", { title: JSON.stringify(j.payload) }, j.payload?.type || j.kind),
    el("td", { class: "actions" },
      el("button", { type: "button", "aria-label": `Retry ${j.id}`,
        onclick: (e) => act(e.target, "POST", `/api/v1/queue/dead/${enc(j.id)}/retry`, () => `Queued ${j.id} again.`) }, "Retry"),
      el("button", { type: "button", class: "danger", "aria-label": `Delete ${j.id}`,
        onclick: (e) => act(e.target, "DELETE", `/api/v1/queue/dead/${enc(j.id)}`, () => `Deleted ${j.id}.`) }, "Delete"))));
  return el("section", { class: "panel" },
    el("div", { class: "panel-head" }, el("h2", {}, "Dead letters"), jobs.length
      ? el("button", { type: "button", onclick: (e) => act(e.target, "POST", "/api/v1/queue/dead/retry", (d) => `Queued ${d.retried} again.`) }, "Retry all")
      : null),
    status,
    jobs.length ? table(["Job", "Kind", "Endpoint", "Attempts", "Last error", "Failed", "Event", ""], rows, "Dead letters")
      : empty("No dead letters. A job lands here after queue.max_attempts failed attempts, or at once on a permanent 4xx."));
}
