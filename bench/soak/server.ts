/**
 * The soak's server: a chat like examples/chat/server.ts on the Promise facade (WebSocketManager +
 * Broadcaster, several channels), speaking the protocol of protocol.ts, with two bulk channels
 * it publishes large messages to. Driven over IPC by run.ts; reports memory, counts and
 * send buffers when asked.
 *
 * It keeps an `uncaughtException` handler so that one crash does not end the soak: each
 * exception is counted and reported, and any makes the run fail (without the handler the
 * process would have exited).
 */
import { monitorEventLoopDelay } from "node:perf_hooks"
import { getHeapCodeStatistics } from "node:v8"
import WebSocket from "ws"
import { Broadcaster, serve, WebSocketManager } from "../../src/promise/index.js"
import {
  BULK,
  BULK_BYTES,
  BULK_EVERY_MILLIS,
  BULK_STRICT,
  chatChannels,
  HEARTBEAT_INTERVAL,
  HEARTBEAT_TIMEOUT,
  MAX_BACKPRESSURE,
  MAX_PAYLOAD,
  MAX_QUEUED,
  SETTLE_WAIT_MILLIS,
  Tally
} from "./protocol.js"

const channels = new Set([...chatChannels(Number(process.argv[2] ?? 6)), BULK, BULK_STRICT])
const send = (message: object) => process.send!(message)

const uncaught = new Tally()
const firstStacks: Record<string, string> = {}
const noteCrash = (kind: string) => (error: unknown) => {
  // Grouped by kind and message, with the URL (which carries the client's id) left out.
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error)
  const key = `${kind}: ${text.replace(/\bhttps?:\/\/\S+/g, "<url>")}`.slice(0, 160)
  if (uncaught.get(key) === 0) {
    firstStacks[key] = error instanceof Error ? (error.stack ?? "").split("\n").slice(0, 6).join("\n") : ""
    console.error(`[soak server] ${key}\n${firstStacks[key]}`)
  }
  uncaught.add(key)
}
process.on("uncaughtException", noteCrash("uncaughtException"))
process.on("unhandledRejection", noteCrash("unhandledRejection"))

const manager = new WebSocketManager({
  maxConnections: 100_000,
  heartbeatInterval: HEARTBEAT_INTERVAL,
  heartbeatTimeout: HEARTBEAT_TIMEOUT,
  maxPayload: MAX_PAYLOAD,
  // As in the chat example: the client names itself in the query string.
  authentication: {
    validator: (request: Request) => {
      const id = new URL(request.url).searchParams.get("id")
      return id ? { id } : null
    }
  }
})
const broadcaster = new Broadcaster({
  maxBackpressure: MAX_BACKPRESSURE,
  channels: {
    [BULK]: { policy: "drop-oldest", maxQueuedMessages: MAX_QUEUED },
    [BULK_STRICT]: { policy: "close" }
  }
})

const sockets = new Set<WebSocket>()
const nextSeq = new Map<string, number>()
const lastBroadcast = new Map<string, Promise<unknown>>()
const broadcasts = { published: 0, settled: 0, failed: new Tally(), leavesGaveUp: 0 }
const appErrors = new Tally()

const publish = (ch: string, message: { from: string; n: number; [key: string]: unknown }) => {
  const seq = nextSeq.get(ch) ?? 0
  nextSeq.set(ch, seq + 1)
  broadcasts.published++
  const done = broadcaster.broadcast(ch, { t: "m", ch, seq, ...message }).then(
    () => {
      broadcasts.settled++
    },
    (error) => {
      broadcasts.failed.add(error?._tag ?? String(error))
    }
  )
  lastBroadcast.set(ch, done)
}

/** Resolves once every message published to `ch` so far is delivered, or after SETTLE_WAIT_MILLIS. */
const delivered = (ch: string) =>
  new Promise<void>((resolve) => {
    const last = lastBroadcast.get(ch)
    if (last === undefined) return resolve()
    const timer = setTimeout(() => {
      broadcasts.leavesGaveUp++
      resolve()
    }, SETTLE_WAIT_MILLIS)
    void last.then(() => {
      clearTimeout(timer)
      resolve()
    })
  })

const reply = (socket: WebSocket, message: object) => {
  if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message))
}

