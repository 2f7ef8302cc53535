// The page's logic: favorites kept per device (localStorage), changes published to the
// user's stream with the SDK, other devices' changes applied as they arrive. Changes made
// while disconnected wait in an outbox and go out after the reconnect.
(async function () {
  const params = new URLSearchParams(location.search);
  const device = params.get("device") || "device-1";
  const user = params.get("user") || "demo";
  const SONGS = ["Blue in Green", "So What", "Naima", "Footprints", "Take Five", "Maiden Voyage", "Cantaloupe Island", "Alone Together"];
  const key = `favorites:${user}:${device}`;
  const favorites = new Set(JSON.parse(localStorage.getItem(key) || "[]"));
  const outbox = [];
  const save = () => localStorage.setItem(key, JSON.stringify([...favorites]));

  const $ = (id) => document.getElementById(id);
  $("device").textContent = device;
  function render() {
    const ul = $("songs");
    ul.textContent = "";
    for (const song of SONGS) {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = song;
      const b = document.createElement("button");
      const on = favorites.has(song);
      b.textContent = on ? "♥" : "♡";
      b.setAttribute("aria-pressed", String(on));
      b.setAttribute("aria-label", `Favorite ${song}`);
      b.onclick = () => toggle(song);
      li.append(name, b);
      ul.append(li);
    }
    const list = SONGS.filter((s) => favorites.has(s));
    $("count").textContent = String(list.length);
    $("favorites").textContent = list.join(", ");
  }

  const { wsUrl } = await (await fetch("/config.json")).json();
  const client = new Syncgate.Client({
    url: wsUrl,
    clientId: device,
    token: async () => (await (await fetch(`/token?user=${encodeURIComponent(user)}`)).json()).token,
    minReconnectDelayMs: 300,
    maxReconnectDelayMs: 5000,
  });
  client.on("state", (s) => {
    $("state").textContent = s;
    $("state").dataset.state = s;
    if (s === "connected") void flush();
  });
  client.on("event", (ev) => {
    const song = ev.data && ev.data.song;
    if (ev.type === "favorite.added") favorites.add(song);
    else if (ev.type === "favorite.removed") favorites.delete(song);
    else return;
    save(); // handled = saved locally; the SDK acks after this returns
    render();
  });
  client.on("error", (e) => console.warn("syncgate:", e.code, e.message));

  async function flush() {
    while (outbox.length > 0 && client.state === "connected") {
      const [type, song] = outbox[0];
      try {
        await client.publish(type, { song });
        outbox.shift();
      } catch (e) {
        return; // disconnected: retried on the next "connected"
      }
    }
  }
  function toggle(song) {
    const on = !favorites.has(song);
    if (on) favorites.add(song);
    else favorites.delete(song);
    save();
    render();
    outbox.push([on ? "favorite.added" : "favorite.removed", song]);
    void flush();
  }

  render();
  window.syncgateClient = client;
  await client.connect();
})();
