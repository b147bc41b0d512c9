/**
 * The chat example, as a person uses it: the real server process (`npm start`'s entry) and two
 * real headless Chromium pages talking through it.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { fileURLToPath } from "node:url"
import { type Browser, chromium } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { withTimeout } from "./utils/index.js"

const root = fileURLToPath(new URL("..", import.meta.url))
let server: ChildProcess
let browser: Browser
let url: string

beforeAll(async () => {
  server = spawn(process.execPath, ["--import", "tsx", "examples/chat/server.ts"], {
    cwd: root,
    env: { ...process.env, PORT: "0" },
    stdio: ["ignore", "pipe", "inherit"]
  })
  url = await withTimeout(
    new Promise<string>((resolve) => {
      server.stdout!.on("data", (chunk: Buffer) => {
        const match = /chat on (http:\/\/\S+)/.exec(chunk.toString())
        if (match) resolve(match[1]!)
      })
    }),
    15_000,
    "the chat server to start"
  )
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
  })
}, 30_000)

afterAll(async () => {
  await browser?.close()
  server?.kill("SIGTERM")
})

const join = async (name: string) => {
  const page = await browser.newPage()
  await page.goto(url)
  await page.fill("input[name=name]", name)
  await page.click("#join button")
  await page.waitForSelector("#room:not([hidden])")
  return page
}

describe("chat example in a browser", () => {
  it("delivers a message typed in one page to another page", async () => {
    const ann = await join("ann")
    const bob = await join("bob")
    await ann.waitForFunction(() => document.getElementById("log")!.textContent!.includes("bob joined (2 online)"))
    await ann.fill("input[name=text]", "hello from ann")
    await ann.click("#say button")
    await bob.waitForFunction(() => document.getElementById("log")!.textContent!.includes("ann: hello from ann"))
    await bob.close()
    await ann.waitForFunction(() => document.getElementById("log")!.textContent!.includes("bob left (1 online)"))
    expect(await ann.textContent("#status")).toBe("connected as ann")
    // Once joined, the join form is gone.
    expect(await ann.isVisible("#join")).toBe(false)
  })
})
