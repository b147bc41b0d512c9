import { Effect, Metric } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import * as Core from "../src/Broadcaster.js"
import WebSocket from "ws"
import { Broadcaster } from "../src/promise/index.js"
import type { BroadcasterOptions } from "../src/promise/index.js"
import type { Harness } from "./utils/index.js"
import { closeOf, eventually, nextMessage, nextMessages, openClient, sleep, startManager, withTimeout } from "./utils/index.js"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/**
 * A manager whose accepted sockets are subscribed to the channels named in `?channels=a,b`,
 * and a broadcaster; `connect` opens a client and waits until it is subscribed.
 */
const setup = async (options?: BroadcasterOptions, managerOptions = {}) => {
  const broadcaster = new Broadcaster(options)
  const sockets: Array<WebSocket> = []
  const harness: Harness = await startManager(managerOptions, ({ socket }, request) => {
    sockets.push(socket)
    for (const channel of new URL(request.url).searchParams.get("channels")?.split(",") ?? []) {
      broadcaster.subscribe(socket, channel)
    }
  })
  const clients: Array<WebSocket> = []
  cleanups.push(async () => {
    for (const ws of clients) ws.terminate()
    await harness.close()
    await broadcaster.close()
  })
  const connect = async (channels: string, options?: WebSocket.ClientOptions) => {
    const ws = await openClient(`${harness.url}/?channels=${channels}`, undefined, options)
    clients.push(ws)
    return ws
  }
  return { broadcaster, harness, sockets, connect }
}

const numbers = (messages: Array<string | Buffer>) => messages.map((m) => JSON.parse(m.toString()).n as number)

