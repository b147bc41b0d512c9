/**
 * Soak: thousands of clients joining, chatting and leaving at random against a chat server on the
 * Promise facade, with slow consumers, clients that never answer pings, clients that die
 * mid-send and a steady stream of hostile requests among them. The server, the clients and the
 * hostile requests each run in their own process, over 127.0.0.1 only.
 *
 * At the end every well-behaved client must have received every message it was owed, in order;
 * the server must still be up and serving; its counts must be back at zero, its heap after GC
 * back near where it started and its sockets closed. Any of those false: exit code 1.
 *
 *   bash bench/soak/run.sh [--quick]
 */
import { writeFileSync } from "node:fs"
import { cpus, loadavg } from "node:os"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"
import type { LoadConfig } from "./clients.js"
import {
  BULK_BYTES,
  BULK_EVERY_MILLIS,
  HEARTBEAT_INTERVAL,
  HEARTBEAT_TIMEOUT,
  MAX_BACKPRESSURE,
  MAX_PAYLOAD,
  sleep
} from "./protocol.js"

const quick = process.argv.includes("--quick")
const here = new URL(".", import.meta.url).pathname

const shape = quick
  ? {
    chatChannels: 6,
    wellBehaved: 260,
    bulkReaders: 4,
    slow: 12,
    pingIgnorers: 12,
    midSend: 12,
    durationMillis: 30_000,
    rampMillis: 5_000,
    life: [5_000, 20_000],
    slowLife: [8_000, 20_000],
    actionMeanMillis: 2_000,
    hostilePerSecond: 10
  } as const
  : {
    chatChannels: 12,
    wellBehaved: 1_830,
    bulkReaders: 10,
    slow: 40,
    pingIgnorers: 60,
    midSend: 60,
    durationMillis: 240_000,
    rampMillis: 20_000,
    life: [15_000, 120_000],
    slowLife: [20_000, 90_000],
    actionMeanMillis: 20_000,
    hostilePerSecond: 20
  } as const
const population = shape.wellBehaved + shape.bulkReaders + shape.slow + shape.pingIgnorers + shape.midSend

/**
 * Heap after GC may end this far above where it started, code and bytecode left out: those grow
 * as paths get hot (2–3 MB here) and are reported apart. Heap snapshots taken at both ends of a
 * quick run differed by little else (V8 feedback arrays, object shapes, a few metric keys).
 */
const HEAP_MARGIN = 2 * 1024 * 1024
/** A slow socket's send buffer may pass the bound by one bulk message and a little chat. */
const BUFFER_BOUND = MAX_BACKPRESSURE + BULK_BYTES + 8 * 1024

const percentile = (values: Array<number>, p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0
}
const mb = (bytes: number) => `${round(bytes / 1024 / 1024, 1)} MB`
const count = (value: number) => value.toLocaleString("en-US")
const sum = (record: Record<string, number>) => Object.values(record).reduce((a, b) => a + b, 0)
const list = (record: Record<string, number>) =>
  Object.entries(record).map(([key, n]) => `${key} ×${n}`).join(", ") || "none"

const server = spawnWorker(`${here}server.ts`, [String(shape.chatChannels)], ["--expose-gc"])
let shuttingDown = false
// It keeps an uncaughtException handler, so this is an out-of-memory or a fatal error.
server.once("exit", (code, signal) => {
  if (shuttingDown) return
  console.error(`soak: FAIL: the server process died (${code ?? signal}) before the end of the run`)
  process.exit(1)
})
const { port } = await nextReply(server, "listening")
const sample = () => request(server, { type: "sample" }, "sample")

const load = spawnWorker(`${here}clients.ts`, [JSON.stringify({ port, ...shape } satisfies LoadConfig)])
await nextReply(load, "ready")

/** Until the server's counts are back at zero (or `millis` pass); the last sample either way. */
const drained = async (baselineSockets: number, millis: number) => {
  const startedAt = Date.now()
  for (;;) {
    const s = await sample()
    const zero = s.manager.connections === 0 && s.manager.pending === 0 && s.manager.fibers === 0 &&
      s.subscriptions === 0 && s.appSockets === 0 && s.tcpSockets <= baselineSockets
    if (zero || Date.now() - startedAt > millis) return { ...s, waited: Date.now() - startedAt }
    await sleep(500)
  }
}

