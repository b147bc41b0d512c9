/**
 * The bounded fan-out shared by the Broadcaster's channels and `manager.broadcast`: the bound on a
 * slow socket's send buffer, the slow-consumer policies, and framing once per broadcast.
 */
import { Effect, Metric } from "effect"
import { randomBytes } from "node:crypto"
import { afterEach, describe, expect, it, vi } from "vitest"
import * as WS from "ws"
import WebSocket from "ws"
import * as Manager from "../src/WebSocketManager.js"
import { Broadcaster } from "../src/promise/index.js"
import type { BroadcasterOptions, WebSocketManagerOptions } from "../src/promise/index.js"
import { closeOf, eventually, nextMessages, openClient, sleep, startManager, withTimeout } from "./utils/index.js"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  vi.restoreAllMocks()
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/** A manager and a broadcaster; every accepted socket joins the channel "feed". */
const setup = async (managerOptions: WebSocketManagerOptions = {}, broadcasterOptions?: BroadcasterOptions) => {
  const broadcaster = new Broadcaster(broadcasterOptions)
  const sockets: Array<WebSocket> = []
  const harness = await startManager(managerOptions, ({ socket }) => {
    sockets.push(socket)
    broadcaster.subscribe(socket, "feed")
  })
  const clients: Array<WebSocket> = []
  cleanups.push(async () => {
    for (const ws of clients) ws.terminate()
    await harness.close()
    await broadcaster.close()
  })
  /** A client, and the server's socket for it. */
  const connect = async (options?: WebSocket.ClientOptions) => {
    const ws = await openClient(harness.url, undefined, options)
    clients.push(ws)
    await eventually(() => sockets.length === clients.length)
    return { client: ws, server: sockets.at(-1)! }
  }
  return { broadcaster, harness, connect }
}

const rawSocketOf = (ws: WebSocket) => (ws as unknown as { _socket: import("node:net").Socket })._socket

/** The frames `ws` builds: one call per framing of an outbound message. */
const framings = () =>
  vi.spyOn((WS as unknown as { Sender: { frame: (...args: Array<unknown>) => Array<Buffer> } }).Sender, "frame")

const counter = (metric: Metric.Metric.Counter<number>) => Effect.runSync(Metric.value(metric)).count

describe("frame once", () => {
  it("a broadcast to many plain sockets is framed once, by the Broadcaster and by the manager", async () => {
    const { broadcaster, connect, harness } = await setup()
    const clients = await Promise.all(Array.from({ length: 5 }, () => connect()))
    const send = vi.spyOn(WebSocket.prototype, "send")
    const frame = framings()
    const received = clients.map(({ client }) => nextMessages(client, 2))
    expect(await broadcaster.broadcast("feed", { via: "channel" })).toBe(5)
    expect(frame).toHaveBeenCalledTimes(1)
    expect(await harness.manager.broadcast({ via: "manager" })).toBe(5)
    expect(frame).toHaveBeenCalledTimes(2)
    expect(send).not.toHaveBeenCalled()
    for (const messages of await Promise.all(received)) {
      expect(messages).toEqual([JSON.stringify({ via: "channel" }), JSON.stringify({ via: "manager" })])
    }
  })

  it("a burst published in one tick is framed once per message, whatever the number of sockets", async () => {
    const { broadcaster, connect } = await setup()
    const clients = await Promise.all(Array.from({ length: 4 }, () => connect()))
    const frame = framings()
    const received = clients.map(({ client }) => nextMessages(client, 20))
    const counts = await Promise.all(Array.from({ length: 20 }, (_, n) => broadcaster.broadcast("feed", `${n}`)))
    expect(counts).toEqual(Array.from({ length: 20 }, () => 4))
    expect(frame).toHaveBeenCalledTimes(20)
    for (const messages of await Promise.all(received)) expect(messages).toEqual(Array.from({ length: 20 }, (_, n) => `${n}`))
    expect(broadcaster.getStats().channels.feed).toMatchObject({ delivered: 80, dropped: 0 })
  })

  it("a burst with exclude and filter in it still reaches each socket with exactly its messages, in order", async () => {
    const { broadcaster, connect } = await setup()
    const [a, b, c] = [await connect(), await connect(), await connect()]
    const received = [nextMessages(a.client, 2), nextMessages(b.client, 3), nextMessages(c.client, 4)]
    const counts = await Promise.all([
      broadcaster.broadcast("feed", "all"),
      broadcaster.broadcast("feed", "not a", { exclude: a.server }),
      broadcaster.broadcast("feed", "c only", { filter: (socket) => socket === c.server }),
      broadcaster.broadcast("feed", "all again")
    ])
    expect(counts).toEqual([3, 2, 1, 3])
    expect(await Promise.all(received)).toEqual([
      ["all", "all again"],
      ["all", "not a", "all again"],
      ["all", "not a", "c only", "all again"]
    ])
    // Nothing more arrives for anyone.
    expect(await nextMessages(a.client, 1, 200).catch(() => "nothing")).toBe("nothing")
  })

  it("a socket that negotiated permessage-deflate gets its messages compressed, in a burst too", async () => {
    const { broadcaster, connect, harness } = await setup({ compression: { enabled: true, threshold: 0 } })
    const plain = await connect({ perMessageDeflate: false })
    const compressed = await connect()
    expect(compressed.client.extensions).toContain("permessage-deflate")
    const message = "a".repeat(20_000)
    const before = [rawSocketOf(plain.client).bytesRead, rawSocketOf(compressed.client).bytesRead]
    const received = [nextMessages(plain.client, 11), nextMessages(compressed.client, 11)]
    await Promise.all(Array.from({ length: 10 }, () => broadcaster.broadcast("feed", message)))
    await harness.manager.broadcast(message)
    for (const messages of await Promise.all(received)) expect(messages).toEqual(Array.from({ length: 11 }, () => message))
    const plainBytes = rawSocketOf(plain.client).bytesRead - before[0]!
    const compressedBytes = rawSocketOf(compressed.client).bytesRead - before[1]!
    expect(plainBytes).toBeGreaterThanOrEqual(11 * message.length)
    expect(compressedBytes).toBeLessThan(plainBytes / 10)
  })
})