describe("Broadcaster (facade)", () => {
  it("creates channels, delivers to subscribers only, and resolves with the count", async () => {
    const { broadcaster, connect } = await setup()
    const channel = broadcaster.createChannel("chat")
    expect(channel.name).toBe("chat")
    const [a, b] = [await connect("chat"), await connect("chat")]
    const outsider = await connect("other")
    expect(channel.subscriberCount).toBe(2)
    const received = Promise.all([nextMessage(a), nextMessage(b)])
    expect(await broadcaster.broadcast("chat", { type: "message", text: "Hello!" })).toBe(2)
    expect(await received).toEqual([JSON.stringify({ type: "message", text: "Hello!" }), JSON.stringify({ type: "message", text: "Hello!" })])
    expect(await nextMessage(outsider, 200).catch(() => "nothing")).toBe("nothing")
    // The channel object broadcasts too; a channel nobody created reaches nobody.
    expect(await channel.broadcast("via channel")).toBe(2)
    expect(await broadcaster.broadcast("nowhere", "x")).toBe(0)
  })

  it("applies exclude and filter per socket", async () => {
    const { broadcaster, connect, sockets } = await setup()
    const clients = [await connect("room"), await connect("room"), await connect("room")]
    const [first, second] = sockets
    const got = clients.map((ws) => nextMessage(ws, 300).catch(() => "nothing"))
    expect(await broadcaster.broadcast("room", "not to the sender", { exclude: first })).toBe(2)
    expect(await Promise.all(got)).toEqual(["nothing", "not to the sender", "not to the sender"])
    const filtered = clients.map((ws) => nextMessage(ws, 300).catch(() => "nothing"))
    expect(await broadcaster.broadcast("room", "second only", { filter: (socket) => socket === second })).toBe(1)
    expect(await Promise.all(filtered)).toEqual(["nothing", "second only", "nothing"])
  })

  it("keeps publish order for every subscriber under concurrent publishers", async () => {
    const { broadcaster, connect } = await setup()
    const clients = await Promise.all([connect("feed"), connect("feed"), connect("feed")])
    const received = clients.map((ws) => nextMessages(ws, 600))
    const publishers = [0, 1, 2].map(async (publisher) => {
      for (let i = 0; i < 200; i++) {
        void broadcaster.broadcast("feed", { publisher, i })
        if (i % 7 === publisher) await sleep(0)
      }
    })
    await Promise.all(publishers)
    const sequences = (await Promise.all(received)).map((messages) => messages.map((m) => m.toString()))
    // Everyone saw the same order, and each publisher's messages in the order it sent them.
    expect(sequences[1]).toEqual(sequences[0])
    expect(sequences[2]).toEqual(sequences[0])
    for (const publisher of [0, 1, 2]) {
      const own = sequences[0]!.map((m) => JSON.parse(m)).filter((m) => m.publisher === publisher).map((m) => m.i)
      expect(own).toEqual(Array.from({ length: 200 }, (_, i) => i))
    }
  })

  it("coalesces a burst published in one tick, in order, to plain and compressed sockets alike", async () => {
    const { broadcaster, connect } = await setup(undefined, { compression: { enabled: true, threshold: 0 } })
    const plain = await connect("burst", { perMessageDeflate: false })
    const compressed = await connect("burst")
    expect(compressed.extensions).toContain("permessage-deflate")
    const received = [nextMessages(plain, 500), nextMessages(compressed, 500)]
    const counts = await Promise.all(Array.from({ length: 500 }, (_, n) => broadcaster.broadcast("burst", { n })))
    expect(counts.every((count) => count === 2)).toBe(true)
    for (const messages of await Promise.all(received)) expect(numbers(messages)).toEqual(Array.from({ length: 500 }, (_, n) => n))
  })

  it("skips a socket that closes mid-broadcast without failing the broadcast", async () => {
    const { broadcaster, connect } = await setup()
    const leaving = await connect("news")
    const staying = await connect("news")
    const received = nextMessages(staying, 100)
    const counts: Array<Promise<number>> = []
    for (let n = 0; n < 100; n++) {
      counts.push(broadcaster.broadcast("news", { n }))
      if (n === 30) leaving.terminate()
      if (n % 10 === 0) await sleep(1)
    }
    const settled = await Promise.all(counts)
    expect(settled.at(-1)).toBe(1)
    expect(numbers(await received)).toEqual(Array.from({ length: 100 }, (_, n) => n))
  })

  it("refuses bad input with typed errors or documented no-ops, never delivering half a broadcast", async () => {
    const { broadcaster, connect, sockets } = await setup()
    const member = await connect("chat")
    const [accepted] = sockets
    // A client-side socket was not accepted by a manager.
    expect(() => broadcaster.subscribe(member, "chat")).toThrow(expect.objectContaining({ _tag: "NotAManagedSocket" }))
    // An unknown channel, or a socket not subscribed: a no-op that says so.
    expect(broadcaster.unsubscribe(accepted!, "nope")).toBe(false)
    const circular: Record<string, unknown> = {}
    circular.self = circular
    await expect(broadcaster.broadcast("chat", circular)).rejects.toMatchObject({ _tag: "MessageEncodeError" })
    await expect(broadcaster.broadcast("chat", { big: 1n })).rejects.toMatchObject({ _tag: "MessageEncodeError" })
    await expect(
      broadcaster.broadcast("chat", "x", {
        filter: () => {
          throw new Error("bad filter")
        }
      })
    ).rejects.toThrow("bad filter")
    expect(await nextMessage(member, 200).catch(() => "nothing")).toBe("nothing")
    // The channel still works afterwards.
    expect(await broadcaster.broadcast("chat", "fine")).toBe(1)
    expect(await nextMessage(member)).toBe("fine")
    member.close()
    await eventually(() => accepted!.readyState === WebSocket.CLOSED)
    expect(() => broadcaster.subscribe(accepted!, "chat")).toThrow(/not open/)
  })

  it("leaves nothing behind after 1,000 subscribe/close cycles", async () => {
    const { broadcaster, connect, harness, sockets } = await setup()
    const stayer = await connect("lobby")
    for (let round = 0; round < 20; round++) {
      const clients = await Promise.all(Array.from({ length: 50 }, (_, i) => connect(`lobby,room-${round}-${i % 5}`)))
      clients.forEach((ws) => ws.close())
    }
    await eventually(() => harness.manager.getActiveConnections() === 1, 10_000, "the clients to close")
    await eventually(() => broadcaster.getStats().subscriptions === 1, 5_000, "subscriptions to be released")
    const stats = broadcaster.getStats()
    expect(Object.keys(stats.channels)).toEqual(["lobby"])
    expect(stats).toMatchObject({ subscriptions: 1, subscribers: 1, fibers: 1 })
    expect(harness.manager.getStats()).toMatchObject({ connections: 1, fibers: 1 })
    // Unsubscribing the last subscriber removes the channel and its fiber.
    expect(broadcaster.unsubscribe(sockets[0]!, "lobby")).toBe(true)
    expect(broadcaster.getStats()).toMatchObject({ channels: {}, subscriptions: 0, subscribers: 0 })
    await eventually(() => broadcaster.getStats().fibers === 0, 2_000, "the channel fiber to stop")
    stayer.terminate()
    // 1,000 connections take a while on a loaded machine; nothing here depends on timing.
  }, 60_000)
})

