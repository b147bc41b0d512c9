/**
 * Hostile input over raw TCP: malformed upgrades, frames written by hand, and origins. After
 * every attack the server is still up and a bystander connection opened before it still sends
 * and receives.
 */
import fc from "fast-check"
import { Either, Option } from "effect"
import type WebSocket from "ws"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { checkOrigin } from "../src/internal/handshake.js"
import {
  clientFrame,
  type Harness,
  nextMessage,
  openClient,
  rawRequest,
  RawWebSocket,
  refusedStatus,
  startManager,
  upgradeHead
} from "./utils/index.js"

const MAX_PAYLOAD = 1024

let harness: Harness
let bystander: WebSocket
let round = 0

beforeAll(async () => {
  harness = await startManager({ maxPayload: MAX_PAYLOAD }, ({ socket }) => {
    socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }))
  })
  bystander = await openClient(harness.url)
})

afterAll(async () => {
  bystander.terminate()
  await harness.close()
})

const port = () => harness.server.port

/** The bystander, open since before every attack, still sends and receives. */
const bystanderStillWorks = async () => {
  const message = `still here ${++round}`
  bystander.send(message)
  expect(await nextMessage(bystander)).toBe(message)
}

const statusLine = (text: string) => text.split("\r\n")[0]

describe("malformed upgrades", () => {
  afterEach(bystanderStillWorks)

  const withoutLine = (prefix: string, replacement?: string) =>
    upgradeHead("/").split("\r\n").flatMap((line) =>
      line.startsWith(prefix) ? (replacement === undefined ? [] : [replacement]) : [line]
    ).join("\r\n")

  it.each([
    ["a missing Sec-WebSocket-Key", withoutLine("Sec-WebSocket-Key")],
    ["a short Sec-WebSocket-Key", withoutLine("Sec-WebSocket-Key", "Sec-WebSocket-Key: short")],
    ["a Sec-WebSocket-Key that is not base64", withoutLine("Sec-WebSocket-Key", "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==")],
    ["a missing Sec-WebSocket-Version", withoutLine("Sec-WebSocket-Version")]
  ])("answers %s with 400 and closes", async (_what, head) => {
    const answer = await rawRequest(port(), head)
    expect(statusLine(answer.text)).toBe("HTTP/1.1 400 Bad Request")
    expect(answer.closedByServer).toBe(true)
  })

  it("answers a wrong Sec-WebSocket-Version with 400 naming the supported versions", async () => {
    const answer = await rawRequest(port(), withoutLine("Sec-WebSocket-Version", "Sec-WebSocket-Version: 12"))
    expect(statusLine(answer.text)).toBe("HTTP/1.1 400 Bad Request")
    expect(answer.text).toMatch(/\r\nSec-WebSocket-Version: 13, 8\r\n/)
    expect(answer.closedByServer).toBe(true)
  })

  it("answers an upgrade by POST with 426, by HEAD with 426 and no body, by TRACE with 400", async () => {
    const post = await rawRequest(port(), upgradeHead("/", ["Content-Length: 0"], "POST"))
    expect(statusLine(post.text)).toBe("HTTP/1.1 426 Upgrade Required")
    const head = await rawRequest(port(), upgradeHead("/", [], "HEAD"))
    expect(statusLine(head.text)).toBe("HTTP/1.1 426 Upgrade Required")
    expect(head.text.endsWith("\r\n\r\n")).toBe(true)
    const trace = await rawRequest(port(), upgradeHead("/", [], "TRACE"))
    expect(statusLine(trace.text)).toBe("HTTP/1.1 400 Bad Request")
    expect([post, head, trace].every((answer) => answer.closedByServer)).toBe(true)
  })

  it("answers headers larger than Node's maxHeaderSize with 431 and closes", async () => {
    const answer = await rawRequest(port(), upgradeHead("/", [`X-Padding: ${"p".repeat(32 * 1024)}`]))
    expect(statusLine(answer.text)).toBe("HTTP/1.1 431 Request Header Fields Too Large")
    expect(answer.closedByServer).toBe(true)
  })

  it("reads garbage pipelined after an accepted head as frames, and closes with 1002", async () => {
    const raw = await RawWebSocket.open(port(), "/", [], "GARBAGE\r\n\r\n")
    expect(await raw.closeCode()).toBe(1002)
    raw.destroy()
  })

  it("closes a refused upgrade without reading the garbage pipelined after it", async () => {
    const answer = await rawRequest(port(), withoutLine("Sec-WebSocket-Key") + "GARBAGE\r\n\r\nGET / HTTP/1.1\r\n\r\n")
    expect(statusLine(answer.text)).toBe("HTTP/1.1 400 Bad Request")
    expect(answer.text.match(/HTTP\/1\.1/g)).toHaveLength(1)
    expect(answer.closedByServer).toBe(true)
  })
})

