/**
 * Churn: clients (in another process) connect and leave in waves, 20,000 cycles, against a raw
 * `ws` server, socket.io and this library's manager (Promise facade, `serve`, heartbeat on), all
 * with the idle benchmark's server (bench/idle/server.ts). Reports the cycle rate and the heap
 * and RSS after GC against the baseline taken after a first, warming wave; for the manager also its
 * fibers, pending upgrades and every map of its registry, which must all be back at zero.
 * Exit code 1 when they are not.
 *
 *   bash bench/churn/run.sh [--quick]
 */
import type { ChildProcess } from "node:child_process"
import { writeFileSync } from "node:fs"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
const cycles = quick ? 2_000 : 20_000
const WAVE = quick ? 250 : 1_000
/** The idle benchmark's heartbeat. */
const HEARTBEAT_INTERVAL = 4_000
const HEARTBEAT_TIMEOUT = 2_000
const variants = ["ws", "socket.io", "manager"] as const
const here = new URL(".", import.meta.url).pathname
const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** Until the server has seen every client leave. */
const settled = async (server: ChildProcess) => {
  for (let tries = 0; (await request(server, { type: "count" }, "count")).connected > 0; tries++) {
    if (tries > 200) throw new Error("clients are still connected")
    await sleep(50)
  }
}

interface Row {
  readonly variant: string
  readonly rate: number
  readonly heap: number
  readonly rss: number
  readonly held: Record<string, number> | undefined
}

const rows: Array<Row> = []
for (const variant of variants) {
  const server = spawnWorker(
    `${here}../idle/server.ts`,
    [variant, String(HEARTBEAT_INTERVAL), String(HEARTBEAT_TIMEOUT)],
    ["--expose-gc"]
  )
  try {
    const { port } = await nextReply(server, "listening")
    const load = spawnWorker(`${here}clients.ts`, [variant, String(port), String(cycles), String(WAVE)])
    try {
      await nextReply(load, "warmed", 120_000)
      await settled(server)
      const { after: before } = await request(server, { type: "memory" }, "memory")
      const done = nextReply(load, "done", 600_000)
      load.send({ type: "go" })
      const { millis } = await done
      await settled(server)
      const { after } = await request(server, { type: "memory" }, "memory")
      // After GC, which runs finalizers and timers' ends: what is still held is held for good.
      const { held } = await request(server, { type: "count" }, "count")
      rows.push({
        variant,
        rate: cycles / (millis / 1_000),
        heap: after.heapUsed - before.heapUsed,
        rss: after.rss - before.rss,
        held
      })
      const row = rows.at(-1)!
      console.error(
        `${variant}: ${Math.round(row.rate)} cycles/s, heap ${round(row.heap / 1024 / 1024)} MB and RSS ` +
          `${round(row.rss / 1024 / 1024)} MB over the baseline${held ? `, still held: ${JSON.stringify(held)}` : ""}`
      )
    } finally {
      await stop(load)
    }
  } finally {
    await stop(server)
  }
}

const ws = rows[0]!
const manager = rows.find((row) => row.variant === "manager")!
const leftOver = Object.entries(manager.held ?? {}).filter(([, value]) => value !== 0)
const report = [
  `${cycles.toLocaleString("en-US")} connect/leave cycles in waves of ${WAVE.toLocaleString("en-US")} (half the ` +
  `clients close, half vanish), heartbeats every ${HEARTBEAT_INTERVAL / 1_000} s, on ${machine()}` +
  `${quick ? " (quick mode)" : ""}. Heap and RSS after GC, against the baseline taken after a first wave (warm-up).`,
  "",
  table(
    ["server", "cycles / s", "vs ws", "heap over baseline", "RSS over baseline"],
    rows.map((r) => [
      r.variant,
      Math.round(r.rate).toLocaleString("en-US"),
      `${round(r.rate / ws.rate)}×`,
      `${round(r.heap / 1024 / 1024, 1)} MB`,
      `${round(r.rss / 1024 / 1024, 1)} MB`
    ])
  ),
  "",
  `Afterwards the manager holds: ${
    Object.entries(manager.held ?? {}).map(([name, value]) => `${name} ${value}`).join(", ")
  } (all must be 0).`,
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/churn${quick ? "-quick" : ""}.md`, import.meta.url), report)
process.exit(leftOver.length === 0 ? 0 : 1)
