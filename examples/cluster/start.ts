/**
 * The cluster chat: a Redis and two nodes of examples/chat/server.ts (given REDIS_URL and NODE_NAME),
 * one command: `npm run example:cluster`.
 * Open both printed URLs, join in each, and talk across nodes. Ctrl-C stops all three.
 *
 * Run with `node --import tsx`, not the `tsx` command: on Ctrl-C that one SIGKILLs a child that
 * has not acknowledged the signal within 30 ms (a loaded machine), which would leave Redis running.
 *
 * REDIS_URL: use that Redis; without it a `redis-server` (Debian package redis-server) is started
 * in a temporary directory on a free port, without persistence, and removed afterwards.
 * PORT: node A's port (default 3001), node B's is the next one; PORT=0 picks free ports.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("../..", import.meta.url))
// Whoever reads our output may be gone first (a closed terminal, a pipe): stopping must go on.
process.stdout.on("error", () => {})
const children = new Set<ChildProcess>()

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = Net.createServer().once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

const exited = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once("exit", () => resolve())
  })

/** Whether something on the port answers a Redis PING. */
const answers = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(1_000, () => done(false))
    socket.once("error", () => done(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")))
  })

let redis: { readonly process: ChildProcess; readonly dir: string } | undefined

const startRedis = async (): Promise<string> => {
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ewm-cluster-example-"))
  const port = await freePort()
  const child = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--dir", dir], {
    // Its own process group: Ctrl-C stops the nodes first, then this script stops Redis, so the
    // nodes can say goodbye to the cluster on their way out.
    detached: true,
    stdio: "ignore"
  })
  const failed = new Promise<never>((_, reject) => {
    child.once("error", (error) =>
      reject(new Error(`could not start redis-server (${error.message}): install the Debian package redis-server, or set REDIS_URL`)))
    child.once("exit", (code) => reject(new Error(`redis-server exited with code ${code}`)))
  })
  failed.catch(() => {})
  try {
    const deadline = Date.now() + 10_000
    while (!(await Promise.race([answers(port), failed]))) {
      if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${port}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  } catch (error) {
    child.kill("SIGKILL")
    Fs.rmSync(dir, { recursive: true, force: true })
    throw error
  }
  redis = { process: child, dir }
  return `redis://127.0.0.1:${port}`
}

const startNode = (name: string, port: number, redisUrl: string) =>
  new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", "examples/chat/server.ts"], {
      cwd: root,
      env: { ...process.env, NODE_NAME: name, PORT: String(port), REDIS_URL: redisUrl },
      stdio: ["ignore", "pipe", "inherit"]
    })
    children.add(child)
    child.stdout!.on("data", (chunk: Buffer) => {
      process.stdout.write(chunk)
      const match = /chat on (http:\/\/\S+)/.exec(chunk.toString())
      if (match) resolve(match[1]!)
    })
    child.once("exit", (code, signal) => {
      children.delete(child)
      reject(new Error(`node ${name} exited (${signal ?? code}) before serving`))
      if (!stopping) {
        console.error(`node ${name} exited (${signal ?? code}); stopping the cluster`)
        void stop(1)
      }
    })
  })

let stopping = false

const stop = async (code: number) => {
  if (stopping) return
  stopping = true
  await Promise.all(Array.from(children, (child) => {
    child.kill("SIGTERM")
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000)
    return exited(child).then(() => clearTimeout(timer))
  }))
  if (redis !== undefined) {
    redis.process.kill("SIGTERM")
    await exited(redis.process)
    Fs.rmSync(redis.dir, { recursive: true, force: true })
  }
  console.log("cluster stopped")
  process.exit(code)
}

process.once("SIGINT", () => void stop(0))
process.once("SIGTERM", () => void stop(0))
// Should this script die another way, its Redis does not outlive it.
process.once("exit", () => redis?.process.kill("SIGKILL"))

try {
  const redisUrl = process.env.REDIS_URL ?? (await startRedis())
  console.log(`redis on ${redisUrl}${redis ? ` (started for this example, pid ${redis.process.pid})` : ""}`)
  const base = Number(process.env.PORT ?? 3001)
  const [a, b] = await Promise.all([startNode("A", base, redisUrl), startNode("B", base === 0 ? 0 : base + 1, redisUrl)])
  console.log(`cluster chat: open ${a} and ${b}, join in each and talk across nodes (Ctrl-C stops all)`)
} catch (error) {
  console.error((error as Error).message)
  await stop(1)
}
