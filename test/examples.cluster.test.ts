/**
 * The cluster chat example as a person runs it: `npm run example:cluster` (a redis-server of its
 * own and two chat nodes), a `ws` client on each node, a message crossing each way, and Ctrl-C
 * (SIGINT to the process group) stopping all three.
 */
import { Redis } from "ioredis"
import { type ChildProcess, spawn } from "node:child_process"
import * as Net from "node:net"
import { fileURLToPath } from "node:url"
import { afterAll, expect, it } from "vitest"
import type WebSocket from "ws"
import { eventually, openClient, sleep, withTimeout } from "./utils/index.js"
import { describeRedis } from "./utils/redis.js"

const root = fileURLToPath(new URL("..", import.meta.url))
let script: ChildProcess | undefined
let output = ""

const exited = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once("exit", () => resolve())
  })

/** Whether any process is left in the group. */
const groupAlive = (pgid: number) => {
  try {
    process.kill(-pgid, 0)
    return true
  } catch {
    return false
  }
}

const refuses = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    socket.once("connect", () => {
      socket.destroy()
      resolve(false)
    })
    socket.once("error", () => resolve(true))
  })

const clients: Array<WebSocket> = []

afterAll(async () => {
  for (const ws of clients) ws.terminate()
  const pgid = script?.pid
  if (pgid === undefined) return
  if (groupAlive(pgid)) {
    // The test failed before its own Ctrl-C: the same, then harder.
    process.kill(-pgid, "SIGINT")
    await eventually(() => !groupAlive(pgid), 30_000).catch(() => process.kill(-pgid, "SIGKILL"))
  }
  // Its Redis is in a group of its own, stopped by the script last: never left behind.
  const redis = /redis on redis:\/\/127\.0\.0\.1:(\d+) \(started for this example, pid (\d+)\)/.exec(output)
  if (redis !== null && !(await refuses(Number(redis[1])))) process.kill(Number(redis[2]), "SIGKILL")
}, 45_000)

/** The next chat message of the given type (and from the given name) on the socket; others may come first. */
const chatMessage = (ws: WebSocket, type: string, what: string, name?: string) =>
  withTimeout(
    new Promise<Record<string, unknown>>((resolve) => {
      const onMessage = (data: Buffer) => {
        const message = JSON.parse(data.toString())
        // `name` is who joined, or who wrote: a sender also hears its own message, maybe late.
        if (message.type !== type || (name !== undefined && (message.name ?? message.from) !== name)) return
        ws.off("message", onMessage)
        resolve(message)
      }
      ws.on("message", onMessage)
    }),
    10_000,
    what
  )

describeRedis("cluster example", () => {
  it("npm run example:cluster: a message typed on node A reaches node B and back; Ctrl-C stops all three", async () => {
    const { REDIS_URL: _, ...env } = process.env
    // Its own process group, as a terminal gives it, so Ctrl-C can be sent the way a terminal does.
    script = spawn("npm", ["run", "--silent", "example:cluster"], {
      cwd: root,
      env: { ...env, PORT: "0" },
      detached: true,
      stdio: ["ignore", "pipe", "pipe"]
    })
    script.stdout!.on("data", (chunk) => (output += chunk))
    script.stderr!.on("data", (chunk) => (output += chunk))
    // tsx compiles the script and both nodes on start: seconds on a loaded 2-core machine.
    const [, a, b] = await withTimeout(
      (async () => {
        for (;;) {
          const match = /cluster chat: open (http:\/\/\S+) and (http:\/\/\S+),/.exec(output)
          if (match) return match
          if (script!.exitCode !== null) throw new Error(`the example exited:\n${output}`)
          await sleep(50)
        }
      })(),
      60_000,
      "the example to print both URLs"
    )
    const redisUrl = /redis on (redis:\/\/\S+) \(started for this example, pid \d+\)/.exec(output)![1]!
    expect(a).not.toBe(b)

    // Both nodes serve the chat page.
    for (const url of [a!, b!]) {
      expect(await fetch(url).then((response) => response.text())).toContain("<title>effect-websocket-manager chat</title>")
    }

    const redis = new Redis(redisUrl)
    /** Waits until that many nodes listen on the topic in Redis. */
    const listening = async (topic: string, nodes: number) => {
      for (let deadline = Date.now() + 10_000;;) {
        const [, count] = await redis.pubsub("NUMSUB", `ewm:${topic}`) as [string, number]
        if (Number(count) === nodes) return
        if (Date.now() > deadline) throw new Error(`${topic} has ${count} subscribers in Redis, not ${nodes}`)
        await sleep(20)
      }
    }
    let annJoined: Promise<Record<string, unknown>>
    try {
      // People arrive once the nodes are connected to Redis, as on a service that has been up a while.
      await listening("manager:all", 2)
      const bob = await openClient(`${b!.replace("http", "ws")}/chat?name=bob`)
      clients.push(bob)
      await listening("channel:lobby", 1)
      // Ann's arrival on node A is announced to bob on node B.
      annJoined = chatMessage(bob, "joined", "bob to hear that ann joined", "ann")
      clients.push(await openClient(`${a!.replace("http", "ws")}/chat?name=ann`))
      await listening("channel:lobby", 2)
    } finally {
      redis.disconnect()
    }
    const [bob, ann] = clients as [WebSocket, WebSocket]
    expect(await annJoined).toMatchObject({ type: "joined", name: "ann", node: "A" })

    const bobHears = chatMessage(bob, "message", "bob to hear ann", "ann")
    ann.send(JSON.stringify({ text: "hello from A" }))
    expect(await bobHears).toMatchObject({ type: "message", from: "ann", text: "hello from A", node: "A" })

    const annHears = chatMessage(ann, "message", "ann to hear bob", "bob")
    bob.send(JSON.stringify({ text: "hi from B" }))
    expect(await annHears).toMatchObject({ type: "message", from: "bob", text: "hi from B", node: "B" })

    // Ctrl-C: the nodes close their sockets, then the script stops its Redis and exits.
    const closed = Promise.all([ann, bob].map((ws) => new Promise((resolve) => ws.once("close", resolve))))
    process.kill(-script.pid!, "SIGINT")
    await withTimeout(exited(script), 20_000, "the example to exit on Ctrl-C")
    await withTimeout(closed, 5_000, "the clients to be closed")
    // npm may exit before the script under it has finished: every process of the group, and Redis, gone.
    const pgid = script.pid!
    const port = Number(new URL(redisUrl).port)
    await eventually(() => !groupAlive(pgid), 20_000, "every process of the example to exit")
    expect(output).toContain("cluster stopped")
    expect(await refuses(port)).toBe(true)
  }, 120_000)
})