describe("manager.broadcast is bounded", () => {
  // 64 KiB messages: far more than the loopback buffers absorb for a client that stops reading.
  const payload = "x".repeat(64 * 1024)

  it("keeps a paused client's send buffer under the bound plus one message; a reading client gets everything", async () => {
    const bound = 256 * 1024
    const { connect, harness } = await setup({ broadcast: { maxBackpressure: bound } })
    const fast = await connect()
    const slow = await connect()
    rawSocketOf(slow.client).pause()
    const COUNT = 300
    const received = nextMessages(fast.client, COUNT, 20_000)
    let highest = 0
    const dropped = counter(Manager.broadcastMetrics.dropped)
    for (let n = 0; n < COUNT; n++) {
      const count = await harness.manager.broadcast(`${n}:${payload}`)
      expect(count).toBeGreaterThanOrEqual(1)
      highest = Math.max(highest, slow.server.bufferedAmount)
      // The reading client drains between broadcasts; the paused one cannot.
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(highest).toBeGreaterThan(bound)
    expect(highest).toBeLessThanOrEqual(bound + payload.length + 16)
    const numbers = (await received).map((m) => Number(m.toString().split(":")[0]))
    expect(numbers).toEqual(Array.from({ length: COUNT }, (_, n) => n))
    // What the slow client missed is counted.
    expect(counter(Manager.broadcastMetrics.dropped) - dropped).toBeGreaterThan(0)
  })

  it("the 'close' policy closes a slow socket with 1008 and keeps the others", async () => {
    const { connect, harness } = await setup({ broadcast: { maxBackpressure: 64 * 1024, policy: "close" } })
    const fast = await connect()
    const slow = await connect()
    rawSocketOf(slow.client).pause()
    const closed = closeOf(slow.client, 20_000)
    const received = nextMessages(fast.client, 200, 20_000)
    for (let n = 0; n < 200; n++) {
      await harness.manager.broadcast(`${n}:${payload}`)
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect((await received).length).toBe(200)
    rawSocketOf(slow.client).resume()
    expect(await closed).toMatchObject({ code: 1008, reason: "Slow consumer" })
    await eventually(() => harness.manager.getActiveConnections() === 1)
    expect(fast.client.readyState).toBe(WebSocket.OPEN)
  })

  it("refuses a bad broadcast option with InvalidOptions naming the field", async () => {
    await expect(startManager({ broadcast: { policy: "ignore" as any } })).rejects.toMatchObject({
      _tag: "InvalidOptions",
      field: "broadcast.policy"
    })
  })
})

/**
 * Stalls a client: it stops reading, and the server writes large fillers (while the socket is
 * under its bound, so none is held back) until its send buffer stays over the bound, which no
 * pending filler lets go of while the client is paused. Returns how many fillers were written.
 */
const stall = async (client: WebSocket, server: WebSocket, bound: number, publish: (message: string) => Promise<unknown>) => {
  rawSocketOf(client).pause()
  const filler = "f".repeat(1024 * 1024)
  let fillers = 0
  for (;;) {
    if (server.bufferedAmount > bound) {
      await sleep(200)
      if (server.bufferedAmount > bound) return fillers
      continue
    }
    if (fillers === 128) throw new Error("the socket never stayed over its bound")
    await publish(`filler ${fillers++}:${filler}`)
  }
}

/** Every message the client reads until `last`, the label before the first ':' of each. */
const labelsUntil = (client: WebSocket, last: string) =>
  withTimeout(
    new Promise<Array<string>>((resolve) => {
      const labels: Array<string> = []
      client.on("message", (data) => {
        labels.push(data.toString().split(":")[0]!)
        if (labels.at(-1) === last) resolve(labels)
      })
    }),
    20_000,
    `message ${last}`
  )

describe("drop-oldest keeps exactly the newest maxQueuedMessages", () => {
  const bound = 64 * 1024
  const KEPT = 5
  const PUBLISHED = 40

  const expected = (fillers: number) => [
    ...Array.from({ length: fillers }, (_, n) => `filler ${n}`),
    ...Array.from({ length: KEPT }, (_, i) => `${PUBLISHED - KEPT + i}`)
  ]

  it("in a Broadcaster channel, with exact stats", async () => {
    const { broadcaster, connect } = await setup({}, { policy: "drop-oldest", maxBackpressure: bound, maxQueuedMessages: KEPT })
    const { client, server } = await connect()
    const listeners = () => [rawSocketOf(server).listenerCount("drain"), rawSocketOf(server).listenerCount("close")]
    const baseline = listeners()
    const fillers = await stall(client, server, bound, (message) => broadcaster.broadcast("feed", message))
    for (let n = 0; n < PUBLISHED; n++) expect(await broadcaster.broadcast("feed", `${n}:`)).toBe(0)
    expect(server.bufferedAmount).toBeGreaterThan(bound)
    expect(broadcaster.getStats().channels.feed).toMatchObject({ backlogged: 1, dropped: PUBLISHED - KEPT })
    const labels = labelsUntil(client, `${PUBLISHED - 1}`)
    rawSocketOf(client).resume()
    expect(await labels).toEqual(expected(fillers))
    await eventually(() => broadcaster.getStats().channels.feed!.backlogged === 0)
    expect(broadcaster.getStats().channels.feed).toMatchObject({ delivered: fillers + KEPT, dropped: PUBLISHED - KEPT })
    // The backlog's drain and close listeners are gone with it.
    expect(listeners()).toEqual(baseline)
  })

  it("in manager.broadcast, with exact metrics", async () => {
    const { connect, harness } = await setup({
      broadcast: { policy: "drop-oldest", maxBackpressure: bound, maxQueuedMessages: KEPT }
    })
    const { client, server } = await connect()
    const delivered = counter(Manager.broadcastMetrics.delivered)
    const dropped = counter(Manager.broadcastMetrics.dropped)
    const fillers = await stall(client, server, bound, (message) => harness.manager.broadcast(message))
    for (let n = 0; n < PUBLISHED; n++) expect(await harness.manager.broadcast(`${n}:`)).toBe(0)
    expect(server.bufferedAmount).toBeGreaterThan(bound)
    const labels = labelsUntil(client, `${PUBLISHED - 1}`)
    rawSocketOf(client).resume()
    expect(await labels).toEqual(expected(fillers))
    expect(counter(Manager.broadcastMetrics.delivered) - delivered).toBe(fillers + KEPT)
    expect(counter(Manager.broadcastMetrics.dropped) - dropped).toBe(PUBLISHED - KEPT)
  })

  it("unsubscribing a socket with a waiting backlog lets the backlog go: counted as dropped, never written", async () => {
    const options = { policy: "drop-oldest", maxBackpressure: bound, maxQueuedMessages: KEPT } as const
    const { broadcaster, connect, harness } = await setup({}, options)
    // A reading subscriber keeps the channel alive once the slow one has left it.
    const stayer = await connect()
    const { client, server } = await connect()
    // The manager's fillers (under its own 1 MiB bound) put the socket over the channel's bound.
    const fillers = await stall(client, server, bound, (message) => harness.manager.broadcast(message))
    await eventually(() => stayer.server.bufferedAmount === 0, 10_000, "the reading client to catch up")
    for (let n = 0; n < 3; n++) expect(await broadcaster.broadcast("feed", `${n}:`)).toBe(1)
    expect(broadcaster.getStats().channels.feed).toMatchObject({ backlogged: 1, dropped: 0 })
    expect(broadcaster.unsubscribe(server, "feed")).toBe(true)
    expect(broadcaster.getStats().channels.feed).toMatchObject({ subscribers: 1, backlogged: 0, dropped: 3 })
    // Once the client reads again and the socket has drained (the moment a backlog would be written),
    // a last message sent straight to the socket follows the fillers and nothing else.
    const labels = labelsUntil(client, "last")
    rawSocketOf(client).resume()
    await eventually(() => server.bufferedAmount === 0, 10_000, "the socket to drain")
    await sleep(50)
    server.send("last")
    expect(await labels).toEqual([...Array.from({ length: fillers }, (_, n) => `filler ${n}`), "last"])
    expect(broadcaster.getStats().channels.feed).toMatchObject({ delivered: 3, dropped: 3 })
  })

  it("a backlog whose socket closes is let go, what it held counted as dropped", async () => {
    const options = { policy: "drop-oldest", maxBackpressure: bound, maxQueuedMessages: KEPT } as const
    const { broadcaster, connect, harness } = await setup({ broadcast: options }, options)
    const stayer = await connect()
    const { client, server } = await connect()
    const dropped = counter(Manager.broadcastMetrics.dropped)
    // Both write to the same socket: the manager's fillers put it over the bound for both.
    await stall(client, server, bound, (message) => harness.manager.broadcast(message))
    // The reading client has caught up with the fillers: only the paused one is over the bound.
    await eventually(() => stayer.server.bufferedAmount === 0, 10_000, "the reading client to catch up")
    for (let n = 0; n < 3; n++) {
      await broadcaster.broadcast("feed", `${n}:`)
      await harness.manager.broadcast(`${n}:`)
    }
    expect(broadcaster.getStats().channels.feed).toMatchObject({ backlogged: 1, dropped: 0 })
    expect(counter(Manager.broadcastMetrics.dropped) - dropped).toBe(0)
    client.terminate()
    await eventually(() => broadcaster.getStats().channels.feed!.backlogged === 0, 5_000, "the backlog to go")
    expect(broadcaster.getStats().channels.feed).toMatchObject({ subscribers: 1, dropped: 3 })
    // The manager has no unsubscribe: the socket's close lets its backlog go.
    await eventually(() => counter(Manager.broadcastMetrics.dropped) - dropped === 3, 5_000, "the manager's backlog to go")
    expect(stayer.client.readyState).toBe(WebSocket.OPEN)
  })
})

describe("a drop-oldest backlog is written as soon as the socket can take it", () => {
  // Below the TCP stream's high-water mark (16 KiB) no 'drain' is due: the backlog must not wait for a later broadcast.
  const bound = 1000

  const pausedWithBacklog = async (publish: (message: string) => Promise<unknown>, backlogged: () => boolean) => {
    const sent: Array<string> = []
    for (let n = 0; n < 2000 && !backlogged(); n++) {
      sent.push(`${n}`)
      await publish(`${n}:${"x".repeat(10_000)}`)
      await new Promise((resolve) => setImmediate(resolve))
    }
    expect(backlogged()).toBe(true)
    return sent
  }

  it("in a Broadcaster channel, when the client reads again", async () => {
    const { broadcaster, connect } = await setup({}, { policy: "drop-oldest", maxBackpressure: bound, maxQueuedMessages: 8 })
    const { client } = await connect()
    rawSocketOf(client).pause()
    const sent = await pausedWithBacklog(
      (message) => broadcaster.broadcast("feed", message),
      () => broadcaster.getStats().channels.feed!.backlogged === 1
    )
    const labels = labelsUntil(client, sent.at(-1)!)
    rawSocketOf(client).resume()
    const received = await labels
    expect(received.slice(-8)).toEqual(sent.slice(-8))
    const stats = broadcaster.getStats().channels.feed!
    expect(stats).toMatchObject({ backlogged: 0, delivered: received.length })
    expect(stats.delivered + stats.dropped).toBe(sent.length)
  })

  it("with permessage-deflate, for a burst to a client that reads all along", async () => {
    const { broadcaster, connect } = await setup(
      { compression: { enabled: true, threshold: 0 } },
      { policy: "drop-oldest", maxBackpressure: 64 * 1024, maxQueuedMessages: 64 }
    )
    const { client } = await connect({ perMessageDeflate: true })
    // Random text compresses poorly: the burst sits in ws's compression queue, over the bound, before any TCP write.
    const burst = Array.from({ length: 30 }, (_, n) => `${n}:${randomBytes(8 * 1024).toString("base64")}`)
    const labels = labelsUntil(client, "29")
    await Promise.all(burst.map((message) => broadcaster.broadcast("feed", message)))
    expect(await labels).toEqual(burst.map((_, n) => `${n}`))
    expect(broadcaster.getStats().channels.feed).toMatchObject({ backlogged: 0, delivered: 30, dropped: 0 })
  })

  it("in manager.broadcast, and a socket that goes has every message it was offered accounted for", async () => {
    const { connect, harness } = await setup({ broadcast: { policy: "drop-oldest", maxBackpressure: bound, maxQueuedMessages: 8 } })
    const { client } = await connect()
    const delivered = counter(Manager.broadcastMetrics.delivered)
    const dropped = counter(Manager.broadcastMetrics.dropped)
    rawSocketOf(client).pause()
    let sent = 0
    for (; sent < 2000; sent++) {
      await harness.manager.broadcast(`${sent}:${"x".repeat(10_000)}`)
      await new Promise((resolve) => setImmediate(resolve))
    }
    client.terminate()
    await eventually(() => harness.manager.getActiveConnections() === 0)
    await eventually(
      () => counter(Manager.broadcastMetrics.delivered) - delivered + counter(Manager.broadcastMetrics.dropped) - dropped === sent,
      5_000,
      "delivered + dropped to account for every message"
    )
  })
})

/**
 * Pauses a client and writes large fillers straight to its server socket until the loopback buffers
 * are full and the send buffer holds still; returns its size, which stays put while the client is paused.
 */
const heldStill = async (client: WebSocket, server: WebSocket) => {
  rawSocketOf(client).pause()
  const filler = "f".repeat(1024 * 1024)
  for (let fillers = 0; fillers < 128; fillers++) {
    const before = server.bufferedAmount
    if (before > 0) {
      await sleep(200)
      if (server.bufferedAmount === before) return before
    }
    server.send(filler)
    await sleep(20)
  }
  throw new Error("the send buffer never held still")
}

describe("the bound is exact", () => {
  it("a socket with exactly maxBackpressure bytes waiting still gets the message; one byte over, it does not", async () => {
    const { connect } = await setup()
    const { client, server } = await connect()
    const waiting = await heldStill(client, server)
    const bounded = new Broadcaster({ channels: { under: { maxBackpressure: waiting - 1 }, at: { maxBackpressure: waiting } } })
    cleanups.push(() => bounded.close())
    bounded.subscribe(server, "under")
    bounded.subscribe(server, "at")
    expect(await bounded.broadcast("under", "dropped")).toBe(0)
    expect(server.bufferedAmount).toBe(waiting)
    expect(await bounded.broadcast("at", "written")).toBe(1)
    expect(server.bufferedAmount).toBeGreaterThan(waiting)
    expect(bounded.getStats().channels).toMatchObject({
      under: { delivered: 0, dropped: 1 },
      at: { delivered: 1, dropped: 0 }
    })
  })
})