const onMessage = async (socket: WebSocket, id: string, data: unknown) => {
  let message: any
  try {
    message = JSON.parse(String(data))
  } catch {
    appErrors.add("not JSON")
    return reply(socket, { t: "error", reason: "not JSON" })
  }
  const ch = message?.ch
  if (typeof ch !== "string" || !channels.has(ch)) {
    appErrors.add("unknown channel")
    return reply(socket, { t: "error", reason: `unknown channel ${ch}` })
  }
  switch (message.t) {
    case "join": {
      if (socket.readyState !== WebSocket.OPEN) return
      broadcaster.subscribe(socket, ch)
      // Every message published from here on goes to this socket: the first one it is owed.
      return reply(socket, { t: "joined", ch, from: nextSeq.get(ch) ?? 0 })
    }
    case "leave": {
      const upTo = (nextSeq.get(ch) ?? 0) - 1
      await delivered(ch)
      broadcaster.unsubscribe(socket, ch)
      return reply(socket, { t: "left", ch, upTo })
    }
    case "say": {
      if (!broadcaster.getChannels(socket).includes(ch)) {
        appErrors.add("say without join")
        return reply(socket, { t: "error", reason: `not in ${ch}` })
      }
      return publish(ch, { from: id, n: Number(message.n), text: String(message.text).slice(0, 500) })
    }
    default:
      appErrors.add("unknown type")
      return reply(socket, { t: "error", reason: "unknown type" })
  }
}

const server = await serve({
  port: 0,
  hostname: "127.0.0.1",
  fetch: async (request) => {
    const { pathname } = new URL(request.url)
    if (pathname !== "/chat") return new Response("Not found", { status: 404 })
    const { context, response, socket } = await manager.accept(request)
    const id = context.userId ?? "?"
    sockets.add(socket)
    socket.addEventListener("message", (event) => {
      onMessage(socket, id, event.data).catch(noteCrash("message handler"))
    })
    socket.addEventListener("close", () => sockets.delete(socket))
    return response
  }
})

const pad = "x".repeat(BULK_BYTES)
let bulkTimer: NodeJS.Timeout | undefined
const startBulk = () => {
  bulkTimer = setInterval(() => {
    for (const ch of [BULK, BULK_STRICT]) {
      if (broadcaster.getStats().channels[ch]?.subscribers) publish(ch, { from: "server", n: 0, pad })
    }
  }, BULK_EVERY_MILLIS)
}

/** Messages slow sockets did not get, summed over every channel that ever existed (idle channels go away). */
const dropped = { gone: 0, live: new Map<string, number>() }
const droppedSoFar = (stats: ReturnType<Broadcaster["getStats"]>) => {
  for (const [name, last] of dropped.live) {
    const now = stats.channels[name]?.dropped ?? 0
    if (now < last) dropped.gone += last
  }
  dropped.live = new Map(Object.entries(stats.channels).map(([name, c]) => [name, c.dropped]))
  return dropped.gone + [...dropped.live.values()].reduce((a, b) => a + b, 0)
}

const loopDelay = monitorEventLoopDelay({ resolution: 20 })
loopDelay.enable()

const codeBytes = () => {
  const { bytecode_and_metadata_size, code_and_metadata_size } = getHeapCodeStatistics()
  return bytecode_and_metadata_size + code_and_metadata_size
}

const openTcpSockets = () => process.getActiveResourcesInfo().filter((kind) => kind === "TCPSocketWrap").length

const sample = () => {
  let bufferedTotal = 0
  let bufferedMax = 0
  for (const socket of sockets) {
    bufferedTotal += socket.bufferedAmount
    bufferedMax = Math.max(bufferedMax, socket.bufferedAmount)
  }
  const { arrayBuffers, external, heapUsed, rss } = process.memoryUsage()
  const managerStats = manager.getStats()
  const broadcasterStats = broadcaster.getStats()
  return {
    at: Date.now(),
    heapUsed,
    rss,
    external,
    arrayBuffers,
    manager: managerStats,
    subscriptions: broadcasterStats.subscriptions,
    subscribers: broadcasterStats.subscribers,
    channelFibers: broadcasterStats.fibers,
    liveChannels: Object.keys(broadcasterStats.channels).length,
    dropped: droppedSoFar(broadcasterStats),
    loopDelayMax: loopDelay.max / 1e6,
    appSockets: sockets.size,
    tcpSockets: openTcpSockets(),
    bufferedTotal,
    bufferedMax,
    cpu: process.cpuUsage(),
    /** Code, bytecode and their metadata on the heap: they grow as paths get hot, and are not a leak. */
    code: codeBytes()
  }
}

const settle = async () => {
  for (let i = 0; i < 4; i++) {
    globalThis.gc!()
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  return sample()
}

process.on("message", async (command: any) => {
  switch (command.type) {
    case "sample":
      return send({ type: "sample", ...sample() })
    case "settle":
      return send({ type: "settled", ...(await settle()) })
    case "start-bulk":
      startBulk()
      return send({ type: "bulk-started" })
    case "stop-bulk":
      clearInterval(bulkTimer)
      return send({ type: "bulk-stopped" })
    case "report":
      return send({
        type: "report",
        broadcasts: { ...broadcasts, failed: broadcasts.failed.counts },
        appErrors: appErrors.counts,
        uncaught: uncaught.counts,
        firstStacks,
        published: Object.fromEntries(nextSeq)
      })
    case "shutdown": {
      await manager.close(1001, "Server shutdown")
      await broadcaster.close()
      await server.close()
      send({ type: "down" })
      return setTimeout(() => process.exit(0), 50)
    }
  }
})

send({ type: "listening", port: server.port })
