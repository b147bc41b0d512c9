import { Option } from "effect"
import { afterEach, describe, expect, it, vi } from "vitest"
import WebSocket from "ws"
import { PoolBackend } from "../src/internal/poolBackend.js"
import type { WebSocketPoolConfig } from "../src/options.js"
import type { HealthEvent, WebSocketPoolOptions } from "../src/promise/index.js"
import { WebSocketPool } from "../src/promise/index.js"
import type { Backend } from "./utils/backends.js"
import { startBackend, startBackends } from "./utils/backends.js"
import { eventually, nextMessage, sleep, withTimeout } from "./utils/index.js"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const backendsFor = async (count: number) => {
  const backends = await startBackends(count)
  cleanups.push(() => Promise.all(backends.map((b) => b.stop())).then(() => {}))
  return backends
}

const poolOf = (options: WebSocketPoolOptions) => {
  const pool = new WebSocketPool(options)
  cleanups.push(() => pool.close())
  return pool
}

const counts = (pool: WebSocketPool) => ({
  active: pool.getActiveCount(),
  idle: pool.getIdleCount(),
  waiting: pool.getWaitingCount()
})

describe("WebSocketPool (facade)", () => {
  it("opens minConnections eagerly and hands out open, working connections", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, minConnections: 3, maxConnections: 5 })
    await eventually(() => pool.getIdleCount() === 3, 5_000, "3 idle connections")
    expect(backend!.sockets.size).toBe(3)
    const connection = await pool.acquire()
    expect(connection.readyState).toBe(WebSocket.OPEN)
    connection.send("ping?")
    expect(await nextMessage(connection)).toBe("ping?")
    expect(counts(pool)).toEqual({ active: 1, idle: 2, waiting: 0 })
    pool.release(connection)
    expect(counts(pool)).toEqual({ active: 0, idle: 3, waiting: 0 })
  })

  it("checks connections out exclusively under 100 concurrent acquirers, with exact counts", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 5, acquireTimeout: 10_000 })
    const inUse = new Set<WebSocket>()
    let overlaps = 0
    let maxActive = 0
    await Promise.all(Array.from({ length: 100 }, async () => {
      const connection = await pool.acquire()
      if (inUse.has(connection)) overlaps++
      inUse.add(connection)
      maxActive = Math.max(maxActive, pool.getActiveCount())
      await sleep(2)
      inUse.delete(connection)
      pool.release(connection)
    }))
    expect(overlaps).toBe(0)
    expect(maxActive).toBe(5)
    expect(counts(pool)).toEqual({ active: 0, idle: 5, waiting: 0 })
    expect(backend!.accepted).toBe(5)
  })

  it("serves waiting acquirers in arrival order", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 1, acquireTimeout: 5_000 })
    const first = await pool.acquire()
    const order: Array<number> = []
    const waiters = [1, 2, 3].map((n) =>
      pool.acquire().then((connection) => {
        order.push(n)
        pool.release(connection)
      })
    )
    await eventually(() => pool.getWaitingCount() === 3, 1_000, "3 waiters")
    pool.release(first)
    await Promise.all(waiters)
    expect(order).toEqual([1, 2, 3])
    expect(counts(pool)).toEqual({ active: 0, idle: 1, waiting: 0 })
  })

  it("fails waiters past acquireTimeout with PoolAcquireTimeout and leaks nothing", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 2, acquireTimeout: 100 })
    const held = [await pool.acquire(), await pool.acquire()]
    const waiters = Array.from({ length: 30 }, () => pool.acquire().then(() => "acquired", (error) => error))
    await eventually(() => pool.getWaitingCount() === 30, 1_000, "30 waiters")
    const outcomes = await Promise.all(waiters)
    for (const outcome of outcomes) expect(outcome).toMatchObject({ _tag: "PoolAcquireTimeout", timeoutMillis: 100 })
    expect(counts(pool)).toEqual({ active: 2, idle: 0, waiting: 0 })
    // The next release serves the next waiter at once.
    const next = pool.acquire()
    await eventually(() => pool.getWaitingCount() === 1)
    pool.release(held[0]!)
    expect(await next).toBe(held[0])
    pool.release(held[0]!)
    pool.release(held[1]!)
    expect(counts(pool)).toEqual({ active: 0, idle: 2, waiting: 0 })
    expect(backend!.accepted).toBe(2)
  })

  it("keeps idle connections until idleTimeout has passed", async () => {
    const [backend] = await backendsFor(1)
    // effect's Pool shrinks toward its usage once per idleTimeout: nothing closes before the first.
    const pool = poolOf({ url: backend!.url, minConnections: 1, maxConnections: 5, idleTimeout: 3_000 })
    const connections = await Promise.all(Array.from({ length: 5 }, () => pool.acquire()))
    connections.forEach((connection) => pool.release(connection))
    await sleep(1_700)
    expect(pool.getIdleCount()).toBe(5)
    await eventually(() => pool.getIdleCount() === 1, 8_000, "the pool to shrink to min")
  })

  it("closes idle connections beyond minConnections after idleTimeout", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, minConnections: 1, maxConnections: 5, idleTimeout: 150 })
    const connections = await Promise.all(Array.from({ length: 5 }, () => pool.acquire()))
    connections.forEach((connection) => pool.release(connection))
    expect(pool.getIdleCount()).toBe(5)
    await eventually(() => pool.getIdleCount() === 1, 3_000, "the pool to shrink to min")
    await eventually(() => backend!.sockets.size === 1)
  })

  it("validates on checkout: a connection whose server side stopped answering is replaced", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, minConnections: 1, maxConnections: 2, validateOnCheckout: true, acquireTimeout: 2_000 })
    await eventually(() => pool.getIdleCount() === 1)
    const [serverSide] = backend!.sockets
    // The server side stops reading: the connection looks open but no pong will come.
    ;(serverSide as any)._socket.pause()
    const connection = await pool.acquire()
    expect(connection.readyState).toBe(WebSocket.OPEN)
    expect(backend!.accepted).toBe(2)
    connection.send("alive?")
    expect(await nextMessage(connection)).toBe("alive?")
    pool.release(connection)
  })

  it("replaces connections that die, reconnecting with backoff once the backend is back", async () => {
    const [backend] = await backendsFor(1)
    // Two openers fail side by side while the backend is down: the circuit opens; it lets a
    // trial through after 100 ms.
    const pool = poolOf({ url: backend!.url, minConnections: 2, maxConnections: 4, circuitBreaker: { recoveryTimeout: 100 } })
    await eventually(() => pool.getIdleCount() === 2)
    await backend!.stop()
    await eventually(() => pool.getIdleCount() === 0, 2_000, "the dead connections to leave")
    await sleep(300)
    await backend!.restart()
    await eventually(() => pool.getIdleCount() === 2, 8_000, "reconnection")
    expect(backend!.sockets.size).toBe(2)
  })

  it("rejects a release of a connection that is not checked out, or twice, with InvalidRelease", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url })
    const connection = await pool.acquire()
    pool.release(connection)
    expect(() => pool.release(connection)).toThrow(expect.objectContaining({ _tag: "InvalidRelease" }))
    expect(() => pool.release(new WebSocket(backend!.url))).toThrow(expect.objectContaining({ _tag: "InvalidRelease" }))
    expect(counts(pool)).toEqual({ active: 0, idle: 1, waiting: 0 })
  })

  it("drains on close: waiters fail with PoolClosed, idle close now, checked-out close when released", async () => {
    const [backend] = await backendsFor(1)
    const pool = new WebSocketPool({ url: backend!.url, maxConnections: 2, acquireTimeout: 5_000 })
    const [held, idle] = [await pool.acquire(), await pool.acquire()]
    pool.release(idle)
    const [again] = [await pool.acquire()]
    pool.release(again)
    const busy = await pool.acquire()
    const waiter = pool.acquire().catch((error) => error)
    await eventually(() => pool.getWaitingCount() === 1)
    await pool.close()
    expect(await waiter).toMatchObject({ _tag: "PoolClosed" })
    expect(pool.getIdleCount()).toBe(0)
    expect(held.readyState).toBe(WebSocket.OPEN)
    pool.release(held)
    pool.release(busy)
    await eventually(() => held.readyState === WebSocket.CLOSED && busy.readyState === WebSocket.CLOSED)
    await expect(pool.acquire()).rejects.toMatchObject({ _tag: "PoolClosed" })
    await backend!.stop()
  })

  it("refuses bad options with InvalidOptions naming the field", () => {
    expect(() => new WebSocketPool({ url: "ws://127.0.0.1:1", minConnections: 5, maxConnections: 2 })).toThrow(
      expect.objectContaining({ _tag: "InvalidOptions", field: "minConnections" })
    )
    expect(() => new WebSocketPool({ url: "http://nope" })).toThrow(expect.objectContaining({ field: "url" }))
    expect(() => new WebSocketPool({ url: "ws://x", loadBalancing: "fastest" as any })).toThrow(
      expect.objectContaining({ field: "loadBalancing" })
    )
  })
})

