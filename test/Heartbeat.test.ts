import { Chunk, Duration, Effect, Fiber, Metric, Schedule, TestClock, TestContext } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import type WebSocket from "ws"
import * as Connection from "../src/Connection.js"
import * as Heartbeat from "../src/Heartbeat.js"
import type { Harness } from "./utils/index.js"
import { WebSocketManager } from "../src/promise/index.js"
import { closeOf, eventually, openClient, sleep, startManager } from "./utils/index.js"

const harnesses: Array<Harness> = []
const clients: Array<WebSocket> = []

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate()
  for (const harness of harnesses.splice(0)) await harness.close()
})

const start = async () => {
  const harness = await startManager({ heartbeatInterval: 150, heartbeatTimeout: 75 })
  harnesses.push(harness)
  return harness
}

describe("Heartbeat", () => {
  it("alternates the wait for the pong with the rest of the interval", () => {
    const delays = Effect.runSync(Schedule.run(Schedule.delays(Heartbeat.schedule(1_000, 300)), 0, [1, 2, 3, 4]))
    expect(Chunk.toReadonlyArray(delays).map(Duration.toMillis)).toEqual([300, 700, 300, 700])
  })

  it("steps on the schedule's delays under TestClock: a ping, the check `timeout` later, the next ping at the interval", async () => {
    const steps = await Effect.gen(function*() {
      let count = 0
      const fiber = yield* Effect.fork(Effect.repeat(Effect.sync(() => count++), Heartbeat.schedule(1_000, 300)))
      for (let i = 0; i < 6; i++) yield* TestClock.adjust(Duration.millis(100))
      const early = count
      yield* TestClock.adjust(Duration.millis(1_400))
      yield* Fiber.interrupt(fiber)
      return { early, total: count }
    }).pipe(Effect.provide(TestContext.TestContext), Effect.runPromise)
    // At 0 and 300 within the first 600 ms; then 1,000, 1,300, 2,000.
    expect(steps).toEqual({ early: 2, total: 5 })
  })

  it("sends the first ping `interval - timeout` after the connection opens, then one per interval", async () => {
    const { url } = await startManager({ heartbeatInterval: 400, heartbeatTimeout: 100 }).then((harness) => {
      harnesses.push(harness)
      return harness
    })
    const ws = await openClient(url)
    clients.push(ws)
    const opened = Date.now()
    const pings: Array<number> = []
    ws.on("ping", () => pings.push(Date.now() - opened))
    await eventually(() => pings.length >= 2, 5_000, "two pings")
    // Timers never fire early: lower bounds hold on a loaded machine (the socket opened a little after the timer started).
    expect(pings[0]!).toBeGreaterThanOrEqual(250)
    expect(pings[1]! - pings[0]!).toBeGreaterThanOrEqual(390)
  })

  it("does not cut a client whose socket the server paused (it cannot read the pong), and cuts it once resumed", async () => {
    const sockets: Array<WebSocket> = []
    const harness = await startManager({ heartbeatInterval: 150, heartbeatTimeout: 75 }, ({ socket }) => {
      sockets.push(socket)
    })
    harnesses.push(harness)
    const silent = await openClient(harness.url, undefined, { autoPong: false })
    clients.push(silent)
    await eventually(() => sockets.length === 1)
    sockets[0]!.pause()
    await sleep(600)
    expect(harness.manager.getActiveConnections()).toBe(1)
    sockets[0]!.resume()
    expect((await closeOf(silent, 2_000)).code).toBe(1006)
    await eventually(() => harness.manager.getCloseInfo(sockets[0]!) !== undefined)
    expect(harness.manager.getCloseInfo(sockets[0]!)).toMatchObject({ end: "heartbeat-timeout" })
  })

  it("terminates a client that never answers pings, and releases its slot", async () => {
    const { manager, url } = await start()
    const silent = await openClient(url, undefined, { autoPong: false })
    clients.push(silent)
    const closed = closeOf(silent, 2_000)
    expect((await closed).code).toBe(1006)
    await eventually(() => manager.getStats().fibers === 0)
    expect(manager.getActiveConnections()).toBe(0)
  })

  it("ends a silent client's connection with the reason heartbeat-timeout, carrying HeartbeatTimeout", async () => {
    const sockets: Array<WebSocket> = []
    const harness = await startManager({ heartbeatInterval: 150, heartbeatTimeout: 75 }, ({ socket }) => {
      sockets.push(socket)
    })
    harnesses.push(harness)
    const counted = () => Effect.runSync(Metric.value(Metric.tagged(Connection.endsTotal, "reason", "heartbeat-timeout"))).count
    const before = counted()
    const silent = await openClient(harness.url, undefined, { autoPong: false })
    clients.push(silent)
    expect((await closeOf(silent, 2_000)).code).toBe(1006)
    await eventually(() => harness.manager.getCloseInfo(sockets[0]!) !== undefined)
    expect(harness.manager.getCloseInfo(sockets[0]!)).toMatchObject({
      code: 1006,
      end: "heartbeat-timeout",
      error: { _tag: "HeartbeatTimeout", timeoutMillis: 75 }
    })
    await eventually(() => harness.manager.getStats().fibers === 0)
    expect(counted() - before).toBe(1)
  })

  it("refuses heartbeatTimeout 0, which would cut every healthy client at its first check", () => {
    for (const heartbeatTimeout of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => new WebSocketManager({ heartbeatInterval: 1_000, heartbeatTimeout })).toThrow(
        expect.objectContaining({ _tag: "InvalidOptions", field: "heartbeatTimeout" })
      )
    }
    // 0 turns the heartbeat off: documented, and kept.
    const off = new WebSocketManager({ heartbeatInterval: 0 })
    expect(off.service.config.heartbeatInterval).toBe(0)
    return off.close()
  })

  it("keeps a client that answers pings", async () => {
    const { manager, url } = await start()
    const alive = await openClient(url)
    clients.push(alive)
    let pings = 0
    alive.on("ping", () => pings++)
    await sleep(600)
    expect(pings).toBeGreaterThanOrEqual(3)
    expect(manager.getActiveConnections()).toBe(1)
  })

  it("counts inbound messages as liveness", async () => {
    const { manager, url } = await start()
    const chatty = await openClient(url, undefined, { autoPong: false })
    clients.push(chatty)
    const timer = setInterval(() => chatty.send("still here"), 30)
    await sleep(600)
    clearInterval(timer)
    expect(manager.getActiveConnections()).toBe(1)
  })
})
