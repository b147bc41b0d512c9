/**
 * A fan-out server under test, one variant per process: `ws-loop`, `socket.io` or `broadcaster`.
 * Driven over IPC by run.ts; reports its own CPU time for each run.
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { Server as SocketIOServer } from "socket.io"
import { WebSocketServer } from "ws"
import { Broadcaster, serve, WebSocketManager } from "../../src/promise/index.js"

const variant = process.argv[2] as "ws-loop" | "socket.io" | "broadcaster"
const send = (message: object) => process.send!(message)

const message = (seq: number) => ({ type: "tick", seq, pad: "x".repeat(64) })

interface Target {
  readonly port: number
  readonly connected: () => number
  readonly publish: (seq: number) => void
}

const start = async (): Promise<Target> => {
  switch (variant) {
    case "ws-loop": {
      const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", maxPayload: 1024 * 1024 })
      await new Promise((resolve) => wss.once("listening", resolve))
      return {
        port: (wss.address() as AddressInfo).port,
        connected: () => wss.clients.size,
        publish: (seq) => {
          // The plain loop, with the payload encoded once.
          const payload = Buffer.from(JSON.stringify(message(seq)))
          for (const ws of wss.clients) ws.send(payload, { binary: false })
        }
      }
    }
    case "socket.io": {
      const http = createServer()
      const io = new SocketIOServer(http, { transports: ["websocket"], serveClient: false })
      io.on("connection", (socket) => socket.join("room"))
      await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve))
      return {
        port: (http.address() as AddressInfo).port,
        connected: () => io.of("/").sockets.size,
        publish: (seq) => io.to("room").emit("m", message(seq))
      }
    }
    case "broadcaster": {
      const manager = new WebSocketManager({ maxConnections: 100_000 })
      const broadcaster = new Broadcaster()
      const server = await serve({
        port: 0,
        fetch: async (request) => {
          const { response, socket } = await manager.accept(request)
          broadcaster.subscribe(socket, "room")
          return response
        }
      })
      return {
        port: server.port,
        connected: () => manager.getActiveConnections(),
        publish: (seq) => void broadcaster.broadcast("room", message(seq))
      }
    }
  }
}

const target = await start()
let cpuAtStart = process.cpuUsage()

process.on("message", async (command: any) => {
  if (command.type === "count") send({ type: "count", connected: target.connected() })
  if (command.type === "run") {
    const { burst, messages } = command as { messages: number; burst: number }
    cpuAtStart = process.cpuUsage()
    const startedAt = Date.now()
    let seq = 0
    while (seq < messages) {
      for (let i = 0; i < burst && seq < messages; i++) target.publish(seq++)
      await new Promise((resolve) => setImmediate(resolve))
    }
    send({ type: "published", startedAt })
  }
  if (command.type === "cpu") {
    const used = process.cpuUsage(cpuAtStart)
    send({ type: "cpu", micros: used.user + used.system })
  }
})

send({ type: "listening", port: target.port })
