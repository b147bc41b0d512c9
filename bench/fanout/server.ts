/**
 * A fan-out server under test, one variant per process: `ws-frame`, `ws-loop`, `socket.io` or
 * `broadcaster`. Driven over IPC by run.ts; reports its own CPU time for each run, and its memory.
 * Each variant imports only its own library, so that its memory is its own. No variant pings: the
 * manager's and socket.io's heartbeats would otherwise charge a round that a ping cycle falls in with
 * a pong per client, which `ws` has no part in (bench/idle and bench/ceiling measure heartbeats).
 */
import { readFileSync, writeFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import * as WS from "ws"
import { WebSocketServer } from "ws"

const variant = process.argv[2] as "ws-frame" | "ws-loop" | "socket.io" | "broadcaster"
const send = (message: object) => process.send!(message)

const message = (seq: number) => ({ type: "tick", seq, pad: "x".repeat(64) })

interface Target {
  readonly port: number
  readonly connected: () => number
  readonly publish: (seq: number) => void
}

const start = async (): Promise<Target> => {
  switch (variant) {
    case "ws-frame": {
      // The limit in Node: one frame built once, and per socket only the write `ws` itself makes for a
      // frame (its Sender's `sendFrame`, what `ws.send` ends in). Neither is in @types/ws.
      const { Sender } = WS as unknown as { Sender: { frame(data: Buffer, options: object): Array<Buffer> } }
      const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", maxPayload: 1024 * 1024 })
      await new Promise((resolve) => wss.once("listening", resolve))
      return {
        port: (wss.address() as AddressInfo).port,
        connected: () => wss.clients.size,
        publish: (seq) => {
          const payload = Buffer.from(JSON.stringify(message(seq)))
          const frame = [Buffer.concat(Sender.frame(payload, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))]
          for (const ws of wss.clients) (ws as any)._sender.sendFrame(frame)
        }
      }
    }
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
      const { Server: SocketIOServer } = await import("socket.io")
      const http = createServer()
      const io = new SocketIOServer(http, { transports: ["websocket"], serveClient: false, pingInterval: 3_600_000 })
      io.on("connection", (socket) => socket.join("room"))
      await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve))
      return {
        port: (http.address() as AddressInfo).port,
        connected: () => io.of("/").sockets.size,
        publish: (seq) => io.to("room").emit("m", message(seq))
      }
    }
    case "broadcaster": {
      const { Broadcaster, serve, WebSocketManager } = await import("../../src/promise/index.js")
      const manager = new WebSocketManager({ maxConnections: 100_000, heartbeatInterval: 0 })
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

const MB = 1024 * 1024
/** The kernel's high-water mark of this process's resident set, in bytes. */
const peakRss = () => Number(/VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"))?.[1] ?? 0) * 1024

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
  if (command.type === "memory") {
    send({ type: "memory", rss: process.memoryUsage.rss() / MB, heap: process.memoryUsage().heapUsed / MB, peakRss: peakRss() / MB })
    // Linux: writing 5 to clear_refs resets VmHWM, so the next reading is the peak since this one.
    if (command.reset) writeFileSync("/proc/self/clear_refs", "5")
  }
  if (command.type === "cpu") {
    const used = process.cpuUsage(cpuAtStart)
    send({ type: "cpu", micros: used.user + used.system })
  }
})

send({ type: "listening", port: target.port })
