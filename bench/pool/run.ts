/**
 * acquire+release round trips per second: a pool of 10 connections under 100 concurrent workers,
 * this library (Effect API and Promise facade) and generic-pool side by side, the backend in
 * another process.
 *
 *   npx tsx bench/pool/run.ts [--quick]
 */
import { Effect } from "effect"
import * as GenericPool from "generic-pool"
import { writeFileSync } from "node:fs"
import WebSocket from "ws"
import * as Core from "../../src/WebSocketPool.js"
import { WebSocketPool } from "../../src/promise/index.js"
import { machine, median, nextReply, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
const SIZE = 10
const WORKERS = 100
const ROUND_MILLIS = quick ? 500 : 2_000
const ROUNDS = quick ? 2 : 5

const backend = spawnWorker(new URL("./backend.ts", import.meta.url).pathname)
const { port } = await nextReply(backend, "listening")
const url = `ws://127.0.0.1:${port}`

/** Runs WORKERS loops of acquire+release for ROUND_MILLIS; the round trips per second. */
const promiseWorkers = async (acquire: () => Promise<WebSocket>, release: (socket: WebSocket) => unknown) => {
  let done = 0
  const deadline = Date.now() + ROUND_MILLIS
  const started = Date.now()
  await Promise.all(Array.from({ length: WORKERS }, async () => {
    while (Date.now() < deadline) {
      const socket = await acquire()
      await release(socket)
      done++
    }
  }))
  return done / ((Date.now() - started) / 1000)
}

const variants: Record<string, () => Promise<Array<number>>> = {
  "generic-pool": async () => {
    const pool = GenericPool.createPool<WebSocket>({
      create: () =>
        new Promise((resolve, reject) => {
          const socket = new WebSocket(url)
          socket.once("open", () => resolve(socket))
          socket.once("error", reject)
        }),
      destroy: async (socket) => socket.terminate()
    }, { min: SIZE, max: SIZE, acquireTimeoutMillis: 10_000 })
    await pool.ready()
    const rates: Array<number> = []
    for (let i = 0; i < ROUNDS; i++) rates.push(await promiseWorkers(() => pool.acquire(), (s) => pool.release(s)))
    await pool.drain()
    await pool.clear()
    return rates
  },
  "WebSocketPool (facade)": async () => {
    const pool = new WebSocketPool({ url, minConnections: SIZE, maxConnections: SIZE })
    while (pool.getIdleCount() < SIZE) await new Promise((resolve) => setTimeout(resolve, 10))
    const rates: Array<number> = []
    for (let i = 0; i < ROUNDS; i++) rates.push(await promiseWorkers(() => pool.acquire(), (s) => pool.release(s)))
    await pool.close()
    return rates
  },
  "WebSocketPool (Effect, scoped get)": () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const pool = yield* Core.make({ url, minConnections: SIZE, maxConnections: SIZE })
      while ((yield* pool.idleCount) < SIZE) yield* Effect.sleep("10 millis")
      const rates: Array<number> = []
      for (let i = 0; i < ROUNDS; i++) {
        let done = 0
        const deadline = Date.now() + ROUND_MILLIS
        const started = Date.now()
        const worker = Effect.whileLoop({
          while: () => Date.now() < deadline,
          body: () => Effect.scoped(pool.get),
          step: () => done++
        })
        yield* Effect.all(Array.from({ length: WORKERS }, () => worker), { concurrency: "unbounded", discard: true })
        rates.push(done / ((Date.now() - started) / 1000))
      }
      return rates
    })))
}

const results: Array<[string, number]> = []
for (const [name, run] of Object.entries(variants)) {
  const rates = await run()
  results.push([name, median(rates)])
  console.error(`${name}: ${rates.map((r) => Math.round(r)).join(", ")} round trips/s`)
}
await stop(backend)

const baseline = results[0]![1]
const report = [
  `Pool of ${SIZE} under ${WORKERS} concurrent workers, median of ${ROUNDS} rounds of ${ROUND_MILLIS} ms, on ${machine()}${quick ? " (quick mode)" : ""}.`,
  "",
  table(["pool", "acquire+release / s", "vs generic-pool"], results.map(([name, rate]) => [
    name,
    Math.round(rate).toLocaleString("en-US"),
    `${round(rate / baseline)}×`
  ])),
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/pool${quick ? "-quick" : ""}.md`, import.meta.url), report)
process.exit(0)