describe("slow consumers", () => {
  // 200 × 64 KiB: well past what the loopback kernel buffers absorb for a client that stops reading.
  const COUNT = 200
  const payload = "x".repeat(64 * 1024)

  const flood = async (policy: "drop-newest" | "drop-oldest" | "close") => {
    const context = await setup({ policy, maxBackpressure: 256 * 1024, maxQueuedMessages: 8 })
    const fast = [await context.connect("firehose"), await context.connect("firehose")]
    const slow = await context.connect("firehose")
    const slowSocket = context.sockets[2]!
    ;(slow as any)._socket.pause()
    const fastReceived = fast.map((ws) => nextMessages(ws, COUNT, 10_000))
    // One message per tick: fast clients read between ticks, the paused one cannot.
    const publish = async () => {
      const counts: Array<number> = []
      for (let n = 0; n < COUNT; n++) {
        counts.push(await context.broadcaster.broadcast("firehose", `${n}:${payload}`))
        await new Promise((resolve) => setImmediate(resolve))
      }
      return counts
    }
    const counts = await withTimeout(publish(), 10_000, "the publisher")
    // The fast clients get everything, while the slow one is stuck.
    for (const messages of await Promise.all(fastReceived)) {
      expect(messages.map((m) => Number(m.toString().split(":")[0]))).toEqual(Array.from({ length: COUNT }, (_, n) => n))
    }
    return { ...context, slow, slowSocket, counts }
  }

  it("drop-newest: the slow socket skips messages, each drop is counted, nobody else waits", async () => {
    const { broadcaster, counts, slow } = await flood("drop-newest")
    const stats = broadcaster.getStats().channels.firehose!
    expect(stats.dropped).toBeGreaterThan(0)
    expect(counts.filter((count) => count === 2).length).toBe(stats.dropped)
    expect(stats.delivered + stats.dropped).toBe(COUNT * 3)
    const received: Array<number> = []
    slow.on("message", (data) => received.push(Number(data.toString().split(":")[0])))
    ;(slow as any)._socket.resume()
    await eventually(() => received.length === COUNT - stats.dropped, 10_000, "the slow client to catch up")
    expect(received).toEqual([...received].sort((a, b) => a - b))
  })

  it("drop-oldest: a small backlog of the newest messages is flushed when the socket drains", async () => {
    // Metrics are global: this test counts from what earlier tests left on the same channel name.
    const deliveredBefore = Effect.runSync(Metric.value(Metric.tagged(Core.metrics.delivered, "channel", "firehose"))).count
    const droppedBefore = Effect.runSync(Metric.value(Metric.tagged(Core.metrics.dropped, "channel", "firehose"))).count
    const { broadcaster, slow, slowSocket } = await flood("drop-oldest")
    const stats = broadcaster.getStats().channels.firehose!
    expect(stats.backlogged).toBe(1)
    expect(stats.dropped).toBeGreaterThan(0)
    // One drain listener waits for the backlog, however many messages arrived meanwhile.
    expect((slowSocket as any)._socket.listenerCount("drain")).toBeLessThanOrEqual(1)
    const received: Array<number> = []
    slow.on("message", (data) => received.push(Number(data.toString().split(":")[0])))
    ;(slow as any)._socket.resume()
    await eventually(() => received.at(-1) === COUNT - 1, 10_000, "the backlog to be flushed")
    // The slow client got an early run, then the last maxQueuedMessages: the oldest were replaced.
    expect(received.slice(-8)).toEqual(Array.from({ length: 8 }, (_, i) => COUNT - 8 + i))
    expect(received.length).toBe(COUNT - stats.dropped)
    await eventually(() => broadcaster.getStats().channels.firehose!.backlogged === 0)
    // The metrics count each delivery and drop once, as the stats do.
    const final = broadcaster.getStats().channels.firehose!
    const metric = (counter: typeof Core.metrics.delivered) =>
      Effect.runSync(Metric.value(Metric.tagged(counter, "channel", "firehose"))).count
    expect([metric(Core.metrics.delivered) - deliveredBefore, metric(Core.metrics.dropped) - droppedBefore]).toEqual([
      final.delivered,
      final.dropped
    ])
  })

  it("close: the slow socket is closed with 1008", async () => {
    const { broadcaster, harness, slow } = await flood("close")
    const closed = closeOf(slow, 10_000)
    ;(slow as any)._socket.resume()
    expect(await closed).toMatchObject({ code: 1008, reason: "Slow consumer" })
    await eventually(() => harness.manager.getActiveConnections() === 2)
    await eventually(() => broadcaster.getStats().channels.firehose!.subscribers === 2)
  })
})

/** Every broadcast settles: resolved with a count or rejected; a hang fails the test after 2 s. */
const settled = (broadcast: Promise<number>) =>
  withTimeout(
    broadcast.then((count) => ({ count }), (error: unknown) => ({ error })),
    2_000,
    "the broadcast to settle"
  )

