import { describe, expect, it } from "@effect/vitest"
import { Cause, Chunk, Duration, Effect, Exit, Fiber, Option, Runtime, Stream } from "effect"
import { PoolAcquireTimeout, WebSocketPool } from "effect-websocket-manager"
import WebSocket from "ws"
import { startBackend } from "./utils/backends.js"
import { eventually, nextMessage } from "./utils/index.js"

const backend = Effect.acquireRelease(Effect.promise(() => startBackend("b1")), (b) => Effect.promise(() => b.stop()))

describe("WebSocketPool (Effect API)", () => {
  it.scopedLive("checks a connection out for the life of a scope", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({
        backends: [{ id: "b1", url: b1.url }],
        minConnections: 1,
        maxConnections: 1,
        acquireTimeout: 100
      })
      // Opened before the short acquireTimeout starts counting: a loaded machine may take longer to connect.
      while ((yield* pool.idleCount) < 1) yield* Effect.sleep("10 millis")
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

  it.scopedLive("two gets in one tick for the one idle connection: the loser waits, counted, and fails at its deadline", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, maxConnections: 1, acquireTimeout: 800 })
      yield* Effect.scoped(pool.get)
      expect(yield* pool.idleCount).toBe(1)
      const holdFor = (millis: number) => Effect.scoped(Effect.zipLeft(pool.get, Effect.sleep(Duration.millis(millis))))
      // Two callers from outside any fiber, in one tick (two requests of a server, say).
      const run = Runtime.runFork(yield* Effect.runtime<never>())
      const fibers = [run(holdFor(1_600)), run(holdFor(1_600))]
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.activeCount) === 1, 2_000))
      expect([yield* pool.activeCount, yield* pool.idleCount, yield* pool.waitingCount]).toEqual([1, 0, 1])
      // A hang fails the test here rather than at the test timeout.
      const exits = yield* Effect.forEach(fibers, Fiber.await).pipe(
        Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => "hang" })
      )
      expect(exits.filter(Exit.isSuccess)).toHaveLength(1)
      expect(exits.flatMap((exit) => Exit.isFailure(exit) ? [Cause.squash(exit.cause)] : [])).toEqual([
        new PoolAcquireTimeout({ timeoutMillis: 800 })
      ])
      expect([yield* pool.activeCount, yield* pool.waitingCount]).toEqual([0, 0])
    }))

  it.scopedLive("a get interrupted while its connection is opening leaves the connection to the pool, not checked out", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      b1.handshakeDelay = 300
      const pool = yield* WebSocketPool.make({ url: b1.url, maxConnections: 1, acquireTimeout: 5_000 })
      const timedOut = yield* Effect.scoped(pool.get).pipe(Effect.timeout("50 millis"), Effect.flip)
      expect(timedOut._tag).toBe("TimeoutException")
      expect([yield* pool.activeCount, yield* pool.idleCount, yield* pool.waitingCount]).toEqual([0, 0, 0])
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.idleCount) === 1, 3_000, "the connection to open"))
      expect(yield* pool.activeCount).toBe(0)
      const socket = yield* Effect.scoped(Effect.tap(pool.get, (socket) => Effect.sync(() => socket.send("late?"))))
      expect(yield* Effect.promise(() => nextMessage(socket))).toBe("late?")
      expect(b1.accepted).toBe(1)
      // Interrupted at any point of a checkout, nothing stays checked out.
      b1.handshakeDelay = 0
      for (const millis of [0, 1, 2, 5]) {
        yield* Effect.scoped(Effect.zipRight(pool.get, Effect.never)).pipe(Effect.timeout(Duration.millis(millis)), Effect.ignore)
        expect(yield* pool.activeCount).toBe(0)
      }
      expect([yield* pool.idleCount, yield* pool.waitingCount]).toEqual([1, 0])
    }))

  it.scopedLive("callers waiting for a connection get it in arrival order, one per release", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, maxConnections: 1, acquireTimeout: 5_000 })
      const first = yield* pool.checkout
      const order: Array<number> = []
      const waiters = yield* Effect.forEach([1, 2, 3, 4], (n) =>
        Effect.fork(Effect.scoped(Effect.zipRight(pool.get, Effect.sync(() => order.push(n))))))
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.waitingCount) === 4, 2_000))
      yield* pool.release(first)
      yield* Effect.forEach(waiters, Fiber.join)
      expect(order).toEqual([1, 2, 3, 4])
      expect([yield* pool.activeCount, yield* pool.idleCount, yield* pool.waitingCount]).toEqual([0, 1, 0])
      expect(b1.accepted).toBe(1)
    }))

  it.scopedLive("a waiting caller that is interrupted leaves the queue, and the next one gets the connection", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, maxConnections: 1, acquireTimeout: 5_000 })
      const first = yield* pool.checkout
      const leaver = yield* Effect.fork(Effect.scoped(pool.get))
      const stayer = yield* Effect.fork(Effect.scoped(Effect.as(pool.get, "got it")))
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.waitingCount) === 2, 2_000))
      yield* Fiber.interrupt(leaver)
      expect(yield* pool.waitingCount).toBe(1)
      yield* pool.release(first)
      expect(yield* Fiber.join(stayer).pipe(Effect.timeout("2 seconds"))).toBe("got it")
      // The slot the leaver never used is not lost: the pool still hands its connection out.
      const again = yield* pool.checkout.pipe(Effect.timeout("2 seconds"))
      yield* pool.release(again)
      expect([yield* pool.activeCount, yield* pool.waitingCount]).toEqual([0, 0])
    }))

  it.scopedLive("a caller that timed out in the queue leaves it: it does not take a later release", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, maxConnections: 1, acquireTimeout: 200 })
      const first = yield* pool.checkout
      const timedOut = yield* Effect.flip(pool.checkout)
      expect(timedOut).toEqual(new PoolAcquireTimeout({ timeoutMillis: 200 }))
      expect(yield* pool.waitingCount).toBe(0)
      yield* pool.release(first)
      // Had the timed-out caller kept its place, this one would wait behind a ghost and time out.
      const next = yield* pool.checkout
      expect(next).toBe(first)
      yield* pool.release(next)
    }))

  it.scopedLive("an idle connection is handed out in one synchronous step, by get and by checkout", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, minConnections: 2, maxConnections: 2 })
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.idleCount) === 2, 3_000))
      // runSync throws if the acquisition waits for anything: a fiber, a timer, a callback.
      const [held, inScope] = Effect.runSync(Effect.scoped(Effect.gen(function*() {
        const held = yield* pool.checkout
        const inScope = yield* pool.get
        expect([yield* pool.activeCount, yield* pool.idleCount]).toEqual([2, 0])
        return [held, inScope]
      })))
      expect(held).not.toBe(inScope)
      expect([yield* pool.activeCount, yield* pool.idleCount]).toEqual([1, 1])
      Effect.runSync(pool.release(held))
      expect([yield* pool.activeCount, yield* pool.idleCount, yield* pool.waitingCount]).toEqual([0, 2, 0])
      expect((yield* Effect.flip(pool.release(held)))._tag).toBe("InvalidRelease")
    }))

  it.scopedLive("an idle connection someone closed is not handed out, while an open one is idle next to it", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, minConnections: 2, maxConnections: 2, acquireTimeout: 3_000 })
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.idleCount) === 2, 3_000))
      const [a, b] = yield* Effect.scoped(Effect.all([pool.get, pool.get]))
      a.close()
      // In the tick of the close, before the pool hears of it; whichever the Pool picks first.
      for (let i = 0; i < 3; i++) {
        const socket = yield* Effect.scoped(pool.get)
        expect(socket).not.toBe(a)
        expect(socket.readyState).toBe(WebSocket.OPEN)
      }
      const held = yield* pool.checkout
      expect([held.readyState, held === a]).toEqual([WebSocket.OPEN, false])
      yield* pool.release(held)
      expect(b.readyState).toBe(WebSocket.OPEN)
    }))

  it.scopedLive("a get that leaves while its connection is being validated: the connection goes back once it answers", () =>
    Effect.gen(function*() {
      const b1 = yield* backend
      const pool = yield* WebSocketPool.make({ url: b1.url, minConnections: 1, maxConnections: 1, validateOnCheckout: true })
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.idleCount) === 1, 3_000))
      const [serverSide] = b1.sockets
      // The pong is late: the caller leaves first, the ping is answered after.
      ;(serverSide as any)._socket.pause()
      const left = yield* Effect.scoped(pool.get).pipe(Effect.timeout("50 millis"), Effect.flip)
      expect(left._tag).toBe("TimeoutException")
      ;(serverSide as any)._socket.resume()
      yield* Effect.promise(() => eventually(() => Effect.runSync(pool.idleCount) === 1, 3_000, "the connection back"))
      expect([yield* pool.activeCount, yield* pool.waitingCount]).toEqual([0, 0])
      expect(b1.accepted).toBe(1)
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
