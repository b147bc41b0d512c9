import { describe, expect, it } from "@effect/vitest"
import { Cause, Chunk, Deferred, Effect, Exit, Fiber, Layer, Metric, Scope, Stream } from "effect"
import { Broadcaster, NodeServer, WebSocketManager } from "effect-websocket-manager"
import { eventually, nextMessage, nextMessages, openClient } from "./utils/index.js"

/** A chat room in the Effect API: every connection joins "room" and relays what it says, not to itself. */
const serveRoom = Effect.gen(function*() {
  const manager = yield* WebSocketManager.WebSocketManager
  const broadcaster = yield* Broadcaster.Broadcaster
  const server = yield* NodeServer.serve(
    NodeServer.fromFetch((request) =>
      Effect.runPromise(
        manager.accept(request, {
          handler: (connection) =>
            Effect.zipRight(
              broadcaster.subscribe(connection, "room"),
              connection.messages.pipe(
                Stream.runForEach((message) => broadcaster.broadcast("room", message, { exclude: connection }))
              )
            )
        }).pipe(Effect.map(({ response }) => response))
      )
    )
  )
  return { broadcaster, manager, url: server.url.replace("http", "ws") }
})

const client = (url: string) =>
  Effect.acquireRelease(Effect.promise(() => openClient(url)), (ws) => Effect.sync(() => ws.terminate()))

const Live = Layer.merge(WebSocketManager.layer(), Broadcaster.layer())

/** Collects a channel's stream in a fiber, returned once the stream is live (it has seen a "ping"). */
const consume = (channel: Broadcaster.Channel) =>
  Effect.gen(function*() {
    const live = yield* Deferred.make<void>()
    const fiber = yield* channel.messages.pipe(
      Stream.tap(() => Deferred.succeed(live, undefined)),
      Stream.filter((message) => message !== "ping"),
      Stream.runCollect,
      Effect.map(Chunk.toReadonlyArray),
      Effect.fork
    )
    yield* Effect.repeat(Effect.zipRight(channel.broadcast("ping"), Effect.delay(Deferred.isDone(live), "5 millis")), {
      until: (done) => done
    })
    return fiber
  })

