/**
 * The Promise facade's `redis` option over a real redis-server, in one process: facade objects
 * share one bus per Redis, still reach each other (each has its own origin), and report what the
 * bus could not take. Nodes in separate processes are in Cluster.redis.test.ts.
 */
import { Redis } from "ioredis"
import { afterEach, beforeAll, expect, it } from "vitest"
import type WebSocket from "ws"
import type { Server } from "../src/promise/index.js"
import { Broadcaster, serve, WebSocketManager } from "../src/promise/index.js"
import { eventually, nextMessage, nextMessages, openClient } from "./utils/index.js"
import type { RedisServer } from "./utils/redis.js"
import { describeRedis, startRedis } from "./utils/redis.js"

const cleanups: Array<() => Promise<unknown>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {})
})

interface FacadeNode {
  readonly manager: WebSocketManager
  readonly broadcaster: Broadcaster
  readonly server: Server
  readonly url: string
  readonly accepted: Array<WebSocket>
}

const startNode = async (url: string, options: { presenceTtl?: number } = {}): Promise<FacadeNode> => {
  const manager = new WebSocketManager({
    redis: { url },
    authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") ?? "guest" },
    ...options
  })
  const broadcaster = new Broadcaster({ redis: { url } })
  const accepted: Array<WebSocket> = []
  const server = await serve({
    port: 0,
    fetch: async (request) => {
      const { socket, response } = await manager.accept(request)
      accepted.push(socket)
      broadcaster.subscribe(socket, "room")
      return response
    }
  })
  cleanups.push(() => server.close(), () => broadcaster.close(), () => manager.close())
  return { manager, broadcaster, server, url: server.url.replace("http", "ws"), accepted }
}

const client = async (url: string) => {
  const ws = await openClient(url)
  cleanups.push(async () => ws.terminate())
  return ws
}

const silent = (ws: WebSocket) => nextMessage(ws, 150).then(() => "heard", () => "silent")

/** How many clients Redis has, and how many subscribers a channel has, asked with a client of the test's own. */
const inspect = async (url: string) => {
  const redis = new Redis(url)
  try {
    const clients = String(await redis.client("LIST")).trim().split("\n").length - 1
    const numsub = (channel: string) => redis.pubsub("NUMSUB", channel).then((reply) => Number((reply as Array<unknown>)[1]))
    return { clients, room: await numsub("ewm:channel:room") }
  } finally {
    redis.disconnect()
  }
}

describeRedis("the facade's redis option", () => {
  let redis: RedisServer
  beforeAll(async () => {
    redis = await startRedis()
  })

  it("two managers and two broadcasters of one process share one bus, and still reach each other", async () => {
    const a = await startNode(redis.url)
    const b = await startNode(redis.url)
    const onA = await client(a.url)
    const onB = await client(`${b.url}/?user=ann`)
    await eventually(() => a.broadcaster.getStats().subscriptions === 1 && b.broadcaster.getStats().subscriptions === 1)
    // One publishing and one subscribing connection for the whole process, the channel subscribed once
    // (the SUBSCRIBE goes out in the background: the synchronous subscribe does not wait for it).
    let seen = await inspect(redis.url)
    for (const deadline = Date.now() + 5_000; seen.room === 0 && Date.now() < deadline;) seen = await inspect(redis.url)
    expect(seen.clients).toBe(2)
    expect(seen.room).toBe(1)

    const heard = Promise.all([nextMessages(onA, 20), nextMessages(onB, 20)])
    for (let i = 0; i < 20; i++) expect(await a.broadcaster.broadcast("room", { i })).toBe(1)
    const expected = Array.from({ length: 20 }, (_, i) => JSON.stringify({ i }))
    expect(await heard).toEqual([expected, expected])

    const toAnn = nextMessage(onB)
    expect(await a.manager.sendToUser("ann", "hello ann")).toBe(0)
    expect(await toAnn).toBe("hello ann")
    expect(await silent(onA)).toBe("silent")
  })

  it("subscribes sockets and builds more managers synchronously once the bus is connected", async () => {
    const a = await startNode(redis.url)
    // Connected: a subscription now takes a Redis round trip, which the synchronous calls must not wait for.
    await eventually(() => false, 300).catch(() => {})
    const sockets = await Promise.all(Array.from({ length: 5 }, () => client(a.url)))
    await eventually(() => a.broadcaster.getStats().subscriptions === 5, 3_000, "5 subscriptions")
    const later = new WebSocketManager({ redis: { url: redis.url } })
    cleanups.push(() => later.close())
    const heard = Promise.all(sockets.map((ws) => nextMessage(ws)))
    let crossed = false
    await eventually(() => {
      void later.broadcast("from a later manager").then(() => crossed = true)
      return crossed
    })
    await heard
  })

  it("rejects a filter without local: true, and delivers it on this node with it", async () => {
    const a = await startNode(redis.url)
    const here = await client(a.url)
    await eventually(() => a.broadcaster.getStats().subscriptions === 1)
    await expect(a.broadcaster.broadcast("room", "x", { filter: () => true })).rejects.toMatchObject({
      _tag: "FilterNotSerializable"
    })
    await expect(a.manager.broadcast("x", () => true)).rejects.toMatchObject({ _tag: "FilterNotSerializable" })
    expect(await silent(here)).toBe("silent")
    expect(await a.broadcaster.broadcast("room", "mine", { filter: () => true, local: true })).toBe(1)
    expect(await nextMessage(here)).toBe("mine")
  })

  it("counts the connections of every manager on the bus", async () => {
    const a = await startNode(redis.url, { presenceTtl: 300 })
    const b = await startNode(redis.url, { presenceTtl: 300 })
    await client(a.url)
    await client(b.url)
    await client(b.url)
    let counts: Array<number> = []
    await eventually(() => {
      void Promise.all([a.manager.getClusterConnections(), b.manager.getClusterConnections()]).then((c) => counts = c)
      return counts[0] === 3 && counts[1] === 3
    }, 5_000, "3 connections counted by both managers")
  })

  it("while Redis is down: local delivery goes on, broadcasts reject with ClusterPublishFailed; then it recovers", async () => {
    const a = await startNode(redis.url)
    const b = await startNode(redis.url)
    const onA = await client(a.url)
    const onB = await client(b.url)
    await eventually(() => a.broadcaster.getStats().subscriptions === 1 && b.broadcaster.getStats().subscriptions === 1)
    await redis.stop()
    const unhandled: Array<unknown> = []
    const onUnhandled = (reason: unknown) => unhandled.push(reason)
    process.on("unhandledRejection", onUnhandled)
    cleanups.push(async () => process.off("unhandledRejection", onUnhandled))

    const localOnly = nextMessage(onA)
    const failure = await a.broadcaster.broadcast("room", "while down").then(() => undefined, (error) => error)
    expect(failure).toMatchObject({ _tag: "ClusterPublishFailed", delivered: 1 })
    expect(failure.cause._tag).toBe("ClusterUnavailable")
    expect(await localOnly).toBe("while down")
    await expect(a.manager.sendToUser("guest", "x")).rejects.toMatchObject({ _tag: "ClusterPublishFailed" })

    await redis.start()
    // Back on the reconnect schedule, with the channel subscribed again: a broadcast crosses once more.
    let crossed = false
    onB.on("message", (data) => {
      if (String(data) === "after") crossed = true
    })
    await eventually(() => {
      void a.broadcaster.broadcast("room", "after").catch(() => {})
      return crossed
    }, 15_000, "a broadcast crossing again after Redis came back")
    expect(unhandled).toEqual([])
  })
})
