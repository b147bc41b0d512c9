/**
 * The cluster over a real `redis-server`, with every node a separate process
 * (test/fixtures/clusterNode.ts: a facade manager and broadcaster) and real `ws` clients on each:
 * what crosses, in which order, what stays out, how the cluster is counted, and what happens when
 * Redis is unreachable, stops mid-traffic and comes back. The same behaviour in one process on a
 * memory hub is in Cluster.memory.test.ts.
 */
import { Effect, Layer } from "effect"
import { Broadcaster, RedisBus, WebSocketManager } from "effect-websocket-manager"
import { Redis } from "ioredis"
import { type ChildProcess, spawn } from "node:child_process"
import * as Net from "node:net"
import { createInterface } from "node:readline"
import { fileURLToPath } from "node:url"
import { afterEach, expect, it } from "vitest"
import type WebSocket from "ws"
import { eventually, nextMessage, nextMessages, openClient, sleep, withTimeout } from "./utils/index.js"
import { describeRedis, type RedisServer, startRedis } from "./utils/redis.js"

const root = fileURLToPath(new URL("..", import.meta.url))

interface Failure {
  readonly _tag?: string
  readonly message?: string
  readonly delivered?: number
  readonly cause?: { readonly _tag?: string; readonly message?: string }
}

interface Published {
  readonly seq: number
  readonly ok: boolean
  readonly at: number
  readonly error?: Failure
}

class NodeError extends Error {
  constructor(readonly failure: Failure) {
    super(`${failure._tag}: ${failure.message}`)
  }
}

interface ClusterNode {
  readonly process: ChildProcess
  readonly url: string
  /** Runs a command in the node: resolves with its value, rejects with a NodeError carrying what the node's Promise rejected with. */
  run<A = unknown>(op: string, args?: object, millis?: number): Promise<A>
  /** The node's own failure, as data: what the command's Promise rejected with. */
  failure(op: string, args?: object): Promise<Failure>
  /** Every line the node printed that was not an answer (events such as unhandled rejections). */
  readonly events: Array<{ event: string; reason?: string }>
  /** The node's log lines. */
  readonly logs: Array<string>
  readonly exited: Promise<void>
}

const nodes: Array<ClusterNode> = []
const clients: Array<WebSocket> = []

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate()
  const ended = nodes.splice(0)
  await Promise.all(ended.map((node) => {
    node.process.kill("SIGKILL")
    return node.exited
  }))
  // Whatever a node reported on its own (a subscribe that threw, an unhandled rejection) fails the test.
  expect(ended.flatMap((node) => node.events)).toEqual([])
})

/** Starts a node on the given Redis; resolves once it serves. */
const startNode = async (redisUrl: string, presenceTtl = 15_000): Promise<ClusterNode> => {
  const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/clusterNode.ts"], {
    cwd: root,
    env: { ...process.env, REDIS_URL: redisUrl, PRESENCE_TTL: String(presenceTtl) },
    stdio: ["pipe", "pipe", "inherit"]
  })
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once("exit", () => resolve())
  })
  const pending = new Map<number, (answer: { ok: boolean; value?: unknown; error?: Failure }) => void>()
  const events: ClusterNode["events"] = []
  const logs: Array<string> = []
  let listening: (port: number) => void
  const port = new Promise<number>((resolve) => (listening = resolve))
  createInterface({ input: child.stdout! }).on("line", (line) => {
    // Effect's log lines (logfmt) share stdout with the answers.
    if (!line.startsWith("{")) return logs.push(line)
    const message = JSON.parse(line)
    if (message.id !== undefined) pending.get(message.id)?.(message)
    else if (message.event === "listening") listening(message.port)
    else events.push(message)
  })
  let nextId = 0
  const run = <A>(op: string, args: object = {}, millis = 10_000) => {
    const id = nextId++
    return withTimeout(
      new Promise<A>((resolve, reject) => {
        pending.set(id, (answer) => {
          pending.delete(id)
          if (answer.ok) resolve(answer.value as A)
          else reject(new NodeError(answer.error!))
        })
        child.stdin!.write(`${JSON.stringify({ id, op, ...args })}\n`)
      }),
      millis,
      `the node to answer ${op}`
    )
  }
  const node: ClusterNode = {
    process: child,
    url: "",
    run,
    failure: (op, args) =>
      run(op, args).then(
        (value) => {
          throw new Error(`expected ${op} to reject, it resolved with ${JSON.stringify(value)}`)
        },
        (error) => {
          if (error instanceof NodeError) return error.failure
          throw error
        }
      ),
    events,
    logs,
    exited
  }
  nodes.push(node)
  // tsx compiles the node on start: seconds on a loaded 2-core machine.
  const served = await withTimeout(port, 30_000, "the node to serve")
  return Object.assign(node, { url: `ws://127.0.0.1:${served}` })
}

