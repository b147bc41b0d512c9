/**
 * What every benchmark shares: child processes over IPC, bounded waits, the machine's
 * description and markdown tables.
 */
import { type ChildProcess, fork } from "node:child_process"
import { readFileSync } from "node:fs"
import { cpus } from "node:os"

const children = new Set<ChildProcess>()
process.on("exit", () => children.forEach((child) => child.kill("SIGKILL")))

/** Starts a TypeScript worker with IPC; it is killed when this process exits. */
export const spawnWorker = (file: string, args: Array<string> = [], execArgv: Array<string> = []): ChildProcess => {
  const child = fork(file, args, { execArgv: ["--import", "tsx", ...execArgv], stdio: ["ignore", "inherit", "inherit", "ipc"] })
  children.add(child)
  child.once("exit", () => children.delete(child))
  return child
}

/** The next IPC message of that type from the child, failing after `millis`. */
export const nextReply = <A = any>(child: ChildProcess, type: string, millis = 120_000): Promise<A> =>
  new Promise((resolve, reject) => {
    const done = () => {
      clearTimeout(timer)
      child.off("message", onMessage)
      child.off("exit", onExit)
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`no "${type}" from worker within ${millis} ms`))
    }, millis)
    const onMessage = (message: any) => {
      if (message?.type !== type) return
      done()
      resolve(message)
    }
    const onExit = (code: number | null) => {
      done()
      reject(new Error(`worker exited (${code}) before "${type}"`))
    }
    child.on("message", onMessage)
    child.once("exit", onExit)
  })

export const request = <A = any>(child: ChildProcess, message: { type: string; [key: string]: unknown }, reply: string, millis?: number) => {
  const answer = nextReply<A>(child, reply, millis)
  child.send(message)
  return answer
}

export const stop = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
    setTimeout(() => child.kill("SIGKILL"), 3_000).unref()
  })

export const machine = () => {
  const model = /model name\s*:\s*(.+)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1] ?? cpus()[0]?.model
  return `${model}, ${cpus().length} cores, Node ${process.version}, ${new Date().toISOString().slice(0, 10)}`
}

export const table = (header: Array<string>, rows: Array<Array<string | number>>) =>
  [
    `| ${header.join(" | ")} |`,
    `| ${header.map(() => "---").join(" | ")} |`,
    ...rows.map((row) => `| ${row.join(" | ")} |`)
  ].join("\n")

export const median = (values: Array<number>) => {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

export const round = (value: number, digits = 2) => Number(value.toFixed(digits))

/** The loopback address a client connects from: clients spread over eight, so a run does not exhaust ephemeral ports. */
export const clientAddress = (index: number) => `127.0.0.${1 + (index % 8)}`