/** Every outcome, a hang failing the test within `millis`. */
const settled = <A>(promises: Array<Promise<A>>, millis = 5_000) =>
  withTimeout(Promise.allSettled(promises), millis, `${promises.length} acquisitions to settle`)

describe("races: every acquisition settles, and the counts are exact meanwhile", () => {
  it("two acquires in one tick for the one idle connection at maxConnections: the loser waits, counted, until its deadline", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 1, acquireTimeout: 1_000 })
    pool.release(await pool.acquire())
    expect(counts(pool)).toEqual({ active: 0, idle: 1, waiting: 0 })
    const both = [pool.acquire(), pool.acquire()]
    const winner = await Promise.race(both)
    expect(counts(pool)).toEqual({ active: 1, idle: 0, waiting: 1 })
    const [first, second] = await settled(both)
    expect(first).toEqual({ status: "fulfilled", value: winner })
    expect(second).toMatchObject({ status: "rejected", reason: { _tag: "PoolAcquireTimeout", timeoutMillis: 1_000 } })
    expect(counts(pool)).toEqual({ active: 1, idle: 0, waiting: 0 })
    pool.release(winner)
    expect(counts(pool)).toEqual({ active: 0, idle: 1, waiting: 0 })
    expect(backend!.accepted).toBe(1)
  })

  it("close() in the tick of acquire(): every acquisition fails with PoolClosed and no connection stays open", async () => {
    const [backend] = await backendsFor(1)
    // The upgrades are slow: the connections opened for the waiters arrive after the close.
    backend!.handshakeDelay = 150
    const pool = poolOf({ url: backend!.url, maxConnections: 3, acquireTimeout: 5_000 })
    const acquisitions = [pool.acquire(), pool.acquire(), pool.acquire()]
    expect(counts(pool)).toEqual({ active: 0, idle: 0, waiting: 3 })
    await pool.close()
    for (const outcome of await settled(acquisitions)) {
      expect(outcome).toMatchObject({ status: "rejected", reason: { _tag: "PoolClosed" } })
    }
    expect(counts(pool)).toEqual({ active: 0, idle: 0, waiting: 0 })
    await expect(pool.acquire()).rejects.toMatchObject({ _tag: "PoolClosed" })
    await sleep(300)
    await eventually(() => backend!.sockets.size === 0, 3_000, "the backend to see every connection closed")
  })

  it("release() of a connection whose backend died meanwhile: counted as checked out until then, replaced after", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 1, acquireTimeout: 3_000, circuitBreaker: { enabled: false } })
    const connection = await pool.acquire()
    await backend!.stop()
    await eventually(() => connection.readyState === WebSocket.CLOSED, 3_000, "the client side to close")
    expect(counts(pool)).toEqual({ active: 1, idle: 0, waiting: 0 })
    expect(pool.getHealthStatus().default).toMatchObject({ active: 1, idle: 0 })
    pool.release(connection)
    expect(counts(pool)).toEqual({ active: 0, idle: 0, waiting: 0 })
    expect(pool.getHealthStatus().default).toMatchObject({ active: 0, idle: 0 })
    expect(() => pool.release(connection)).toThrow(expect.objectContaining({ _tag: "InvalidRelease" }))
    await backend!.restart()
    const replacement = await pool.acquire()
    expect(replacement).not.toBe(connection)
    replacement.send("back?")
    expect(await nextMessage(replacement)).toBe("back?")
    expect(pool.getHealthStatus().default).toMatchObject({ active: 1, idle: 0 })
    pool.release(replacement)
  })

  it("a connection the caller closed is never handed out again, released closing or closed while idle", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 1, acquireTimeout: 3_000 })
    const first = await pool.acquire()
    first.close()
    pool.release(first)
    expect(counts(pool)).toEqual({ active: 0, idle: 0, waiting: 0 })
    const second = await pool.acquire()
    expect(second).not.toBe(first)
    pool.release(second)
    // Closed by someone while idle, and asked for in the same tick: not handed out either.
    second.close()
    const third = await pool.acquire()
    expect(third).not.toBe(second)
    expect(third.readyState).toBe(WebSocket.OPEN)
    expect(counts(pool)).toEqual({ active: 1, idle: 0, waiting: 0 })
    expect(pool.getHealthStatus().default).toMatchObject({ active: 1, idle: 0 })
    pool.release(third)
    await eventually(() => backend!.sockets.size === 1, 3_000, "the closed connections to go")
  })

  it("a held connection that dies leaves the idle ones alone", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({ url: backend!.url, maxConnections: 3 })
    const [held, spare] = [await pool.acquire(), await pool.acquire()]
    pool.release(spare)
    held.terminate()
    await eventually(() => backend!.sockets.size === 1, 3_000, "the held connection to die")
    expect(counts(pool)).toEqual({ active: 1, idle: 1, waiting: 0 })
    expect(await pool.acquire()).toBe(spare)
    pool.release(held)
    expect(counts(pool)).toEqual({ active: 1, idle: 0, waiting: 0 })
    pool.release(spare)
  })

  it("validateOnCheckout against a backend that stops answering pings: the acquisition ends at its deadline, counted", async () => {
    const [backend] = await backendsFor(1)
    const pool = poolOf({
      url: backend!.url,
      minConnections: 1,
      maxConnections: 1,
      validateOnCheckout: true,
      acquireTimeout: 1_000,
      circuitBreaker: { enabled: false }
    })
    await eventually(() => pool.getIdleCount() === 1)
    const [serverSide] = backend!.sockets
    ;(serverSide as any)._socket.pause()
    // No replacement can open either.
    backend!.refuseWith = 503
    const acquisition = pool.acquire()
    expect(pool.getWaitingCount()).toBe(1)
    // Once taken for its ping, the connection is neither idle nor checked out.
    await eventually(() => pool.getIdleCount() === 0, 500, "the connection to be taken for validation")
    expect(counts(pool)).toEqual({ active: 0, idle: 0, waiting: 1 })
    const [outcome] = await settled([acquisition])
    expect(outcome).toMatchObject({ status: "rejected", reason: { _tag: "PoolAcquireTimeout" } })
    expect(counts(pool)).toEqual({ active: 0, idle: 0, waiting: 0 })
    backend!.refuseWith = undefined
    const connection = await pool.acquire()
    connection.send("alive?")
    expect(await nextMessage(connection)).toBe("alive?")
    expect(counts(pool)).toEqual({ active: 1, idle: 0, waiting: 0 })
    pool.release(connection)
  })
})

