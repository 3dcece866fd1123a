// The Node.js anchor of the benchmarks: the events of test-app-protocol.md served the way the
// Socket.IO documentation sets up a cluster on one machine: Node's `cluster` module, the
// primary balancing connections with @socket.io/sticky (least-connection), the workers sharing
// state through @socket.io/cluster-adapter (or @socket.io/redis-adapter with --adapter redis).
//
//   node bench/node/server.mjs --listen 127.0.0.1:3000 --workers 2 [--adapter cluster|redis]
//                              [--redis-url redis://127.0.0.1:6379]
//                              [--ping-interval-ms N] [--ping-timeout-ms N]
//                              [--connect-timeout-ms N] [--max-payload BYTES]
//
// The primary prints `listening on 127.0.0.1:PORT` once, when every worker has set up its
// namespaces and its adapter sees all the workers. SIGTERM/SIGINT: the workers are stopped and
// the primary exits 0.
import cluster from "node:cluster";
import http from "node:http";
import { parseArgs } from "node:util";
import { Server } from "socket.io";
import sticky from "@socket.io/sticky";
import clusterAdapter from "@socket.io/cluster-adapter";

const NAMESPACES = ["/", "/custom"];
const DEFAULT_ACK_ALL_MS = 5000;
// socketioxide's ack timeout, used for the server's own emit-with-ack.
const EMIT_WITH_ACK_TIMEOUT_MS = 5000;
// How long a worker waits for its adapter to see every worker before reporting ready anyway.
const PEERS_WAIT_MS = 15000;

function usage(msg) {
  if (msg) console.error(`server.mjs: ${msg}`);
  console.error(
    "usage: node server.mjs --listen HOST:PORT --workers N [--adapter cluster|redis] [--redis-url URL]\n" +
      "                       [--ping-interval-ms N] [--ping-timeout-ms N] [--connect-timeout-ms N] [--max-payload BYTES]",
  );
  process.exit(2);
}

function parseConfig() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        listen: { type: "string", default: "127.0.0.1:3000" },
        workers: { type: "string", default: "2" },
        adapter: { type: "string", default: "cluster" },
        "redis-url": { type: "string" },
        "ping-interval-ms": { type: "string" },
        "ping-timeout-ms": { type: "string" },
        "connect-timeout-ms": { type: "string" },
        "max-payload": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (e) {
    usage(e.message);
  }
  if (values.help) usage();
  const m = /^(.+):(\d+)$/.exec(values.listen);
  if (!m) usage(`--listen ${values.listen}: expected HOST:PORT`);
  const workers = Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1) usage(`--workers ${values.workers}: expected a number >= 1`);
  if (!["cluster", "redis"].includes(values.adapter)) usage(`--adapter ${values.adapter}: expected cluster or redis`);
  if (values.adapter === "redis" && !values["redis-url"]) usage("--adapter redis needs --redis-url");
  const num = (name) => {
    const v = values[name];
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) usage(`--${name} ${v}: expected a number`);
    return n;
  };
  return {
    host: m[1].replace(/^\[(.*)\]$/, "$1"),
    port: Number(m[2]),
    workers,
    adapter: values.adapter,
    redisUrl: values["redis-url"],
    pingInterval: num("ping-interval-ms"),
    pingTimeout: num("ping-timeout-ms"),
    connectTimeout: num("connect-timeout-ms"),
    maxPayload: num("max-payload"),
  };
}

const config = parseConfig();

if (cluster.isPrimary) {
  runPrimary(config);
} else {
  runWorker(config).catch((e) => {
    console.error(`worker ${process.env.ANCHOR_WORKER_INDEX}: ${e?.stack ?? e}`);
    process.exit(1);
  });
}

// ==== primary ====

function runPrimary(config) {
  const httpServer = http.createServer();
  sticky.setupMaster(httpServer, { loadBalancingMethod: "least-connection" });
  if (config.adapter === "cluster") clusterAdapter.setupPrimary();
  // Keeps Buffers (binary payloads, sticky's forwarded chunks) intact over IPC.
  cluster.setupPrimary({ serialization: "advanced" });

  const ready = new Set();
  let listening = false;
  let announced = false;
  let stopping = false;
  const indexOf = new Map(); // cluster worker id -> slot index

  const announce = () => {
    if (announced || !listening || ready.size < config.workers) return;
    announced = true;
    process.stdout.write(`listening on ${config.host}:${httpServer.address().port}\n`);
  };

  const fork = (index) => {
    const worker = cluster.fork({ ANCHOR_WORKER_INDEX: String(index) });
    indexOf.set(worker.id, index);
    worker.on("message", (msg) => {
      if (msg?.type === "anchor:ready") {
        ready.add(index);
        announce();
      }
    });
  };

  cluster.on("exit", (worker, code, signal) => {
    const index = indexOf.get(worker.id);
    indexOf.delete(worker.id);
    if (stopping) return;
    console.error(`worker ${index} (pid ${worker.process.pid}) died (${signal ?? code}); restarting it`);
    ready.delete(index);
    fork(index);
  });

  httpServer.on("error", (e) => {
    console.error(`cannot listen on ${config.host}:${config.port}: ${e.message}`);
    stop(1);
  });
  httpServer.listen(config.port, config.host, () => {
    listening = true;
    announce();
  });
  for (let i = 0; i < config.workers; i++) fork(i);

  function stop(code) {
    if (stopping) return;
    stopping = true;
    httpServer.close();
    const alive = () => Object.values(cluster.workers ?? {}).filter(Boolean);
    for (const w of alive()) w.process.kill("SIGTERM");
    const started = Date.now();
    const wait = setInterval(() => {
      const left = alive();
      if (left.length === 0 || Date.now() - started > 5000) {
        for (const w of left) w.process.kill("SIGKILL");
        clearInterval(wait);
        process.exit(code);
      }
    }, 20);
  }
  process.on("SIGTERM", () => stop(0));
  process.on("SIGINT", () => stop(0));
}

