// Headless Chromium (Debian's, driven by playwright-core) on stateshift's static page, for
// the browser end-to-end test.
//
//   node tests/clients/browser.mjs <page-url> <screenshot-path>
//
// A line protocol: every line on stdout is one JSON event, every line on stdin one command.
//   -> {"event":"ready", "page": {...}}       the page connected and shows the game
//   <- {"cmd":"click"}     -> {"event":"clicked", "page": {...}}   +1 clicked and shown
//   <- {"cmd":"snapshot"}  -> {"event":"snapshot", "page": {...}}
//   <- {"cmd":"quit"}      -> {"event":"bye", "page": {...}, "screenshot": path}, exit 0
// Any failure: {"event":"error","message":...} and exit 1. End of stdin counts as quit, and
// SIGTERM closes the browser too (playwright's default), so no Chromium outlives the test.
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const SCALE = Number(process.env.STATESHIFT_TEST_TIMEOUT_SCALE || "1");
const STEP_MS = 15000 * SCALE;
const CHROMIUM = process.env.STATESHIFT_CHROMIUM || "/usr/bin/chromium";
// The machine's network is closed: without the background-networking flags Chromium keeps
// trying (and failing) to reach Google's services.
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const [pageUrl, screenshotPath] = process.argv.slice(2);
if (!pageUrl || !screenshotPath) {
  console.error("usage: browser.mjs <page-url> <screenshot-path>");
  process.exit(2);
}

const emit = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const problems = []; // page errors and console errors: the test asserts there are none

let browser = null;
let page = null;

/** What the page shows, read from the DOM as a user would see it. */
async function snapshot() {
  const shown = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent.trim();
    const scores = {};
    for (const row of document.querySelectorAll("#scores tr[data-player]")) {
      scores[row.dataset.player] = Number(row.querySelector("td.score").textContent);
    }
    const ack = document.getElementById("last-ack").dataset;
    return {
      connection: document.getElementById("conn-status").dataset.state,
      connection_text: text("conn-status"),
      opens: Number(text("opens")),
      closes: Number(text("closes")),
      player: text("me"),
      role: text("role"),
      game: text("game-name"),
      status: text("game-status"),
      current_player: text("current-player"),
      version: Number(text("version")),
      my_score: Number(text("my-score")),
      scores,
      last_ack: ack.re ? { re: ack.re, version: Number(ack.version) } : null,
      button_enabled: !document.getElementById("plus-one").disabled,
    };
  });
  return { ...shown, problems: [...problems] };
}

async function click() {
  const before = await snapshot();
  await page.click("#plus-one", { timeout: STEP_MS });
  // Done when the server's broadcast shows the new score and the ACK of this update arrived.
  await page.waitForFunction(
    ([score, version]) =>
      document.getElementById("my-score").textContent === String(score) &&
      Number(document.getElementById("last-ack").dataset.version || 0) > version,
    [before.my_score + 1, before.last_ack ? before.last_ack.version : 0],
    { timeout: STEP_MS },
  );
  return snapshot();
}

async function quit() {
  const shown = await snapshot();
  await page.screenshot({ path: screenshotPath, fullPage: true });
  await browser.close();
  browser = null;
  emit({ event: "bye", page: shown, screenshot: screenshotPath });
  process.exit(0);
}

async function fail(err) {
  emit({ event: "error", message: err && err.stack ? err.stack : String(err), problems });
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}

try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    timeout: STEP_MS * 2,
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 860 } });
  page.on("pageerror", (err) => problems.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => {
    if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
  });
  await page.goto(pageUrl, { timeout: STEP_MS });
  await page.waitForFunction(
    () =>
      document.getElementById("conn-status").dataset.state === "connected" &&
      !document.getElementById("plus-one").disabled,
    null,
    { timeout: STEP_MS },
  );
  emit({ event: "ready", page: await snapshot() });
} catch (err) {
  await fail(err);
}

// One command at a time, in order.
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  try {
    const { cmd } = JSON.parse(line);
    if (cmd === "click") emit({ event: "clicked", page: await click() });
    else if (cmd === "snapshot") emit({ event: "snapshot", page: await snapshot() });
    else if (cmd === "quit") await quit();
    else throw new Error(`unknown command ${JSON.stringify(cmd)}`);
  } catch (err) {
    await fail(err);
  }
}
// stdin closed without a quit: the test went away; leave no browser behind.
if (browser) await browser.close().catch(() => {});
process.exit(1);
