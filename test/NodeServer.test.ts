import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Cause, Effect, Either, Exit, Logger, Metric, Option, Scope } from "effect"
import * as Http from "node:http"
import type * as Net from "node:net"
import { afterEach, describe, expect, it, vi } from "vitest"
import { NodeServer } from "../src/index.js"
import { checkUpgrade } from "../src/internal/handshake.js"
import { attach, serve, type Server, WebSocketManager } from "../src/promise/index.js"
import {
  closeOf,
  eventually,
  nextMessage,
  openClient,
  type RawAnswer,
  rawRequest,
  refusedStatus,
  sleep,
  upgradeHead
} from "./utils/index.js"

const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const started = async (fetch: (request: Request) => Response | Promise<Response>): Promise<Server> => {
  const server = await serve({ port: 0, fetch })
  cleanups.push(() => server.close())
  return server
}

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
    const { text: answer } = await rawRequest(
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
    const { text: answer } = await rawRequest(
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

// ---------------------------------------------------------------------------------------------
// Requests the adapter cannot represent as a fetch `Request`: refused with 400 before any app.
// ---------------------------------------------------------------------------------------------

const KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="
const upgradeLines = `Upgrade: websocket\r\nConnection: Upgrade\r\n${KEY}\r\nSec-WebSocket-Version: 13\r\n`

/** Upgrade heads Node's parser accepts and a fetch `Request` cannot carry faithfully. */
const badUpgrades: ReadonlyArray<readonly [string, string]> = [
  ["credentials in Host", `GET / HTTP/1.1\r\nHost: a:b@x\r\n${upgradeLines}\r\n`],
  ["credentials in an absolute target", `GET http://u:p@x/ HTTP/1.1\r\nHost: x\r\n${upgradeLines}\r\n`],
  ["the TRACE method", `TRACE / HTTP/1.1\r\nHost: x\r\n${upgradeLines}\r\n`],
  ["a Host with a path", `GET / HTTP/1.1\r\nHost: x/evil\r\n${upgradeLines}\r\n`],
  ["a Host with a space", `GET / HTTP/1.1\r\nHost: a b\r\n${upgradeLines}\r\n`],
  ["an unclosed IPv6 Host", `GET / HTTP/1.1\r\nHost: [::1\r\n${upgradeLines}\r\n`],
  ["a Host port out of range", `GET / HTTP/1.1\r\nHost: x:99999\r\n${upgradeLines}\r\n`],
  ["two Host headers", `GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n${upgradeLines}\r\n`],
  ["no Host in HTTP/1.1", `GET / HTTP/1.1\r\n${upgradeLines}\r\n`],
  ["an empty Host", `GET / HTTP/1.1\r\nHost:\r\n${upgradeLines}\r\n`],
  ["the asterisk target", `GET * HTTP/1.1\r\nHost: x\r\n${upgradeLines}\r\n`],
  ["a target read as another host", `GET //evil.example/x HTTP/1.1\r\nHost: x\r\n${upgradeLines}\r\n`],
  ["an absolute target with a bad port", `GET http://x:99999/ HTTP/1.1\r\nHost: x\r\n${upgradeLines}\r\n`],
  ["an absolute target of another scheme", `GET ftp://x/ HTTP/1.1\r\nHost: x\r\n${upgradeLines}\r\n`]
]

/** The same defects on plain requests, which go through @effect/platform-node's handler. */
const badPlainRequests: ReadonlyArray<readonly [string, string]> = [
  ["credentials in Host", "GET / HTTP/1.1\r\nHost: a:b@x\r\n\r\n"],
  ["credentials in an absolute target", "GET http://u:p@x/ HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["a user name in an absolute target", "GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["a password in an absolute target", "GET http://:p@x/ HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["the TRACE method", "TRACE / HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["a Host with a query", "GET / HTTP/1.1\r\nHost: x?y\r\n\r\n"],
  ["an invalid Host", "GET / HTTP/1.1\r\nHost: x%zz\r\n\r\n"],
  ["two Host headers", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"],
  ["a target read as another host", "GET //evil.example/x HTTP/1.1\r\nHost: x\r\n\r\n"],
  ["an absolute target with a bad port", "GET http://x:99999/ HTTP/1.1\r\nHost: x\r\n\r\n"]
]

const expectRefused = (answer: RawAnswer, status = 400) => {
  expect(answer.text.split("\r\n")[0]).toBe(`HTTP/1.1 ${status} ${Http.STATUS_CODES[status]}`)
  expect(answer.closedByServer).toBe(true)
}

const statusLineOf = (answer: RawAnswer) => answer.text.split("\r\n")[0]

const badRequestsMetric = () => Effect.runSync(Metric.value(NodeServer.metrics.badRequests)).count

describe("requests the adapter cannot represent", () => {
  it("answers an upgrade that cannot become a Request with 400, closes it, counts it, and never calls fetch", async () => {
    let calls = 0
    const manager = new WebSocketManager()
    cleanups.push(() => manager.close())
    const server = await started(async (request) => {
      calls++
      return (await manager.accept(request)).response
    })
    const before = badRequestsMetric()
    expect((await rawRequest(server.port, badUpgrades[0]![1])).text).toBe(
      "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 11\r\n\r\nBad Request"
    )
    for (const [what, head] of badUpgrades) {
      const answer = await rawRequest(server.port, head)
      expect(answer.text.split("\r\n")[0], what).toBe("HTTP/1.1 400 Bad Request")
      expect(answer.closedByServer, what).toBe(true)
    }
    expect(calls).toBe(0)
    expect(server.getStats().badRequests).toBe(badUpgrades.length + 1)
    expect(badRequestsMetric() - before).toBe(badUpgrades.length + 1)
    const ws = await openClient(server.url.replace("http", "ws"))
    expect(calls).toBe(1)
    ws.terminate()
  })

  it("answers a plain request that cannot become a Request with 400 and closes it, never calling fetch", async () => {
    let calls = 0
    const server = await started(() => {
      calls++
      return new Response("fine")
    })
    const first = await rawRequest(server.port, badPlainRequests[0]![1])
    expect(first.text).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/)
    expect(first.text).toMatch(/\r\nconnection: close\r\n/i)
    expect(first.text).toMatch(/\r\ncontent-type: text\/plain; charset=utf-8\r\n/i)
    expect(first.text).toMatch(/\r\n\r\nBad Request$/)
    for (const [what, head] of badPlainRequests) {
      const answer = await rawRequest(server.port, head)
      expect(answer.text.split("\r\n")[0], what).toBe("HTTP/1.1 400 Bad Request")
      expect(answer.closedByServer, what).toBe(true)
    }
    expect(calls).toBe(0)
    expect(server.getStats().badRequests).toBe(badPlainRequests.length + 1)
    expect(await (await fetch(server.url)).text()).toBe("fine")
  })

  it("counts the requests Node's parser refuses, and answers headers too large with 431", async () => {
    const server = await started(() => new Response("fine"))
    expectRefused(await rawRequest(server.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n"))
    expectRefused(await rawRequest(server.port, `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`), 431)
    expectRefused(await rawRequest(server.port, upgradeHead("/", [`X-Big: ${"a".repeat(20_000)}`])), 431)
    expect(server.getStats()).toEqual({ badRequests: 3, requestTimeouts: 0 })
    expect(await (await fetch(server.url)).text()).toBe("fine")
  })

  it("serves HTTP/1.0 without a Host as localhost, and a valid absolute-form target as its own URL", async () => {
    const urls: Array<string> = []
    const server = await started((request) => {
      urls.push(request.url)
      return new Response("fine")
    })
    expect(statusLineOf(await rawRequest(server.port, "GET /old?q=1 HTTP/1.0\r\n\r\n"))).toBe("HTTP/1.1 200 OK")
    expect(statusLineOf(await rawRequest(server.port, "GET http://other.example:8080/abs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")))
      .toBe("HTTP/1.1 200 OK")
    expect(statusLineOf(await rawRequest(server.port, "GET /p HTTP/1.1\r\nhOsT: [::1]:81\r\nConnection: close\r\n\r\n")))
      .toBe("HTTP/1.1 200 OK")
    // Headers whose names contain "host" are not a second Host.
    expect(statusLineOf(await rawRequest(server.port, "GET /h HTTP/1.1\r\nX-Forwarded-Host: y\r\nHost: x\r\nHostname: z\r\nConnection: close\r\n\r\n")))
      .toBe("HTTP/1.1 200 OK")
    expect(urls).toEqual(["http://localhost/old?q=1", "http://other.example:8080/abs", "http://[::1]:81/p", "http://x/h"])
  })

  it("does not count a client that goes away mid-request as a bad request", async () => {
    const server = await started(() => new Response("fine"))
    const answer = await rawRequest(server.port, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab", 500)
    expect(answer.closedByServer).toBe(false)
    await sleep(100)
    expect(server.getStats()).toEqual({ badRequests: 0, requestTimeouts: 0 })
  })

  it("leaves no connection behind after hundreds of them", async () => {
    const manager = new WebSocketManager()
    cleanups.push(() => manager.close())
    const server = await started(async (request) => (await manager.accept(request)).response)
    const all = [...badUpgrades, ...badPlainRequests].map(([, head]) => head)
    const rounds = 300
    for (let i = 0; i < rounds; i += 10) {
      const answers = await Promise.all(Array.from({ length: 10 }, (_, j) => rawRequest(server.port, all[(i + j) % all.length]!)))
      for (const answer of answers) expectRefused(answer)
    }
    expect(server.getStats().badRequests).toBe(rounds)
    const open = () => new Promise<number>((resolve) => server.server.getConnections((_, count) => resolve(count)))
    let count = -1
    await eventually(() => {
      void open().then((n) => (count = n))
      return count === 0
    }, 5_000, "every refused connection to be gone")
    const ws = await openClient(server.url.replace("http", "ws"))
    ws.terminate()
  })

  it("fromFetch answers 400 when the request cannot become a Request on another server", async () => {
    let calls = 0
    const app = NodeServer.fromFetch(() => {
      calls++
      return new Response("fine")
    })
    const httpServer = Http.createServer()
    const stop = await Effect.runPromise(
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const handler = yield* Scope.extend(NodeHttpServer.makeHandler(app), scope)
        httpServer.on("request", handler)
        return () => Effect.runPromise(Scope.close(scope, Exit.void))
      })
    )
    await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve))
    cleanups.push(async () => {
      await stop()
      await new Promise((resolve) => httpServer.close(resolve))
    })
    const port = (httpServer.address() as Net.AddressInfo).port
    const before = badRequestsMetric()
    const answer = await rawRequest(port, "TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(answer.text.split("\r\n")[0]).toBe("HTTP/1.1 400 Bad Request")
    expect(calls).toBe(0)
    expect(badRequestsMetric() - before).toBe(1)
  })
})

describe("an incomplete upgrade request", () => {
  it("answers `Upgrade: websocket` without `Connection: Upgrade` with 426, not 500", async () => {
    const manager = new WebSocketManager()
    cleanups.push(() => manager.close())
    const server = await started(async (request) => (await manager.accept(request)).response)
    const answer = await rawRequest(
      server.port,
      `GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n${KEY}\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n`
    )
    expect(answer.text.split("\r\n")[0]).toBe("HTTP/1.1 426 Upgrade Required")
  })
})

describe("checkUpgrade", () => {
  const web = (headers: Record<string, string>, method = "GET") => new Request("http://x/", { method, headers })
  it("needs GET, `Upgrade: websocket` and the `upgrade` token in `Connection`, on either kind of request", () => {
    const cases: ReadonlyArray<readonly [Request, string | undefined]> = [
      [web({ upgrade: "websocket", connection: "Upgrade" }), undefined],
      [web({ upgrade: "WebSocket", connection: "keep-alive, upgrade" }), undefined],
      [web({ upgrade: "websocket", connection: "upgrade ,close" }), undefined],
      [web({ upgrade: "websocket" }), "no `Connection: Upgrade` header"],
      [web({ upgrade: "websocket", connection: "keep-alive" }), "no `Connection: Upgrade` header"],
      [web({ upgrade: "websocket", connection: "upgraded" }), "no `Connection: Upgrade` header"],
      [web({ upgrade: "websocket", connection: "no-upgrade" }), "no `Connection: Upgrade` header"],
      [web({ connection: "Upgrade" }), "no `Upgrade: websocket` header"],
      [web({ upgrade: "h2c", connection: "Upgrade" }), "no `Upgrade: websocket` header"],
      [web({ upgrade: "websocket", connection: "Upgrade" }, "POST"), "method POST"]
    ]
    for (const [request, reason] of cases) {
      for (const input of [request, HttpServerRequest.fromWeb(request)]) {
        const result = checkUpgrade(input)
        if (reason === undefined) expect(Either.isRight(result)).toBe(true)
        else expect(Either.getLeft(result).pipe(Option.map((e) => [e._tag, e.reason, e.status]))).toEqual(Option.some(["UpgradeRequired", reason, 426]))
      }
    }
  })
})

describe("headersTimeout", () => {
  it("closes a connection that never finishes its request head (408), and counts it", async () => {
    const server = await serve({ port: 0, headersTimeout: 300, fetch: () => new Response("fine") })
    cleanups.push(() => server.close())
    const [half, silent] = await Promise.all([
      rawRequest(server.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", 300 + 3_000),
      rawRequest(server.port, "", 300 + 3_000)
    ])
    expectRefused(half, 408)
    expect(silent.closedByServer).toBe(true)
    expect(server.getStats().requestTimeouts).toBe(2)
    expect(await (await fetch(server.url)).text()).toBe("fine")
  })

  it("does not cut an upgrade whose accept outlasts it, nor the open connection", async () => {
    const manager = new WebSocketManager()
    cleanups.push(() => manager.close())
    const server = await serve({
      port: 0,
      headersTimeout: 300,
      fetch: async (request) => {
        await sleep(800)
        const { response, socket } = await manager.accept(request)
        socket.on("message", (data) => socket.send(`echo:${data}`))
        return response
      }
    })
    cleanups.push(() => server.close())
    const ws = await openClient(server.url.replace("http", "ws"))
    await sleep(1_000)
    ws.send("still here")
    expect(await nextMessage(ws)).toBe("echo:still here")
    ws.terminate()
    expect(server.getStats().requestTimeouts).toBe(0)
  })

  it("does not cut a plain request whose handler outlasts it", async () => {
    const server = await serve({
      port: 0,
      headersTimeout: 300,
      fetch: async () => {
        await sleep(800)
        return new Response("slow but fine")
      }
    })
    cleanups.push(() => server.close())
    expect(await (await fetch(server.url)).text()).toBe("slow but fine")
    expect(server.getStats().requestTimeouts).toBe(0)
  })

  it("defaults to 10 s, and refuses a timeout that is not a positive integer", async () => {
    const server = await started(() => new Response("fine"))
    expect(server.server.headersTimeout).toBe(10_000)
    for (const headersTimeout of [0, -1, 1.5, Number.NaN]) {
      await expect(serve({ port: 0, headersTimeout, fetch: () => new Response("") })).rejects.toMatchObject({
        _tag: "InvalidOptions",
        field: "headersTimeout"
      })
    }
  })
})

describe("a bug in the fetch handler", () => {
  it("is logged with its cause before the 500 (Promise facade: effect's default logger)", async () => {
    const logged: Array<string> = []
    const spy = vi.spyOn(console, "log").mockImplementation((...args: Array<unknown>) => {
      logged.push(args.map(String).join(" "))
    })
    try {
      const server = await started(() => {
        throw new Error("handler bug 1234")
      })
      const response = await fetch(server.url)
      expect(response.status).toBe(500)
      expect(await response.text()).not.toMatch(/1234/)
      await eventually(() => logged.some((line) => /level=ERROR/.test(line) && /handler bug 1234/.test(line)))
    } finally {
      spy.mockRestore()
    }
  })
})

describe("NodeServer (Effect API)", () => {
  it("counts refused requests on the server value and in the metric", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const server = yield* NodeServer.serve(NodeServer.fromFetch(() => new Response("fine")))
      const before = badRequestsMetric()
      const answer = yield* Effect.promise(() => rawRequest(server.port, badUpgrades[0]![1]))
      expectRefused(answer)
      expect(yield* server.stats).toEqual({ badRequests: 1, requestTimeouts: 0 })
      expect(badRequestsMetric() - before).toBe(1)
    }))))

  it("logs a bug in the fetch handler with its cause, through the app's logger", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const logged: Array<{ level: string; message: unknown; cause: string }> = []
      const capture = Logger.make(({ cause, logLevel, message }) => {
        logged.push({ level: logLevel.label, message, cause: Cause.pretty(cause) })
      })
      const server = yield* NodeServer.serve(NodeServer.fromFetch(() => {
        throw new Error("handler bug 5678")
      })).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)))
      const response = yield* Effect.promise(() => fetch(server.url))
      expect(response.status).toBe(500)
      yield* Effect.promise(() => eventually(() => logged.length > 0))
      expect(logged[0]!.level).toBe("ERROR")
      expect(logged[0]!.cause).toMatch(/handler bug 5678/)
    }))))

  it("logs an Effect app that dies on an upgrade, not one that refuses it with a status", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const logged: Array<string> = []
      const capture = Logger.make(({ cause }) => {
        logged.push(Cause.pretty(cause))
      })
      const app = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        new URL(request.url, "http://x").pathname === "/die"
          ? Effect.die(new Error("app bug 9012"))
          : Effect.succeed(HttpServerResponse.text("go away", { status: 403 })))
      const server = yield* NodeServer.serve(app).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)))
      const ws = server.url.replace("http", "ws")
      expect(yield* Effect.promise(() => refusedStatus(`${ws}/refuse`))).toBe(403)
      expect(yield* Effect.promise(() => refusedStatus(`${ws}/die`))).toBe(500)
      yield* Effect.promise(() => eventually(() => logged.length > 0))
      expect(logged).toHaveLength(1)
      expect(logged[0]).toMatch(/app bug 9012/)
    }))))

  it("closing its scope ends the WebSockets it upgraded with 1001, even while their manager lives on", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const { WebSocketManager: Manager } = yield* Effect.promise(() => import("../src/index.js"))
      const manager = yield* Manager.make()
      const serverScope = yield* Scope.make()
      const server = yield* Scope.extend(
        NodeServer.serve(NodeServer.fromFetch((request) =>
          Effect.runPromise(Effect.map(manager.accept(request), ({ response }) => response))
        )),
        serverScope
      )
      const ws = yield* Effect.promise(() => openClient(server.url.replace("http", "ws")))
      const closed = closeOf(ws)
      // Before the fix this waited for the client to leave: the server kept its upgraded socket.
      yield* Scope.close(serverScope, Exit.void).pipe(Effect.timeoutFail({
        duration: "3 seconds",
        onTimeout: () => new Error("the server's scope did not close with a client connected")
      }))
      expect((yield* Effect.promise(() => closed)).code).toBe(1001)
      yield* Effect.promise(() => eventually(() => Effect.runSync(manager.activeConnections) === 0))
    }))))

  it("takes headersTimeout, and fails with InvalidOptions on a bad one", () =>
    Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const server = yield* NodeServer.serve(NodeServer.fromFetch(() => new Response("fine")), { headersTimeout: 300 })
      const answer = yield* Effect.promise(() => rawRequest(server.port, "GET / HTTP/1.1\r\n", 300 + 3_000))
      expectRefused(answer, 408)
      expect((yield* server.stats).requestTimeouts).toBe(1)
      const error = yield* Effect.flip(NodeServer.serve(NodeServer.fromFetch(() => new Response("")), { headersTimeout: 0 }))
      expect(error._tag).toBe("InvalidOptions")
    }))))
})
