/**
 * The Effect and plain-JavaScript examples, run as their own processes and spoken to over real
 * sockets, so they stay true.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { afterEach, describe, expect, it } from "vitest"
import { nextMessage, nextMessages, openClient, withTimeout } from "./utils/index.js"

const root = fileURLToPath(new URL("..", import.meta.url))
const running: Array<ChildProcess> = []

afterEach(() => {
  for (const child of running.splice(0)) child.kill("SIGTERM")
})

/** Starts an example on a free port and resolves with the URL it prints. */
const start = (args: Array<string>) => {
  const child = spawn(process.execPath, args, {
    cwd: root,
    env: { ...process.env, PORT: "0" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  running.push(child)
  return withTimeout(
    new Promise<string>((resolve) => {
      const onOutput = (chunk: Buffer) => {
        const match = /listening on (http:\/\/\S+)/.exec(chunk.toString())
        if (match) resolve(match[1]!.replace("http", "ws"))
      }
      child.stdout!.on("data", onOutput)
      child.stderr!.on("data", onOutput)
    }),
    // tsx compiles the example on start: seconds on a loaded 2-core machine.
    30_000,
    `${args.at(-1)} to start`
  )
}

describe("examples", () => {
  it("effect-http: the HttpRouter app relays Schema-checked messages and answers bad ones", async () => {
    const url = await start(["--import", "tsx", "examples/effect-http/server.ts"])
    const [ann, bob] = [await openClient(`${url}/ws?user=ann`), await openClient(`${url}/ws?user=bob`)]
    const bobHeard = nextMessage(bob)
    // Ann hears her own broadcast and the answer to her bad message, in either order.
    const annHeard = nextMessages(ann, 2)
    ann.send(JSON.stringify({ text: "hi bob" }))
    ann.send("not json")
    expect(JSON.parse((await bobHeard).toString())).toEqual({ from: "ann", text: "hi bob" })
    const annMessages = (await annHeard).map((message) => JSON.parse(message.toString()))
    expect(annMessages).toContainEqual({ from: "ann", text: "hi bob" })
    expect(annMessages).toContainEqual({ error: "expected {\"text\": string}" })
    const health = await fetch(`${url.replace("ws", "http")}/health`).then((response) => response.json())
    expect(health).toEqual({ online: 2 })
    ann.terminate()
    bob.terminate()
  })

  it("attach: plain JavaScript on an existing http.Server, from the built package", async () => {
    const url = await start(["examples/attach/server.mjs"])
    const plain = await fetch(url.replace("ws", "http")).then((response) => response.text())
    expect(plain).toBe("an ordinary HTTP app\n")
    const ws = await openClient(url)
    ws.send("hello")
    expect(await nextMessage(ws)).toBe("echo: hello")
    ws.terminate()
  })
})
