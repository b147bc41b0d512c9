/**
 * Idle connections: N clients (in another process) connect as a burst, as fast as that process
 * can, to a raw `ws` server with its recommended heartbeat, socket.io, and this library's manager
 * (Promise facade, `serve`) with its heartbeat on; all three ping every 4 s with a 2 s timeout.
 * Reports the burst's rate (connections accepted per second), the server's CPU time per
 * connection during it (which, unlike the rate, does not depend on how fast the client process
 * is) and, after three heartbeat cycles, RSS and heap per connection after GC, side by side in one run.
 *
 *   bash bench/idle/run.sh [--quick]
 */
import { writeFileSync } from "node:fs"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
const clients = quick ? 1_000 : 10_000
/**
 * Short, so that memory is sampled after the heartbeat has run, with what it keeps per connection;
 * not shorter, because a loaded client process that answers a ping late gets cut.
 */
const HEARTBEAT_INTERVAL = 4_000
const HEARTBEAT_TIMEOUT = 2_000
const CYCLES = 3
/** Enough handshakes in flight to keep the server busy without the client queueing thousands. */
const IN_FLIGHT = 200
const variants = ["ws", "socket.io", "manager"] as const
const here = new URL(".", import.meta.url).pathname
const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

interface Row {
  readonly variant: string
  readonly rate: number
  readonly cpu: number
  readonly rss: number
  readonly heap: number
  readonly pings: number
  readonly cut: number
}

const rows: Array<Row> = []
for (const variant of variants) {
  const server = spawnWorker(
    `${here}server.ts`,
    [variant, String(HEARTBEAT_INTERVAL), String(HEARTBEAT_TIMEOUT)],
    ["--expose-gc"]
  )
  try {
    const { port } = await nextReply(server, "listening")
    const cpuBefore = (await request(server, { type: "cpu" }, "cpu")).micros
    const load = spawnWorker(`${here}clients.ts`, [variant, String(port), String(clients), String(IN_FLIGHT)])
    try {
      const { millis } = await nextReply(load, "connected", 300_000)
      // Server CPU per handshake: unlike the rate, it does not depend on how fast the client process is.
      const cpu = ((await request(server, { type: "cpu" }, "cpu")).micros - cpuBefore) / clients
      // The server may not have counted the last handshakes yet.
      for (let tries = 0; tries < 100 && (await request(server, { type: "count" }, "count")).connected < clients; tries++) {
        await sleep(50)
      }
      await sleep(CYCLES * HEARTBEAT_INTERVAL + 500)
      const { after, before } = await request(server, { type: "memory" }, "memory")
      const { pings } = await request(load, { type: "pings" }, "pings")
      // Memory is per connection still open: one cut by a heartbeat it answered late is reported, not counted.
      const { connected } = await request(server, { type: "count" }, "count")
      rows.push({
        variant,
        rate: clients / (millis / 1_000),
        cpu,
        rss: (after.rss - before.rss) / connected,
        heap: (after.heapUsed - before.heapUsed) / connected,
        pings: pings / clients,
        cut: clients - connected
      })
      const row = rows.at(-1)!
      console.error(
        `${variant}: ${Math.round(row.rate)} connections/s, ${Math.round(row.cpu)} µs server CPU each, ` +
          `${round(row.rss / 1024)} KB RSS, ` +
          `${round(row.heap / 1024)} KB heap per connection, ${round(row.pings, 1)} pings per client, ${row.cut} cut`
      )
    } finally {
      await stop(load)
    }
  } finally {
    await stop(server)
  }
}

const ws = rows[0]!
const report = [
  `${clients.toLocaleString("en-US")} connections opened as a burst (${IN_FLIGHT} handshakes in flight), then idle with ` +
  `heartbeats every ${HEARTBEAT_INTERVAL / 1_000} s (timeout ${HEARTBEAT_TIMEOUT / 1_000} s), memory sampled after ` +
  `${CYCLES} heartbeat cycles, on ${machine()}${quick ? " (quick mode)" : ""}.`,
  "",
  table(
    [
      "server",
      "connections / s",
      "vs ws",
      "server CPU / connection",
      "vs ws",
      "RSS / connection",
      "vs ws",
      "heap / connection",
      "vs ws",
      "pings per client"
    ],
    rows.map((r) => [
      r.variant,
      Math.round(r.rate).toLocaleString("en-US"),
      `${round(r.rate / ws.rate)}×`,
      `${Math.round(r.cpu)} µs`,
      `${round(r.cpu / ws.cpu)}×`,
      `${round(r.rss / 1024, 1)} KB`,
      `${round(r.rss / ws.rss)}×`,
      `${round(r.heap / 1024, 1)} KB`,
      `${round(r.heap / ws.heap)}×`,
      round(r.pings, 1)
    ])
  ),
  ...rows.filter((r) => r.cut > 0).map((r) => `\n${r.variant}: ${r.cut} clients were cut by its heartbeat before the sample.`),
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/idle${quick ? "-quick" : ""}.md`, import.meta.url), report)
process.exit(0)
