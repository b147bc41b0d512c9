import { expect, it } from "@effect/vitest"
import { Cause, Duration, Effect, Exit, Logger, Metric, Option, Schedule, Scope } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import type { ClusterBus } from "../src/ClusterBus.js"
import { ClusterUnavailable } from "../src/errors.js"
import * as RedisBus from "../src/RedisBus.js"
import { eventually } from "./utils/index.js"
import { describeRedis, type RedisServer, startRedis } from "./utils/redis.js"

/** A fast, steady schedule, so outage tests wait tens of milliseconds rather than seconds. */
const fast = Schedule.spaced("50 millis")

/** A plain client of the test's own, to look at the server from outside the buses. */
const inspector = (url: string) =>
  Effect.acquireRelease(Effect.sync(() => new Redis(url, { lazyConnect: false })), (redis) =>
    Effect.sync(() => redis.disconnect()))

/** Redis holds every client's commands for `millis`: up, but not answering. Lifted when the scope closes. */
const pause = (redis: Redis, millis: number) =>
  Effect.acquireRelease(
    Effect.promise(() => redis.client("PAUSE", millis, "ALL")),
    () => Effect.promise(() => redis.client("UNPAUSE"))
  )

const numsub = (redis: Redis, channel: string) =>
  Effect.promise(async () => Number((await redis.pubsub("NUMSUB", channel) as Array<string | number>)[1]))

/** Every payload a listener receives, as text, in order. */
const collect = (bus: ClusterBus, topic: string) =>
  Effect.gen(function*() {
    const received: Array<string> = []
    yield* bus.subscribe(topic, (payload) => received.push(payload.toString()))
    return received
  })

const until = (condition: () => boolean, what: string, millis = 5_000) =>
  Effect.promise(() => eventually(condition, millis, what))

