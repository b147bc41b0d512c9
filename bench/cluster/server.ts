/**
 * One node under test, driven over IPC by run.ts: `ws` (the plain loop, one node only),
 * `broadcaster` (a WebSocketManager and a Broadcaster; with a Redis URL, the Broadcaster's `redis`
 * option) or `socket.io` (a room; with a Redis URL, `@socket.io/redis-adapter` on ioredis).
 * Every client joins the one channel. Any node can publish: each message is `{"t":…,"s":…,"pad":…}`
 * with `t` read from the monotonic clock, which every process on the machine shares, so a client
 * process can subtract it from its own reading. Reports its CPU time since the last `mark`.
 * No variant pings (bench/fanout explains why).
 *
 *   server.ts VARIANT REDIS_URL|-
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { WebSocketServer } from "ws"

const variant = process.argv[2] as "ws" | "broadcaster" | "socket.io"
const redisUrl = process.argv[3] === "-" ? undefined : process.argv[3]
const send = (message: object) => process.send!(message)

/** Milliseconds on CLOCK_MONOTONIC: the same clock in every process, unlike performance.now(). */
const now = () => Number(process.hrtime.bigint()) / 1e6
const pad = "x".repeat(64)
const message = (seq: number) => ({ t: now(), s: seq, pad })

interface Node {
  readonly port: number
  readonly connected: () => number
  readonly publish: (seq: number) => void
}

// A broadcast the bus could not take is counted and reported, never an unhandled rejection.
let failures = 0

const start = async (): Promise<Node> => {
  switch (variant) {
    case "ws": {
      if (redisUrl !== undefined) throw new Error("ws runs on one node only")
      const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" })
      await new Promise((resolve) => wss.once("listening", resolve))
      return {
        port: (wss.address() as AddressInfo).port,
        connected: () => wss.clients.size,
        publish: (seq) => {
          const payload = Buffer.from(JSON.stringify(message(seq)))
          for (const ws of wss.clients) ws.send(payload, { binary: false })
        }
      }
    }
    case "socket.io": {
      const { Server } = await import("socket.io")
      const http = createServer()
      const io = new Server(http, { transports: ["websocket"], serveClient: false, pingInterval: 3_600_000 })
      if (redisUrl !== undefined) {
        const [{ createAdapter }, { Redis }] = await Promise.all([import("@socket.io/redis-adapter"), import("ioredis")])
        const pub = new Redis(redisUrl)
        const sub = pub.duplicate()
        io.adapter(createAdapter(pub, sub))
      }
      io.on("connection", (socket) => socket.join("room"))
      await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve))
      return {
        port: (http.address() as AddressInfo).port,
        connected: () => io.of("/").sockets.size,
        publish: (seq) => void io.to("room").emit("m", message(seq))
      }
    }
    case "broadcaster": {
      const { Broadcaster, serve, WebSocketManager } = await import("../../src/promise/index.js")
      const redis = redisUrl === undefined ? undefined : { url: redisUrl }
      const manager = new WebSocketManager({ maxConnections: 100_000, heartbeatInterval: 0 })
      const broadcaster = new Broadcaster({ redis })
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
        publish: (seq) =>
          void broadcaster.broadcast("room", message(seq)).catch(() => {
            failures++
          })
      }
    }
  }
}

const node = await start()
let cpuMark = process.cpuUsage()

process.on("message", async (command: any) => {
  switch (command.type) {
    case "count":
      return send({ type: "count", connected: node.connected() })
    case "mark":
      cpuMark = process.cpuUsage()
      return send({ type: "marked" })
    case "cpu": {
      const used = process.cpuUsage(cpuMark)
      return send({ type: "cpu", micros: used.user + used.system, failures })
    }
    case "burst": {
      // As fast as the node takes them, one message per event-loop turn (bench/fanout's "1 per tick").
      const startedAt = now()
      for (let seq = 0; seq < command.messages; seq++) {
        node.publish(seq)
        await new Promise((resolve) => setImmediate(resolve))
      }
      return send({ type: "published", startedAt })
    }
    case "paced": {
      // Each message at its scheduled time, whatever the last one cost (bench/latency explains why).
      const { rate, total } = command as { rate: number; total: number }
      const startedAt = now()
      for (let seq = 0; seq < total; seq++) {
        const wait = startedAt + (seq * 1000) / rate - now()
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
        node.publish(seq)
      }
      return send({ type: "published", startedAt })
    }
  }
})

// run.ts stops a node with SIGTERM: exiting through process.exit lets `--cpu-prof` write its profile.
process.once("SIGTERM", () => process.exit(0))
send({ type: "listening", port: node.port })