// A short warm-up with a few clients of every kind (no hostile ones: what they leak must show),
// so the baseline includes what the first connections initialise once: compiled code, the
// runtime's caches, each channel's metric keys.
console.error("soak: warming up")
const warm = (await request(load, {
  type: "warmup",
  population: { wellBehaved: 24, bulkReaders: 2, slow: 2, pingIgnorers: 1, midSend: 2 },
  millis: 4_000
}, "warmed", 120_000)).results
await drained(Number.POSITIVE_INFINITY, 20_000)
const baseline = await request(server, { type: "settle" }, "settled")

console.error(`soak: ${population} clients for ${shape.durationMillis / 1000} s${quick ? " (quick)" : ""}`)
const hostile = spawnWorker(`${here}hostile.ts`, [
  JSON.stringify({ port, perSecond: shape.hostilePerSecond, durationMillis: shape.durationMillis })
])
await nextReply(hostile, "ready")
await request(server, { type: "start-bulk" }, "bulk-started")
const startedAt = Date.now()
const loadAverage = [loadavg()[0]!]
const loadDone = request(load, { type: "run" }, "done", shape.durationMillis + 300_000)
const hostileDone = request(hostile, { type: "start" }, "done", shape.durationMillis + 300_000)

const peaks = {
  heapUsed: 0,
  rss: 0,
  external: 0,
  bufferedTotal: 0,
  bufferedMax: 0,
  connections: 0,
  subscriptions: 0,
  loopDelay: 0
}
let finished = false
const sampling = (async () => {
  while (!finished && server.exitCode === null) {
    const s = await sample().catch(() => undefined)
    if (s === undefined) break
    peaks.heapUsed = Math.max(peaks.heapUsed, s.heapUsed)
    peaks.rss = Math.max(peaks.rss, s.rss)
    peaks.external = Math.max(peaks.external, s.external)
    peaks.bufferedTotal = Math.max(peaks.bufferedTotal, s.bufferedTotal)
    peaks.bufferedMax = Math.max(peaks.bufferedMax, s.bufferedMax)
    peaks.connections = Math.max(peaks.connections, s.manager.connections)
    peaks.subscriptions = Math.max(peaks.subscriptions, s.subscriptions)
    peaks.loopDelay = Math.max(peaks.loopDelay, s.loopDelayMax)
    loadAverage.push(loadavg()[0]!)
    if ((Date.now() - startedAt) % 10_000 < 1_000) {
      console.error(
        `soak: ${Math.round((Date.now() - startedAt) / 1000)} s, ${s.manager.connections} connections, ` +
          `${s.subscriptions} subscriptions, heap ${mb(s.heapUsed)}, send buffers ${mb(s.bufferedTotal)}`
      )
    }
    await sleep(1_000)
  }
})()

const [{ millis: loadMillis, results: clients }, { kinds }] = await Promise.all([loadDone, hostileDone])
await request(server, { type: "stop-bulk" }, "bulk-stopped")
const ranMillis = Date.now() - startedAt
console.error("soak: load stopped; waiting for the server to drain")
const probe = (await request(load, { type: "probe" }, "probed", 60_000)).results
const end = await drained(baseline.tcpSockets, 45_000)
finished = true
await sampling
const final = await request(server, { type: "settle" }, "settled")
const report = await request(server, { type: "report" }, "report")
shuttingDown = true
const down = await request(server, { type: "shutdown" }, "down", 30_000).then(() => true, () => false)
await Promise.all([stop(load), stop(hostile), stop(server)])

const wb = clients.wellBehaved
const published = report.broadcasts.published as number
const settled = (report.broadcasts.settled as number) + sum(report.broadcasts.failed)
const hostileTried = Object.values(kinds as Record<string, { tried: number; ok: number }>)
const heapGrowth = final.heapUsed - baseline.heapUsed
const codeGrowth = final.code - baseline.code