/** Reads until `ok` holds (bounded), for state that only an asynchronous read can see. */
const poll = <A>(read: () => Promise<A>, ok: (value: A) => boolean, what: string, millis = 5_000) =>
  Effect.promise(async () => {
    const deadline = Date.now() + millis
    for (;;) {
      const value = await read()
      if (ok(value)) return value
      if (Date.now() > deadline) throw new Error(`timed out after ${millis} ms waiting for ${what}`)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  })

const publishFailures = () => Effect.map(Metric.value(RedisBus.metrics.publishFailures), (state) => state.count)

/** Logs of the effect under test, kept instead of printed. */
const captureLogs = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ logLevel, message }) => {
    lines.push(`${logLevel.label} ${Array.isArray(message) ? message.map(String).join(" ") : String(message)}`)
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

describeRedis("RedisBus", () => {
  let server: RedisServer

  beforeAll(async () => {
    server = await startRedis()
  })

  afterAll(async () => {
    await server?.kill()
  })

  it.scopedLive("a publish on one node reaches the other's listeners and its own, in order", () =>
    Effect.gen(function*() {
      const a = yield* RedisBus.make({ url: server.url })
      const b = yield* RedisBus.make({ url: server.url })
      expect(a.crossNode).toBe(true)
      expect(a.nodeId).not.toBe(b.nodeId)
      const onB = yield* collect(b, "order")
      const onA = yield* collect(a, "order")
      const sent = Array.from({ length: 1_000 }, (_, i) => String(i))
      for (const text of sent) yield* a.publish("order", Buffer.from(text))
      yield* until(() => onB.length >= 1_000 && onA.length >= 1_000, "1,000 messages on both nodes")
      expect(onB).toEqual(sent)
      expect(onA).toEqual(sent)
    }))

  it.scopedLive("publishes run concurrently are sent in the order they started", () =>
    Effect.gen(function*() {
      const a = yield* RedisBus.make({ url: server.url })
      const b = yield* RedisBus.make({ url: server.url })
      const onB = yield* collect(b, "concurrent")
      const sent = Array.from({ length: 200 }, (_, i) => String(i))
      yield* Effect.all(sent.map((text) => a.publish("concurrent", Buffer.from(text))), { concurrency: "unbounded" })
      yield* until(() => onB.length >= 200, "200 messages")
      expect(onB).toEqual(sent)
    }))

  it.scopedLive("a topic is subscribed in Redis while it has listeners on the node, once per node", () =>
    Effect.gen(function*() {
      const redis = yield* inspector(server.url)
      const a = yield* RedisBus.make({ url: server.url, keyPrefix: "refcount:" })
      const b = yield* RedisBus.make({ url: server.url, keyPrefix: "refcount:" })
      const first = yield* Scope.make()
      const second = yield* Scope.make()
      const heard: Array<string> = []
      yield* Scope.extend(a.subscribe("t", (payload) => heard.push(`1:${payload}`)), first)
      expect(yield* numsub(redis, "refcount:t")).toBe(1)
      yield* Scope.extend(a.subscribe("t", (payload) => heard.push(`2:${payload}`)), second)
      expect(yield* numsub(redis, "refcount:t")).toBe(1)
      yield* Scope.extend(b.subscribe("t", () => {}), second)
      expect(yield* numsub(redis, "refcount:t")).toBe(2)

      yield* Scope.close(first, Exit.void)
      expect(yield* numsub(redis, "refcount:t")).toBe(2)
      yield* a.publish("t", Buffer.from("x"))
      yield* until(() => heard.length >= 1, "the remaining listener")
      expect(heard).toEqual(["2:x"])

      yield* Scope.close(second, Exit.void)
      expect(yield* numsub(redis, "refcount:t")).toBe(0)
    }))

  it.scopedLive("a listener that throws does not stop the others and is counted", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      const before = (yield* Metric.value(RedisBus.metrics.listenerErrors)).count
      const bus = yield* RedisBus.make({ url: server.url })
      yield* bus.subscribe("throws", () => {
        throw new Error("listener bug")
      })
      const heard = yield* collect(bus, "throws")
      yield* bus.publish("throws", Buffer.from("one"))
      yield* bus.publish("throws", Buffer.from("two"))
      yield* until(() => heard.length >= 2, "both messages")
      expect(heard).toEqual(["one", "two"])
      yield* until(() => Effect.runSync(Metric.value(RedisBus.metrics.listenerErrors)).count >= before + 2, "2 errors")
      expect(logs.lines.some((line) => line.includes("listener of ewm:throws threw"))).toBe(true)
    }).pipe(Effect.provide(logs.layer))
  })

  it.live("an unreachable Redis fails the layer with ClusterUnavailable naming the URL", () =>
    Effect.gen(function*() {
      const closed = yield* Effect.promise(() => startRedis())
      yield* Effect.promise(() => closed.kill())
      const error = yield* Effect.flip(
        Effect.scoped(RedisBus.make({ url: closed.url, connectTimeout: 300 }))
      )
      expect(error).toBeInstanceOf(ClusterUnavailable)
      expect(error._tag).toBe("ClusterUnavailable")
      expect((error as ClusterUnavailable).engine).toBe(closed.url)
      expect(error.message).toContain("ECONNREFUSED")
    }))

  it.live("the error of a URL with credentials does not contain them", () =>
    Effect.gen(function*() {
      const closed = yield* Effect.promise(() => startRedis())
      yield* Effect.promise(() => closed.kill())
      const url = `redis://admin:s3cr3t-pw@127.0.0.1:${closed.port}/2`
      const error = yield* Effect.flip(Effect.scoped(RedisBus.make({ url, connectTimeout: 300 })))
      expect(error._tag).toBe("ClusterUnavailable")
      expect((error as ClusterUnavailable).engine).toBe(`redis://127.0.0.1:${closed.port}/2`)
      const everything = `${error.message} ${String(error)} ${JSON.stringify(error)} ${Cause.pretty(Cause.fail(error))}`
      expect(everything).not.toContain("s3cr3t-pw")
      expect(everything).not.toContain("admin")
    }))

  it.live("a wrong password fails with ClusterUnavailable, without the password", () =>
    Effect.gen(function*() {
      const guarded = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (s) => Effect.promise(() => s.kill()))
      yield* Effect.scoped(Effect.flatMap(inspector(guarded.url), (redis) =>
        Effect.promise(() => redis.config("SET", "requirepass", "right-pw"))))
      const url = `redis://:wr0ng-pw@127.0.0.1:${guarded.port}`
      const logs = captureLogs()
      // Long enough for at least one refused AUTH on a loaded machine: the error names the last attempt's reason.
      const error = yield* Effect.flip(Effect.scoped(RedisBus.make({ url, connectTimeout: 2_000 }))).pipe(
        Effect.provide(logs.layer)
      )
      expect(error._tag).toBe("ClusterUnavailable")
      expect(error.message).toContain("WRONGPASS")
      expect(logs.lines.length).toBeGreaterThan(0)
      // ioredis's reply error holds the AUTH command with its arguments: it must not be kept.
      const everything = `${error.message} ${JSON.stringify(error)} ${Cause.pretty(Cause.fail(error))} ${logs.lines}`
      expect(everything).not.toContain("wr0ng-pw")
      // The right one connects.
      yield* Effect.scoped(RedisBus.make({ url: `redis://:right-pw@127.0.0.1:${guarded.port}` }))
    }).pipe(Effect.scoped))

  it.live("bad options fail with InvalidOptions naming the field", () =>
    Effect.gen(function*() {
      const neither = yield* Effect.flip(Effect.scoped(RedisBus.make({})))
      expect(neither).toMatchObject({ _tag: "InvalidOptions", field: "url" })
      const notASchedule = yield* Effect.flip(
        Effect.scoped(RedisBus.make({ url: server.url, reconnect: "fast" as never }))
      )
      expect(notASchedule).toMatchObject({ _tag: "InvalidOptions", field: "reconnect" })
      const http = yield* Effect.flip(Effect.scoped(RedisBus.make({ url: "http://127.0.0.1:6379" })))
      expect(http).toMatchObject({ _tag: "InvalidOptions", field: "url" })
    }))

  it.scopedLive("a publish without a reply fails after commandTimeout instead of waiting", () =>
    Effect.gen(function*() {
      const redis = yield* inspector(server.url)
      const bus = yield* RedisBus.make({ url: server.url, commandTimeout: 200 })
      yield* pause(redis, 1_000)
      const error = yield* Effect.flip(bus.publish("paused", Buffer.from("x")))
      expect(error._tag).toBe("ClusterUnavailable")
      expect(error.message).toContain("no reply within 200 ms")
      const presence = yield* Effect.flip(bus.members("paused"))
      expect(presence.message).toContain("no reply within 200 ms")
    }))

  it.scopedLive("a connection that stops answering is dropped by the heartbeat and made again", () =>
    Effect.gen(function*() {
      const redis = yield* inspector(server.url)
      const reconnections = () =>
        Effect.runSync(Metric.value(Metric.tagged(RedisBus.metrics.reconnections, "role", "subscriber"))).count
      const bus = yield* RedisBus.make({
        url: server.url,
        heartbeatInterval: 100,
        commandTimeout: 200,
        connectTimeout: 300,
        reconnect: fast
      }).pipe(Effect.provide(Logger.remove(Logger.defaultLogger)))
      const heard = yield* collect(bus, "heartbeat")
      const before = reconnections()
      yield* pause(redis, 800)
      yield* until(() => reconnections() > before, "the subscriber connected again", 10_000)
      yield* Effect.promise(() =>
        eventually(
          () => {
            Effect.runFork(Effect.ignore(bus.publish("heartbeat", Buffer.from("again"))))
            return heard.includes("again")
          },
          10_000,
          "a message after the reconnection"
        )
      )
    }), { timeout: 30_000 })

  it.scopedLive("presence: a member's state is seen by other nodes and expires after its TTL", () =>
    Effect.gen(function*() {
      const redis = yield* inspector(server.url)
      const a = yield* RedisBus.make({ url: server.url })
      const b = yield* RedisBus.make({ url: server.url })
      yield* a.announce("nodes", "a", "3", Duration.millis(300))
      yield* b.announce("nodes", "b", "5", Duration.seconds(30))
      expect(yield* b.members("nodes")).toEqual(new Map([["a", "3"], ["b", "5"]]))
      expect(yield* Effect.promise(() => redis.pttl("ewm:presence:nodes:a"))).toBeGreaterThan(0)
      yield* a.announce("nodes", "a", "4", Duration.millis(300))
      expect((yield* b.members("nodes")).get("a")).toBe("4")
      yield* Effect.sleep("450 millis")
      expect(yield* b.members("nodes")).toEqual(new Map([["b", "5"]]))
      // The expired member is removed from the group's set too.
      yield* poll(() => redis.smembers("ewm:presence:nodes"), (names) => names.length === 1, "the SREM")
      expect(yield* Effect.promise(() => redis.smembers("ewm:presence:nodes"))).toEqual(["b"])
    }))

  it.scopedLive("Redis lost while running: publishes fail at once, both connections come back on the schedule", () =>
    Effect.gen(function*() {
      const outage = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (s) => Effect.promise(() => s.kill()))
      // A long command timeout: a publish that waited for it instead of failing at once would time the test out.
      const options = { url: outage.url, reconnect: fast, commandTimeout: 60_000 }
      const a = yield* RedisBus.make(options)
      const b = yield* RedisBus.make(options)
      // The user's own client keeps ioredis's defaults: an offline queue, its own reconnection.
      const client = yield* inspector(outage.url)
      const c = yield* RedisBus.make({ client, commandTimeout: 60_000 })
      const onB = yield* collect(b, "outage")
      yield* a.publish("outage", Buffer.from("before"))
      yield* until(() => onB.length === 1, "the first message")

      const failuresBefore = yield* publishFailures()
      yield* Effect.promise(() => outage.stop())
      yield* until(() => Effect.runSync(Metric.value(Metric.tagged(RedisBus.metrics.connected, "role", "publisher"))).value === 0, "the loss seen")
      const failed = yield* a.publish("outage", Buffer.from("during")).pipe(
        Effect.timeout("1 second"),
        Effect.flip
      )
      expect(failed._tag).toBe("ClusterUnavailable")
      expect((failed as ClusterUnavailable).engine).toBe(outage.url)
      const failedOnClient = yield* c.publish("outage", Buffer.from("during")).pipe(Effect.timeout("1 second"), Effect.flip)
      expect(failedOnClient._tag).toBe("ClusterUnavailable")
      expect(yield* publishFailures()).toBeGreaterThan(failuresBefore)
      const presence = yield* Effect.flip(a.members("nodes"))
      expect(presence._tag).toBe("ClusterUnavailable")

      yield* Effect.promise(() => outage.start())
      // Nobody subscribes again: the subscriber connection takes "outage" again by itself.
      yield* Effect.promise(() =>
        eventually(
          () => {
            Effect.runFork(Effect.ignore(a.publish("outage", Buffer.from("after"))))
            return onB.includes("after")
          },
          10_000,
          "a message after the restart"
        )
      )
      yield* Effect.promise(() =>
        eventually(
          () => {
            Effect.runFork(Effect.ignore(c.publish("outage", Buffer.from("client after"))))
            return onB.includes("client after")
          },
          10_000,
          "the given client back"
        )
      )
      expect(onB[0]).toBe("before")
      expect(onB).not.toContain("during")
      const connected = (role: string) =>
        Effect.runSync(Metric.value(Metric.tagged(RedisBus.metrics.connected, "role", role))).value
      expect([connected("publisher"), connected("subscriber")]).toEqual([1, 1])
    }), { timeout: 30_000 })

  it.scopedLive("makeBackground with Redis down: no unhandled rejection, typed failures, connects once Redis starts", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const unhandled: Array<unknown> = []
      const probe = (reason: unknown) => unhandled.push(reason)
      yield* Effect.acquireRelease(
        Effect.sync(() => process.on("unhandledRejection", probe)),
        () => Effect.sync(() => process.off("unhandledRejection", probe))
      )
      const later = yield* Effect.acquireRelease(Effect.promise(() => startRedis()), (s) => Effect.promise(() => s.kill()))
      yield* Effect.promise(() => later.stop())

      const bus = yield* RedisBus.makeBackground({ url: later.url, reconnect: fast, commandTimeout: 60_000 }).pipe(
        Effect.provide(logs.layer)
      )
      const heard = yield* collect(bus, "late")
      // Issued during the first attempt: waits for it, then fails with it.
      const first = yield* Effect.flip(bus.publish("late", Buffer.from("0")))
      expect(first._tag).toBe("ClusterUnavailable")
      const second = yield* bus.publish("late", Buffer.from("1")).pipe(Effect.timeout("1 second"), Effect.flip)
      expect(second._tag).toBe("ClusterUnavailable")
      expect((second as ClusterUnavailable).engine).toBe(later.url)
      yield* Effect.sleep("300 millis")
      expect(logs.lines.some((line) => line.startsWith("WARN") && line.includes("could not connect"))).toBe(true)

      yield* Effect.promise(() => later.start())
      yield* Effect.promise(() =>
        eventually(
          () => {
            Effect.runFork(Effect.ignore(bus.publish("late", Buffer.from("up"))))
            return heard.includes("up")
          },
          10_000,
          "the bus connected"
        )
      )
      expect(unhandled).toEqual([])
    }), { timeout: 30_000 })

  it.scopedLive("makeBackground: publishes issued before the first connection wait for it, in order", () =>
    Effect.gen(function*() {
      const b = yield* RedisBus.make({ url: server.url })
      const onB = yield* collect(b, "early")
      const a = yield* RedisBus.makeBackground({ url: server.url })
      const sent = Array.from({ length: 100 }, (_, i) => String(i))
      yield* Effect.all(sent.map((text) => a.publish("early", Buffer.from(text))), { concurrency: "unbounded" })
      yield* until(() => onB.length >= 100, "100 messages")
      expect(onB).toEqual(sent)
    }))

  it.live("closing the scope while reconnecting ends cleanly", () =>
    Effect.gen(function*() {
      const closed = yield* Effect.promise(() => startRedis())
      yield* Effect.promise(() => closed.kill())
      const scope = yield* Scope.make()
      yield* Scope.extend(RedisBus.makeBackground({ url: closed.url, reconnect: fast }), scope).pipe(
        Effect.provide(Logger.remove(Logger.defaultLogger))
      )
      yield* Effect.sleep("200 millis")
      const closedInTime = yield* Scope.close(scope, Exit.void).pipe(Effect.timeout("2 seconds"), Effect.option)
      expect(Option.isSome(closedInTime)).toBe(true)
    }))

  it.live("a bus made inside an uninterruptible region (an acquire, a Layer) still closes", () =>
    Effect.gen(function*() {
      for (const make of [RedisBus.make, RedisBus.makeBackground]) {
        const scope = yield* Scope.make()
        yield* Effect.uninterruptible(Scope.extend(make({ url: server.url }), scope))
        // Raced outside Effect: a finalizer that never ends cannot be timed out from inside.
        const closing = Effect.runPromise(Scope.close(scope, Exit.void)).then(() => "closed")
        const hung = new Promise((resolve) => setTimeout(() => resolve("hung"), 3_000))
        expect(yield* Effect.promise(() => Promise.race([closing, hung]))).toBe("closed")
      }
    }))

  it.scopedLive("a given client publishes, its duplicate subscribes, and only the duplicate is closed", () =>
    Effect.gen(function*() {
      const client = yield* inspector(server.url)
      const redis = yield* inspector(server.url)
      yield* Effect.promise(() => client.ping())
      const other = yield* RedisBus.make({ url: server.url })
      const onOther = yield* collect(other, "given")
      const scope = yield* Scope.make()
      const bus = yield* Scope.extend(RedisBus.make({ client, nodeId: "given-node" }), scope)
      expect(bus.nodeId).toBe("given-node")
      const onBus = yield* Scope.extend(collect(bus, "given"), scope)
      yield* bus.publish("given", Buffer.from("hello"))
      yield* until(() => onOther.length === 1 && onBus.length === 1, "the message on both")
      const names = () => Effect.promise(async () => String(await redis.client("LIST")))
      expect(yield* names()).toContain("name=ewm:given-node:subscriber")
      expect(yield* names()).not.toContain("name=ewm:given-node:publisher")

      yield* Scope.close(scope, Exit.void)
      expect(client.status).toBe("ready")
      expect(yield* Effect.promise(() => client.ping())).toBe("PONG")
      yield* poll(() => redis.client("LIST").then(String), (list) => !list.includes("given-node"), "the duplicate closed")
    }))

  it.live("closing the bus closes both of its connections", () =>
    Effect.gen(function*() {
      const redis = yield* inspector(server.url)
      yield* Effect.scoped(RedisBus.make({ url: server.url, nodeId: "closing-node" }).pipe(
        Effect.tap(() =>
          Effect.promise(async () => {
            const list = String(await redis.client("LIST"))
            expect(list).toContain("name=ewm:closing-node:publisher")
            expect(list).toContain("name=ewm:closing-node:subscriber")
          })
        )
      ))
      yield* poll(() => redis.client("LIST").then(String), (list) => !list.includes("closing-node"), "both closed")
    }).pipe(Effect.scoped))
})
