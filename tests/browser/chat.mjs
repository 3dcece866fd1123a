// Drives the chat example (examples/chat.rs) in Debian's chromium with playwright-core, as two
// users would: two browser contexts on different workers (one of them on polling only), the same
// room, each other in the online list and each other's messages; then `kill -9` of the worker
// serving the first one, which must show `connected` again by itself and reach the other.
//
// Usage: node chat.mjs URL OUT_DIR   (run by tests/browser.rs; prints one JSON line, exit 1 on failure)
// Only the cluster tests/browser.rs started is signalled: the worker pid the page itself shows.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [url, out] = process.argv.slice(2);
if (!url || !out) {
  console.error("usage: node chat.mjs URL OUT_DIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const T = 10_000;
const log = (...a) => console.error("[chat.mjs]", ...a);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});

const sel = (hook) => `[data-test="${hook}"]`;
const text = (page, hook) => page.locator(sel(hook)).innerText();

async function open(name, query) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const websockets = [];
  page.on("websocket", (ws) => websockets.push(ws.url()));
  // Every Engine.IO request's path: the page must take it from the server (`--path`).
  page.on("request", (r) => { const u = new URL(r.url()); if (u.searchParams.has("EIO")) enginePaths.add(u.pathname); });
  page.on("pageerror", (e) => log(name, "page error:", e.message));
  await page.goto(url + query);
  await page.locator(sel("state")).filter({ hasText: /^connected$/ }).waitFor({ timeout: T });
  await page.locator(sel("worker")).filter({ hasText: /^worker \d+ · pid \d+$/ }).waitFor({ timeout: T });
  return { name, context, page, websockets };
}

async function worker(user) {
  const m = /^worker (\d+) · pid (\d+)$/.exec((await text(user.page, "worker")).trim());
  return { index: Number(m[1]), pid: Number(m[2]) };
}

async function joinRoom(user, room) {
  await user.page.fill(sel("name-input"), user.name);
  await user.page.fill(sel("room-input"), room);
  await user.page.click(sel("join-button"));
  await user.page.locator(`${sel("send-button")}:not([disabled])`).waitFor({ timeout: T });
}

async function sees(user, hook, needle, timeout = T) {
  await user.page.locator(`${sel(hook)} > *`).filter({ hasText: needle }).first().waitFor({ timeout });
}

async function say(user, message) {
  await user.page.fill(sel("message-input"), message);
  await user.page.click(sel("send-button"));
}

const result = { ok: false };
const enginePaths = new Set();
try {
  // The script is served from the app itself, with its banner (no internet).
  const js = await (await fetch(new URL("/assets/socket.io.min.js", url))).text();
  result.client_banner = js.split("\n").slice(0, 3).join(" ").match(/Socket\.IO v[\d.]+/)?.[0];
  if (!result.client_banner) throw new Error("the page's script has no Socket.IO banner");

  const alice = await open("alice", "");
  let bob = await open("bob", "?transport=polling");
  // New sessions are balanced: open Bob again until he lands on the other worker.
  for (let i = 0; i < 8 && (await worker(bob)).index === (await worker(alice)).index; i++) {
    await bob.context.close();
    bob = await open("bob", "?transport=polling");
  }
  const [wa, wb] = [await worker(alice), await worker(bob)];
  result.workers = { alice: wa, bob: wb };
  if (wa.index === wb.index) throw new Error(`both pages on worker ${wa.index}`);

  await joinRoom(alice, "lobby");
  await joinRoom(bob, "lobby");
  for (const u of [alice, bob]) {
    await sees(u, "online", "alice");
    await sees(u, "online", "bob");
  }
  await say(alice, "hello from alice");
  await sees(bob, "messages", "hello from alice");
  await say(bob, "hi from bob");
  await sees(alice, "messages", "hi from bob");
  await alice.page.screenshot({ path: join(out, "alice.png") });
  await bob.page.screenshot({ path: join(out, "bob.png") });
  if (bob.websockets.length) throw new Error(`the polling page opened websockets: ${bob.websockets}`);
  result.alice_websockets = alice.websockets.length;
  if (!alice.websockets.length) throw new Error("the default page never upgraded to websocket");

  // Kill -9 the worker serving Alice: her page reconnects by itself, joins again, reaches Bob.
  process.kill(wa.pid, "SIGKILL");
  const killedAt = Date.now();
  await alice.page.locator(sel("state")).filter({ hasNotText: /^connected$/ }).waitFor({ timeout: T });
  await alice.page.locator(sel("state")).filter({ hasText: /^connected$/ }).waitFor({ timeout: T });
  result.reconnected_ms = Date.now() - killedAt;
  if (result.reconnected_ms > T) throw new Error(`reconnected after ${result.reconnected_ms} ms`);
  result.alice_after = await worker(alice);
  await alice.page.locator(`${sel("send-button")}:not([disabled])`).waitFor({ timeout: T });
  await say(alice, "back after the crash");
  await sees(bob, "messages", "back after the crash");
  await alice.page.screenshot({ path: join(out, "alice-after-kill.png") });
  await bob.page.screenshot({ path: join(out, "bob-after-kill.png") });
  result.engine_paths = [...enginePaths];
  result.ok = true;
} catch (e) {
  result.error = String(e && e.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
