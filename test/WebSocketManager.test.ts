import { EventEmitter } from "node:events"
import { afterEach, describe, expect, it } from "vitest"
import WebSocket from "ws"
import type { AcceptResult } from "../src/promise/index.js"
import { WebSocketManager } from "../src/promise/index.js"
import type { Harness } from "./utils/index.js"
import {
  closeOf,
  eventually,
  nextMessage,
  nextMessages,
  openClient,
  openClients,
  refusedStatus,
  sleep,
  startManager
} from "./utils/index.js"

const harnesses: Array<Harness> = []
const clients: Array<WebSocket> = []

const start = async (...args: Parameters<typeof startManager>) => {
  const harness = await startManager(...args)
  harnesses.push(harness)
  return harness
}

const client = async (...args: Parameters<typeof openClient>) => {
  const ws = await openClient(...args)
  clients.push(ws)
  return ws
}

const echo = ({ socket }: AcceptResult) => {
  socket.addEventListener("message", (event) => socket.send(`echo:${event.data}`))
}

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate()
  for (const harness of harnesses.splice(0)) await harness.close()
})

describe("accept", () => {
  it("resolves to an open socket, a 101 response and the connection context", async () => {
    let accepted: AcceptResult | undefined
    const { manager, url } = await start({}, (result) => {
      accepted = result
      echo(result)
    })
    const ws = await client(`${url}/room?x=1`, undefined, { headers: { "x-trace": "abc" } })
    expect(await (ws.send("hi"), nextMessage(ws))).toBe("echo:hi")
    expect(accepted!.response.status).toBe(101)
    expect(accepted!.socket.readyState).toBe(WebSocket.OPEN)
    const { context } = accepted!
    expect(context.id).toMatch(/^[0-9a-f-]{36}$/)
    expect(context.url).toMatch(/\/room\?x=1$/)
    expect(context.remoteAddress).toContain("127.0.0.1")
    expect(context.headers["x-trace"]).toBe("abc")
    expect(context.connectedAt).toBeInstanceOf(Date)
    expect(context.protocol).toBe("")
    expect(context.userId).toBeUndefined()
    expect(manager.getActiveConnections()).toBe(1)
  })

  it("rejects a request that is not an upgrade with UpgradeRequired (HTTP 426)", async () => {
    const manager = new WebSocketManager()
    const error = await manager.accept(new Request("http://127.0.0.1/ws")).catch((e) => e)
    expect(error._tag).toBe("UpgradeRequired")
    expect(error.status).toBe(426)
    await manager.close()
  })

  it("refuses an upgrade past maxConnections with 503 and ConnectionLimitExceeded", async () => {
    const { errors, manager, url } = await start({ maxConnections: 2 })
    clients.push(...(await openClients(url, 2)))
    expect(await refusedStatus(url)).toBe(503)
    expect(errors).toHaveLength(1)
    expect(errors[0]).toMatchObject({ _tag: "ConnectionLimitExceeded", scope: "total", limit: 2 })
    expect(manager.getActiveConnections()).toBe(2)
    // A slot that frees up can be taken again.
    clients.pop()!.close()
    await eventually(() => manager.getActiveConnections() === 1)
    await client(url)
  })

  it("limits connections per remote address", async () => {
    const { url } = await start({ maxConnectionsPerIP: 2 })
    clients.push(...(await openClients(url, 2)))
    expect(await refusedStatus(url)).toBe(503)
    // Another loopback address has its own allowance.
    await client(url, undefined, { localAddress: "127.0.0.2" })
  })

  it("limits connections per user", async () => {
    const { manager, url } = await start({
      maxConnectionsPerUser: 2,
      authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") }
    })
    await client(`${url}/?user=ann`)
    await client(`${url}/?user=ann`)
    expect(await refusedStatus(`${url}/?user=ann`)).toBe(503)
    await client(`${url}/?user=bob`)
    expect(manager.getUserSockets("ann")).toHaveLength(2)
    expect(manager.getUserSockets("bob")).toHaveLength(1)
  })

  it("refuses an Origin outside allowedOrigins with 403", async () => {
    const { url } = await start({ allowedOrigins: ["https://app.example"] })
    expect(await refusedStatus(url, undefined, { origin: "https://evil.example" })).toBe(403)
    await client(url, undefined, { origin: "https://app.example" })
    // Non-browser clients send no Origin and cannot be hijacked cross-site.
    await client(url)
  })

  it("fails with ConnectionTimeout (HTTP 408) when authentication outlasts connectionTimeout", async () => {
    const { errors, manager, url } = await start({
      connectionTimeout: 100,
      authentication: { timeout: 5_000, validator: () => sleep(1_000).then(() => ({ id: "late" })) }
    })
    const started = Date.now()
    expect(await refusedStatus(url)).toBe(408)
    expect(Date.now() - started).toBeLessThan(900)
    expect(errors[0]).toMatchObject({ _tag: "ConnectionTimeout", timeoutMillis: 100 })
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
  })
})

