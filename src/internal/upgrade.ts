/**
 * Where Node's requests meet fetch-style `Request`s.
 *
 * Node hands an upgrade out as `(req, socket, head)`. The adapter builds a standard `Request`
 * from it and remembers the raw parts under that `Request`, so `accept(request)` can complete
 * the handshake on the right socket. Requests not built here have no socket to upgrade.
 *
 * Node's parser accepts requests the Fetch API cannot carry (a `TRACE`, credentials in the
 * authority, a `Host` that moves the boundary between host and path). Those are refused here with
 * a 400 before any app sees them: a `Request` that cannot be built would otherwise throw inside
 * Node's listener, and one built from a misread URL would mislead the app.
 */
import type { IncomingMessage, ServerResponse } from "node:http"
import { STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"
import { Metric } from "effect"

export interface RawUpgrade {
  readonly request: IncomingMessage
  readonly socket: Duplex
  readonly head: Buffer
  /** Set once `accept` has completed the handshake on this socket. */
  upgraded: boolean
}

const rawUpgrades = new WeakMap<Request, RawUpgrade>()

export const rawUpgradeOf = (request: Request): RawUpgrade | undefined => rawUpgrades.get(request)

/** The methods a fetch `Request` refuses (Node hands CONNECT to its own event). */
const forbiddenMethod = /^(?:CONNECT|TRACE|TRACK)$/

/**
 * RFC 3986 `uri-host [":" port]`, ASCII: an IP literal or a reg-name. Without `@`, `/`, `?`, `#`,
 * `\\` or spaces, the host cannot carry credentials or end early when the URL is built from it.
 */
const validHost = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?$/
const hostHeader = /^host$/i
const absoluteForm = /^https?:\/\//i

/**
 * The request's one `Host`. RFC 9112 §3.2: an HTTP/1.1 request without one, with several, or
 * with an invalid one is a 400; HTTP/1.0 may omit it.
 */
const hostOf = (req: IncomingMessage): string | undefined => {
  let host: string | undefined
  const raw = req.rawHeaders
  for (let i = 0; i < raw.length; i += 2) {
    if (hostHeader.test(raw[i]!)) {
      if (host !== undefined) return undefined
      host = raw[i + 1]!
    }
  }
  if (host === undefined) return req.httpVersion === "1.0" ? "localhost" : undefined
  return validHost.test(host) ? host : undefined
}

/**
 * The request's URL, or `undefined` when a fetch `Request` cannot represent it: a forbidden
 * method, a bad `Host`, credentials, or a target that is neither origin-form nor an http(s)
 * absolute-form. A target starting with `//` is refused too: resolved against the host (as
 * `@effect/platform`'s `toURL` does) it names another host.
 */
export const requestUrl = (req: IncomingMessage): URL | undefined => {
  // A server's IncomingMessage always has both.
  const target = req.url!
  const host = hostOf(req)
  if (host === undefined || forbiddenMethod.test(req.method!)) return undefined
  try {
    if (target[0] === "/" && target[1] !== "/") {
      const scheme = (req.socket as { encrypted?: boolean }).encrypted ? "https" : "http"
      return new URL(`${scheme}://${host}${target}`)
    }
    if (!absoluteForm.test(target)) return undefined
    const url = new URL(target)
    return url.username === "" && url.password === "" ? url : undefined
  } catch {
    return undefined
  }
}

/**
 * A standard `Request` for a Node upgrade, remembered with its raw socket; `undefined` when the
 * request cannot be one (then the caller refuses it with `refuseUpgrade`).
 */
export const toWebRequest = (req: IncomingMessage, socket: Duplex, head: Buffer): Request | undefined => {
  const url = requestUrl(req)
  if (url === undefined) return undefined
  try {
    // A header value the Fetch API refuses (possible with Node's `insecureHTTPParser`) refuses the
    // request: leaving the header out could drop the very `Origin` the allow-list checks.
    // Appended to the Request's own headers (same checks): a `Headers` or pairs handed to its
    // constructor would go through WebIDL conversion and be copied, on every upgrade.
    const request = new Request(url, { method: req.method! })
    for (let i = 0; i < req.rawHeaders.length; i += 2) request.headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!)
    rawUpgrades.set(request, { request: req, socket, head, upgraded: false })
    return request
  } catch {
    return undefined
  }
}

/**
 * What a server refused before any app saw it. One per server, mutated by the listeners; the
 * process-wide totals are `metrics`.
 */
