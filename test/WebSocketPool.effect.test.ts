import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Option, Stream } from "effect"
import { WebSocketPool } from "effect-websocket-manager"
import WebSocket from "ws"
import { startBackend } from "./utils/backends.js"
import { eventually, nextMessage } from "./utils/index.js"

const backend = Effect.acquireRelease(Effect.promise(() => startBackend("b1")), (b) => Effect.promise(() => b.stop()))

describe("WebSocketPool (Effect API)", () => {
  it.scopedLive("checks a connection out for the life of a scope", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ backends: [{ id: "b1", url: b1.url }], maxConnections: 1, acquireTimeout: 100 })
      const socket = yield* Effect.scoped(
        Effect.gen(function*() {
          const socket = yield* pool.get
          expect(yield* pool.activeCount).toBe(1)
          expect(pool.backendOf(socket)).toEqual(Option.some("b1"))
          // The only connection is taken: another checkout times out, typed.
          const error = yield* Effect.flip(Effect.scoped(pool.get))
          expect(error._tag).toBe("PoolAcquireTimeout")
          socket.send("hello")
          expect(yield* Effect.promise(() => nextMessage(socket))).toBe("hello")
          return socket
        })
      )
      expect(yield* pool.activeCount).toBe(0)
      expect(yield* pool.idleCount).toBe(1)
      expect(socket.readyState).toBe(WebSocket.OPEN)
      // A connection from a scoped `get` is not released by hand.
      expect((yield* Effect.flip(pool.release(socket)))._tag).toBe("InvalidRelease")
    }))

  it.scopedLive("streams health changes and lets services catch typed errors", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const PoolLive = WebSocketPool.layer({
        backends: [{ id: "b1", url: b1.url }],
        healthCheck: { enabled: true, interval: 40, timeout: 200, unhealthyThreshold: 1, healthyThreshold: 1 }
      })
      yield* Effect.gen(function*() {
        const pool = yield* WebSocketPool.WebSocketPool
        const changes = yield* pool.healthChanges.pipe(Stream.take(1), Stream.runCollect, Effect.fork)
        yield* Effect.sleep("10 millis")
        yield* Effect.promise(() => b1.stop())
        const [change] = Chunk.toReadonlyArray(yield* Fiber.join(changes))
        expect(change).toMatchObject({ type: "backend-unhealthy", backend: "b1" })
        const answer = yield* pool.checkout.pipe(
          Effect.as("connected"),
          Effect.catchTag("NoHealthyBackend", (error) => Effect.succeed(`no backend among ${error.backends.join(",")}`))
        )
        expect(answer).toBe("no backend among b1")
        yield* Effect.promise(() => b1.restart())
        yield* Effect.promise(() => eventually(() => Effect.runSync(pool.health).b1!.healthy, 3_000))
        const socket = yield* pool.checkout
        yield* pool.release(socket)
      }).pipe(Effect.provide(PoolLive))
    }))
})
