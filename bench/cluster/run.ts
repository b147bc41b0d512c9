/**
 * Cross-node fan-out: one publisher on node A, one channel that every client joins, clients
 * split over two nodes that share a Redis (the Broadcaster's `redis` option; socket.io with
 * `@socket.io/redis-adapter`), against the same total of clients on a single node without Redis,
 * and the raw `ws` loop on one node as a reference. Every node and each half of the clients run in
 * their own processes; this process starts its own `redis-server` and stops it, and every worker,
 * however the run ends.
 *
 * Per setup: a warm-up; a burst (messages as fast as node A takes them, one per event-loop turn)
 * for deliveries per second and each node's CPU per delivery (its CPU time over the deliveries its
 * own clients received); then a paced run (RATE messages/s) for latency from the message's send time
 * to each arrival, and to each message's first arrival on a node (the cross-node hop without the
 * clients' queueing behind it). "Added" latency is the cluster's node-B clients against the
 * single node's clients, both measured in this run.
 *
 *   bash bench/cluster/run.sh [--quick] [--clients N] [--profile DIR]   (N clients per node)
 */
import type { ChildProcess } from "node:child_process"
import { writeFileSync } from "node:fs"
import { machine, nextReply, request, round, spawnWorker, stop, table } from "../lib.js"
import { startRedis } from "../../test/utils/redisServer.js"

const quick = process.argv.includes("--quick")
const only = process.argv.indexOf("--clients")
const PER_NODE = only > 0 ? Number(process.argv[only + 1]) : quick ? 200 : 2_000
const BURST = quick ? 20 : 100
// The paced run offers about 20,000 deliveries/s in all, well under what the slowest setup delivers
// in the burst even on a loaded machine, so that its latency is the path's and not a backlog's
// (50 messages/s to 2 × 1,000 clients kept socket.io seconds behind).
const RATE = Math.min(50, Math.max(1, Math.round(20_000 / (2 * PER_NODE))))
const PACED = quick ? 100 : 200
// Not measured: compiles each node's hot path and lets node B's Redis subscription settle.
const WARMUP = Math.max(10, RATE)
const setups = [
  { system: "ws", nodes: 1 },
  { system: "broadcaster", nodes: 1 },
  { system: "broadcaster", nodes: 2 },
  { system: "socket.io", nodes: 1 },
  { system: "socket.io", nodes: 2 }
] as const
const here = new URL(".", import.meta.url).pathname
// `--profile DIR`: node B of the Broadcaster's two-node setup runs under `node --cpu-prof` and
// writes its profile there; the figures, skewed by the profiler, are printed but not saved.
const profile = process.argv.indexOf("--profile")
const profileDir = profile > 0 ? process.argv[profile + 1] : undefined

// A signal ends the run through process.exit, so that lib.ts's and redisServer.ts's exit handlers kill
// the workers and redis-server.
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.once(signal, () => process.exit(130))

interface Received {
  readonly received: number
  readonly expected: number
  readonly lastAt: number
  readonly quantiles: Array<number>
  readonly max: number
  readonly firsts: Array<number | null>
}

interface Latency {
  readonly p50: number
  readonly p99: number
  readonly firstP50: number
  readonly firstP99: number
}

interface Result {
  readonly system: string
  readonly nodes: number
  readonly rate: number
  /** Per node: server CPU ms per 1,000 deliveries to its own clients, in the burst and at RATE. */
  readonly cpuBurst: Array<number>
  readonly cpuPaced: Array<number>
  /** Single node: all clients. Two nodes: the clients of node B, every delivery crossed Redis. */
  readonly latency: Latency
  /** Two nodes: the clients of node A, next to the publisher. */
  readonly latencyA: Latency | undefined
  readonly lost: number
  readonly failures: number
}

