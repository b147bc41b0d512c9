/**
 * The Effect API on a real Redis: Layers composed with `RedisBus.layer`, and a server-side
 * `Channel.messages` consumer on one node seeing what another node publishes.
 */
import { expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Layer, Stream } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import { Broadcaster, RedisBus } from "../src/index.js"
import type { RedisServer } from "./utils/redis.js"
import { describeRedis, startRedis } from "./utils/redis.js"

/** Waits until that many connections subscribe to the channel in Redis. */
const subscribed = (url: string, channel: string, count: number) =>
  Effect.promise(async () => {
    const redis = new Redis(url)
    try {
      for (const deadline = Date.now() + 5_000; Date.now() < deadline;) {
        const [, n] = await redis.pubsub("NUMSUB", channel) as [string, number]
        if (Number(n) === count) return
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      throw new Error(`${channel} never had ${count} subscriber(s)`)
    } finally {
      redis.disconnect()
    }
  })

describeRedis("Cluster over Redis (Effect API)", () => {
  let redis: RedisServer
  beforeAll(async () => {
    redis = await startRedis()
  })
  afterAll(async () => {
    await redis?.kill()
  })

  it.scopedLive("a Channel.messages consumer on node B sees every message published on node A, as published", () =>
    Effect.gen(function*() {
      // Two nodes: each its own Broadcaster on its own bus (its own two Redis connections).
      const node = Broadcaster.layer().pipe(Layer.provide(RedisBus.layer({ url: redis.url })))
      const a = yield* Effect.provide(Broadcaster.Broadcaster, yield* Layer.build(node))
      const b = yield* Effect.provide(Broadcaster.Broadcaster, yield* Layer.build(node))
      const feed = yield* b.createChannel("feed")
      const consumed = yield* feed.messages.pipe(Stream.take(3), Stream.runCollect, Effect.fork)
      yield* subscribed(redis.url, "ewm:channel:feed", 1)

      // No subscriber of "feed" on node A: nothing local, and still published for the others.
      expect(yield* a.broadcast("feed", "text")).toBe(0)
      yield* a.broadcast("feed", { n: 1 })
      yield* a.broadcast("feed", Buffer.from([7, 8]))
      const messages = Chunk.toReadonlyArray(yield* Fiber.join(consumed))
      expect(messages.slice(0, 2)).toEqual(["text", { n: 1 }])
      expect([...(messages[2] as Buffer)]).toEqual([7, 8])
    }))
})
