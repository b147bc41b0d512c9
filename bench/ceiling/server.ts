/**
 * A server under test for the ceiling, one variant per process: `ws` (with the heartbeat its README
 * recommends and a plain loop for the broadcast) or `broadcaster` (the manager with its heartbeat,
 * every socket in one channel). Both ping on the interval given and broadcast a numbered message
 * to every client once a second. Reports its memory after GC over IPC.
 * Each variant imports only its own library, so that its memory is its own.
 */
import type { AddressInfo } from "node:net"
import { listenWithHeartbeat } from "../wsHeartbeat.js"

const variant = process.argv[2] as "ws" | "broadcaster"
const [HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT] = [Number(process.argv[3]), Number(process.argv[4])]
const BROADCAST_EVERY = 1_000

const start = async (): Promise<{ port: number; connected: () => number; broadcast: (text: string) => void }> => {
  switch (variant) {
    case "ws": {
      const wss = await listenWithHeartbeat(HEARTBEAT_INTERVAL)
      return {
        port: (wss.address() as AddressInfo).port,
        connected: () => wss.clients.size,
        broadcast: (text) => {
          for (const ws of wss.clients) ws.send(text)
        }
      }
    }
    case "broadcaster": {
      const { Broadcaster, serve, WebSocketManager } = await import("../../src/promise/index.js")
      const manager = new WebSocketManager({
        maxConnections: 100_000,
        heartbeatInterval: HEARTBEAT_INTERVAL,
        heartbeatTimeout: HEARTBEAT_TIMEOUT
      })
      const broadcaster = new Broadcaster()
      const server = await serve({
        port: 0,
        fetch: async (request) => {
          const { response, socket } = await manager.accept(request)
          broadcaster.subscribe(socket, "all")
          return response
        }
      })
      return {
        port: server.port,
        connected: () => manager.getActiveConnections(),
        broadcast: (text) => void broadcaster.broadcast("all", text)
      }
    }
  }
}

const MB = 1024 * 1024
const memory = async () => {
  for (let i = 0; i < 3; i++) {
    globalThis.gc!()
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  const { heapUsed, rss } = process.memoryUsage()
  return { heap: heapUsed / MB, rss: rss / MB }
}

const target = await start()
let seq = 0
setInterval(() => target.broadcast(JSON.stringify({ seq: ++seq })), BROADCAST_EVERY)
process.on("message", async (command: any) => {
  if (command.type === "count") process.send!({ type: "count", connected: target.connected(), seq })
  if (command.type === "memory") process.send!({ type: "memory", ...(await memory()) })
})
process.send!({ type: "listening", port: target.port })
