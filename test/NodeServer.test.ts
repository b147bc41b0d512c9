import * as Http from "node:http"
import * as Net from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import { attach, serve, type Server, WebSocketManager } from "../src/promise/index.js"
import { closeOf, nextMessage, openClient, refusedStatus, withTimeout } from "./utils/index.js"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const started = async (fetch: (request: Request) => Response | Promise<Response>): Promise<Server> => {
  const server = await serve({ port: 0, fetch })
  cleanups.push(() => server.close())
  return server
}

/** Sends raw bytes and resolves with everything the server wrote before closing. */
const rawExchange = (port: number, request: string) =>
  withTimeout(
    new Promise<string>((resolve, reject) => {
      const socket = Net.connect(port, "127.0.0.1", () => socket.write(request))
      let received = ""
      socket.on("data", (chunk) => (received += chunk.toString()))
      socket.on("close", () => resolve(received))
      socket.on("error", reject)
    }),
    5_000,
    "the server to answer and close"
  )

describe("serve", () => {
  it("hands plain requests to fetch as standard Requests and writes the Response", async () => {
    const server = await started(async (request) =>
      Response.json({ method: request.method, path: new URL(request.url).pathname, body: await request.text() }, {
        status: 201,
        headers: { "x-served-by": "fetch" }
      })
    )
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`)
    const response = await fetch(`${server.url}/things`, { method: "POST", body: "payload" })
    expect(response.status).toBe(201)
    expect(response.headers.get("x-served-by")).toBe("fetch")
    expect(await response.json()).toEqual({ method: "POST", path: "/things", body: "payload" })
  })

  it("writes the handler's other response for an upgrade (401, 404) and closes the socket", async () => {
    const server = await started((request) =>
      new Response("who are you?", { status: new URL(request.url).pathname === "/ws" ? 401 : 404 })
    )
    const url = server.url.replace("http", "ws")
    expect(await refusedStatus(`${url}/ws`)).toBe(401)
    expect(await refusedStatus(`${url}/elsewhere`)).toBe(404)
    const answer = await rawExchange(
      server.port,
      "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    expect(answer).toMatch(/^HTTP\/1\.1 401 Unauthorized\r\n/)
    expect(answer).toMatch(/\r\n\r\nwho are you\?$/)
  })

  it("answers a thrown accept error with its status, and a plain request to accept with 426", async () => {
    const manager = new WebSocketManager({ allowedOrigins: ["https://ok.example"] })
    cleanups.push(() => manager.close())
    const server = await started(async (request) => (await manager.accept(request)).response)
    expect(await refusedStatus(server.url.replace("http", "ws"), undefined, { origin: "https://bad.example" })).toBe(403)
    const plain = await fetch(server.url)
    expect(plain.status).toBe(426)
    expect(await plain.text()).toMatch(/upgrade required/i)
  })

  it("survives a malformed handshake: ws answers 400 and the server keeps serving", async () => {
    const manager = new WebSocketManager()
    cleanups.push(() => manager.close())
    const server = await started(async (request) => (await manager.accept(request)).response)
    const answer = await rawExchange(
      server.port,
      "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    expect(answer).toMatch(/^HTTP\/1\.1 400 /)
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
    const ws = await openClient(server.url.replace("http", "ws"))
    ws.terminate()
  })
})

describe("attach", () => {
  it("adds WebSocket upgrades to an existing http.Server, and detaches again", async () => {
    const manager = new WebSocketManager()
    const httpServer = Http.createServer((_req, res) => res.end("express-like"))
    await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve))
    cleanups.push(async () => {
      await manager.close()
      await new Promise((resolve) => httpServer.close(resolve))
    })
    const detach = await attach(httpServer, async (request) => {
      const { response, socket } = await manager.accept(request)
      socket.addEventListener("message", (event) => socket.send(`attached:${event.data}`))
      return response
    })
    const port = (httpServer.address() as Net.AddressInfo).port
    expect(await (await fetch(`http://127.0.0.1:${port}`)).text()).toBe("express-like")
    const ws = await openClient(`ws://127.0.0.1:${port}`)
    ws.send("hi")
    expect(await nextMessage(ws)).toBe("attached:hi")
    const closed = closeOf(ws)
    await manager.close(1001, "bye")
    expect(await closed).toEqual({ code: 1001, reason: "bye" })
    await detach()
    expect(httpServer.listenerCount("upgrade")).toBe(0)
  })
})
