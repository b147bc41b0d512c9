/**
 * The pool under load, the backend (an echo server) in another process, generic-pool + `ws` side by
 * side with this library's Effect API and Promise facade, and effect's bare `Pool` as the ceiling:
 *
 * - checkout/release: a pool of 10 under 100 concurrent workers, nothing sent;
 * - round trip: acquire, send 100 bytes, await the echo, release, with 1, 10 and 100 workers.
 *
 *   bash bench/pool/run.sh [--quick]
 */
import { Effect, Pool } from "effect"
import * as GenericPool from "generic-pool"
import { writeFileSync } from "node:fs"
import WebSocket from "ws"
import * as Core from "../../src/WebSocketPool.js"
import { WebSocketPool } from "../../src/promise/index.js"
import { machine, median, nextReply, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
const SIZE = 10
const CHECKOUT_WORKERS = 100
const ROUND_TRIP_WORKERS = [1, 10, 100]
const ROUND_MILLIS = quick ? 300 : 2_000
const ROUNDS = quick ? 1 : 5
const PAYLOAD = "x".repeat(100)

const backend = spawnWorker(new URL("./backend.ts", import.meta.url).pathname)
const { port } = await nextReply(backend, "listening")
const url = `ws://127.0.0.1:${port}`

const open = () =>
  new Promise<WebSocket>((resolve, reject) => {
    const socket = new WebSocket(url)
    socket.once("open", () => resolve(socket))
    socket.once("error", reject)
  })

const echo = (socket: WebSocket) =>
  new Promise<void>((resolve) => {
    socket.once("message", () => resolve())
    socket.send(PAYLOAD)
  })

const echoEffect = (socket: WebSocket) => Effect.promise(() => echo(socket))

/** `workers` loops of `once` for ROUNDS rounds of ROUND_MILLIS; the median rate per second. */
const measure = async (workers: number, once: () => Promise<unknown>) => {
  const rates: Array<number> = []
  for (let i = 0; i < ROUNDS; i++) {
    let done = 0
    const deadline = Date.now() + ROUND_MILLIS
    const started = Date.now()
    await Promise.all(Array.from({ length: workers }, async () => {
      while (Date.now() < deadline) {
        await once()
        done++
      }
    }))
    rates.push(done / ((Date.now() - started) / 1000))
  }
  return median(rates)
}

/** The same, with the workers as fibers. */
const measureEffect = (workers: number, once: Effect.Effect<unknown>) =>
  Effect.gen(function*() {
    const rates: Array<number> = []
    for (let i = 0; i < ROUNDS; i++) {
      let done = 0
      const deadline = Date.now() + ROUND_MILLIS
      const started = Date.now()
      const worker = Effect.whileLoop({ while: () => Date.now() < deadline, body: () => once, step: () => done++ })
      yield* Effect.all(Array.from({ length: workers }, () => worker), { concurrency: "unbounded", discard: true })
      rates.push(done / ((Date.now() - started) / 1000))
    }
    return median(rates)
  })

type Runner = (workers: number, roundTrip: boolean) => Promise<number>

const genericPool: Runner = async (workers, roundTrip) => {
  const pool = GenericPool.createPool<WebSocket>({ create: open, destroy: async (socket) => socket.terminate() }, {
    min: SIZE,
    max: SIZE,
    acquireTimeoutMillis: 10_000
  })
  await pool.ready()
  const rate = await measure(workers, async () => {
    const socket = await pool.acquire()
    if (roundTrip) await echo(socket)
    await pool.release(socket)
  })
  await pool.drain()
  await pool.clear()
  return rate
}

const barePool: Runner = (workers, roundTrip) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const pool = yield* Pool.make({
      acquire: Effect.acquireRelease(Effect.promise(open), (socket) => Effect.sync(() => socket.terminate())),
      size: SIZE
    })
    // Pool.make fills itself in the background: one get per connection waits until all are open.
    yield* Effect.all(Array.from({ length: SIZE }, () => Pool.get(pool)), { concurrency: "unbounded" }).pipe(
      Effect.scoped
    )
    const once = Effect.scoped(roundTrip ? Effect.flatMap(Pool.get(pool), echoEffect) : Effect.asVoid(Pool.get(pool)))
    return yield* measureEffect(workers, once)
  })))