describe("frames written by hand", () => {
  afterEach(bystanderStillWorks)

  const opened: Array<RawWebSocket> = []
  const open = async () => {
    const raw = await RawWebSocket.open(port())
    opened.push(raw)
    return raw
  }
  afterAll(() => {
    for (const raw of opened) raw.destroy()
  })

  it("echoes a well-formed masked frame (the helper speaks the protocol)", async () => {
    const raw = await open()
    raw.write(clientFrame({ opcode: 0x1, payload: "hello" }))
    const frame = await raw.nextFrame()
    expect(frame.opcode).toBe(0x1)
    expect(frame.payload.toString()).toBe("hello")
  })

  it.each([
    ["invalid UTF-8 in a text frame", 1007, clientFrame({ opcode: 0x1, payload: Buffer.from([0x68, 0xff, 0xfe, 0x69]) })],
    ["a payload over maxPayload", 1009, clientFrame({ opcode: 0x2, payload: Buffer.alloc(MAX_PAYLOAD + 1) })],
    ["an unmasked client frame", 1002, clientFrame({ opcode: 0x1, payload: "plain", masked: false })],
    ["the reserved opcode 0x3", 1002, clientFrame({ opcode: 0x3, payload: "x" })],
    ["RSV1 without a negotiated extension", 1002, clientFrame({ opcode: 0x1, payload: "x", rsv: 0b100 })],
    ["RSV3", 1002, clientFrame({ opcode: 0x1, payload: "x", rsv: 0b001 })],
    ["a fragmented control frame", 1002, clientFrame({ opcode: 0x9, payload: "x", fin: false })]
  ])("closes on %s with %i", async (_what, code, frame) => {
    const raw = await open()
    raw.write(frame)
    expect(await raw.closeCode()).toBe(code)
    // Answering the close frame ends the connection.
    raw.write(clientFrame({ opcode: 0x8, payload: Buffer.from([code >> 8, code & 0xff]) }))
    await raw.whenClosed()
  })

  it("bounds a fragmented message never finished: open while under maxPayload, 1009 past it", async () => {
    const raw = await open()
    raw.write(clientFrame({ opcode: 0x1, fin: false, payload: "a".repeat(MAX_PAYLOAD - 10) }))
    // Still open: the bystander round-trip gives the server time to have read the fragment.
    await bystanderStillWorks()
    expect(raw.closed).toBe(false)
    raw.write(clientFrame({ opcode: 0x0, fin: false, payload: "a".repeat(20) }))
    expect(await raw.closeCode()).toBe(1009)
  })
})

describe("a fragmented message never finished, under the heartbeat", () => {
  it("is cut by the heartbeat once the peer stops answering", async () => {
    const quick = await startManager({ heartbeatInterval: 300, heartbeatTimeout: 200 })
    try {
      const raw = await RawWebSocket.open(quick.server.port)
      raw.write(clientFrame({ opcode: 0x1, fin: false, payload: "never finished" }))
      // Pings arrive and go unanswered; the dead peer is cut without a close handshake.
      expect((await raw.nextFrame()).opcode).toBe(0x9)
      await raw.whenClosed(5_000)
      expect(quick.manager.getStats().connections).toBe(0)
    } finally {
      await quick.close()
    }
  })
})

