// Drives a running cluster with the official socket.io-client over every transport and prints one
// JSON line with what it observed, then checks one broadcast (`to_all`) reaches clients of every
// transport on every worker. Used by tests/js_client.rs and tests/tls.rs; run by hand with
//   node tests/js/connect.mjs http://127.0.0.1:3000 [clients-per-transport]
// An https:// URL runs everything over TLS (trust a test CA with NODE_EXTRA_CA_CERTS).
// SIO_TEST_PARSER=msgpack makes every client use socket.io-msgpack-parser (for a cluster started
// with --parser msgpack) and checks that a client with the default parser cannot connect.
// SIO_TEST_ACK_TIMEOUT=1 also checks that an ack the client never sends times out on the
// server (reported as `ackTimeout`, the server's `emit-with-ack-timeout` payload).
import { io } from "socket.io-client";
import msgpackParser from "socket.io-msgpack-parser";

const parser = process.env.SIO_TEST_PARSER === "msgpack" ? msgpackParser : undefined;

const url = process.argv[2];
const perTransport = Number(process.argv[3] ?? 5);
if (!url || !/^https?:\/\/127\.0\.0\.1:/.test(url)) {
  console.error("usage: node connect.mjs http[s]://127.0.0.1:PORT [clients-per-transport]");
  process.exit(2);
}

const withTimeout = (p, ms, what) =>
  Promise.race([
    p,
    new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms)),
  ]);

function connect(opts) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { reconnection: false, timeout: 10000, ...(parser ? { parser } : {}), ...opts });
    const auth = new Promise((res) => socket.once("auth", res));
    socket.once("connect", () => resolve({ socket, auth }));
    socket.once("connect_error", (e) => reject(new Error(`connect_error: ${e.message}`)));
  });
}

async function scenario(name, opts, wantTransport) {
  const token = `${name}-${Math.random().toString(36).slice(2)}`;
  const { socket, auth } = await withTimeout(connect({ ...opts, auth: { token } }), 15000, `${name} connect`);
  if (wantTransport === "websocket" && socket.io.engine.transport.name !== "websocket") {
    await withTimeout(
      new Promise((res) => socket.io.engine.once("upgrade", res)),
      10000,
      `${name} upgrade`,
    );
  }
  const authPayload = await withTimeout(auth, 5000, `${name} auth event`);
  const who = [];
  for (let i = 0; i < 5; i++) {
    who.push(await withTimeout(socket.emitWithAck("whoami"), 5000, `${name} whoami`));
  }
  const bin = Buffer.from([0, 1, 2, 253, 254, 255]);
  const echoed = withTimeout(
    new Promise((res) => socket.once("message-back", (...args) => res(args))),
    5000,
    `${name} message-back`,
  );
  socket.emit("message", "text", 42, bin, { nested: true });
  const back = await echoed;
  const acked = await withTimeout(
    new Promise((res) => socket.emit("message-with-ack", 1, "two", { three: 3 }, (...args) => res(args))),
    5000,
    `${name} ack`,
  );
  const result = {
    transport: socket.io.engine.transport.name,
    socketId: socket.id,
    authOk: authPayload?.token === token,
    workers: [...new Set(who.map((w) => w.worker))],
    sidsMatch: who.every((w) => w.sid === socket.id),
    echoOk:
      back.length === 4 &&
      back[0] === "text" &&
      back[1] === 42 &&
      back[2] instanceof Uint8Array &&
      Buffer.compare(Buffer.from(back[2]), bin) === 0 &&
      back[3]?.nested === true,
    ackOk: JSON.stringify(acked) === JSON.stringify([1, "two", { three: 3 }]),
  };
  socket.disconnect();
  return result;
}

// Two clients per transport stay connected; one of them emits `to_all`: every one of them,
// whichever worker serves it, must get the `msg` exactly once.
async function broadcast(modes) {
  const clients = [];
  for (const [, opts] of modes) {
    for (let i = 0; i < 2; i++) {
      const { socket } = await withTimeout(connect(opts), 15000, "broadcast connect");
      clients.push(socket);
    }
  }
  const workers = new Set();
  for (const s of clients) {
    workers.add((await withTimeout(s.emitWithAck("whoami"), 5000, "broadcast whoami")).worker);
  }
  const token = `b-${Math.random().toString(36).slice(2)}`;
  const counts = clients.map(() => 0);
  clients.forEach((s, i) => s.on("msg", (m) => { if (m === token) counts[i] += 1; }));
  clients[0].emit("to_all", token);
  await withTimeout(
    new Promise((res) => {
      const t = setInterval(() => { if (counts.every((c) => c >= 1)) { clearInterval(t); res(); } }, 20);
    }),
    5000,
    `broadcast delivery (counts ${counts})`,
  );
  // Late duplicates would show here.
  await new Promise((res) => setTimeout(res, 200));
  for (const s of clients) s.disconnect();
  return { clients: clients.length, counts, workers: [...workers].sort() };
}

// The server asks this client for an ack it never gets: the server's ack timeout fires and it
// says so with `emit-with-ack-timeout`.
async function ackTimeout() {
  const { socket } = await withTimeout(connect({ transports: ["websocket"] }), 15000, "ack-timeout connect");
  socket.on("emit-with-ack", () => {}); // no ack callback called: never answers
  const sent = Date.now();
  const timedOut = withTimeout(
    new Promise((res) => socket.once("emit-with-ack-timeout", res)),
    30000,
    "emit-with-ack-timeout",
  );
  socket.emit("emit-with-ack", "unanswered");
  const reply = await timedOut;
  socket.disconnect();
  return { ...reply, client_ms: Date.now() - sent };
}

// With the msgpack parser on the server, a client with the default parser must not get in.
async function defaultParserClient() {
  const socket = io(url, { reconnection: false, timeout: 5000, transports: ["websocket"] });
  const connected = await new Promise((res) => {
    socket.once("connect", () => res(true));
    socket.once("connect_error", () => res(false));
    setTimeout(() => res(false), 5000);
  });
  socket.disconnect();
  return connected;
}

const out = { ok: true, results: [] };
try {
  const modes = [
    ["websocket", { transports: ["websocket"] }, "websocket"],
    ["polling", { transports: ["polling"] }, "polling"],
    ["upgrade", { transports: ["polling", "websocket"] }, "websocket"],
  ];
  for (const [name, opts, want] of modes) {
    const runs = await Promise.all(
      Array.from({ length: perTransport }, () => scenario(name, opts, want)),
    );
    out.results.push(...runs.map((r) => ({ mode: name, ...r })));
  }
  out.broadcast = await broadcast(modes);
  if (process.env.SIO_TEST_ACK_TIMEOUT === "1") out.ackTimeout = await ackTimeout();
  if (parser) out.defaultParserConnected = await defaultParserClient();
} catch (e) {
  out.ok = false;
  out.error = String(e?.stack ?? e);
}
console.log(JSON.stringify(out));
process.exit(0);
