/**
 * Latency: one publisher and N receivers (the publisher's messages relayed by the server to every
 * receiver), R messages per second for S seconds; the raw `ws` loop, socket.io and the Broadcaster
 * side by side, each server in its own process and the clients in another. Each message carries the
 * time it was sent, read on the clients' clock; reports p50, p99 and max of send-to-receive time over
 * every delivery, and p99's distance from the `ws` loop's.
 *
 *   bash bench/latency/run.sh [--quick]
 */
import { writeFileSync } from "node:fs"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
const RECEIVERS = quick ? 200 : 1_000
const RATE = 50
const SECONDS = quick ? 2 : 10
// Not measured: lets each server's hot path be compiled before the timed run.
const WARMUP_SECONDS = 1
const variants = ["ws", "socket.io", "broadcaster"] as const
const here = new URL(".", import.meta.url).pathname

interface Result {
  readonly variant: string
  readonly p50: number
  readonly p99: number
  readonly max: number
  readonly lost: number
}

const measure = async (variant: string): Promise<Result> => {
  const server = spawnWorker(`${here}server.ts`, [variant])
  try {
    const { port } = await nextReply(server, "listening")
    const load = spawnWorker(`${here}clients.ts`, [variant, String(port), String(RECEIVERS)])
    try {
      await nextReply(load, "connected", 300_000)
      for (let tries = 0; (await request(server, { type: "count" }, "count")).connected < RECEIVERS; tries++) {
        if (tries > 200) throw new Error(`${variant}: only part of ${RECEIVERS} receivers connected`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      await request(load, { type: "run", rate: RATE, seconds: WARMUP_SECONDS }, "latency", 120_000)
      const result = await request(load, { type: "run", rate: RATE, seconds: SECONDS }, "latency", 120_000)
      await request(load, { type: "close" }, "closed")
      return { variant, p50: result.p50, p99: result.p99, max: result.max, lost: result.expected - result.received }
    } finally {
      await stop(load)
    }
  } finally {
    await stop(server)
  }
}

const results: Array<Result> = []
for (const variant of variants) {
  const r = await measure(variant)
  results.push(r)
  console.error(`${variant}: p50 ${round(r.p50)} ms, p99 ${round(r.p99)} ms, max ${round(r.max)} ms, lost ${r.lost}`)
}

const ws = results.find((r) => r.variant === "ws")!
const report = [
  `Latency on ${machine()}${quick ? " (quick mode)" : ""}: 1 publisher, ${RECEIVERS.toLocaleString("en-US")} receivers, ` +
  `${RATE} messages/s for ${SECONDS} s (${(RATE * SECONDS * RECEIVERS).toLocaleString("en-US")} deliveries per server).`,
  "",
  table(
    ["server", "p50 (ms)", "p99 (ms)", "max (ms)", "p99 − ws p99 (ms)", "lost"],
    results.map((r) => [r.variant, round(r.p50), round(r.p99), round(r.max), round(r.p99 - ws.p99), r.lost])
  ),
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/latency${quick ? "-quick" : ""}.md`, import.meta.url), report)