const client = async (url: string) => {
  const ws = await openClient(url)
  clients.push(ws)
  return ws
}

/** The next message on the socket; a loaded machine gets 10 s, and a failure says which wait it was. */
const arrives = (ws: WebSocket, what: string) =>
  nextMessage(ws, 10_000).catch((error: Error) => {
    throw new Error(`${what}: ${error.message}`)
  })

/** Nothing more arrives on the socket for a while. */
const silent = (ws: WebSocket, millis = 300) => nextMessage(ws, millis).then((m) => `heard ${m}`, () => "silent")

/** Waits until `count` connections of the cluster (one per node) listen on each Redis channel. */
const subscribers = async (redisUrl: string, wanted: Record<string, number>) => {
  const redis = new Redis(redisUrl, { lazyConnect: true })
  await redis.connect()
  try {
    const current = async () => {
      const reply = await redis.pubsub("NUMSUB", ...Object.keys(wanted).map((topic) => `ewm:${topic}`)) as Array<string | number>
      return Object.fromEntries(Object.keys(wanted).map((topic, i) => [topic, Number(reply[2 * i + 1])]))
    }
    const deadline = Date.now() + 10_000
    while (true) {
      const now = await current()
      if (Object.keys(wanted).every((topic) => now[topic] === wanted[topic])) return
      if (Date.now() > deadline) throw new Error(`subscribers: wanted ${JSON.stringify(wanted)}, have ${JSON.stringify(now)}`)
      await sleep(20)
    }
  } finally {
    redis.disconnect()
  }
}

