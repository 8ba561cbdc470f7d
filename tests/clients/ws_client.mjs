// Node's `ws` package as a Game State Protocol client, for the end-to-end tests.
//
//   node tests/clients/ws_client.mjs <server-url> <game-id> <token>
//
// CONNECT, one STATE_UPDATE (+1 to the player's own score), wait for its ACK and the STATE
// broadcast of that version, HEARTBEAT, DISCONNECT; print one JSON summary line on stdout.
// Exit 0 when the exchange went as the protocol says, 1 otherwise (the summary says why).
import WebSocket from "ws";

const SCALE = Number(process.env.STATESHIFT_TEST_TIMEOUT_SCALE || "1");
const STEP_MS = 10000 * SCALE;

const [url, game, token] = process.argv.slice(2);
if (!url || !game || !token) {
  console.error("usage: ws_client.mjs <server-url> <game-id> <token>");
  process.exit(2);
}

const summary = { ok: false, url: `${url.replace(/\/+$/, "")}/v1/games/${game}`, frames: [] };
const inbox = [];
let waiter = null;
let closed = null;

function wake() {
  if (waiter) {
    const w = waiter;
    waiter = null;
    w();
  }
}

/** The next frame that satisfies `predicate` (frames before it are kept in the summary). */
async function until(what, predicate) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    while (inbox.length) {
      const frame = inbox.shift();
      if (predicate(frame)) return frame;
    }
    if (closed) throw new Error(`closed ${closed.code} while waiting for ${what}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => {
      waiter = resolve;
      setTimeout(wake, left);
    });
  }
}

const ws = new WebSocket(summary.url, { handshakeTimeout: STEP_MS, perMessageDeflate: false });
ws.on("message", (data, isBinary) => {
  const frame = isBinary ? { binary: true } : JSON.parse(data.toString("utf8"));
  summary.frames.push(frame.type ?? "?");
  inbox.push(frame);
  wake();
});
ws.on("close", (code, reason) => {
  closed = { code, reason: reason.toString() };
  wake();
});
ws.on("error", (err) => {
  summary.error = `socket: ${err.message}`;
  closed ??= { code: null, reason: err.message };
  wake();
});

const send = (frame) => ws.send(JSON.stringify(frame));

try {
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  send({ type: "CONNECT", id: "c1", token });
  const connected = await until("CONNECTED", (f) => f.re === "c1");
  if (connected.type !== "CONNECTED") throw new Error(`CONNECT answered ${JSON.stringify(connected)}`);
  summary.connected = {
    player_id: connected.player_id,
    role: connected.role,
    version: connected.state.version,
    scores: connected.state.scores,
  };
  const me = connected.player_id;

  send({ type: "STATE_UPDATE", id: "u1", updates: { score_deltas: { [me]: 1 } } });
  const ack = await until("the ACK of u1", (f) => f.re === "u1");
  if (ack.type !== "ACK") throw new Error(`STATE_UPDATE answered ${JSON.stringify(ack)}`);
  summary.ack = { version: ack.version };
  const broadcast = await until(
    `the STATE broadcast of version ${ack.version}`,
    (f) => f.type === "STATE" && !("re" in f) && f.version === ack.version,
  );
  summary.broadcast = { version: broadcast.version, state: broadcast.state };

  send({ type: "HEARTBEAT", id: "h1" });
  const beat = await until("HEARTBEAT_ACK", (f) => f.re === "h1");
  summary.heartbeat = beat.type;

  send({ type: "DISCONNECT", id: "d1" });
  const bye = await until("DISCONNECTED", (f) => f.re === "d1");
  summary.disconnected = bye.type;
  await until("the close", () => false).catch(() => {});
  summary.close_code = closed ? closed.code : null;
  summary.ok = summary.close_code === 1000;
} catch (err) {
  summary.error = err.message;
  ws.terminate();
}
process.stdout.write(`${JSON.stringify(summary)}\n`);
process.exit(summary.ok ? 0 : 1);
