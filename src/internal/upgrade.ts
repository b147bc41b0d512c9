/**
 * Where a fetch-style `Request` meets Node's upgrade event.
 *
 * Node hands an upgrade out as `(req, socket, head)`. The adapter builds a standard `Request`
 * from it and remembers the raw parts under that `Request`, so `accept(request)` can complete
 * the handshake on the right socket. Requests not built here have no socket to upgrade.
 */
import type { IncomingMessage } from "node:http"
import { STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"

export interface RawUpgrade {
  readonly request: IncomingMessage
  readonly socket: Duplex
  readonly head: Buffer
  /** Set once `accept` has completed the handshake on this socket. */
  upgraded: boolean
}

const rawUpgrades = new WeakMap<Request, RawUpgrade>()

export const rawUpgradeOf = (request: Request): RawUpgrade | undefined => rawUpgrades.get(request)

const urlOf = (req: IncomingMessage): URL => {
  const scheme = (req.socket as { encrypted?: boolean }).encrypted ? "https" : "http"
  try {
    return new URL(req.url ?? "/", `${scheme}://${req.headers.host ?? "localhost"}`)
  } catch {
    return new URL(req.url?.startsWith("/") ? req.url : "/", `${scheme}://localhost`)
  }
}

const headersOf = (req: IncomingMessage): Headers => {
  const headers = new Headers()
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    try {
      headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!)
    } catch {
      // A header value the Fetch API refuses (it is stricter than Node's parser) is left out.
    }
  }
  return headers
}

/** A standard `Request` for a Node upgrade, remembered with its raw socket. */
export const toWebRequest = (req: IncomingMessage, socket: Duplex, head: Buffer): Request => {
  const request = new Request(urlOf(req), { method: req.method ?? "GET", headers: headersOf(req) })
  rawUpgrades.set(request, { request: req, socket, head, upgraded: false })
  return request
}

/** An error with an HTTP `status` (every accept error has one) becomes that response; others a 500. */
export const errorResponse = (error: unknown): Response => {
  const status = typeof (error as { status?: unknown })?.status === "number"
    ? (error as { status: number }).status
    : 500
  const message = status === 500 || !(error instanceof Error) ? "Internal Server Error" : error.message
  return new Response(message, { status, headers: { "content-type": "text/plain; charset=utf-8" } })
}

/** Answers an upgrade that was not accepted with a plain HTTP response, then closes the socket. */
export const writeResponse = async (socket: Duplex, response: Response): Promise<void> => {
  const body = Buffer.from(await response.arrayBuffer())
  if (socket.destroyed || !socket.writable) return
  const lines = [
    `HTTP/1.1 ${response.status} ${STATUS_CODES[response.status] ?? ""}`,
    "Connection: close",
    `Content-Length: ${body.length}`
  ]
  response.headers.forEach((value, name) => {
    if (name !== "connection" && name !== "content-length" && name !== "transfer-encoding") {
      lines.push(`${name}: ${value}`)
    }
  })
  socket.once("finish", () => socket.destroy())
  socket.end(Buffer.concat([Buffer.from(lines.join("\r\n") + "\r\n\r\n"), body]))
}

/**
 * What `accept` resolves `response` to: the fetch-style answer to an upgrade, as with Deno's
 * `upgradeWebSocket`. The handshake is already complete when it exists; a `Response` cannot be
 * constructed with status 101, hence the getters.
 */
export class UpgradeResponse extends Response {
  override get status(): number {
    return 101
  }
  override get statusText(): string {
    return "Switching Protocols"
  }
}
