/**
 * Shared test helpers: real servers on 127.0.0.1 port 0, real `ws` clients, and waits that are
 * bounded in time so a broken behaviour fails a test instead of hanging it.
 */
import * as Net from "node:net"
import WebSocket from "ws"
import type { WebSocketManagerOptions } from "../../src/options.js"
import type { AcceptOptions, AcceptResult } from "../../src/promise/index.js"
import { serve, type Server, WebSocketManager } from "../../src/promise/index.js"

export interface Harness {
  readonly manager: WebSocketManager
  readonly server: Server
  /** ws://127.0.0.1:PORT */
  readonly url: string
  /** Every error `accept` rejected with, in order. */
  readonly errors: Array<unknown>
  /** Closes the manager, then the HTTP server. */
  close(): Promise<void>
}

/**
 * A facade manager served on a free port; every upgrade is accepted, and `onAccept` sees each
 * accepted connection before the response is returned.
 */
export const startManager = async (
  options: WebSocketManagerOptions = {},
  onAccept: (accepted: AcceptResult, request: Request) => void = () => {},
  acceptOptions?: (request: Request) => AcceptOptions | undefined
): Promise<Harness> => {
  const manager = new WebSocketManager(options)
  const errors: Array<unknown> = []
  const server = await serve({
    port: 0,
    fetch: async (request) => {
      if (request.headers.get("upgrade") === null) return new Response("plain http")
      const accepted = await manager.accept(request, acceptOptions?.(request)).catch((error) => {
        errors.push(error)
        throw error
      })
      onAccept(accepted, request)
      return accepted.response
    }
  })
  return {
    manager,
    server,
    errors,
    url: server.url.replace("http://", "ws://"),
    close: async () => {
      await manager.close()
      await server.close()
    }
  }
}

/** Opens a client and resolves once it is open; rejects with the HTTP status if the upgrade is refused. */
export const openClient = (url: string, protocols?: string | Array<string>, options?: WebSocket.ClientOptions) =>
  new Promise<WebSocket>((resolve, reject) => {
    const ws = new WebSocket(url, protocols, options)
    ws.once("open", () => resolve(ws))
    ws.once("unexpected-response", (_request, response) => {
      reject(Object.assign(new Error(`HTTP ${response.statusCode}`), { status: response.statusCode }))
      response.resume()
      ws.terminate()
    })
    ws.once("error", reject)
  })

/** The HTTP status an upgrade is refused with (fails the test if it is accepted). */
export const refusedStatus = async (url: string, protocols?: string | Array<string>, options?: WebSocket.ClientOptions) => {
  try {
    const ws = await openClient(url, protocols, options)
    ws.terminate()
    throw new Error("expected the upgrade to be refused")
  } catch (error) {
    const status = (error as { status?: number }).status
    if (status === undefined) throw error
    return status
  }
}

export const openClients = (url: string, count: number, options?: WebSocket.ClientOptions) =>
  Promise.all(Array.from({ length: count }, () => openClient(url, undefined, options)))