describe("load balancing", () => {
  const distribution = async (backends: Array<Backend>, strategy: WebSocketPoolOptions["loadBalancing"], count: number) => {
    const pool = poolOf({
      backends: backends.map((b, i) => ({ id: b.id, url: b.url, weight: i + 1 })),
      loadBalancing: strategy,
      maxConnections: count
    })
    const connections: Array<WebSocket> = []
    for (let i = 0; i < count; i++) connections.push(await pool.acquire())
    const perBackend = Object.fromEntries(backends.map((b) => [b.id, b.sockets.size]))
    const status = pool.getHealthStatus()
    expect(Object.values(status).reduce((sum, s) => sum + s.active, 0)).toBe(count)
    connections.forEach((connection) => pool.release(connection))
    return perBackend
  }

  it("round-robin spreads evenly", async () => {
    expect(await distribution(await backendsFor(3), "round-robin", 9)).toEqual({ b1: 3, b2: 3, b3: 3 })
  })

  it("weighted-round-robin follows the weights", async () => {
    expect(await distribution(await backendsFor(3), "weighted-round-robin", 12)).toEqual({ b1: 2, b2: 4, b3: 6 })
  })

  it("least-connections fills the emptiest backend", async () => {
    expect(await distribution(await backendsFor(3), "least-connections", 9)).toEqual({ b1: 3, b2: 3, b3: 3 })
  })

  it("least-connections picks the backend with the fewest connections, where round-robin would not", async () => {
    const [b1, b2, b3] = await backendsFor(3)
    const pool = poolOf({
      backends: [b1!, b2!, b3!].map((b) => ({ id: b.id, url: b.url })),
      loadBalancing: "least-connections",
      maxConnections: 10
    })
    // Opened side by side, one each: a connection being opened counts as one.
    const first = await Promise.all([pool.acquire(), pool.acquire(), pool.acquire()])
    expect(first.map((c) => pool.getHealthStatus()[Option.getOrThrow(pool.service.backendOf(c))]!.active)).toEqual([1, 1, 1])
    expect([b1!.sockets.size, b2!.sockets.size, b3!.sockets.size]).toEqual([1, 1, 1])
    first.forEach((connection) => pool.release(connection))
    // b2 loses its connection: b1 and b3 have one each, b2 none.
    for (const socket of b2!.sockets) socket.terminate()
    await eventually(() => pool.getHealthStatus().b2!.idle === 0 && pool.getIdleCount() === 2, 3_000, "b2's connection to leave")
    const held = [await pool.acquire(), await pool.acquire()]
    const third = await pool.acquire()
    // Round robin's fourth pick would be b1.
    expect(pool.service.backendOf(third)).toEqual(Option.some("b2"))
    const status = pool.getHealthStatus()
    for (const id of ["b1", "b2", "b3"]) expect(status[id]).toMatchObject({ active: 1, idle: 0 })
    expect([b1!.sockets.size, b2!.sockets.size, b3!.sockets.size]).toEqual([1, 1, 1])
    ;[...held, third].forEach((connection) => pool.release(connection))
  })

  it("random reaches every backend", async () => {
    const spread = await distribution(await backendsFor(3), "random", 60)
    for (const count of Object.values(spread)) expect(count).toBeGreaterThan(5)
  })
})