const withLibraryPool = async <A>(use: (pool: WebSocketPool) => Promise<A>) => {
  const pool = new WebSocketPool({ url, minConnections: SIZE, maxConnections: SIZE })
  while (pool.getIdleCount() < SIZE) await new Promise((resolve) => setTimeout(resolve, 10))
  try {
    return await use(pool)
  } finally {
    await pool.close()
  }
}

const facade: Runner = (workers, roundTrip) =>
  withLibraryPool((pool) =>
    measure(workers, async () => {
      const socket = await pool.acquire()
      if (roundTrip) await echo(socket)
      pool.release(socket)
    })
  )

const effectApi: Runner = (workers, roundTrip) =>
  Effect.runPromise(Effect.scoped(Effect.gen(function*() {
    const pool = yield* Core.make({ url, minConnections: SIZE, maxConnections: SIZE })
    while ((yield* pool.idleCount) < SIZE) yield* Effect.sleep("10 millis")
    const once = Effect.orDie(Effect.scoped(roundTrip ? Effect.flatMap(pool.get, echoEffect) : Effect.asVoid(pool.get)))
    return yield* measureEffect(workers, once)
  })))

const variants: Array<[string, Runner]> = [
  ["generic-pool + ws", genericPool],
  ["effect Pool.get (bare)", barePool],
  ["WebSocketPool (Effect, scoped get)", effectApi],
  ["WebSocketPool (facade)", facade]
]

const checkout: Array<[string, number]> = []
for (const [name, run] of variants) {
  const rate = await run(CHECKOUT_WORKERS, false)
  checkout.push([name, rate])
  console.error(`checkout/release, ${name}: ${Math.round(rate)}/s`)
}

const roundTrips: Array<[string, Array<number>]> = []
for (const [name, run] of variants) {
  const rates: Array<number> = []
  for (const workers of ROUND_TRIP_WORKERS) {
    rates.push(await run(workers, true))
    console.error(`round trip, ${workers} workers, ${name}: ${Math.round(rates.at(-1)!)}/s`)
  }
  roundTrips.push([name, rates])
}
await stop(backend)

const rateOf = (rows: Array<[string, number]>, name: string) => rows.find(([n]) => n === name)![1]
const perSecond = (rate: number) => Math.round(rate).toLocaleString("en-US")
const [generic] = roundTrips
const effectRate = rateOf(checkout, "WebSocketPool (Effect, scoped get)")
const report = [
  `Pool of ${SIZE} connections to an echo backend in another process, median of ${ROUNDS} rounds of ${ROUND_MILLIS} ms, on ${machine()}${
    quick ? " (quick mode)" : ""
  }.`,
  "",
  `Checkout/release, ${CHECKOUT_WORKERS} concurrent workers, nothing sent:`,
  "",
  table(
    ["pool", "checkouts / s", "vs generic-pool", "vs effect Pool.get", "vs Effect API"],
    checkout.map(([name, rate]) => [
      name,
      perSecond(rate),
      `${round(rate / checkout[0]![1])}×`,
      `${round(rate / rateOf(checkout, "effect Pool.get (bare)"))}×`,
      `${round(rate / effectRate)}×`
    ])
  ),
  "",
  "Round trips (acquire, send 100 bytes, await the echo, release) per second:",
  "",
  table(
    ["pool", ...ROUND_TRIP_WORKERS.map((w) => `${w} worker${w > 1 ? "s" : ""}`), "100 vs 10 workers"],
    roundTrips.map(([name, rates]) => [
      name,
      ...rates.map((rate, i) => `${perSecond(rate)} (${round(rate / generic![1][i]!)}×)`),
      `${round(rates[2]! / rates[1]!)}×`
    ])
  ),
  "",
  "In brackets: the ratio to generic-pool + ws with the same number of workers.",
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/pool${quick ? "-quick" : ""}.md`, import.meta.url), report)
process.exit(0)