describe("subprotocols", () => {
  it("picks the first client-offered protocol the server supports", async () => {
    let protocol: string | undefined
    const { url } = await start({ protocols: ["chat.v2", "chat.v1"] }, ({ context }) => {
      protocol = context.protocol
    })
    const ws = await client(url, ["chat.v1", "chat.v2"])
    expect(ws.protocol).toBe("chat.v1")
    expect(protocol).toBe("chat.v1")
  })

  it("refuses a client that offers only unsupported protocols with 400", async () => {
    const { url } = await start({ protocols: ["chat.v2"] })
    expect(await refusedStatus(url, ["mqtt"])).toBe(400)
  })

  it("lets accept insist on a protocol", async () => {
    const { url } = await start({ protocols: ["a", "b"] }, undefined, () => ({ protocol: "b" }))
    expect((await client(url, ["a", "b"])).protocol).toBe("b")
    expect(await refusedStatus(url, ["a"])).toBe(400)
  })
})

describe("compression", () => {
  it("is off by default", async () => {
    const { url } = await start()
    expect((await client(url)).extensions).toBe("")
  })

  it("negotiates permessage-deflate when enabled, and compressed sockets still get broadcasts", async () => {
    let extensions = ""
    const { manager, url } = await start({ compression: { enabled: true, threshold: 0 } }, ({ context }) => {
      extensions = context.extensions
    })
    const ws = await client(url)
    expect(ws.extensions).toContain("permessage-deflate")
    expect(extensions).toContain("permessage-deflate")
    const text = "x".repeat(2_000)
    const received = nextMessage(ws)
    expect(await manager.broadcast(text)).toBe(1)
    expect(await received).toBe(text)
  })
})

describe("maxPayload", () => {
  it("closes only the connection that sent an oversized frame, with 1009", async () => {
    const { manager, url } = await start({ maxPayload: 1024 }, echo)
    const [big, small] = await Promise.all([client(url), client(url)])
    const closed = closeOf(big)
    big.send(Buffer.alloc(2048))
    expect((await closed).code).toBe(1009)
    small.send("still here")
    expect(await nextMessage(small)).toBe("echo:still here")
    await eventually(() => manager.getActiveConnections() === 1)
  })
})

describe("broadcast", () => {
  it("sends objects as JSON, strings as text, binary as binary, and resolves with the count reached", async () => {
    const { manager, url } = await start()
    const [a, b] = await Promise.all([client(url), client(url)])
    const received = Promise.all([nextMessages(a, 3), nextMessages(b, 3)])
    expect(await manager.broadcast({ type: "announcement", message: "Hello!" })).toBe(2)
    expect(await manager.broadcast("plain")).toBe(2)
    expect(await manager.broadcast(Buffer.from([1, 2, 3]))).toBe(2)
    for (const messages of await received) {
      expect(messages[0]).toBe(JSON.stringify({ type: "announcement", message: "Hello!" }))
      expect(messages[1]).toBe("plain")
      expect(messages[2]).toEqual(Buffer.from([1, 2, 3]))
    }
  })

  it("applies the filter and counts only the connections kept", async () => {
    const { manager, url } = await start({
      authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") }
    })
    const [ann, bob] = await Promise.all([client(`${url}/?user=ann`), client(`${url}/?user=bob`)])
    const annGot = nextMessage(ann)
    expect(await manager.broadcast("for ann", (_socket, context) => context.userId === "ann")).toBe(1)
    expect(await annGot).toBe("for ann")
    const bobGot = nextMessage(bob, 300).catch(() => "nothing")
    expect(await bobGot).toBe("nothing")
    // The documented filter receives the socket itself.
    const [annSocket] = manager.getUserSockets("ann")
    expect(await manager.broadcast("not ann", (socket) => socket !== annSocket)).toBe(1)
  })

  it("skips sockets that closed meanwhile, and refuses an unencodable message before sending anything", async () => {
    const { manager, url } = await start()
    const [a, b] = await Promise.all([client(url), client(url)])
    // Anonymous connections are not in the user index.
    expect(manager.getUserSockets("")).toEqual([])
    a.terminate()
    await eventually(() => manager.getActiveConnections() === 1)
    expect(await manager.broadcast("x")).toBe(1)
    const circular: Record<string, unknown> = {}
    circular.self = circular
    await expect(manager.broadcast(circular)).rejects.toMatchObject({ _tag: "MessageEncodeError" })
    await expect(manager.broadcast({ n: 1n })).rejects.toMatchObject({ _tag: "MessageEncodeError" })
    expect(b.readyState).toBe(WebSocket.OPEN)
  })
})

