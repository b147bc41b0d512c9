/**
 * An idle-connection server under test, one variant per process, reporting its memory after GC:
 * `ws` (with the heartbeat its README recommends), `socket.io`, or `manager` (this library), and
 * for the manager what it holds (fibers, pending upgrades, its registry's maps); bench/churn uses it too.
 * Every variant pings on the interval and timeout given (socket.io: `pingInterval`/`pingTimeout`).
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { Server as SocketIOServer } from "socket.io"
import { registries } from "../../src/internal/registry.js"
import { serve, WebSocketManager } from "../../src/promise/index.js"
import { listenWithHeartbeat } from "../wsHeartbeat.js"

const variant = process.argv[2] as "ws" | "socket.io" | "manager"
const [HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT] = [Number(process.argv[3]), Number(process.argv[4])]

interface Target {
  readonly port: number
  readonly connected: () => number
  /** What the server still holds beyond open connections (the manager only). */
  readonly held?: () => Record<string, number>
}

const start = async (): Promise<Target> => {
  switch (variant) {
    case "ws": {
      const wss = await listenWithHeartbeat(HEARTBEAT_INTERVAL)
      return { port: (wss.address() as AddressInfo).port, connected: () => wss.clients.size }
    }
    case "socket.io": {
      const http = createServer()
      const io = new SocketIOServer(http, {
        transports: ["websocket"],
        serveClient: false,
        pingInterval: HEARTBEAT_INTERVAL,
        pingTimeout: HEARTBEAT_TIMEOUT
      })
      await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve))
      return { port: (http.address() as AddressInfo).port, connected: () => io.of("/").sockets.size }
    }
    case "manager": {
      const manager = new WebSocketManager({
        maxConnections: 100_000,
        heartbeatInterval: HEARTBEAT_INTERVAL,
        heartbeatTimeout: HEARTBEAT_TIMEOUT
      })
      const server = await serve({ port: 0, fetch: async (request) => (await manager.accept(request)).response })
      return {
        port: server.port,
        connected: () => manager.getActiveConnections(),
        held: () => ({ ...manager.getStats(), ...registries.get(manager.service)!.sizes })
      }
    }
  }
}

const settle = async () => {
  for (let i = 0; i < 4; i++) {
    globalThis.gc!()
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const { heapUsed, rss } = process.memoryUsage()
  return { heapUsed, rss }
}

const target = await start()
const before = await settle()
process.on("message", async (command: any) => {
  if (command.type === "cpu") {
    const { system, user } = process.cpuUsage()
    process.send!({ type: "cpu", micros: system + user })
  }
  if (command.type === "count") process.send!({ type: "count", connected: target.connected(), held: target.held?.() })
  if (command.type === "memory") process.send!({ type: "memory", before, after: await settle() })
})
process.send!({ type: "listening", port: target.port })
