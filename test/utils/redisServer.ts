/**
 * A real `redis-server`: started on a free 127.0.0.1 port in a temporary directory, without
 * persistence, stopped and started again on the same port for outage tests, killed at the latest
 * when the process exits. Free of vitest, so benchmarks and example scripts can use it too;
 * tests import `./redis.js`, which adds the describe block.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Os from "node:os"
import * as Path from "node:path"

const findOnPath = (command: string): string | undefined => {
  for (const dir of (process.env.PATH ?? "").split(Path.delimiter)) {
    const candidate = Path.join(dir, command)
    try {
      Fs.accessSync(candidate, Fs.constants.X_OK)
      return candidate
    } catch {
      // not in this directory
    }
  }
  return undefined
}

const serverPath = findOnPath("redis-server")

/** Whether `redis-server` can be started here. */
export const redisAvailable: boolean = serverPath !== undefined

/** Whether a missing `redis-server` fails the tests instead of skipping them (`REQUIRE_REDIS=1`). */
export const redisRequired: boolean = process.env.REQUIRE_REDIS === "1"

export const missing = "redis-server is not on PATH: install the Debian package redis-server (apt-get install redis-server)"

export interface RedisServer {
  /** redis://127.0.0.1:PORT */
  readonly url: string
  readonly port: number
  /** SIGTERM, resolved once the process has exited (every connection to it is then closed). */
  stop(): Promise<void>
  /** Starts it again on the same port, resolved once it answers PING. */
  start(): Promise<void>
  /** SIGKILL if running, and removes its directory. */
  kill(): Promise<void>
}

/** Servers started and not killed yet. */
export const running = new Set<RedisServer>()

process.once("exit", () => {
  for (const server of running) void server.kill()
})

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = Net.createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as Net.AddressInfo
      server.close(() => resolve(port))
    })
  })

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** One PING over a raw socket: true when the server answers PONG within a second. */
const ping = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = Net.connect({ host: "127.0.0.1", port })
    const done = (answer: boolean) => {
      socket.destroy()
      resolve(answer)
    }
    socket.setTimeout(1_000, () => done(false))
    socket.once("error", () => done(false))
    socket.once("connect", () => socket.write("PING\r\n"))
    socket.once("data", (data) => done(data.toString().startsWith("+PONG")))
  })

const exited = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once("exit", () => resolve())
  })

/** Starts a redis-server; resolves once it answers. */
export const startRedis = async (): Promise<RedisServer> => {
  if (serverPath === undefined) throw new Error(missing)
  const dir = Fs.mkdtempSync(Path.join(Os.tmpdir(), "ewm-redis-"))
  const port = await freePort()
  let child: ChildProcess | undefined
  let output = ""

  const start = async () => {
    if (child !== undefined) throw new Error("redis-server is already running")
    output = ""
    const started = spawn(
      serverPath,
      ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--dir", dir],
      { stdio: ["ignore", "pipe", "pipe"] }
    )
    child = started
    started.stdout!.on("data", (chunk) => (output += chunk))
    started.stderr!.on("data", (chunk) => (output += chunk))
    const deadline = Date.now() + 10_000
    while (!(await ping(port))) {
      if (started.exitCode !== null || Date.now() > deadline) {
        started.kill("SIGKILL")
        child = undefined
        throw new Error(`redis-server did not start on port ${port}:\n${output}`)
      }
      await sleep(20)
    }
  }

  const stop = async () => {
    const current = child
    if (current === undefined) return
    current.kill("SIGTERM")
    await exited(current)
    child = undefined
  }

  const server: RedisServer = {
    url: `redis://127.0.0.1:${port}`,
    port,
    stop,
    start,
    kill: async () => {
      running.delete(server)
      const current = child
      child = undefined
      // Synchronous up to the await, so that the exit handler's call does its whole job.
      current?.kill("SIGKILL")
      Fs.rmSync(dir, { recursive: true, force: true })
      if (current !== undefined) await exited(current)
    }
  }
  running.add(server)
  await start()
  return server
}