export const withTimeout = <A>(promise: Promise<A>, millis: number, what: string): Promise<A> =>
  new Promise<A>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${millis} ms waiting for ${what}`)), millis)
    promise.then(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (error) => {
        clearTimeout(timer)
        reject(error)
      }
    )
  })

/** The next `count` messages a client receives, text as strings, binary as Buffers. */
export const nextMessages = (ws: WebSocket, count: number, millis = 5_000) =>
  withTimeout(
    new Promise<Array<string | Buffer>>((resolve) => {
      const received: Array<string | Buffer> = []
      const onMessage = (data: Buffer, isBinary: boolean) => {
        received.push(isBinary ? data : data.toString())
        if (received.length === count) {
          ws.off("message", onMessage)
          resolve(received)
        }
      }
      ws.on("message", onMessage)
    }),
    millis,
    `${count} messages`
  )

export const nextMessage = (ws: WebSocket, millis = 5_000) => nextMessages(ws, 1, millis).then(([message]) => message!)

/** The close code and reason a client sees. */
export const closeOf = (ws: WebSocket, millis = 5_000) =>
  withTimeout(
    new Promise<{ code: number; reason: string }>((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) resolve({ code: 1006, reason: "" })
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() }))
    }),
    millis,
    "close"
  )

/** Polls until the condition holds, failing after `millis`. */
export const eventually = async (condition: () => boolean, millis = 5_000, what = "condition") => {
  const deadline = Date.now() + millis
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${millis} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

export const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis))

// ---------------------------------------------------------------------------------------------
// Raw TCP: hostile bytes on a plain socket, and WebSocket frames written by hand.
// ---------------------------------------------------------------------------------------------

export interface RawAnswer {
  /** Everything the server wrote, as latin1 text. */
  readonly text: string
  /** Whether the server closed the connection (rather than the wait running out). */
  readonly closedByServer: boolean
}

/**
 * Connects to 127.0.0.1:`port`, writes `bytes`, and resolves with what the server wrote once it
 * closes the connection, or after `millis` (then `closedByServer` is false and the socket is cut).
 */
export const rawRequest = (port: number, bytes: string | Buffer, millis = 5_000) =>
  new Promise<RawAnswer>((resolve) => {
    const chunks: Array<Buffer> = []
    const socket = Net.connect(port, "127.0.0.1", () => socket.write(bytes))
    const done = (closedByServer: boolean) => {
      clearTimeout(timer)
      resolve({ text: Buffer.concat(chunks).toString("latin1"), closedByServer })
    }
    const timer = setTimeout(() => {
      socket.removeAllListeners("close")
      socket.destroy()
      done(false)
    }, millis)
    socket.on("data", (chunk) => chunks.push(chunk))
    socket.on("error", () => {})
    socket.on("close", () => done(true))
  })

/** An upgrade request head for `path` with the given extra header lines (each without CRLF). */
export const upgradeHead = (path = "/", extra: ReadonlyArray<string> = [], method = "GET") =>
  [
    `${method} ${path} HTTP/1.1`,
    "Host: 127.0.0.1",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
    ...extra,
    "",
    ""
  ].join("\r\n")

export interface FrameOptions {
  readonly fin?: boolean
  /** RSV1..RSV3 as the three bits 0b100, 0b010, 0b001. */
  readonly rsv?: number
  readonly opcode: number
  readonly payload?: Buffer | string
  /** Clients must mask; `false` writes an unmasked (illegal) client frame. */
  readonly masked?: boolean
}

/** A client-to-server WebSocket frame (RFC 6455 §5.2), masked unless told otherwise. */
export const clientFrame = ({ fin = true, masked = true, opcode, payload = Buffer.alloc(0), rsv = 0 }: FrameOptions) => {
  const data = typeof payload === "string" ? Buffer.from(payload) : payload
  const length = data.length
  const lengthBytes = length < 126 ? 0 : length < 65_536 ? 2 : 8
  const header = Buffer.alloc(2 + lengthBytes + (masked ? 4 : 0))
  header[0] = (fin ? 0x80 : 0) | ((rsv & 0b111) << 4) | (opcode & 0x0f)
  header[1] = (masked ? 0x80 : 0) | (lengthBytes === 0 ? length : lengthBytes === 2 ? 126 : 127)
  if (lengthBytes === 2) header.writeUInt16BE(length, 2)
  if (lengthBytes === 8) header.writeBigUInt64BE(BigInt(length), 2)
  if (!masked) return Buffer.concat([header, data])
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78])
  mask.copy(header, 2 + lengthBytes)
  const body = Buffer.alloc(length)
  for (let i = 0; i < length; i++) body[i] = data[i]! ^ mask[i % 4]!
  return Buffer.concat([header, body])
}

export interface ServerFrame {
  readonly fin: boolean
  readonly opcode: number
  readonly payload: Buffer
}

/**
 * A WebSocket opened by hand on a raw TCP socket: the handshake is checked, then server frames
 * are parsed as they arrive, so a test can write any bytes and read the exact answer.
 */
export class RawWebSocket {
  private buffer = Buffer.alloc(0)
  private readonly frames: Array<ServerFrame> = []
  private waiter: (() => void) | undefined
  closed = false

  private constructor(readonly socket: Net.Socket) {
    socket.on("data", (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk])
      this.parse()
    })
    socket.on("error", () => {})
    socket.on("close", () => {
      this.closed = true
      this.waiter?.()
    })
  }

  /**
   * Opens one on 127.0.0.1:`port`; rejects unless the server answers 101. `after` is written in
   * the same packet as the head (pipelined bytes).
   */
  static open(port: number, path = "/", extra: ReadonlyArray<string> = [], after: Buffer | string = "") {
    return withTimeout(
      new Promise<RawWebSocket>((resolve, reject) => {
        const socket = Net.connect(port, "127.0.0.1", () =>
          socket.write(Buffer.concat([Buffer.from(upgradeHead(path, extra)), Buffer.from(after)])))
        let head = Buffer.alloc(0)
        const onData = (chunk: Buffer) => {
          head = Buffer.concat([head, chunk])
          const end = head.indexOf("\r\n\r\n")
          if (end === -1) return
          socket.off("data", onData)
          const status = head.subarray(0, end).toString("latin1")
          if (!status.startsWith("HTTP/1.1 101")) {
            socket.destroy()
            return reject(new Error(`handshake refused: ${status.split("\r\n")[0]}`))
          }
          const raw = new RawWebSocket(socket)
          const rest = head.subarray(end + 4)
          if (rest.length > 0) socket.emit("data", rest)
          resolve(raw)
        }
        socket.on("data", onData)
        socket.once("error", reject)
      }),
      5_000,
      "the raw handshake"
    )
  }

  write(bytes: Buffer | string) {
    this.socket.write(bytes)
  }

  private parse() {
    for (;;) {
      const b = this.buffer
      if (b.length < 2) return
      let length = b[1]! & 0x7f
      let offset = 2
      if (length === 126) {
        if (b.length < 4) return
        length = b.readUInt16BE(2)
        offset = 4
      } else if (length === 127) {
        if (b.length < 10) return
        length = Number(b.readBigUInt64BE(2))
        offset = 10
      }
      if (b.length < offset + length) return
      this.frames.push({ fin: (b[0]! & 0x80) !== 0, opcode: b[0]! & 0x0f, payload: b.subarray(offset, offset + length) })
      this.buffer = b.subarray(offset + length)
      this.waiter?.()
    }
  }

  /** The next frame the server sends (pings included); fails if none comes within `millis`. */
  nextFrame(millis = 5_000): Promise<ServerFrame> {
    return withTimeout(
      new Promise<ServerFrame>((resolve, reject) => {
        const check = () => {
          const frame = this.frames.shift()
          if (frame !== undefined) {
            this.waiter = undefined
            resolve(frame)
          } else if (this.closed) {
            this.waiter = undefined
            reject(new Error("the connection closed without a frame"))
          }
        }
        this.waiter = check
        check()
      }),
      millis,
      "a frame from the server"
    )
  }

  /** The code of the close frame the server sends, skipping other frames. */
  async closeCode(millis = 5_000): Promise<number> {
    for (;;) {
      const frame = await this.nextFrame(millis)
      if (frame.opcode === 0x8) return frame.payload.length >= 2 ? frame.payload.readUInt16BE(0) : 1005
    }
  }

  /** Resolves once the server has closed the TCP connection. */
  whenClosed(millis = 5_000): Promise<void> {
    return withTimeout(
      new Promise<void>((resolve) => {
        if (this.closed) return resolve()
        this.socket.once("close", () => resolve())
      }),
      millis,
      "the server to close the connection"
    )
  }

  destroy() {
    this.socket.destroy()
  }
}