const checks: Array<[string, boolean, string]> = [
  [
    "every well-behaved client got every message it was owed, in order",
    wb.lost === 0 && wb.outOfOrder === 0 && wb.outsideWindow === 0 && wb.ownMissing === 0 && wb.leaveTimeouts === 0 &&
      sum(wb.protocol) === 0 && sum(wb.serverErrors) === 0 && sum(warm.wellBehaved.protocol) === 0 &&
      warm.wellBehaved.lost === 0,
    `${count(wb.lost)} lost of ${count(wb.owed)} owed, ${wb.outOfOrder} out of order, ${wb.outsideWindow} outside a ` +
      `subscription, ${wb.ownMissing} own messages not echoed, ${wb.leaveTimeouts} leaves unanswered, protocol: ` +
      `${list(wb.protocol)}, server errors: ${list(wb.serverErrors)}`
  ],
  [
    "no well-behaved client was refused or cut",
    sum(wb.connectFailed) === 0 && sum(wb.unexpectedClose) === 0,
    `refused: ${list(wb.connectFailed)}; cut: ${list(wb.unexpectedClose)}`
  ],
  [
    "the server stayed up (no uncaught exception or unhandled rejection)",
    sum(report.uncaught) === 0,
    list(report.uncaught)
  ],
  [
    "a fresh client after the storm was served",
    probe.wellBehaved.completed === 1 && probe.wellBehaved.lost === 0 && sum(probe.wellBehaved.unexpectedClose) === 0,
    `${probe.wellBehaved.completed} of 1 completed, ${probe.wellBehaved.owed} owed, ${probe.wellBehaved.lost} lost`
  ],
  [
    "every accepted broadcast settled",
    published === settled && report.broadcasts.leavesGaveUp === 0,
    `${count(settled)} of ${count(published)} settled (failed: ${list(report.broadcasts.failed)}); ` +
      `${report.broadcasts.leavesGaveUp} leaves gave up waiting on one`
  ],
  [
    `slow consumers stayed bounded (send buffer ≤ ${mb(BUFFER_BOUND)} each)`,
    peaks.bufferedMax <= BUFFER_BOUND,
    `largest send buffer ${mb(peaks.bufferedMax)}, all send buffers at most ${mb(peaks.bufferedTotal)}`
  ],
  [
    "clients that never answer pings were cut by the heartbeat",
    clients.pingIgnorers.late === 0 && clients.pingIgnorers.survived === 0,
    `${clients.pingIgnorers.cutByHeartbeat} cut within ${round(clients.pingIgnorers.maxMillis / 1000, 1)} s, ` +
      `${clients.pingIgnorers.late} late, ${clients.pingIgnorers.survived} never`
  ],
  [
    "every hostile request was refused as it should be",
    hostileTried.every((k) => k.ok === k.tried),
    `${count(hostileTried.reduce((a, k) => a + k.ok, 0))} of ${count(hostileTried.reduce((a, k) => a + k.tried, 0))}`
  ],
  [
    "counts back to zero once everyone left",
    end.manager.connections === 0 && end.manager.pending === 0 && end.manager.fibers === 0 && end.subscriptions === 0 &&
      end.subscribers === 0 && end.channelFibers === end.liveChannels && end.appSockets === 0,
    `manager: ${end.manager.connections} connections, ${end.manager.pending} pending, ${end.manager.fibers} fibers; ` +
      `broadcaster: ${end.subscriptions} subscriptions, ${end.subscribers} subscribers, ${end.channelFibers} channel ` +
      `fibers for ${end.liveChannels} channels`
  ],
  [
    "every socket closed",
    end.tcpSockets <= baseline.tcpSockets,
    `${end.tcpSockets} TCP sockets open at the end (${baseline.tcpSockets} at the start), ${round(end.waited / 1000, 1)} s after the load stopped`
  ],
  [
    `heap after GC back within ${mb(HEAP_MARGIN)} of the start (code and bytecode apart)`,
    heapGrowth - codeGrowth <= HEAP_MARGIN,
    `${mb(baseline.heapUsed)} → ${mb(final.heapUsed)}, of which code and bytecode ${mb(baseline.code)} → ` +
      `${mb(final.code)}`
  ],
  ["the server shut down cleanly", down, down ? "manager, broadcaster and server closed" : "no answer to shutdown"]
]