/** A port nothing listens on: taken from the OS, then let go. */
const closedPort = () =>
  new Promise<number>((resolve) => {
    const server = Net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

const seqs = (messages: ReadonlyArray<string | Buffer>) => messages.map((m) => JSON.parse(m.toString()).seq as number)

/** Collects every message a socket receives from now on. */
const record = (ws: WebSocket) => {
  const received: Array<number> = []
  ws.on("message", (data) => received.push(JSON.parse(data.toString()).seq))
  return received
}

describeRedis("Cluster over Redis, nodes in separate processes", () => {
  let redis: RedisServer

  /**
   * Two nodes whose buses are connected (each manager listens on its topic in Redis), as in a
   * service that has been up for a while: clients come after that.
   */
  const twoNodes = async (presenceTtl?: number) => {
    redis = await startRedis()
    const started = await Promise.all([startNode(redis.url, presenceTtl), startNode(redis.url, presenceTtl)])
    await subscribers(redis.url, { "manager:all": 2 })
    return started
  }

  it("500 broadcasts on node A reach node B's clients in order, once each; A's own client gets them once", async () => {
    const [a, b] = await twoNodes()
    const onA = await client(a.url)
    const [onB1, onB2] = [await client(b.url), await client(b.url)]
    await subscribers(redis.url, { "channel:room": 2 })
    const heard = Promise.all([onA, onB1, onB2].map((ws) => nextMessages(ws, 500, 30_000)))
    // Issued back to back; all 500 resolve, each with this node's one subscriber.
    expect(await a.run("burst", { count: 500 })).toBe(500)
    const expected = Array.from({ length: 500 }, (_, i) => i)
    expect((await heard).map(seqs)).toEqual([expected, expected, expected])
    // The echo of A's own publishes was ignored, and nothing was delivered twice on B.
    expect(await Promise.all([silent(onA), silent(onB1), silent(onB2)])).toEqual(["silent", "silent", "silent"])
    expect(await a.run("metrics")).toEqual({ received: 0, malformed: 0 })
    expect(await b.run("metrics")).toEqual({ received: 500, malformed: 0 })
  }, 60_000)

  it("exclude keeps the publisher's own socket out; its neighbours and the other node get the message", async () => {
    const [a, b] = await twoNodes()
    const sender = await client(`${a.url}/?tag=sender`)
    const neighbour = await client(a.url)
    const remote = await client(b.url)
    await subscribers(redis.url, { "channel:room": 2 })
    const heard = Promise.all([arrives(neighbour, "neighbour"), arrives(remote, "remote")])
    expect(await a.run("broadcast", { message: "hello", exclude: "sender" })).toBe(1)
    expect(await heard).toEqual(["hello", "hello"])
    expect(await silent(sender)).toBe("silent")
    // From the other side too: B's broadcast reaches both of A's sockets, the excluded one included.
    const both = Promise.all([arrives(sender, "sender from b"), arrives(neighbour, "neighbour from b")])
    expect(await b.run("broadcast", { message: "from b" })).toBe(1)
    expect(await both).toEqual(["from b", "from b"])
  }, 60_000)

  it("sendToUser reaches every socket of the user on both nodes and nobody else; manager.broadcast reaches all", async () => {
    const [a, b] = await twoNodes()
    const annA = await client(`${a.url}/?user=ann`)
    const annB = await client(`${b.url}/?user=ann`)
    const bobB = await client(`${b.url}/?user=bob`)
    const carlA = await client(`${a.url}/?user=carl`)
    await subscribers(redis.url, { "user:ann": 2, "user:bob": 1, "user:carl": 1, "manager:all": 2 })

    const toAnn = Promise.all([arrives(annA, "ann on A"), arrives(annB, "ann on B")])
    expect(await a.run("sendToUser", { user: "ann", message: "for ann" })).toBe(1)
    expect(await toAnn).toEqual(["for ann", "for ann"])
    expect(await Promise.all([silent(bobB), silent(carlA)])).toEqual(["silent", "silent"])

    // A user with no socket on the sending node: 0 here, still delivered where the user is.
    const toBob = arrives(bobB, "bob")
    expect(await a.run("sendToUser", { user: "bob", message: "for bob" })).toBe(0)
    expect(await toBob).toBe("for bob")
    expect(await Promise.all([silent(annA), silent(annB), silent(carlA)])).toEqual(["silent", "silent", "silent"])

    const everyone = Promise.all([annA, annB, bobB, carlA].map((ws, i) => arrives(ws, `client ${i} of everyone`)))
    expect(await b.run("managerBroadcast", { message: { notice: "all" } })).toBe(2)
    expect(await everyone).toEqual(Array(4).fill(JSON.stringify({ notice: "all" })))
    expect(await Promise.all([silent(annA), silent(bobB)])).toEqual(["silent", "silent"])
  }, 60_000)

  it("getClusterConnections counts both nodes; a node killed with SIGKILL drops out within its presenceTtl, a closed one at once", async () => {
    const ttl = 1_500
    redis = await startRedis()
    const [a, b, c] = await Promise.all([startNode(redis.url, ttl), startNode(redis.url, ttl), startNode(redis.url, ttl)])
    await subscribers(redis.url, { "manager:all": 3 })
    await client(a.url)
    await Promise.all([client(b.url), client(b.url)])
    await client(c.url)
    const count = (node: ClusterNode) => node.run<number>("clusterConnections")
    // Each node announces its count every third of the TTL.
    const deadline = Date.now() + ttl * 3
    while ((await Promise.all([count(a), count(b), count(c)])).some((n) => n !== 4)) {
      if (Date.now() > deadline) throw new Error(`counts never reached 4: ${await Promise.all([count(a), count(b), count(c)])}`)
      await sleep(50)
    }

    b.process.kill("SIGKILL")
    const killedAt = Date.now()
    await b.exited
    let counted = 4
    while (counted !== 2) {
      counted = await count(a)
      expect(counted === 4 || counted === 2).toBe(true)
      // Within the TTL of the last announcement (at most the TTL before the kill), polled every 50 ms.
      expect(Date.now() - killedAt).toBeLessThan(ttl + 500)
      await sleep(50)
    }
    expect(await count(c)).toBe(2)

    // A clean close says goodbye: gone from the count as soon as it has closed.
    await c.run("close")
    expect(await count(a)).toBe(1)
  }, 60_000)

  it("Redis stopped mid-traffic: publishes fail visibly, local clients keep receiving; after a restart on the same port delivery resumes", async () => {
    const [a, b] = await twoNodes()
    const local = await client(a.url)
    const remote = await client(b.url)
    const onBoth = await client(`${b.url}/?user=dee`)
    await subscribers(redis.url, { "channel:room": 2, "user:dee": 1, "manager:all": 2 })
    const atA = record(local)
    const atB = record(remote)

    await a.run("startTraffic", { every: 10 })
    await eventually(() => atB.length >= 20, 10_000, "traffic to cross before the outage")
    const stoppedAt = Date.now()
    await redis.stop()
    const whileDown = atA.length
    await eventually(() => atA.length >= whileDown + 30, 10_000, "local delivery while Redis is down")
    // The node's other cross-node operations fail typed too.
    expect(await b.failure("sendToUser", { user: "dee", message: "x" })).toMatchObject({
      _tag: "ClusterPublishFailed",
      delivered: 1,
      cause: { _tag: "ClusterUnavailable" }
    })
    expect((await a.failure("clusterConnections"))._tag).toBe("ClusterUnavailable")

    await redis.start()
    const restartedAt = Date.now()
    const beforeResume = atB.length
    await eventually(() => atB.length > beforeResume, 20_000, "cross-node delivery to resume after the restart")
    const resumedWith = atB[beforeResume]!
    await eventually(() => atB.length >= beforeResume + 50, 10_000, "50 more messages across")
    const published = await a.run<Array<Published>>("stopTraffic")
    await sleep(300)

    const ok = published.filter((p) => p.ok).map((p) => p.seq)
    const failed = published.filter((p) => !p.ok)
    // Reported as failed, each of them: a broadcast that reached A's client and nothing else.
    expect(failed.length).toBeGreaterThan(0)
    for (const { error } of failed) {
      expect(error).toMatchObject({ _tag: "ClusterPublishFailed", delivered: 1, cause: { _tag: "ClusterUnavailable" } })
      expect(error!.cause!.message).toContain(redis.url)
    }
    expect(failed.every((p) => p.at >= stoppedAt)).toBe(true)
    // A's own client got every broadcast, published or not, once and in order.
    expect(atA).toEqual(published.map((p) => p.seq))
    // B got only what was published, in order, once: nothing reported failed ever arrived.
    const failedSeqs = new Set(failed.map((p) => p.seq))
    expect(atB.filter((seq) => failedSeqs.has(seq))).toEqual([])
    expect(atB).toEqual([...atB].sort((x, y) => x - y))
    expect(new Set(atB).size).toBe(atB.length)
    // Everything published before Redis stopped arrived, and everything after B was back.
    const publishedBeforeStop = published.filter((p) => p.ok && p.at < stoppedAt).map((p) => p.seq)
    expect(atB.slice(0, publishedBeforeStop.length)).toEqual(publishedBeforeStop)
    expect(atB.slice(atB.indexOf(resumedWith))).toEqual(ok.filter((seq) => seq >= resumedWith))
    expect(Date.now() - restartedAt).toBeLessThan(20_000)

    // Both nodes subscribe again to every topic they still need, without a restart: B to A, and the manager's topics.
    const fromB = arrives(local, "B to A after the restart")
    expect(await b.run("broadcast", { message: { seq: -1 } })).toBe(2)
    expect(JSON.parse((await fromB).toString())).toEqual({ seq: -1 })
    const toDee = arrives(onBoth, "sendToUser after the restart")
    expect(await a.run("sendToUser", { user: "dee", message: "back" })).toBe(0)
    expect(await toDee).toBe("back")
    expect([local, remote, onBoth].every((ws) => ws.readyState === ws.OPEN)).toBe(true)
    expect(await a.run("unhandled")).toBe(0)
    expect(await b.run("unhandled")).toBe(0)
  }, 90_000)

  it("the facade with Redis unreachable: constructed, local delivery works, cross-node calls reject typed, no unhandled rejection", async () => {
    const url = `redis://127.0.0.1:${await closedPort()}`
    const node = await startNode(url)
    const ws = await client(node.url)
    const heard = arrives(ws, "local delivery")
    const failure = await node.failure("broadcast", { message: "hi" })
    expect(failure).toMatchObject({ _tag: "ClusterPublishFailed", delivered: 1, cause: { _tag: "ClusterUnavailable" } })
    expect(failure.cause!.message).toContain(url)
    expect(await heard).toBe("hi")
    const hereOnly = arrives(ws, "local: true")
    expect(await node.run("broadcast", { message: "here only", local: true })).toBe(1)
    expect(await hereOnly).toBe("here only")
    expect((await node.failure("managerBroadcast", { message: "x" }))._tag).toBe("ClusterPublishFailed")
    expect((await node.failure("clusterConnections"))._tag).toBe("ClusterUnavailable")
    // Reconnection attempts go on in the background; none of them may surface as an unhandled rejection.
    await sleep(1_000)
    expect(await node.run("unhandled")).toBe(0)
    expect(node.events).toEqual([])
    expect(node.process.exitCode).toBe(null)
    const closed = await node.run<Record<string, number>>("close")
    expect(Object.keys(closed)).toEqual(["manager", "broadcaster", "server"])
  }, 60_000)

  it("closing the facade after Redis has gone ends promptly", async () => {
    const [a] = await twoNodes()
    await client(a.url)
    await subscribers(redis.url, { "channel:room": 1 })
    expect(await a.run("broadcast", { message: "before" })).toBe(1)
    await redis.stop()
    expect((await a.failure("broadcast", { message: "after" }))._tag).toBe("ClusterPublishFailed")
    // Each close is bounded by the bus's command timeout (2 s), not by Redis coming back.
    const timings = await a.run<Record<string, number>>("close", {}, 15_000)
    expect(timings.manager).toBeLessThan(5_000)
    expect(timings.broadcaster).toBeLessThan(5_000)
    expect(await a.run("unhandled")).toBe(0)
  }, 60_000)

  it("the Effect API: Redis unreachable when the layer is built fails it with ClusterUnavailable naming the URL", async () => {
    const url = `redis://127.0.0.1:${await closedPort()}`
    const services = Layer.mergeAll(Broadcaster.layer(), WebSocketManager.layer()).pipe(
      Layer.provide(RedisBus.layer({ url, connectTimeout: 500 }))
    )
    const error = await Effect.runPromise(Effect.flip(Effect.scoped(Layer.build(services))))
    expect(error._tag).toBe("ClusterUnavailable")
    expect(error.message).toContain(url)
  })
})