describe("close", () => {
  it("sends every client its code and reason after the messages already queued, then resolves", async () => {
    const { manager, url } = await start()
    const sockets = await Promise.all([client(url), client(url), client(url)])
    const received = sockets.map((ws) => nextMessages(ws, 200))
    const closes = sockets.map((ws) => closeOf(ws))
    for (let i = 0; i < 200; i++) await manager.broadcast({ i, pad: "y".repeat(500) })
    await manager.close(4000, "Server shutdown")
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
    for (const messages of await Promise.all(received)) {
      expect(messages.map((m) => JSON.parse(m as string).i)).toEqual(Array.from({ length: 200 }, (_, i) => i))
    }
    for (const close of await Promise.all(closes)) expect(close).toEqual({ code: 4000, reason: "Server shutdown" })
  })

  it("refuses new upgrades with 503 once closing", async () => {
    const { manager, url } = await start()
    await manager.close()
    expect(await refusedStatus(url)).toBe(503)
  })

  it("cuts connections that do not finish the close handshake within closeTimeout", async () => {
    const { manager, url } = await start({ closeTimeout: 200 })
    const ws = await client(url)
    // A client that stops reading never answers the close frame.
    ;(ws as any)._socket.pause()
    const started = Date.now()
    await manager.close(1001, "bye")
    expect(Date.now() - started).toBeLessThan(2_000)
    expect(manager.getStats().fibers).toBe(0)
  })
})

describe("supervision", () => {
  it("closes only the connection whose message listener throws, with 1011", async () => {
    const { manager, url } = await start({}, ({ socket }) => {
      socket.addEventListener("message", (event) => {
        if (event.data === "boom") throw new Error("handler bug")
        socket.send(`ok:${event.data}`)
      })
    })
    const [bad, good] = await Promise.all([client(url), client(url)])
    const closed = closeOf(bad)
    bad.send("boom")
    expect((await closed).code).toBe(1011)
    good.send("fine")
    expect(await nextMessage(good)).toBe("ok:fine")
    await eventually(() => manager.getActiveConnections() === 1)
  })

  it("returns every fiber and count to zero after many connections come and go", async () => {
    // The heartbeat runs, with a timeout a loaded machine cannot miss: the test counts, it does not cut.
    const { manager, url } = await start({
      heartbeatInterval: 6_000,
      heartbeatTimeout: 5_000,
      authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") }
    })
    const sockets = await Promise.all(Array.from({ length: 300 }, (_, i) => openClient(`${url}/?user=u${i % 7}`)))
    expect(manager.getStats()).toEqual({ connections: 300, pending: 0, fibers: 300 })
    expect(manager.getUserSockets("u0").length).toBe(43)
    sockets.slice(0, 150).forEach((ws) => ws.close())
    sockets.slice(150).forEach((ws) => ws.terminate())
    await eventually(() => manager.getStats().fibers === 0, 5_000, "all fibers to end")
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
    expect(manager.getUserSockets("u0")).toEqual([])
  })
})

describe("counts", () => {
  it("no longer count a connection by the time its close listeners run, as ws's client set does", async () => {
    const seen: Array<number> = []
    const { manager, url } = await start({}, ({ socket }) => {
      socket.addEventListener("close", () => seen.push(manager.getActiveConnections()))
    })
    const [a] = await Promise.all([client(url), client(url)])
    a.close()
    await eventually(() => seen.length === 1)
    expect(seen).toEqual([1])
  })
})