const kindRows = Object.entries(kinds as Record<string, { tried: number; ok: number; outcomes: Record<string, number> }>)
  .map(([kind, r]) => [kind, r.tried, r.ok, list(r.outcomes)])
const serverCpu = (final.cpu.user + final.cpu.system - baseline.cpu.user - baseline.cpu.system) / 1e6

const text = [
  `Soak on ${machine()}${quick ? " (quick mode)" : ""}: ${count(population)} clients at a time for ` +
  `${Math.round(ranMillis / 1000)} s against WebSocketManager + Broadcaster (Promise facade), heartbeat ` +
  `${HEARTBEAT_INTERVAL / 1000} s / ${HEARTBEAT_TIMEOUT / 1000} s, maxPayload ${MAX_PAYLOAD / 1024} KB, maxBackpressure ` +
  `${MAX_BACKPRESSURE / 1024} KB, ${shape.chatChannels} chat channels and two bulk channels (${BULK_BYTES / 1024} KB ` +
  `every ${BULK_EVERY_MILLIS} ms; 'drop-oldest' and 'close').`,
  "",
  table(["load held", ""], [
    ["connections opened", count(clients.connectionsOpened)],
    ["peak concurrent connections (server)", count(peaks.connections)],
    ["peak subscriptions", count(peaks.subscriptions)],
    ["messages published", count(published)],
    ["messages received by well-behaved clients", count(wb.received)],
    ["subscription windows checked", count(wb.windows)],
    ["well-behaved clients (completed / started)", `${count(wb.completed)} / ${count(wb.started)}`],
    [
      "handshake time, median / p99 / worst",
      [50, 99, 100].map((p) => `${count(percentile(clients.handshakeMillis, p))} ms`).join(" / ")
    ],
    ["duration", `${Math.round(ranMillis / 1000)} s (load ${Math.round(loadMillis / 1000)} s)`],
    ["server CPU", `${round(serverCpu, 1)} s`],
    ["server event loop delay, worst", `${Math.round(peaks.loopDelay)} ms`],
    [
      "machine load average (1 min) during the run, median / max",
      `${round(percentile(loadAverage, 50), 1)} / ${round(Math.max(...loadAverage), 1)} on ${cpus().length} cores`
    ]
  ]),
  "",
  table(["fault injected", "count", "how it ended"], [
    ["slow consumer (stops reading, keeps sending)", clients.slow.started,
      `${count(end.dropped)} messages dropped for them by the channels' policies; ${clients.slow.terminated} cut by ` +
      `the client, ${clients.slow.resumedAndClosed} resumed and closed, ${clients.slow.cutWhilePaused} cut while ` +
      `paused (close codes: ${list(clients.slow.closeCodes)}); ${clients.slow.joinFailed} not joined in time`],
    ["never answers pings", clients.pingIgnorers.started,
      `${clients.pingIgnorers.cutByHeartbeat} cut by the heartbeat within ${round(clients.pingIgnorers.maxMillis / 1000, 1)} s`],
    ["dies mid-frame", clients.midSend.started, `${clients.midSend.fin} with FIN, ${clients.midSend.reset} with RST`]
  ]),
  "",
  table(["bad input", "tried", "refused as expected", "what the server did"], kindRows),
  "",
  table(["check", "result", ""], checks.map(([name, ok, detail]) => [name, ok ? "pass" : "**FAIL**", detail])),
  "",
  table(["memory (server)", "start", "peak", "end"], [
    ["heap used (after GC at start and end)", mb(baseline.heapUsed), mb(peaks.heapUsed), mb(final.heapUsed)],
    ["heap used, code and bytecode left out", mb(baseline.heapUsed - baseline.code), "",
      mb(final.heapUsed - final.code)],
    ["RSS", mb(baseline.rss), mb(peaks.rss), mb(final.rss)],
    ["external (socket buffers)", mb(baseline.external), mb(peaks.external), mb(final.external)]
  ]),
  ""
].join("\n")
console.log(text)
if (sum(report.uncaught) > 0) console.error(report.firstStacks)
writeFileSync(new URL(`../results/soak${quick ? "-quick" : ""}.md`, import.meta.url), text)
process.exit(checks.every(([, ok]) => ok) ? 0 : 1)