const percentile = (sorted: Array<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? NaN

/** Latency over the deliveries of these client processes (each holds the same number of clients). */
const latencyOf = (loads: Array<Received>): Latency => {
  const merged = loads.flatMap((r) => r.quantiles).sort((a, b) => a - b)
  const firsts = loads[0]!.firsts
    .map((_, seq) => Math.min(...loads.map((r) => r.firsts[seq] ?? Infinity)))
    .filter(Number.isFinite)
    .sort((a, b) => a - b)
  return { p50: percentile(merged, 0.5), p99: percentile(merged, 0.99), firstP50: percentile(firsts, 0.5), firstP99: percentile(firsts, 0.99) }
}

const measure = async (system: string, nodes: number, redisUrl: string): Promise<Result> => {
  const workers: Array<ChildProcess> = []
  try {
    const servers = Array.from({ length: nodes }, (_, i) => {
      const profiled = profileDir !== undefined && system === "broadcaster" && i === 1
      return spawnWorker(`${here}server.ts`, [system, nodes > 1 ? redisUrl : "-"], profiled ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [])
    })
    workers.push(...servers)
    const ports = await Promise.all(servers.map(async (server) => (await nextReply(server, "listening")).port as number))
    // Two client processes in every setup, so the clients' side costs the same: on one node both
    // connect to it, on two each connects to its own.
    const loads = [0, 1].map((i) => spawnWorker(`${here}clients.ts`, [system, String(ports[i % nodes]), String(PER_NODE)]))
    workers.push(...loads)
    await Promise.all(loads.map((load) => nextReply(load, "connected", 300_000)))
    const perServer = (2 * PER_NODE) / nodes
    for (const server of servers) {
      for (let tries = 0; (await request(server, { type: "count" }, "count")).connected < perServer; tries++) {
        if (tries > 200) throw new Error(`${system}: only part of ${perServer} clients connected`)
        await new Promise((resolve) => setTimeout(resolve, 50))
      }
    }

    const phase = async (command: { type: "burst" | "paced"; messages: number }) => {
      const timeout = command.type === "burst" ? 120_000 : (command.messages / RATE) * 1000 + 30_000
      const expectations = loads.map((load) => nextReply<Received>(load, "received", timeout + 60_000))
      // Handled here too: if the phase fails first, their rejection when the workers are stopped
      // must not end the run as unhandled before the phase's own error is reported.
      for (const expectation of expectations) expectation.catch(() => {})
      await Promise.all(loads.map((load) => request(load, { type: "expect", messages: command.messages, timeout }, "expecting")))
      await Promise.all(servers.map((server) => request(server, { type: "mark" }, "marked")))
      const { startedAt } = await request(servers[0]!, { ...command, rate: RATE, total: command.messages }, "published", timeout)
      const received = await Promise.all(expectations)
      const cpu = await Promise.all(servers.map((server) => request(server, { type: "cpu" }, "cpu")))
      // Node A's deliveries: both client processes on one node, the first one on two.
      const deliveries = nodes === 1 ? [received[0]!.received + received[1]!.received] : received.map((r) => r.received)
      return {
        received,
        startedAt: startedAt as number,
        cpuPer1k: cpu.map(({ micros }, i) => micros / 1000 / (deliveries[i]! / 1000)),
        failures: cpu[0]!.failures as number
      }
    }

    const warmup = await phase({ type: "paced", messages: WARMUP })
    if (warmup.received.some((r) => r.received === 0)) throw new Error(`${system} on ${nodes} node(s): a client process received nothing`)
    const burst = await phase({ type: "burst", messages: BURST })
    const paced = await phase({ type: "paced", messages: PACED })
    const total = burst.received.reduce((sum, r) => sum + r.received, 0)
    const lastAt = Math.max(...burst.received.map((r) => r.lastAt))
    return {
      system,
      nodes,
      rate: total / Math.max(0.001, (lastAt - burst.startedAt) / 1000),
      cpuBurst: burst.cpuPer1k,
      cpuPaced: paced.cpuPer1k,
      latency: latencyOf(nodes === 1 ? paced.received : [paced.received[1]!]),
      latencyA: nodes === 1 ? undefined : latencyOf([paced.received[0]!]),
      lost: [...burst.received, ...paced.received].reduce((sum, r) => sum + r.expected - r.received, 0),
      failures: paced.failures
    }
  } finally {
    await Promise.all(workers.map(stop))
  }
}

const redis = await startRedis()
const results: Array<Result> = []
try {
  for (const { nodes, system } of setups) {
    const r = await measure(system, nodes, redis.url)
    results.push(r)
    console.error(
      `${system} × ${nodes}: ${Math.round(r.rate)}/s, CPU ms/1k burst ${r.cpuBurst.map((c) => round(c, 3)).join(" / ")}, ` +
        `paced ${r.cpuPaced.map((c) => round(c, 3)).join(" / ")}, p50 ${round(r.latency.p50)} p99 ${round(r.latency.p99)}, ` +
        `first p50 ${round(r.latency.firstP50)} p99 ${round(r.latency.firstP99)}` +
        (r.latencyA ? `, node A clients p50 ${round(r.latencyA.p50)} p99 ${round(r.latencyA.p99)}` : "") +
        `, lost ${r.lost}, failed ${r.failures}`
    )
  }
} finally {
  await redis.kill()
}

const find = (system: string, nodes: number) => results.find((r) => r.system === system && r.nodes === nodes)!
const cell = (values: Array<number>) => values.map((v) => round(v, 3)).join(" / ")
const ratio = (a: number, b: number) => `${round(a / b)}×`
const setupName = (r: Result) => (r.nodes === 1 ? "1 node" : "2 nodes + Redis")

const throughput = results.map((r) => [
  r.system,
  setupName(r),
  Math.round(r.rate).toLocaleString("en-US"),
  cell(r.cpuBurst),
  cell(r.cpuPaced),
  r.lost,
  r.failures
])

// Two views of the cost of the hop: node B's clients against the same server on one node (the
// brief's comparison, which also halves each node's fan-out), and against node A's clients in the
// same run (the same fan-out per node, differing only by the trip through Redis).
const latencyRows = results.flatMap((r) => {
  const single = find(r.system, 1).latency
  const row = (clients: string, l: Latency, vsSingle: boolean, vsA: Latency | undefined) => [
    r.system,
    setupName(r),
    clients,
    round(l.p50),
    round(l.p99),
    round(l.firstP50),
    round(l.firstP99),
    vsSingle ? round(l.p99 - single.p99) : "",
    vsA ? round(l.p99 - vsA.p99) : "",
    vsA ? round(l.firstP99 - vsA.firstP99) : ""
  ]
  return r.latencyA === undefined
    ? [row("all", r.latency, false, undefined)]
    : [row("node A", r.latencyA, false, undefined), row("node B", r.latency, true, r.latencyA)]
})

const [ours, theirs] = [find("broadcaster", 2), find("socket.io", 2)]
const cpuAim = (label: string, a: number, b: number) => [label, round(a, 3), round(b, 3), ratio(a, b), "≤ 1×", a <= b ? "met" : "missed"]
const msAim = (label: string, of: (r: Result) => number) => [label, round(of(ours)), round(of(theirs)), "", "< 2 ms", of(ours) < 2 ? "met" : "missed"]
const aims = [
  cpuAim("CPU ms / 1k deliveries, node A, burst", ours.cpuBurst[0]!, theirs.cpuBurst[0]!),
  cpuAim("CPU ms / 1k deliveries, node B, burst", ours.cpuBurst[1]!, theirs.cpuBurst[1]!),
  cpuAim(`CPU ms / 1k deliveries, node A, ${RATE}/s`, ours.cpuPaced[0]!, theirs.cpuPaced[0]!),
  cpuAim(`CPU ms / 1k deliveries, node B, ${RATE}/s`, ours.cpuPaced[1]!, theirs.cpuPaced[1]!),
  msAim("added p99, node B vs 1 node", (r) => r.latency.p99 - find(r.system, 1).latency.p99),
  msAim("added p99, node B vs node A", (r) => r.latency.p99 - r.latencyA!.p99),
  msAim("added first-arrival p50, node B vs node A", (r) => r.latency.firstP50 - r.latencyA!.firstP50),
  msAim("added first-arrival p99, node B vs node A", (r) => r.latency.firstP99 - r.latencyA!.firstP99)
]

const report = [
  `Cross-node fan-out on ${machine()}${quick ? " (quick mode)" : ""}: ${PER_NODE.toLocaleString("en-US")} clients per node ` +
    `(${(2 * PER_NODE).toLocaleString("en-US")} on the single node, from the same two client processes), one channel, ` +
    `one publisher on node A, one Redis 7 on loopback; a burst of ${BURST} messages (one per event-loop turn) for the rate ` +
    `and CPU, then ${PACED} messages at ${RATE}/s. CPU: each node's CPU time over the deliveries to its own clients ` +
    `(node A / node B).`,
  "",
  table(["server", "setup", "deliveries/s", "CPU ms / 1k deliveries, burst", `CPU ms / 1k deliveries, ${RATE}/s`, "lost", "failed publishes"], throughput),
  "",
  `Latency at ${RATE} messages/s (ms, from the send time the message carries to arrival): every delivery to that node's ` +
    `clients, and "first", each message's first arrival there (the node starting its writes, before the clients' queueing).`,
  "",
  table(["server", "setup", "clients", "p50", "p99", "first p50", "first p99", "p99 − 1 node p99", "p99 − node A p99", "first p99 − node A first p99"], latencyRows),
  "",
  table(["two nodes + Redis", "broadcaster", "socket.io", "broadcaster / socket.io", "aim", ""], aims),
  ""
].join("\n")
console.log(report)
if (profileDir === undefined) writeFileSync(new URL(`../results/cluster${quick ? "-quick" : ""}.md`, import.meta.url), report)