describe("options", () => {
  it("fails construction with InvalidOptions naming the field", () => {
    expect(() => new WebSocketManager({ heartbeatTimeout: -5 })).toThrow(/heartbeatTimeout/)
    try {
      new WebSocketManager({ authentication: { type: "oauth" as any, validator: () => true } })
      expect.unreachable()
    } catch (error: any) {
      expect(error._tag).toBe("InvalidOptions")
      expect(error.field).toBe("authentication.type")
    }
    expect(() => new WebSocketManager({ maxConection: 3 } as any)).toThrow(/maxConection/)
    expect(() => new WebSocketManager({ heartbeatInterval: 1_000, heartbeatTimeout: 2_000 })).toThrow(
      /heartbeatTimeout/
    )
    expect(() => new WebSocketManager({ authentication: { type: "jwt" } })).toThrow(/authentication\.secret/)
  })
})

describe("close validation", () => {
  const invalidCodes = [999, 1004, 1005, 1006, 1015, 2999, 5000, 1000.5, Number.NaN]

  it("rejects a code ws refuses or a reason over 123 bytes with InvalidClose, and changes nothing", async () => {
    const { errors, manager, url } = await start({}, echo)
    const ws = await client(url)
    for (const code of invalidCodes) {
      await expect(manager.close(code, "bye")).rejects.toMatchObject({ _tag: "InvalidClose", reason: "InvalidCode" })
    }
    // 124 UTF-8 bytes in 62 characters: the limit is on bytes.
    await expect(manager.close(1000, "é".repeat(62))).rejects.toMatchObject({
      _tag: "InvalidClose",
      reason: "ReasonTooLong"
    })
    // Nothing changed: the connection is open and the manager still accepts.
    ws.send("still")
    expect(await nextMessage(ws)).toBe("echo:still")
    await client(url)
    expect(errors).toEqual([])
    expect(manager.getStats()).toEqual({ connections: 2, pending: 0, fibers: 2 })
    // 123 bytes exactly is allowed, and so are the private-use codes.
    const closed = closeOf(ws)
    await manager.close(4999, `x${"é".repeat(61)}`)
    expect(await closed).toEqual({ code: 4999, reason: `x${"é".repeat(61)}` })
  })
})

describe("async listeners", () => {
  it("close only the connection whose async listener rejects, with 1011, and no rejection goes unhandled", async () => {
    const unhandled: Array<unknown> = []
    const probe = (reason: unknown) => unhandled.push(reason)
    process.on("unhandledRejection", probe)
    try {
      const forms = ["addEventListener", "on", "onmessage"] as const
      const sockets: Array<WebSocket> = []
      const { manager, url } = await start({}, ({ socket }, request) => {
        sockets.push(socket)
        const listener = async (data: unknown) => {
          await sleep(1)
          if (String(data) === "boom") throw new Error("async listener bug")
          socket.send(`ok:${data}`)
        }
        const form = new URL(request.url).searchParams.get("form")
        if (form === "addEventListener") socket.addEventListener("message", (event) => listener(event.data))
        else if (form === "on") socket.on("message", (data) => listener(data))
        else socket.onmessage = (event) => listener(event.data)
      })
      const good = await client(`${url}/?form=on`)
      for (const form of forms) {
        const bad = await client(`${url}/?form=${form}`)
        const closed = closeOf(bad)
        bad.send("boom")
        expect((await closed).code).toBe(1011)
        const socket = sockets.at(-1)!
        await eventually(() => manager.getCloseInfo(socket) !== undefined)
        const info = manager.getCloseInfo(socket)
        expect(info).toMatchObject({ code: 1011, end: "handler-failed", error: { _tag: "HandlerFailed" } })
        expect((info!.error as any).cause.message).toBe("async listener bug")
      }
      good.send("fine")
      expect(await nextMessage(good)).toBe("ok:fine")
      await eventually(() => manager.getActiveConnections() === 1)
      await sleep(50)
      expect(unhandled).toEqual([])
      // The managed sockets opted in to captureRejections for themselves only.
      expect(EventEmitter.captureRejections).toBe(false)
    } finally {
      process.off("unhandledRejection", probe)
    }
  })

  it("keep the listener identities of addEventListener, removeEventListener and the on-attributes", async () => {
    let socket: WebSocket | undefined
    const { url } = await start({}, (accepted) => {
      socket = accepted.socket
    })
    const ws = await client(url)
    const seen: Array<string> = []
    const listener = (event: WebSocket.MessageEvent) => seen.push(`listener:${event.data}`)
    const attribute = (event: WebSocket.MessageEvent) => seen.push(`attribute:${event.data}`)
    socket!.addEventListener("message", listener)
    socket!.addEventListener("message", listener)
    socket!.onmessage = attribute
    expect(socket!.onmessage).toBe(attribute)
    ws.send("a")
    await eventually(() => seen.length === 2)
    socket!.removeEventListener("message", listener)
    socket!.onmessage = null
    expect(socket!.onmessage).toBe(null)
    socket!.addEventListener("message", { handleEvent: (event: WebSocket.MessageEvent) => seen.push(`object:${event.data}`) })
    ws.send("b")
    await eventually(() => seen.length === 3)
    expect(seen).toEqual(["listener:a", "attribute:a", "object:b"])
  })
})

