/**
 * A relay under test, one variant per process: what the publisher sends is broadcast to every
 * receiver. `ws` (the plain loop), `socket.io` (a room) or `broadcaster` (a channel). The
 * publisher connects to `/pub` (socket.io: with `auth.role`) and is not a receiver.
 * Each variant imports only its own library. No variant pings (`ws` has no heartbeat of its own):
 * the run measures the relay, and bench/ceiling measures it with heartbeats on.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { WebSocketServer } from "ws"

const variant = process.argv[2] as "ws" | "socket.io" | "broadcaster"

const start = async (): Promise<{ port: number; receivers: () => number }> => {
  switch (variant) {
    case "ws": {
      const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" })
      const receivers = new Set<import("ws").WebSocket>()
      wss.on("connection", (ws, request) => {
        if (request.url !== "/pub") {
          receivers.add(ws)
          ws.once("close", () => receivers.delete(ws))
          return
        }
        ws.on("message", (data, binary) => {
          for (const receiver of receivers) receiver.send(data, { binary })
        })
      })
      await new Promise((resolve) => wss.once("listening", resolve))
      return { port: (wss.address() as AddressInfo).port, receivers: () => receivers.size }
    }
    case "socket.io": {
      const { Server: SocketIOServer } = await import("socket.io")
      const http = createServer()
      const io = new SocketIOServer(http, { transports: ["websocket"], serveClient: false, pingInterval: 3_600_000 })
      io.on("connection", (socket) => {
        if (socket.handshake.auth.role !== "pub") socket.join("room")
        else socket.on("m", (message) => io.to("room").emit("m", message))
      })
      await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve))
      return { port: (http.address() as AddressInfo).port, receivers: () => io.of("/").adapter.rooms.get("room")?.size ?? 0 }
    }
    case "broadcaster": {
      const { Broadcaster, serve, WebSocketManager } = await import("../../src/promise/index.js")
      const manager = new WebSocketManager({ maxConnections: 100_000, heartbeatInterval: 0 })
      const broadcaster = new Broadcaster()
      const server = await serve({
        port: 0,
        fetch: async (request) => {
          const { response, socket } = await manager.accept(request)
          if (new URL(request.url).pathname !== "/pub") broadcaster.subscribe(socket, "room")
          else socket.on("message", (data) => void broadcaster.broadcast("room", data.toString()))
          return response
        }
      })
      return { port: server.port, receivers: () => broadcaster.getStats().channels.room?.subscribers ?? 0 }
    }
  }
}

const target = await start()
process.on("message", (command: any) => {
  if (command.type === "count") process.send!({ type: "count", connected: target.receivers() })
})
process.send!({ type: "listening", port: target.port })
