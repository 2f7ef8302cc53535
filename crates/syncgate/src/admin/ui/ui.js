// Small building blocks shared by the admin UI's pages: number and time formats, cards,
// tables, empty states, error boxes, search forms.
import { el } from "./app.js";

export const fmt = new Intl.NumberFormat("en");
export const num = (n) => (typeof n === "number" ? fmt.format(Math.round(n * 10) / 10) : "–");

export function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function duration(s) {
  if (typeof s !== "number") return "–";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${s % 60}s` : `${s}s`;
}

export function header(title, lead) {
  return el("div", { class: "page-head" }, el("h1", {}, title), lead ? el("p", { class: "muted" }, lead) : null);
}

export function card(label, id, hint) {
  return el("div", { class: "card" },
    el("div", { class: "label" }, label),
    el("div", { class: "value", id, "aria-live": "polite" }, "–"),
    hint ? el("div", { class: "hint", id: `${id}-hint` }, hint) : null);
}

export function set(id, text) {
  const e = document.getElementById(id);
  if (e) e.textContent = text;
}

export function empty(text, ...more) {
  return el("div", { class: "empty" }, el("p", {}, text), ...more);
}

export function table(cols, rows, label) {
  return el("table", { "aria-label": label },
    el("thead", {}, el("tr", {}, cols.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, rows));
}

export function errorBox(r) {
  return el("p", { class: "error", role: "alert" }, r.data?.error?.message || `request failed (${r.status})`);
}

export function json(v) {
  return el("code", { class: "json" }, JSON.stringify(v));
}

export function searchForm(id, label, placeholder, value, onsubmit) {
  return el("form", { class: "search", role: "search", onsubmit: (e) => { e.preventDefault(); onsubmit(e.target.elements.q.value.trim()); } },
    el("label", { for: id }, label),
    el("input", { id, name: "q", type: "search", placeholder, value: value || "", autocomplete: "off", required: true }),
    el("button", { type: "submit" }, "Show"));
}

export function kv(label, value) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

export function events(list) {
  return table(["Id", "Type", "Data", "Time"], list.map((e) => el("tr", {},
    el("td", {}, el("code", {}, e.id)), el("td", {}, e.type), el("td", {}, json(e.data)),
    el("td", {}, new Date(e.ts).toLocaleTimeString()))), "Messages");
}
