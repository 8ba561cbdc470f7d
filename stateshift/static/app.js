// A browser client of the Game State Protocol (version 1): CONNECT, then show the game's
// state as the server broadcasts it, and send +1 score updates. No framework, no build.
//
// The page is also the browser end-to-end test's subject: it counts the WebSocket's `open`
// and `close` events in the DOM (#opens, #closes) so a test can prove that a proxy flip
// happened under the same connection.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const HEARTBEAT_MS = 20000; // the servers close a silent connection after 60 s
  const LOG_LINES = 40;
  // Close codes after which reconnecting would only be refused again.
  const FINAL_CLOSES = new Set([1000, 4401, 4403, 4404]);

  const params = new URLSearchParams(location.search);
  const pageServer = location.host
    ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`
    : "ws://127.0.0.1:8765";

  const view = {
    url: $("ws-url"), game: $("game-id"), token: $("token"),
    connect: $("connect"), disconnect: $("disconnect"), plusOne: $("plus-one"),
    status: $("conn-status"), note: $("action-note"),
  };
  view.url.value = params.get("ws") || pageServer;
  view.game.value = params.get("game") || "";
  view.token.value = params.get("token") || "";

  let ws = null;
  let wanted = false; // the user wants a connection (reconnect after an unexpected close)
  let retry = 0;
  let retryTimer = null;
  let heartbeat = null;
  let seq = 0;
  let connectId = null;
  let me = null;
  let role = null;
  let state = null;
  const counts = { opens: 0, closes: 0 };
  const pending = new Set(); // ids of updates sent and not yet answered

  const nextId = (prefix) => `${prefix}${++seq}`;

  function setStatus(kind, text) {
    view.status.dataset.state = kind;
    view.status.textContent = text;
  }

  function log(direction, text) {
    const item = document.createElement("li");
    item.className = direction;
    const time = new Date().toISOString().slice(11, 23);
    item.textContent = `${time} ${direction === "out" ? "→" : direction === "in" ? "←" : "·"} ${text}`;
    const list = $("log");
    list.prepend(item);
    while (list.children.length > LOG_LINES) list.lastChild.remove();
  }

  // One readable line per frame for the message log (the token is never shown).
  function describe(msg) {
    switch (msg.type) {
      case "CONNECT": return `CONNECT ${msg.id}`;
      case "STATE_UPDATE": return `STATE_UPDATE ${msg.id} ${JSON.stringify(msg.updates)}`;
      case "CONNECTED": return `CONNECTED ${msg.re}: ${msg.player_id} (${msg.role}), v${msg.state ? msg.state.version : "–"}`;
      case "STATE": return `STATE v${msg.version}${msg.re ? ` (${msg.re})` : ""}`;
      case "ACK": return `ACK ${msg.re} → v${msg.version}`;
      case "ERROR": return `ERROR ${msg.re ?? "–"} ${msg.code}: ${msg.message}`;
      case "HEARTBEAT_ACK": return `HEARTBEAT_ACK ${msg.re} ${msg.server_time}`;
      default: return msg.id ? `${msg.type} ${msg.id}` : JSON.stringify(msg);
    }
  }

  function send(frame) {
    ws.send(JSON.stringify(frame));
    log("out", describe(frame));
  }

  function formatTimer(ms) {
    const total = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
  }

  // "2026-11-26T10:00:00.123Z" -> "10:00:00.123 UTC" (the full stamp is the tooltip)
  function formatTime(stamp) {
    const match = /T(\d{2}:\d{2}:\d{2}(?:\.\d+)?)Z$/.exec(stamp);
    return match ? `${match[1]} UTC` : stamp;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function emptyRow(body, columns, text) {
    const row = document.createElement("tr");
    row.className = "empty";
    const td = cell(row, text);
    td.colSpan = columns;
    body.replaceChildren(row);
  }

  function render() {
    const s = state;
    $("game-name").textContent = s ? s.game_id : view.game.value || "–";
    const version = $("version");
    if (s && version.textContent !== String(s.version)) {
      version.textContent = String(s.version);
      version.classList.remove("flash");
      void version.offsetWidth; // restart the animation
      version.classList.add("flash");
    }
    const status = $("game-status");
    status.textContent = s ? s.status : "–";
    status.dataset.status = s ? s.status : "";
    $("current-player").textContent = s ? (s.current_player ?? "nobody") : "–";
    const updated = $("updated-at");
    updated.textContent = s && s.updated_at ? formatTime(s.updated_at) : "–";
    updated.title = s && s.updated_at ? s.updated_at : "";
    const mine = s && me !== null && me in s.scores ? s.scores[me] : null;
    $("my-score").textContent = mine === null ? "–" : String(mine);

    const scores = $("scores");
    const players = s ? Object.keys(s.scores).sort() : [];
    if (players.length === 0) {
      emptyRow(scores, 3, "no players yet");
    } else {
      const top = Math.max(1, ...players.map((p) => Math.abs(s.scores[p])));
      scores.replaceChildren(...players.map((p) => {
        const row = document.createElement("tr");
        row.dataset.player = p;
        if (p === me) row.classList.add("me");
        if (p === s.current_player) row.classList.add("turn");
        const name = cell(row, p);
        if (p === me) name.append(Object.assign(document.createElement("span"), { className: "you", textContent: "you" }));
        const score = cell(row, String(s.scores[p]), "num score");
        score.style.setProperty("--share", `${Math.round((Math.abs(s.scores[p]) / top) * 100)}%`);
        cell(row, p in s.timer ? formatTimer(s.timer[p]) : "–", "num mono");
        return row;
      }));
    }

    const settings = $("settings");
    const keys = s ? Object.keys(s.settings).sort() : [];
    if (keys.length === 0) {
      emptyRow(settings, 2, "no settings");
    } else {
      settings.replaceChildren(...keys.map((k) => {
        const row = document.createElement("tr");
        cell(row, k, "mono");
        cell(row, s.settings[k], "mono");
        return row;
      }));
    }
    updateControls();
  }

  function updateControls() {
    const open = ws !== null && ws.readyState === WebSocket.OPEN && me !== null;
    const canPlay = open && role === "player" && state !== null && state.status !== "finished";
    view.plusOne.disabled = !canPlay;
    view.note.textContent = !open ? "" : role !== "player" ? `a ${role} cannot change scores`
      : state && state.status === "finished" ? "the game is finished"
      : pending.size ? "sent, waiting for the server…" : "";
    view.connect.disabled = wanted;
    view.disconnect.disabled = !wanted;
    for (const input of [view.url, view.game, view.token]) input.disabled = wanted;
  }

  function onFrame(msg) {
    switch (msg.type) {
      case "CONNECTED":
        me = msg.player_id;
        role = msg.role;
        retry = 0;
        $("me").textContent = me;
        $("role").textContent = role;
        setStatus("connected", "connected");
        if (msg.state) state = msg.state;
        break;
      case "STATE":
        // Broadcasts arrive in version order; a GET_STATE answer (with `re`) may be older.
        if (!state || msg.version >= state.version) state = msg.state;
        break;
      case "ACK":
        pending.delete(msg.re);
        $("last-ack").textContent = `${msg.re} → v${msg.version}`;
        $("last-ack").dataset.re = msg.re;
        $("last-ack").dataset.version = String(msg.version);
        break;
      case "ERROR":
        pending.delete(msg.re);
        if (msg.re === connectId) setStatus("error", `refused: ${msg.code}`);
        view.note.textContent = `${msg.code}: ${msg.message}`;
        break;
      default:
        break;
    }
    render();
  }

  function open() {
    clearTimeout(retryTimer);
    const base = view.url.value.trim().replace(/\/+$/, "");
    const game = view.game.value.trim();
    if (!base || !game || !view.token.value.trim()) {
      setStatus("error", "server, game and token are needed");
      return;
    }
    wanted = true;
    me = null;
    role = null;
    setStatus("connecting", retry ? `reconnecting (try ${retry + 1})…` : "connecting…");
    let socket;
    try {
      socket = new WebSocket(`${base}/v1/games/${encodeURIComponent(game)}`);
    } catch (err) {
      wanted = false;
      setStatus("error", `bad server URL: ${err.message}`);
      updateControls();
      return;
    }
    ws = socket;
    socket.addEventListener("open", () => {
      counts.opens += 1;
      $("opens").textContent = String(counts.opens);
      connectId = nextId("c");
      send({ type: "CONNECT", id: connectId, token: view.token.value.trim() });
      heartbeat = setInterval(() => send({ type: "HEARTBEAT", id: nextId("h") }), HEARTBEAT_MS);
    });
    socket.addEventListener("message", (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        log("in", `(not JSON) ${String(event.data).slice(0, 80)}`);
        return;
      }
      log("in", describe(msg));
      onFrame(msg);
    });
    socket.addEventListener("close", (event) => {
      counts.closes += 1;
      $("closes").textContent = String(counts.closes);
      clearInterval(heartbeat);
      pending.clear();
      log("info", `closed ${event.code}${event.reason ? ` (${event.reason})` : ""}`);
      if (ws !== socket) return;
      ws = null;
      if (wanted && !FINAL_CLOSES.has(event.code)) {
        const delay = Math.min(10000, 500 * 2 ** retry);
        retry += 1;
        setStatus("connecting", `closed ${event.code}, retrying in ${(delay / 1000).toFixed(1)} s`);
        retryTimer = setTimeout(open, delay);
      } else {
        wanted = false;
        if (view.status.dataset.state !== "error") setStatus("closed", `closed (${event.code})`);
      }
      updateControls();
    });
    updateControls();
  }

  view.plusOne.addEventListener("click", () => {
    if (!ws || me === null) return;
    const id = nextId("u");
    pending.add(id);
    send({ type: "STATE_UPDATE", id, updates: { score_deltas: { [me]: 1 } } });
    updateControls();
  });

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    retry = 0;
    open();
  });

  view.disconnect.addEventListener("click", () => {
    wanted = false;
    clearTimeout(retryTimer);
    if (ws && ws.readyState === WebSocket.OPEN) send({ type: "DISCONNECT", id: nextId("d") });
    else if (ws) ws.close();
    updateControls();
  });

  render();
  if (view.game.value && view.token.value) open();
})();