describe("connection ends", () => {
  it("tell how each connection ended: normal, connection-lost, protocol-error, server-shutdown", async () => {
    const sockets: Array<WebSocket> = []
    const errors: Array<Error> = []
    const { manager, url } = await start({ maxPayload: 16 }, ({ socket }) => {
      sockets.push(socket)
      socket.on("error", (error) => errors.push(error))
    })
    const [normal, lost, oversized, shutdown] = [await client(url), await client(url), await client(url), await client(url)]
    normal.close(4001, "done")
    lost.terminate()
    oversized.send("x".repeat(64))
    await eventually(() => manager.getActiveConnections() === 1)
    const closed = closeOf(shutdown)
    await manager.close(4002, "maintenance")
    expect((await closed).code).toBe(4002)
    const ends = sockets.map((socket) => manager.getCloseInfo(socket))
    expect(ends[0]).toEqual({ code: 4001, reason: "done", end: "normal", error: undefined })
    expect(ends[1]).toMatchObject({ code: 1006, end: "connection-lost", error: undefined })
    // ws stops reading after a protocol error, so its 'close' reports 1006 though it sent 1009.
    expect(ends[2]).toMatchObject({ end: "protocol-error", error: { code: "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH" } })
    // A user's own 'error' listener still gets the error.
    expect(errors).toEqual([ends[2]!.error])
    expect(ends[3]).toEqual({ code: 4002, reason: "maintenance", end: "server-shutdown", error: undefined })
    expect(manager.getCloseInfo({} as WebSocket)).toBeUndefined()
  })

  it("are already known to the socket's own close listeners", async () => {
    const seen: Array<unknown> = []
    const { manager, url } = await start({}, ({ socket }) => {
      socket.addEventListener("close", () => seen.push(manager.getCloseInfo(socket)?.end))
    })
    const ws = await client(url)
    ws.close()
    await eventually(() => seen.length === 1)
    expect(seen).toEqual(["normal"])
  })
})

describe("slots", () => {
  const churn = async (url: string, manager: WebSocketManager, target = (_i: number) => url) => {
    const pending: Array<number> = []
    for (let round = 0; round < 3; round++) {
      const sockets = [await client(target(0)), await client(target(1))]
      pending.push(manager.getStats().pending)
      sockets.forEach((ws) => ws.close())
      await eventually(() => manager.getActiveConnections() === 0, 5_000, "the slots to come back")
      pending.push(manager.getStats().pending)
    }
    expect(pending.every((count) => count === 0)).toBe(true)
  }

  it("are given back per remote address when connections close", async () => {
    const { manager, url } = await start({ maxConnectionsPerIP: 2 })
    await churn(url, manager)
    await client(url)
    await client(url)
    expect(await refusedStatus(url)).toBe(503)
  })

  it("are given back per user when connections close", async () => {
    const { manager, url } = await start({
      maxConnectionsPerUser: 2,
      authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") }
    })
    await churn(url, manager, () => `${url}/?user=ann`)
    await client(`${url}/?user=ann`)
    await client(`${url}/?user=ann`)
    expect(await refusedStatus(`${url}/?user=ann`)).toBe(503)
  })

  it("are given back in total when connections close, and refused upgrades take none", async () => {
    const { manager, url } = await start({ maxConnections: 2, authentication: { validator: () => false } })
    expect(await refusedStatus(url)).toBe(401)
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
    const open = await start({ maxConnections: 2 })
    await churn(open.url, open.manager)
  })
})
