import { afterEach, describe, expect, it } from "vitest"
import WebSocket from "ws"
import type { HealthEvent, WebSocketPoolOptions } from "../src/promise/index.js"
import { WebSocketPool } from "../src/promise/index.js"
import type { Backend } from "./utils/backends.js"
import { startBackend, startBackends } from "./utils/backends.js"
import { eventually, nextMessage, sleep } from "./utils/index.js"

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
    const pool = poolOf({ url: backend!.url, minConnections: 2, maxConnections: 4 })
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
