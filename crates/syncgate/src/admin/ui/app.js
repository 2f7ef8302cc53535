// syncgate admin UI: sign-in, the API helper (session cookie + CSRF header), and the router.
// Every request goes to this host's HTTP API; the pages are in pages.js.
import { pages } from "./pages.js";

const state = { csrf: null, instance: "", timers: [] };

/** Calls the HTTP API with the session; state-changing calls carry the CSRF token. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (resp.status === 401 && !path.endsWith("/admin/session")) showSignIn();
  return { ok: resp.ok, status: resp.status, data };
}

/** Runs `fn` now and every `ms` while the current page is shown. */
export function every(ms, fn) {
  fn();
  state.timers.push(setInterval(fn, ms));
}

export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

export function instanceId() { return state.instance; }

function stopTimers() {
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
}

function showSignIn() {
  stopTimers();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  document.getElementById("page").replaceChildren();
  document.getElementById("signin").hidden = false;
  document.getElementById("admin-key").focus();
}

function signedIn(session) {
  state.csrf = session.csrf_token;
  state.instance = session.instance_id;
  document.getElementById("signin").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
  document.getElementById("node-id").textContent = session.instance_id;
  route();
}

function route() {
  if (!state.csrf) return;
  stopTimers();
  const [name, ...rest] = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const page = pages[name] || pages.overview;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const root = document.getElementById("page");
  root.replaceChildren();
  page(root, rest.map(decodeURIComponent));
}

async function start() {
  document.getElementById("signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("admin-key");
    const err = document.getElementById("signin-error");
    err.textContent = "";
    const r = await api("POST", "/api/v1/admin/session", { key: input.value });
    if (r.ok) {
      input.value = "";
      signedIn(r.data);
    } else {
      err.textContent = r.data?.error?.message || `sign-in failed (${r.status})`;
    }
  });
  document.getElementById("sign-out").addEventListener("click", async () => {
    await api("DELETE", "/api/v1/admin/session");
    state.csrf = null;
    showSignIn();
  });
  window.addEventListener("hashchange", route);
  const r = await api("GET", "/api/v1/admin/session");
  if (r.ok) signedIn(r.data);
  else showSignIn();
}

start();