export class Refusals {
  /** Requests answered 400 (or 431): unrepresentable, or refused by Node's parser. */
  badRequests = 0
  /** Connections closed with 408: a request head (or whole request) that took too long. */
  requestTimeouts = 0
}

export const metrics = {
  badRequests: Metric.counter("websocket_bad_requests_total", {
    description: "requests refused before any app saw them (400, 431)",
    incremental: true
  }),
  requestTimeouts: Metric.counter("websocket_request_timeouts_total", {
    description: "connections closed because a request head took longer than headersTimeout (408)",
    incremental: true
  })
}

const noTags: ReadonlyArray<never> = []

export const countBadRequest = (refusals: Refusals | undefined) => {
  if (refusals !== undefined) refusals.badRequests++
  metrics.badRequests.unsafeUpdate(1, noTags)
}

const plainResponse = (status: number) => {
  const reason = STATUS_CODES[status]!
  return Buffer.from(
    `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(reason)}\r\n\r\n${reason}`,
    "latin1"
  )
}
const badRequest = plainResponse(400)
const headersTooLarge = plainResponse(431)
const requestTimeout = plainResponse(408)

// Shared by every socket rather than a closure per socket.
export function destroyThis(this: Duplex) {
  this.destroy()
}

/** Refuses an upgrade the adapter cannot represent: 400, then the socket is closed. */
export const refuseUpgrade = (socket: Duplex, refusals: Refusals | undefined) => {
  countBadRequest(refusals)
  socket.once("finish", destroyThis)
  socket.end(badRequest)
}

const badRequestHeaders = {
  connection: "close",
  "content-type": "text/plain; charset=utf-8",
  "content-length": Buffer.byteLength(STATUS_CODES[400]!)
}

/**
 * Refuses a plain request the adapter cannot represent. Through the response, so a pipelined
 * request's answer keeps its place; `Connection: close` makes Node close the socket after it.
 */
export const refusePlain = (res: ServerResponse, refusals: Refusals | undefined) => {
  countBadRequest(refusals)
  res.writeHead(400, badRequestHeaders)
  res.end(STATUS_CODES[400])
}

/**
 * A `clientError` listener body: what Node does by default (answer 400, 431 or 408 while nothing
 * of a response was written, then destroy), plus the counts. A peer that reset or closed
 * mid-request is no bad request and gets no answer.
 */
export const answerClientError = (error: Error & { code?: string }, socket: Duplex, refusals: Refusals) => {
  const code = error.code
  if (code === "ECONNRESET" || code === "HPE_INVALID_EOF_STATE") return socket.destroy()
  let answer = badRequest
  if (code === "ERR_HTTP_REQUEST_TIMEOUT") {
    refusals.requestTimeouts++
    metrics.requestTimeouts.unsafeUpdate(1, noTags)
    answer = requestTimeout
  } else {
    countBadRequest(refusals)
    if (code === "HPE_HEADER_OVERFLOW") answer = headersTooLarge
  }
  const inFlight = (socket as { _httpMessage?: ServerResponse | null })._httpMessage
  if (socket.writable && !inFlight?.headersSent) socket.write(answer)
  socket.destroy()
}

/**
 * An error with an HTTP error `status` (every accept error has one) becomes that response; others a 500.
 * The body is the error's `publicMessage`, as an `@effect/platform` app would answer, else the
 * status's reason phrase: an error's `message` may say what the client must not learn (a
 * validator's exception, a database address).
 */
export const errorResponse = (error: unknown): Response => {
  const { publicMessage, status } = (error ?? {}) as { publicMessage?: unknown; status?: unknown }
  // A status outside 400-599 would make `new Response` throw, or answer a failure as a success.
  const code = typeof status === "number" && Number.isInteger(status) && status >= 400 && status <= 599 ? status : 500
  const body = typeof publicMessage === "string" ? publicMessage : STATUS_CODES[code] ?? "Error"
  return new Response(body, { status: code, headers: { "content-type": "text/plain; charset=utf-8" } })
}

/** Answers an upgrade that was not accepted with a plain HTTP response, then closes the socket. */
export const writeResponse = async (socket: Duplex, response: Response, method: string): Promise<void> => {
  // A HEAD request's answer has no body, though its Content-Length says what a GET would get.
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
  socket.once("finish", destroyThis)
  const headBytes = Buffer.from(lines.join("\r\n") + "\r\n\r\n")
  socket.end(method === "HEAD" ? headBytes : Buffer.concat([headBytes, body]))
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
