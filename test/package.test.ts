/**
 * The built package, as users load it: `import` and `require` of `effect-websocket-manager/promise`
 * in a separate Node process (Node resolves the package's own name through its `exports`).
 */
import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"

const root = fileURLToPath(new URL("..", import.meta.url))
const run = promisify(execFile)

// Reproduces the documented examples: accept, getActiveConnections, getUserSockets, broadcast, close.
const scenario = `
  const manager = new WebSocketManager({ maxConnections: 10, heartbeatInterval: 30000, heartbeatTimeout: 10000,
    authentication: { validator: (request) => new URL(request.url).searchParams.get("user") } });
  const server = await serve({ port: 0, fetch: async (request) => {
    const { socket, response, context } = await manager.accept(request);
    socket.addEventListener("message", (event) => socket.send("echo:" + event.data));
    return response;
  } });
  const ws = new WebSocket(server.url.replace("http", "ws") + "/?user=user123");
  const messages = [];
  ws.on("message", (data) => messages.push(data.toString()));
  await new Promise((resolve) => ws.on("open", resolve));
  ws.send("hi");
  await new Promise((resolve) => setTimeout(resolve, 100));
  const count = manager.getActiveConnections();
  const sockets = manager.getUserSockets("user123");
  const reached = await manager.broadcast({ type: "announcement", message: "Hello!" });
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve(code + ":" + reason)));
  await manager.close(1000, "Server shutdown");
  const error = await manager.accept(new Request("http://x/")).catch((e) => e);
  await server.close();
  console.log(JSON.stringify({ count, users: sockets.length, reached, messages, closed: await closed,
    tag: error._tag, isError: error instanceof Error }));
`

const expected = {
  count: 1,
  users: 1,
  reached: 1,
  messages: ["echo:hi", JSON.stringify({ type: "announcement", message: "Hello!" })],
  closed: "1000:Server shutdown",
  tag: "ManagerClosed",
  isError: true
}

// The documented Broadcaster and WebSocketPool examples, against a manager served by the same package.
const channelsAndPool = `
  const manager = new WebSocketManager();
  const broadcaster = new Broadcaster();
  const server = await serve({ port: 0, fetch: async (request) => {
    const { socket, response } = await manager.accept(request);
    broadcaster.subscribe(socket, "chat");
    return response;
  } });
  const channel = broadcaster.createChannel("chat");
  const pool = new WebSocketPool({ url: server.url.replace("http", "ws"), maxConnections: 2, acquireTimeout: 2000 });
  const connection = await pool.acquire();
  const got = new Promise((resolve) => connection.once("message", (data) => resolve(data.toString())));
  while (channel.subscriberCount < 1) await new Promise((resolve) => setTimeout(resolve, 10));
  const reached = await broadcaster.broadcast("chat", { type: "message", text: "Hello!" });
  const counts = [pool.getActiveCount(), pool.getIdleCount()];
  pool.release(connection);
  const health = pool.getHealthStatus();
  console.log(JSON.stringify({ reached, message: await got, counts, after: [pool.getActiveCount(), pool.getIdleCount()],
    healthy: health.default.healthy }));
  await pool.close(); await broadcaster.close(); await manager.close(); await server.close();
`

const channelsAndPoolExpected = {
  reached: 1,
  message: JSON.stringify({ type: "message", text: "Hello!" }),
  counts: [1, 0],
  after: [0, 1],
  healthy: true
}

// `npm test` builds dist/ first.
describe("the built package", () => {
    it("works with import", async () => {
      const source = `import { WebSocketManager, serve } from "effect-websocket-manager/promise";
        import WebSocket from "ws"; ${scenario}`
      const { stdout } = await run(process.execPath, ["--input-type=module", "-e", source], { cwd: root })
      expect(JSON.parse(stdout)).toEqual(expected)
    })

    it("works with require", async () => {
      const source = `const { WebSocketManager, serve } = require("effect-websocket-manager/promise");
        const WebSocket = require("ws"); (async () => { ${scenario} })()`
      const { stdout } = await run(process.execPath, ["-e", source], { cwd: root })
      expect(JSON.parse(stdout)).toEqual(expected)
    })

    it("runs the documented Broadcaster and WebSocketPool examples, with import and require", async () => {
      const esm = await run(process.execPath, ["--input-type=module", "-e",
        `import { Broadcaster, WebSocketManager, WebSocketPool, serve } from "effect-websocket-manager/promise"; ${channelsAndPool}`], { cwd: root })
      expect(JSON.parse(esm.stdout)).toEqual(channelsAndPoolExpected)
      const cjs = await run(process.execPath, ["-e",
        `const { Broadcaster, WebSocketManager, WebSocketPool, serve } = require("effect-websocket-manager/promise"); (async () => { ${channelsAndPool} })()`], { cwd: root })
      expect(JSON.parse(cjs.stdout)).toEqual(channelsAndPoolExpected)
    })

    it("exposes the Effect API from the main entry in both formats", async () => {
      const check = `console.log(typeof m.WebSocketManager.layer, typeof m.NodeServer.serve, new m.PoolAcquireTimeout({ timeoutMillis: 1 })._tag)`
      const esm = await run(process.execPath, ["--input-type=module", "-e", `import * as m from "effect-websocket-manager"; ${check}`], { cwd: root })
      const cjs = await run(process.execPath, ["-e", `const m = require("effect-websocket-manager"); ${check}`], { cwd: root })
      expect(esm.stdout.trim()).toBe("function function PoolAcquireTimeout")
      expect(cjs.stdout.trim()).toBe("function function PoolAcquireTimeout")
    })
})