// ==== worker ====

async function runWorker(config) {
  const index = process.env.ANCHOR_WORKER_INDEX;
  process.on("SIGTERM", () => process.exit(0));
  process.on("SIGINT", () => process.exit(0));
  // The primary is gone: nothing will reach us any more.
  process.on("disconnect", () => process.exit(0));

  let adapter;
  if (config.adapter === "redis") {
    const { createClient } = await import("redis");
    const { createAdapter } = await import("@socket.io/redis-adapter");
    const pubClient = createClient({ url: config.redisUrl });
    const subClient = pubClient.duplicate();
    pubClient.on("error", (e) => console.error(`worker ${index}: redis: ${e.message}`));
    subClient.on("error", (e) => console.error(`worker ${index}: redis: ${e.message}`));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    adapter = createAdapter(pubClient, subClient);
  } else {
    adapter = clusterAdapter.createAdapter();
  }

  const opts = { adapter, serveClient: false };
  if (config.pingInterval !== undefined) opts.pingInterval = config.pingInterval;
  if (config.pingTimeout !== undefined) opts.pingTimeout = config.pingTimeout;
  if (config.connectTimeout !== undefined) opts.connectTimeout = config.connectTimeout;
  if (config.maxPayload !== undefined) opts.maxHttpBufferSize = config.maxPayload;

  // Not listening: the primary hands connections over (sticky's setupWorker injects them).
  const httpServer = http.createServer();
  const io = new Server(httpServer, opts);
  sticky.setupWorker(io);

  for (const name of NAMESPACES) {
    io.of(name).on("connection", (socket) => onConnection(socket, index));
  }

  // Report ready once every namespace's adapter counts all the workers, so the first requests
  // (fetchSockets, acks) do not wait for a peer it has not heard of yet.
  const deadline = Date.now() + PEERS_WAIT_MS;
  for (;;) {
    const counts = await Promise.all(NAMESPACES.map((n) => io.of(n).adapter.serverCount()));
    if (counts.every((c) => c >= config.workers)) break;
    if (Date.now() > deadline) {
      console.error(`worker ${index}: adapter sees ${counts.join("/")} of ${config.workers} servers; reporting ready anyway`);
      break;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  process.send({ type: "anchor:ready", index });
}

// ==== the protocol ====

// Argument `i` as a room name (a string; integers are accepted as their text).
function room(args, i) {
  const v = args[i];
  if (typeof v === "string") return v;
  if (typeof v === "number" && Number.isInteger(v)) return String(v);
  throw new Error(`error: argument ${i + 1} must be a room name`);
}

// Splits a handler's arguments into the event's arguments and the ack callback (if any).
function split(args) {
  const ack = typeof args[args.length - 1] === "function" ? args.pop() : () => {};
  return [args, ack];
}

const arg = (args, i) => (args[i] === undefined ? null : args[i]);
const errorText = (e) => (typeof e?.message === "string" && e.message.startsWith("error: ") ? e.message : `error: ${e?.message ?? e}`);

// Registers an event handler: (args, ack) => ..., errors answered as "error: ..." acks.
function on(socket, event, handler) {
  socket.on(event, async (...raw) => {
    const [args, ack] = split(raw);
    try {
      await handler(args, ack);
    } catch (e) {
      console.error(`${event}: ${e?.message ?? e}`);
      ack(errorText(e));
    }
  });
}

// Registers an event handler that answers nothing: errors are only logged.
function onEvent(socket, event, handler) {
  socket.on(event, (...raw) => {
    const [args] = split(raw);
    try {
      handler(args);
    } catch (e) {
      console.error(`${event}: ${e?.message ?? e}`);
    }
  });
}

// The socket with id `sid`, on any worker, or undefined.
async function findSocket(nsp, args) {
  const sid = args[0];
  if (typeof sid !== "string") throw new Error("error: expected a socket id");
  const sockets = await nsp.fetchSockets();
  return sockets.find((s) => s.id === sid);
}

function onConnection(socket, index) {
  const nsp = socket.nsp;
  socket.emit("auth", socket.handshake.auth ?? {});

  socket.on("message", (...raw) => socket.emit("message-back", ...split(raw)[0]));
  socket.on("message-with-ack", (...raw) => {
    const [args, ack] = split(raw);
    ack(...args);
  });
  socket.on("emit-with-ack", (...raw) => {
    const [args] = split(raw);
    socket.timeout(EMIT_WITH_ACK_TIMEOUT_MS).emit("emit-with-ack", ...args, (err, ...reply) => {
      if (!err) socket.emit("emit-with-ack", ...reply);
    });
  });
  on(socket, "whoami", (_, ack) => ack({ worker: String(index), pid: process.pid, sid: socket.id }));
  on(socket, "join", (args, ack) => {
    socket.join(room(args, 0));
    ack("ok");
  });
  on(socket, "leave", (args, ack) => {
    socket.leave(room(args, 0));
    ack("ok");
  });
  onEvent(socket, "echo", (args) => socket.emit("msg", arg(args, 0)));
  on(socket, "ping_ack", (args, ack) => ack(arg(args, 0)));
  onEvent(socket, "to_all", (args) => nsp.emit("msg", arg(args, 0)));
  onEvent(socket, "to_others", (args) => socket.broadcast.emit("msg", arg(args, 0)));
  onEvent(socket, "to_room", (args) => nsp.to(room(args, 0)).emit("msg", arg(args, 1)));
  onEvent(socket, "to_room_except", (args) =>
    nsp.to(room(args, 0)).except(room(args, 1)).emit("msg", arg(args, 2)),
  );
  on(socket, "count_sockets", async (args, ack) => {
    const op = arg(args, 0) === null ? nsp : nsp.in(room(args, 0));
    ack((await op.fetchSockets()).length);
  });
  on(socket, "rooms", async (_, ack) => {
    // A socket is also in the room named after its id: not a room of the app.
    const sockets = await nsp.fetchSockets();
    const rooms = new Set();
    if (typeof nsp.adapter.allRooms === "function") {
      // Redis adapter: the rooms every server knows, minus the sockets' own rooms.
      const ids = new Set(sockets.map((s) => s.id));
      for (const r of await nsp.adapter.allRooms()) if (!ids.has(r)) rooms.add(r);
    } else {
      // Cluster adapter (no allRooms): the rooms of every socket of the cluster.
      for (const s of sockets) for (const r of s.rooms) if (r !== s.id) rooms.add(r);
    }
    ack([...rooms].sort());
  });
  on(socket, "server_count", async (_, ack) => {
    const n = typeof nsp.adapter.serverCount === "function" ? await nsp.adapter.serverCount() : null;
    ack(n ?? config.workers);
  });
  on(socket, "ack_all", async (args, ack) => {
    const v = arg(args, 0);
    const ms = typeof v === "number" && Number.isFinite(v) ? Math.max(0, Math.floor(v)) : DEFAULT_ACK_ALL_MS;
    // Who should answer: every other socket, as the adapter sees them now.
    const expected = (await nsp.fetchSockets()).filter((s) => s.id !== socket.id).length;
    let replies;
    try {
      replies = await socket.broadcast.timeout(ms).emitWithAck("ask");
    } catch (e) {
      // Timed out: the replies received so far come with the error.
      replies = e?.responses ?? [];
    }
    const acks = replies.length;
    ack({ acks, timeouts: Math.max(0, expected - acks) });
  });
  on(socket, "remote_join", async (args, ack) => {
    const r = room(args, 1);
    const remote = await findSocket(nsp, args);
    if (!remote) return ack("not found");
    nsp.in(remote.id).socketsJoin(r);
    ack("ok");
  });
  on(socket, "remote_leave", async (args, ack) => {
    const r = room(args, 1);
    const remote = await findSocket(nsp, args);
    if (!remote) return ack("not found");
    nsp.in(remote.id).socketsLeave(r);
    ack("ok");
  });
  on(socket, "remote_emit", async (args, ack) => {
    const remote = await findSocket(nsp, args);
    if (!remote) return ack("not found");
    nsp.in(remote.id).emit("msg", arg(args, 1));
    ack("ok");
  });
  on(socket, "kick", async (args, ack) => {
    const remote = await findSocket(nsp, args);
    if (!remote) return ack("not found");
    nsp.in(remote.id).disconnectSockets();
    ack("ok");
  });
  on(socket, "kick_room", (args, ack) => {
    nsp.in(room(args, 0)).disconnectSockets();
    ack("ok");
  });
  on(socket, "room_to_room", (args, ack) => {
    nsp.in(room(args, 0)).socketsJoin(room(args, 1));
    ack("ok");
  });
}