/** Runs `f` after `ticks` microtask turns, or on the next macrotask for a negative count. */
const after = (ticks: number, f: () => void) =>
  ticks < 0
    ? new Promise<void>((resolve) => setImmediate(() => resolve(f())))
    : (async () => {
      for (let i = 0; i < ticks; i++) await Promise.resolve()
      f()
    })()

// 0..40 microtask turns and a macrotask: the removal lands before the publish, between the
// publish and the channel fiber's delivery, and after it.
const TIMINGS = [...Array.from({ length: 41 }, (_, i) => i), -1]

describe("races and close", () => {
  it("a broadcast raced by its last subscriber's unsubscribe always settles", async () => {
    const { broadcaster, connect, sockets } = await setup()
    for (const ticks of TIMINGS) {
      const client = await connect(`race-${ticks}`)
      const socket = sockets.at(-1)!
      const result = settled(broadcaster.broadcast(`race-${ticks}`, "x"))
      await after(ticks, () => broadcaster.unsubscribe(socket, `race-${ticks}`))
      const outcome = await result
      expect(outcome, `unsubscribed after ${ticks} ticks`).toHaveProperty("count")
      client.terminate()
    }
    await eventually(() => broadcaster.getStats().fibers === 0, 2_000, "every idle channel to be removed")
    expect(broadcaster.getStats().channels).toEqual({})
  })

  it("a broadcast raced by its last subscriber's socket closing always settles", async () => {
    const { broadcaster, connect, sockets } = await setup()
    for (const ticks of TIMINGS) {
      const client = await connect(`closing-${ticks}`)
      // The broadcast is published while the connection's end releases its subscriptions.
      const result = new Promise<Awaited<ReturnType<typeof settled>>>((resolve) =>
        sockets.at(-1)!.once("close", () => after(ticks, () => resolve(settled(broadcaster.broadcast(`closing-${ticks}`, "x")))))
      )
      client.terminate()
      expect(await withTimeout(result, 4_000, "the close"), `published ${ticks} ticks after the close`).toHaveProperty("count")
    }
    await eventually(() => broadcaster.getStats().fibers === 0, 2_000, "every idle channel to be removed")
  })

  it("close() raced by broadcasts settles every one of them, delivered or failed with BroadcasterClosed", async () => {
    for (const ticks of [0, 1, 2, 3, 5, 8, 13, -1]) {
      const { broadcaster, connect } = await setup()
      const client = await connect("news")
      const received: Array<string> = []
      client.on("message", (data) => received.push(data.toString()))
      const results = Array.from({ length: 5 }, (_, n) => settled(broadcaster.broadcast("news", `${n}`)))
      await after(ticks, () => void broadcaster.close())
      for (const outcome of await Promise.all(results)) {
        if ("error" in outcome) expect(outcome.error, `closed after ${ticks} ticks`).toMatchObject({ _tag: "BroadcasterClosed" })
        else expect(outcome.count).toBe(1)
      }
      // What resolved was written, in order.
      const delivered = (await Promise.all(results)).filter((outcome) => "count" in outcome).length
      await eventually(() => received.length === delivered, 2_000, `${delivered} messages`)
      expect(received).toEqual(Array.from({ length: delivered }, (_, n) => `${n}`))
    }
  })

  it("after close() every call that would publish or subscribe fails with BroadcasterClosed", async () => {
    const { broadcaster, connect, sockets } = await setup()
    await connect("chat")
    const channel = broadcaster.createChannel("chat")
    await broadcaster.close()
    const outcome = await settled(broadcaster.broadcast("chat", "late"))
    expect(outcome).toMatchObject({ error: { _tag: "BroadcasterClosed" } })
    expect(await settled(channel.broadcast("late"))).toMatchObject({ error: { _tag: "BroadcasterClosed" } })
    expect(await settled(broadcaster.broadcast("never-created", "late"))).toMatchObject({
      error: { _tag: "BroadcasterClosed" }
    })
    expect(() => broadcaster.subscribe(sockets[0]!, "chat")).toThrow(expect.objectContaining({ _tag: "BroadcasterClosed" }))
    expect(() => broadcaster.createChannel("other")).toThrow(expect.objectContaining({ _tag: "BroadcasterClosed" }))
    // Leaving and reading still work, and find nothing: every channel was shut.
    expect(broadcaster.unsubscribe(sockets[0]!, "chat")).toBe(false)
    expect(broadcaster.getChannels(sockets[0]!)).toEqual([])
    expect(broadcaster.getStats()).toMatchObject({ channels: {}, subscriptions: 0, subscribers: 0, fibers: 0 })
    const gauge = Effect.runSync(Metric.value(Metric.tagged(Core.metrics.subscribers, "channel", "chat")))
    expect(gauge.value).toBe(0)
    await broadcaster.close()
  })
})
