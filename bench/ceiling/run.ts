/**
 * Ceiling: the most connections one server process holds with heartbeats running and a broadcast
 * every second reaching every client, and its heap and RSS there. Connections are added in steps
 * from several client processes up to the server's open-file limit; a step counts as held when
 * every connection is still open after the step's wait and every one of them received a broadcast
 * sent after it. `ws` (its recommended heartbeat, a plain broadcast loop) and the Broadcaster side
 * by side, one at a time.
 *
 *   bash bench/ceiling/run.sh [--quick]
 */
import { writeFileSync } from "node:fs"
import { execSync } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"

const quick = process.argv.includes("--quick")
// The server's own descriptors (listening socket, stdio, IPC, epoll, tsx's worker...) come out of the same limit.
const fileLimit = Number(execSync("ulimit -n", { shell: "/bin/bash" }).toString())
const TARGET = quick ? 2_000 : fileLimit - 200
const STEP = quick ? 1_000 : 2_500
const PER_CLIENT_PROCESS = 5_000
// `ws`'s recommended heartbeat cuts a connection that has not answered by the next ping; the
// manager is given the same allowance (timeout = interval), so both are held to one standard.
const HEARTBEAT_INTERVAL = quick ? 1_000 : 5_000
const HEARTBEAT_TIMEOUT = HEARTBEAT_INTERVAL
// At the top: three heartbeat cycles, so that pings and pongs have run for every connection.
const HOLD_AT_TOP = 3 * HEARTBEAT_INTERVAL
const variants = ["ws", "broadcaster"] as const
const here = new URL(".", import.meta.url).pathname
const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

interface Result {
  readonly variant: string
  readonly held: number
  readonly attempted: number
  readonly heap: number
  readonly rss: number
  readonly baseHeap: number
  readonly baseRss: number
  readonly note: string
}

/** Every connection open, and each one reached by a broadcast sent after this call. */
const check = async (server: ChildProcess, loads: Array<ChildProcess>) => {
  const { seq } = await request(server, { type: "count" }, "count")
  // The next broadcast is due within a second; the rest is room for a loop slowed by the step's upgrades.
  await sleep(2_500)
  const replies = await Promise.all(loads.map((load) => request(load, { type: "reached", seq: seq + 1 }, "reached")))
  const { connected } = await request(server, { type: "count" }, "count")
  return {
    connected,
    reached: replies.reduce((sum, r) => sum + r.reached, 0),
    open: replies.reduce((sum, r) => sum + r.open, 0),
    failed: replies.reduce((sum, r) => sum + r.failed, 0)
  }
}

const measure = async (variant: string): Promise<Result> => {
  const server = spawnWorker(`${here}server.ts`, [variant, String(HEARTBEAT_INTERVAL), String(HEARTBEAT_TIMEOUT)], ["--expose-gc"])
  const loads: Array<ChildProcess> = []
  try {
    const { port } = await nextReply(server, "listening")
    const base = await request(server, { type: "memory" }, "memory")
    const processes = Math.ceil(TARGET / PER_CLIENT_PROCESS)
    for (let i = 0; i < processes; i++) {
      const load = spawnWorker(`${here}clients.ts`, [String(port), String(i * PER_CLIENT_PROCESS)])
      loads.push(load)
      await nextReply(load, "ready")
    }
    let held = 0
    let attempted = 0
    let note = ""
    while (attempted < TARGET) {
      const step = Math.min(STEP, TARGET - attempted)
      attempted += step
      await Promise.all(loads.map((load, i) => {
        const share = Math.floor(step / loads.length) + (i < step % loads.length ? 1 : 0)
        return request(load, { type: "open", count: share }, "opened", 300_000)
      }))
      if (attempted === TARGET) await sleep(HOLD_AT_TOP)
      const state = await check(server, loads)
      console.error(`${variant}: ${attempted} attempted, ${state.connected} on the server, ${state.reached} reached, ${state.failed} failed`)
      if (state.reached < attempted || state.connected < attempted) {
        note = `at ${attempted.toLocaleString("en-US")}: ${state.connected.toLocaleString("en-US")} connected, ` +
          `${state.reached.toLocaleString("en-US")} reached by the broadcast, ${state.failed} failed to connect`
        break
      }
      held = attempted
    }
    const top = await request(server, { type: "memory" }, "memory")
    await Promise.all(loads.map((load) => request(load, { type: "close" }, "closed")))
    return { variant, held, attempted, heap: top.heap, rss: top.rss, baseHeap: base.heap, baseRss: base.rss, note }
  } finally {
    await Promise.all(loads.map(stop))
    await stop(server)
  }
}

const results: Array<Result> = []
for (const variant of variants) {
  const r = await measure(variant)
  results.push(r)
  console.error(`${variant}: held ${r.held}, heap ${round(r.heap, 1)} MB, RSS ${round(r.rss, 1)} MB ${r.note}`)
}

const ws = results.find((r) => r.variant === "ws")!
const perConnection = (total: number, base: number, held: number) => (held > 0 ? ((total - base) * 1024) / held : NaN)
const heapPer = (r: Result) => perConnection(r.heap, r.baseHeap, r.held)
const rssPer = (r: Result) => perConnection(r.rss, r.baseRss, r.held)
const report = [
  `Ceiling on ${machine()}${quick ? " (quick mode)" : ""}: connections added ${STEP.toLocaleString("en-US")} at a time up to ` +
  `${TARGET.toLocaleString("en-US")} (open-file limit ${fileLimit.toLocaleString("en-US")}), heartbeat every ` +
  `${HEARTBEAT_INTERVAL / 1000} s, a broadcast to every client each second; memory after GC at the top, after ` +
  `${HOLD_AT_TOP / 1000} s there. Per connection: above the server's own before any connection.`,
  "",
  table(
    ["server", "connections held", "heap (MB)", "RSS (MB)", "heap KB / connection", "RSS KB / connection", "heap / conn. vs ws", "RSS / conn. vs ws", "stopped by"],
    results.map((r) => [
      r.variant,
      r.held.toLocaleString("en-US"),
      round(r.heap, 1),
      round(r.rss, 1),
      round(heapPer(r), 1),
      round(rssPer(r), 1),
      `${round(heapPer(r) / heapPer(ws))}×`,
      `${round(rssPer(r) / rssPer(ws))}×`,
      r.note || `nothing: all ${TARGET.toLocaleString("en-US")} held`
    ])
  ),
  ""
].join("\n")
console.log(report)
writeFileSync(new URL(`../results/ceiling${quick ? "-quick" : ""}.md`, import.meta.url), report)
