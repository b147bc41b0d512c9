/**
 * Fan-out: N clients on one channel, M messages of ~100 bytes, one per tick and in bursts of K
 * per tick; `ws` writing one pre-framed buffer per socket (the frame-once limit), a raw `ws` loop,
 * socket.io rooms and the Broadcaster side by side, each server in its own process and the clients
 * in another. Reports deliveries per second, server CPU per 1,000 deliveries, the server's RSS once
 * connected and its peak during each case, loss, and ratios to the pre-framed writes and the loop.
 *
 *   bash bench/fanout/run.sh [--quick] [--clients N]
 */
import { writeFileSync } from "node:fs"
import { machine, median, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
// `--clients N` measures that one size (a smoke run, or one size again).
const only = process.argv.indexOf("--clients")
const sizes = only > 0 ? [Number(process.argv[only + 1])] : quick ? [200] : [1_000, 5_000, 10_000]
const variants = ["ws-frame", "ws-loop", "socket.io", "broadcaster"] as const
const cases = [
  { name: "1 per tick", messages: quick ? 20 : 100, burst: 1 },
  { name: "burst of 20 per tick", messages: quick ? 40 : 200, burst: 20 }
]
const here = new URL(".", import.meta.url).pathname
// Single runs moved by ±10%: each case is repeated on the same connections and the medians reported.
const ROUNDS = quick ? 1 : 3

interface Result {
  readonly clients: number
  readonly case: string
  readonly variant: string
  readonly rate: number
  readonly cpuPer1k: number
  readonly loss: number
  /** MB, once every client is connected and before any message. */
  readonly rssConnected: number
  /** MB, the resident set's high-water mark during the case's rounds. */
  readonly peakRss: number
}

const measure = async (variant: string, clients: number): Promise<Array<Result>> => {
  const server = spawnWorker(`${here}server.ts`, [variant])
  try {
    const { port } = await nextReply(server, "listening")
    const load = spawnWorker(`${here}clients.ts`, [variant, String(port), String(clients)])
    try {
      await nextReply(load, "connected", 300_000)
      for (let tries = 0; (await request(server, { type: "count" }, "count")).connected < clients; tries++) {
        if (tries > 200) throw new Error(`${variant}: only part of ${clients} clients connected`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      const results: Array<Result> = []
      const { rss: rssConnected } = await request(server, { type: "memory", reset: true }, "memory")
      for (const { burst, messages, name } of cases) {
        const expected = clients * messages
        const rounds: Array<{ rate: number; cpuPer1k: number; loss: number }> = []
        for (let round = 0; round < ROUNDS; round++) {
          const received = request(load, { type: "expect", total: expected, timeout: 120_000 }, "received", 180_000)
          await new Promise((resolve) => setTimeout(resolve, 100))
          const { startedAt } = await request(server, { type: "run", messages, burst }, "published", 180_000)
          const { count, lastAt } = await received
          const { micros } = await request(server, { type: "cpu" }, "cpu")
          rounds.push({
            rate: count / Math.max(0.001, (lastAt - startedAt) / 1000),
            cpuPer1k: micros / 1000 / (count / 1000),
            loss: expected - count
          })
        }
        const { peakRss } = await request(server, { type: "memory", reset: true }, "memory")
        results.push({
          rssConnected,
          peakRss,
          clients,
          case: name,
          variant,
          rate: median(rounds.map((r) => r.rate)),
          cpuPer1k: median(rounds.map((r) => r.cpuPer1k)),
          loss: Math.max(...rounds.map((r) => r.loss))
        })
      }
      await request(load, { type: "close" }, "closed")
      return results
    } finally {
      await stop(load)
    }
  } finally {
    await stop(server)
  }
}

const results: Array<Result> = []
for (const clients of sizes) {
  for (const variant of variants) {
    const measured = await measure(variant, clients)
    results.push(...measured)
    for (const r of measured) {
      console.error(
        `${clients} ${r.case} ${variant}: ${Math.round(r.rate)}/s, ${round(r.cpuPer1k, 3)} ms CPU/1k, ` +
          `RSS ${Math.round(r.rssConnected)} MB, peak ${Math.round(r.peakRss)} MB, loss ${r.loss}`
      )
    }
  }
}

const rows = results.map((r) => {
  const peer = (variant: string) => results.find((b) => b.clients === r.clients && b.case === r.case && b.variant === variant)!
  const [frame, loop] = [peer("ws-frame"), peer("ws-loop")]
  return [
    r.clients,
    r.case,
    r.variant,
    Math.round(r.rate).toLocaleString("en-US"),
    round(r.cpuPer1k, 3),
    `${round(r.cpuPer1k / frame.cpuPer1k)}×`,
    `${round(r.cpuPer1k / loop.cpuPer1k)}×`,
    `${round(r.rate / loop.rate)}×`,
    Math.round(r.rssConnected),
    Math.round(r.peakRss),
    `${round(r.peakRss / loop.peakRss)}×`,
    r.loss
  ]
})
const report = [
  `Fan-out on ${machine()}${quick ? " (quick mode)" : `, median of ${ROUNDS} rounds`}.`,
  "",
  table(
    [
      "clients",
      "case",
      "server",
      "deliveries/s",
      "server CPU ms / 1k deliveries",
      "CPU vs pre-framed",
      "CPU vs ws loop",
      "rate vs ws loop",
      "RSS connected (MB)",
      "peak RSS (MB)",
      "peak RSS vs ws loop",
      "lost"
    ],
    rows
  ),
  ""
].join("\n")
console.log(report)
// A one-size run only prints: the results file holds the full set of sizes.
if (only < 0) writeFileSync(new URL(`../results/fanout${quick ? "-quick" : ""}.md`, import.meta.url), report)