describe("origins (RFC 6454 serialisation)", () => {
  let origins: Harness
  let withNull: Harness
  beforeAll(async () => {
    origins = await startManager({
      allowedOrigins: ["https://App.Example", "http://plain.example:80", "https://slash.example/", "http://[::1]:8080"]
    })
    withNull = await startManager({ allowedOrigins: ["https://app.example", "null"] })
  })
  afterAll(async () => {
    await origins.close()
    await withNull.close()
  })

  it.each([
    "https://app.example",
    "HTTPS://APP.EXAMPLE",
    "https://App.Example:443",
    "http://plain.example",
    "http://plain.example:80",
    "https://slash.example",
    "http://[::1]:8080"
  ])("allows %s", async (origin) => {
    const ws = await openClient(origins.url, undefined, { origin })
    ws.terminate()
  })

  it.each([
    ["another port", "https://app.example:8443"],
    ["another scheme", "http://app.example"],
    ["a trailing slash on the wire", "https://app.example/"],
    ["a path", "https://app.example/x"],
    ["credentials", "https://user@app.example"],
    ["a password", "https://:pw@app.example"],
    ["a query", "https://app.example?x"],
    ["a fragment", "https://app.example#x"],
    ["a backslash", "https://app.example\\"],
    ["a suffix domain", "https://app.example.evil.example"],
    ["a prefix domain", "https://evil-app.example"],
    ["the default port of the other scheme", "https://plain.example:80"],
    ["the opaque origin null", "null"],
    ["something that is no origin", "app.example"]
  ])("refuses %s with 403", async (_what, origin) => {
    expect(await refusedStatus(origins.url, undefined, { origin })).toBe(403)
  })

  it("allows a client that sends no Origin (not a browser)", async () => {
    const ws = await openClient(origins.url)
    ws.terminate()
  })

  it("compares any scheme's host case-insensitively, keeps entries that are no origin as written, and `*` allows all", () => {
    const allowed = (origin: string, list: ReadonlyArray<string>) =>
      Either.isRight(checkOrigin(new Request("http://x/", { headers: { origin } }), list))
    expect(allowed("chrome-extension://abcdef", ["chrome-extension://ABCDEF"])).toBe(true)
    expect(allowed("chrome-extension://abcdef:443", ["chrome-extension://abcdef"])).toBe(false)
    expect(allowed("file://", ["file://"])).toBe(true)
    expect(allowed("file:///x", ["file://"])).toBe(false)
    expect(allowed("https://app.example/x", ["https://app.example/x"])).toBe(true)
    expect(allowed("https://app.example", ["https://app.example/x"])).toBe(false)
    expect(allowed("https://anything.example", ["https://app.example", "*"])).toBe(true)
    expect(allowed("null", ["*"])).toBe(true)
    expect(allowed("foo:baz", ["foo:bar"])).toBe(false)
    const refused = checkOrigin(new Request("http://x/", { headers: { origin: "https://evil.example" } }), ["https://app.example"])
    expect(Either.getLeft(refused).pipe(Option.map((e) => e.origin))).toEqual(Option.some("https://evil.example"))
  })

  it("allows null only where \"null\" is listed", async () => {
    const ws = await openClient(withNull.url, undefined, { origin: "null" })
    ws.terminate()
    expect(await refusedStatus(withNull.url, undefined, { origin: "NULL" })).toBe(403)
  })

  it("matches whatever case and explicit default port the scheme and host come in", () => {
    const request = (origin: string) => new Request("http://x/", { headers: { origin } })
    const cased = (text: string) =>
      fc.array(fc.boolean(), { minLength: text.length, maxLength: text.length }).map((upper) =>
        [...text].map((c, i) => (upper[i] ? c.toUpperCase() : c)).join("")
      )
    fc.assert(
      fc.property(
        fc.constantFrom(["https", "443"], ["http", "80"]),
        fc.domain(),
        fc.boolean(),
        fc.boolean(),
        ([scheme, port], host, explicitPort, listedPort) =>
          fc.assert(
            fc.property(cased(`${scheme}://${host}`), (origin) => {
              const listed = `${scheme}://${host}${listedPort ? `:${port}` : ""}`
              const sent = `${origin}${explicitPort ? `:${port}` : ""}`
              expect(Either.isRight(checkOrigin(request(sent), [listed]))).toBe(true)
              expect(Either.isLeft(checkOrigin(request(`${sent}1`), [listed]))).toBe(true)
            }),
            { numRuns: 5 }
          )
      ),
      { numRuns: 100 }
    )
  })
})