describe("health and circuit breaking", () => {
  it("marks a downed backend unhealthy, opens its circuit, moves traffic, and takes it back after recovery", async () => {
    const [a, b] = await backendsFor(2)
    const events: Array<HealthEvent> = []
    const pool = poolOf({
      backends: [{ id: "a", url: a!.url }, { id: "b", url: b!.url }],
      maxConnections: 10,
      healthCheck: { enabled: true, interval: 50, timeout: 200, unhealthyThreshold: 2, healthyThreshold: 2 },
      circuitBreaker: { enabled: true, failureThreshold: 1, recoveryTimeout: 300 }
    })
    pool.on("backend-unhealthy", (event) => events.push(event))
    pool.on("backend-healthy", (event) => events.push(event))
    await a!.stop()
    await eventually(() => events.some((e) => e.type === "backend-unhealthy" && e.backend === "a"), 3_000, "a to go unhealthy")
    const down = pool.getHealthStatus().a!
    expect(down).toMatchObject({ healthy: false, active: 0, idle: 0 })
    expect(down.consecutiveFailures).toBeGreaterThanOrEqual(2)
    expect(pool.getHealthStatus().b).toMatchObject({ healthy: true, circuit: "closed" })
    const connections = await Promise.all(Array.from({ length: 4 }, () => pool.acquire()))
    expect(pool.getHealthStatus().b!.active).toBe(4)
    expect(b!.sockets.size).toBe(4)
    connections.forEach((connection) => pool.release(connection))
    await a!.restart()
    await eventually(() => events.some((e) => e.type === "backend-healthy" && e.backend === "a"), 3_000, "a to recover")
    expect(pool.getHealthStatus().a).toMatchObject({ healthy: true, circuit: "closed" })
    expect(pool.getHealthStatus().a!.latency).toBeTypeOf("number")
    const more = await Promise.all(Array.from({ length: 6 }, () => pool.acquire()))
    expect(a!.sockets.size).toBeGreaterThan(0)
    more.forEach((connection) => pool.release(connection))
  })

  it("health checks by HTTP GET of a path: a 4xx is alive, no answer is not", async () => {
    // A bare ws server answers a plain GET with 426: the backend is up.
    const [backend] = await backendsFor(1)
    const events: Array<HealthEvent> = []
    const pool = poolOf({
      url: backend!.url,
      healthCheck: { enabled: true, path: "/health", interval: 40, timeout: 500, unhealthyThreshold: 1, healthyThreshold: 1 }
    })
    pool.on("backend-unhealthy", (event) => events.push(event))
    pool.on("backend-healthy", (event) => events.push(event))
    // Upgrades refused: a ping check would fail, the GET does not.
    backend!.refuseWith = 503
    await eventually(() => pool.getHealthStatus().default!.lastCheck !== undefined, 3_000, "a first check")
    const first = pool.getHealthStatus().default!.lastCheck!.getTime()
    await eventually(() => pool.getHealthStatus().default!.lastCheck!.getTime() > first, 3_000, "a second check")
    expect(pool.getHealthStatus().default).toMatchObject({ healthy: true, consecutiveFailures: 0 })
    expect(events).toEqual([])
    await backend!.stop()
    await eventually(() => events.length === 1, 3_000, "the backend to go unhealthy")
    await backend!.restart()
    await eventually(() => events.length === 2, 3_000, "the backend to come back")
    expect(events.map((e) => e.type)).toEqual(["backend-unhealthy", "backend-healthy"])
    expect(pool.getHealthStatus().default!.healthy).toBe(true)
  })

  it("an open circuit lets one trial through after recoveryTimeout, and closes when the backend answers again", async () => {
    const backend = await startBackend("flaky")
    cleanups.push(() => backend.stop())
    backend.refuseWith = 503
    const pool = poolOf({
      url: backend.url,
      acquireTimeout: 1_000,
      circuitBreaker: { enabled: true, failureThreshold: 2, recoveryTimeout: 300 }
    })
    const first = pool.acquire().catch((error) => error)
    await eventually(() => pool.getHealthStatus().default!.circuit === "open", 3_000, "the circuit to open")
    expect(backend.attempts).toBe(2)
    await expect(pool.acquire()).rejects.toMatchObject({ _tag: "NoHealthyBackend" })
    // While open, no attempt reaches the backend; after recoveryTimeout one trial does, refused.
    await eventually(() => backend.attempts === 3, 3_000, "a trial connection")
    await eventually(() => pool.getHealthStatus().default!.circuit === "open", 3_000, "the refused trial to open the circuit again")
    expect(backend.attempts).toBe(3)
    expect(await first).toMatchObject({ _tag: "PoolAcquireTimeout" })
    backend.refuseWith = undefined
    await eventually(() => pool.getHealthStatus().default!.circuit === "half-open", 3_000, "the circuit to half-open")
    const connection = await pool.acquire()
    expect(pool.getHealthStatus().default!.circuit).toBe("closed")
    const more = await Promise.all([pool.acquire(), pool.acquire()])
    expect(backend.sockets.size).toBe(3)
    ;[connection, ...more].forEach((c) => pool.release(c))
  })

  it("opens the circuit after connection failures and fails fast with NoHealthyBackend", async () => {
    const backend = await startBackend("only")
    await backend.stop()
    const pool = poolOf({
      url: backend.url,
      acquireTimeout: 1_000,
      circuitBreaker: { enabled: true, failureThreshold: 2, recoveryTimeout: 10_000 }
    })
    // Attempts to connect fail until the circuit opens; from then on acquire fails at once.
    const first = pool.acquire().catch((error) => error)
    await eventually(() => pool.getHealthStatus().default!.circuit === "open", 3_000, "the circuit to open")
    const started = Date.now()
    await expect(pool.acquire()).rejects.toMatchObject({ _tag: "NoHealthyBackend", backends: ["default"] })
    expect(Date.now() - started).toBeLessThan(100)
    // The caller that was already waiting gives up at its timeout, not never.
    expect(await first).toMatchObject({ _tag: "PoolAcquireTimeout" })
  })
})

