/**
 * Memory per idle connection: N idle clients (in another process) on a raw `ws` server with its
 * recommended heartbeat, socket.io, and this library's manager with its heartbeat on; RSS and heap
 * per connection after GC, side by side in one run.
 *
 *   bash bench/idle/run.sh [--quick]
 */
import { writeFileSync } from "node:fs"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
const clients = quick ? 1_000 : 10_000
const variants = [["ws", "ws-loop"], ["socket.io", "socket.io"], ["manager", "broadcaster"]] as const
const here = new URL(".", import.meta.url).pathname

const rows: Array<{ variant: string; rss: number; heap: number }> = []
for (const [variant, clientKind] of variants) {
  const server = spawnWorker(`${here}server.ts`, [variant], ["--expose-gc"])
  try {
    const { port } = await nextReply(server, "listening")
    // The fan-out benchmark's clients: plain ws for ws and the manager, socket.io-client for socket.io.
    const load = spawnWorker(`${here}../fanout/clients.ts`, [clientKind, String(port), String(clients)])
    try {
      await nextReply(load, "connected", 300_000)
      for (let tries = 0; (await request(server, { type: "count" }, "count")).connected < clients; tries++) {
        if (tries > 200) throw new Error(`${variant}: only part of the clients connected`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
      const { after, before } = await request(server, { type: "memory" }, "memory")
      rows.push({ variant, rss: (after.rss - before.rss) / clients, heap: (after.heapUsed - before.heapUsed) / clients })
      console.error(`${variant}: ${round(rows.at(-1)!.rss / 1024)} KB RSS, ${round(rows.at(-1)!.heap / 1024)} KB heap per connection`)
    } finally {
      await stop(load)
    }
  } finally {
    await stop(server)
  }
}

const ws = rows[0]!
const report = [
  `${clients.toLocaleString("en-US")} idle connections, heartbeat on (30 s / 10 s), on ${machine()}${quick ? " (quick mode)" : ""}.`,
  "",
  table(
    ["server", "RSS / connection", "heap / connection", "RSS vs ws"],
    rows.map((r) => [r.variant, `${round(r.rss / 1024, 1)} KB`, `${round(r.heap / 1024, 1)} KB`, `${round(r.rss / ws.rss)}×`])
  ),
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/idle${quick ? "-quick" : ""}.md`, import.meta.url), report)
process.exit(0)