describe("Broadcaster (Effect API)", () => {
  it.scoped("relays between connections subscribed from their handlers, excluding the sender", () =>
    Effect.gen(function*() {
      const { broadcaster, url } = yield* serveRoom
      const [ann, bob, cid] = [yield* client(url), yield* client(url), yield* client(url)]
      yield* Effect.promise(() => eventually(() => Effect.runSync(broadcaster.stats).subscriptions === 3))
      const heard = Effect.promise(() => Promise.all([nextMessage(bob), nextMessage(cid)]))
      ann.send("hi all")
      expect(yield* heard).toEqual(["hi all", "hi all"])
      expect(yield* Effect.promise(() => nextMessage(ann, 200).catch(() => "nothing"))).toBe("nothing")
    }).pipe(Effect.provide(Live)))

  it.scoped("feeds server-side consumers from the same PubSub, and counts deliveries as Metrics", () =>
    Effect.gen(function*() {
      const { broadcaster, url } = yield* serveRoom
      const channel = yield* broadcaster.createChannel("room")
      const consumer = yield* channel.messages.pipe(Stream.take(3), Stream.runCollect, Effect.fork)
      yield* Effect.yieldNow()
      const ws = yield* client(url)
      yield* Effect.promise(() => eventually(() => channel.subscriberCount === 1))
      const received = Effect.promise(() => nextMessages(ws, 3))
      for (const message of [{ n: 1 }, "two", Buffer.from([3])]) expect(yield* channel.broadcast(message)).toBe(1)
      expect(Chunk.toReadonlyArray(yield* Fiber.join(consumer))).toEqual([{ n: 1 }, "two", Buffer.from([3])])
      expect(yield* received).toEqual([JSON.stringify({ n: 1 }), "two", Buffer.from([3])])
      const delivered = yield* Metric.value(Metric.tagged(Broadcaster.metrics.delivered, "channel", "room"))
      expect(delivered.count).toBeGreaterThanOrEqual(3)
      const subscribers = yield* Metric.value(Metric.tagged(Broadcaster.metrics.subscribers, "channel", "room"))
      expect(subscribers.value).toBe(1)
    }).pipe(Effect.provide(Live)))

  it.scoped("releases subscriptions through the connection's scope when it closes", () =>
    Effect.gen(function*() {
      const { broadcaster, manager, url } = yield* serveRoom
      const sockets = yield* Effect.all(Array.from({ length: 20 }, () => client(url)))
      yield* Effect.promise(() => eventually(() => Effect.runSync(broadcaster.stats).subscriptions === 20))
      const [connection] = yield* manager.connections
      expect(yield* broadcaster.channelsOf(connection!)).toEqual(["room"])
      sockets.forEach((ws) => ws.close())
      yield* Effect.promise(() => eventually(() => Effect.runSync(broadcaster.stats).subscriptions === 0))
      yield* Effect.promise(() => eventually(() => Effect.runSync(broadcaster.stats).fibers === 0))
      expect((yield* broadcaster.stats).channels).toEqual({})
      expect(yield* manager.stats).toEqual({ connections: 0, pending: 0, fibers: 0 })
    }).pipe(Effect.provide(Live)))

  it.live("close ends every channel's streams, settles what was published, and fails later calls", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const broadcaster = yield* Broadcaster.make().pipe(Scope.extend(scope))
      const channel = yield* broadcaster.createChannel("feed")
      const consumer = yield* consume(channel)
      const other = yield* consume(yield* broadcaster.createChannel("other"))
      const published = yield* Effect.fork(Effect.all([channel.broadcast("a"), channel.broadcast("b")]))
      yield* Scope.close(scope, Exit.void)
      // Both streams end (they do not hang), and the broadcasts in flight settled.
      const [feed, rest] = yield* Effect.all([Fiber.join(consumer), Fiber.join(other)]).pipe(
        Effect.timeoutFail({ duration: "2 seconds", onTimeout: () => new Error("a channel stream did not end") })
      )
      expect(rest).toEqual([])
      const outcome = yield* Fiber.await(published).pipe(
        Effect.timeoutFail({ duration: "2 seconds", onTimeout: () => new Error("a broadcast did not settle") })
      )
      // Published before the close: delivered (to nobody but the stream); after it: refused.
      if (Exit.isSuccess(outcome)) {
        expect(outcome.value).toEqual([0, 0])
        expect(feed).toEqual(["a", "b"])
      } else {
        expect(Cause.squash(outcome.cause)).toMatchObject({ _tag: "BroadcasterClosed" })
      }
      const failed = yield* Effect.all([
        Effect.flip(broadcaster.broadcast("feed", "late")),
        Effect.flip(channel.broadcast("late")),
        Effect.flip(broadcaster.createChannel("new"))
      ])
      expect(failed.map((error) => error._tag)).toEqual(["BroadcasterClosed", "BroadcasterClosed", "BroadcasterClosed"])
      // A stream opened after the close fails with it too, instead of waiting forever.
      const late = yield* Effect.flip(Stream.runCollect(channel.messages))
      expect(late._tag).toBe("BroadcasterClosed")
      expect(yield* broadcaster.stats).toMatchObject({ channels: {}, fibers: 0 })
    }))

  it.live("close is also a method of the service, idempotent", () =>
    Effect.gen(function*() {
      const broadcaster = yield* Broadcaster.make()
      const consumer = yield* consume(yield* broadcaster.createChannel("feed"))
      yield* broadcaster.close
      yield* broadcaster.close
      expect(yield* Fiber.join(consumer)).toEqual([])
      expect((yield* Effect.flip(broadcaster.broadcast("feed", "x")))._tag).toBe("BroadcasterClosed")
    }).pipe(Effect.scoped))

  it.effect("fails the layer with InvalidOptions naming the field", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(Broadcaster.layer({ channels: { chat: { policy: "ignore" as any } } })).pipe(
        Effect.scoped,
        Effect.flip
      )
      expect(error).toMatchObject({ _tag: "InvalidOptions", field: "channels.chat.policy" })
    }))
})