describe("a backend's circuit breaker and health (PoolBackend)", () => {
  const backendWith = (circuitBreaker: Partial<WebSocketPoolConfig["circuitBreaker"]> = {}) =>
    new PoolBackend("b", "ws://127.0.0.1:1", 1, {
      circuitBreaker: { enabled: true, failureThreshold: 2, recoveryTimeout: 60_000, ...circuitBreaker },
      healthCheck: { unhealthyThreshold: 2, healthyThreshold: 2 }
    } as WebSocketPoolConfig)

  it("opens after failureThreshold consecutive failures, a success in between starting over", () => {
    const backend = backendWith()
    expect([backend.circuit, backend.available]).toEqual(["closed", true])
    backend.connecting()
    backend.connectFailed()
    backend.connecting()
    backend.connectSucceeded()
    backend.connecting()
    backend.connectFailed()
    expect([backend.circuit, backend.available, backend.open]).toEqual(["closed", true, 1])
    backend.connecting()
    backend.connectFailed()
    expect([backend.circuit, backend.available, backend.open]).toEqual(["open", false, 1])
  })

  it("never opens when disabled", () => {
    const backend = backendWith({ enabled: false, failureThreshold: 1 })
    for (let i = 0; i < 5; i++) {
      backend.connecting()
      backend.connectFailed()
    }
    expect([backend.circuit, backend.available, backend.open]).toEqual(["closed", true, 0])
  })

  it("half-opens after recoveryTimeout and lets one trial through: a failure reopens, a success closes", () => {
    vi.useFakeTimers({ toFake: ["Date"] })
    try {
      const backend = backendWith({ recoveryTimeout: 1_000, failureThreshold: 3 })
      for (let i = 0; i < 3; i++) {
        backend.connecting()
        backend.connectFailed()
      }
      vi.advanceTimersByTime(999)
      expect([backend.circuit, backend.available]).toEqual(["open", false])
      vi.advanceTimersByTime(1)
      expect([backend.circuit, backend.available]).toEqual(["half-open", true])
      backend.connecting()
      expect([backend.circuit, backend.available, backend.open]).toEqual(["half-open", false, 1])
      backend.connectFailed()
      expect([backend.circuit, backend.available, backend.open]).toEqual(["open", false, 0])
      vi.advanceTimersByTime(1_000)
      backend.connecting()
      backend.connectAborted()
      expect([backend.circuit, backend.available, backend.open]).toEqual(["half-open", true, 0])
      backend.connecting()
      backend.connectSucceeded()
      expect([backend.circuit, backend.available, backend.open]).toEqual(["closed", true, 1])
      // The count starts over after a success.
      backend.connectFailed()
      expect(backend.circuit).toBe("closed")
    } finally {
      vi.useRealTimers()
    }
  })

  it("stays open until recoveryTimeout has passed", () => {
    const backend = backendWith({ failureThreshold: 1 })
    backend.connecting()
    backend.connectFailed()
    expect([backend.circuit, backend.available]).toEqual(["open", false])
  })

  it("turns unhealthy after unhealthyThreshold failed checks and healthy after healthyThreshold good ones, closing its circuit", () => {
    const backend = backendWith({ failureThreshold: 1 })
    backend.connecting()
    backend.connectFailed()
    expect(backend.checked(false, 5)).toBeUndefined()
    expect(backend.consecutiveFailures).toBe(1)
    expect(backend.checked(false, 5)).toBe("backend-unhealthy")
    expect(backend.checked(false, 5)).toBeUndefined()
    expect([backend.healthy, backend.available, backend.consecutiveFailures]).toEqual([false, false, 3])
    expect(backend.latency).toBeUndefined()
    expect(backend.lastCheck).toBeInstanceOf(Date)
    expect(backend.checked(true, 7)).toBeUndefined()
    expect(backend.checked(false, 5)).toBeUndefined()
    expect(backend.checked(true, 8)).toBeUndefined()
    expect(backend.checked(true, 9)).toBe("backend-healthy")
    expect(backend.checked(true, 9)).toBeUndefined()
    expect([backend.healthy, backend.circuit, backend.available, backend.consecutiveFailures, backend.latency]).toEqual([
      true,
      "closed",
      true,
      0,
      9
    ])
  })
})
