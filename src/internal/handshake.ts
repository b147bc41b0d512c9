/**
 * The checks an upgrade passes before the handshake, and the handshake itself, which is `ws`'s.
 */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import { Either } from "effect"
import type { IncomingMessage } from "node:http"
import { WebSocketServer } from "ws"
import { HandshakeFailed, OriginNotAllowed, UpgradeRequired } from "../errors.js"
import type { WebSocketManagerConfig } from "../options.js"
import { isCredential } from "./authenticate.js"
import { ManagedWebSocket } from "./connection.js"
import type { RawUpgrade } from "./upgrade.js"

// Either kind of request, so a plain request reaching `accept` is refused as such before the
// lack of a socket to upgrade is noticed.
const headerOf = (request: Request | HttpServerRequest.HttpServerRequest, name: string): string | null =>
  request instanceof Request ? request.headers.get(name) : request.headers[name] ?? null

/** The `upgrade` token among a `Connection` header's comma-separated options (RFC 9110 §7.6.1). */
const upgradeToken = /(?:^|,)[ \t]*upgrade[ \t]*(?:,|$)/i

/**
 * A WebSocket upgrade is a GET with `Upgrade: websocket` and `Connection: Upgrade` (RFC 6455
 * §4.1). Without the `Connection` token Node does not treat it as an upgrade at all, so there is
 * no socket to take over: it is the client's mistake, answered 426 like any non-upgrade.
 */
export const checkUpgrade = (
  request: Request | HttpServerRequest.HttpServerRequest
): Either.Either<void, UpgradeRequired> => {
  if (request.method !== "GET") return Either.left(new UpgradeRequired({ reason: `method ${request.method}` }))
  const upgrade = headerOf(request, "upgrade")
  if (upgrade === null || upgrade.toLowerCase() !== "websocket") {
    return Either.left(new UpgradeRequired({ reason: "no `Upgrade: websocket` header" }))
  }
  const connection = headerOf(request, "connection")
  return connection !== null && upgradeToken.test(connection)
    ? Either.void
    : Either.left(new UpgradeRequired({ reason: "no `Connection: Upgrade` header" }))
}

/**
 * The RFC 6454 serialisation of `scheme://host[:port]`: scheme and host lower-cased, the
 * default port of http (80) and https (443) dropped. `undefined` for what is no such origin (a path, a query,
 * credentials, no host, `null`). `trailingSlash` tolerates one `/` after the authority.
 */
const serialiseOrigin = (origin: string, trailingSlash: boolean): string | undefined => {
  let url: URL
  try {
    url = new URL(origin)
  } catch {
    return undefined
  }
  if (url.host === "" || url.username !== "" || url.password !== "") return undefined
  // URL gives special schemes the path "/" even when the origin has none: look at the text, where
  // a path, a query or a fragment shows after the authority.
  const afterAuthority = origin.slice(origin.indexOf("//") + 2).replace(/^[^/?#\\]*/, "")
  if (afterAuthority !== "" && !(trailingSlash && afterAuthority === "/")) return undefined
  // URL already drops a special scheme's default port (80, 443) from `host`.
  return `${url.protocol}//${url.host}`.toLowerCase()
}

/** An allow-list, serialised once per manager (keyed by its options array). */
interface OriginList {
  readonly any: boolean
  readonly origins: ReadonlySet<string>
}

const originLists = new WeakMap<ReadonlyArray<string>, OriginList>()

const originListOf = (allowed: ReadonlyArray<string>): OriginList => {
  let list = originLists.get(allowed)
  if (list === undefined) {
    // An entry that is no origin ("null", a typo) is kept as written: it matches only itself.
    list = { any: allowed.includes("*"), origins: new Set(allowed.map((o) => serialiseOrigin(o, true) ?? o)) }
    originLists.set(allowed, list)
  }
  return list
}

/**
 * `Origin` against `allowedOrigins`, compared as RFC 6454 serialisations: `HTTPS://App.Example:443`
 * is `https://app.example`. The request's `Origin` must be a serialised origin as browsers send
 * it (no trailing slash, no path); an entry in the list may end with one `/`. The opaque origin
 * `null` (sandboxed frames, `file:`) passes only if `"null"` is listed.
 */
export const checkOrigin = (
  request: Request,
  allowedOrigins: ReadonlyArray<string> | undefined
): Either.Either<void, OriginNotAllowed> => {
  const origin = request.headers.get("origin")
  // Only browsers send Origin, and only browsers can be tricked into a cross-site upgrade.
  if (allowedOrigins === undefined || origin === null) return Either.void
  const list = originListOf(allowedOrigins)
  if (list.any || list.origins.has(origin)) return Either.void
  const serialised = serialiseOrigin(origin, false)
  return serialised !== undefined && list.origins.has(serialised)
    ? Either.void
    : Either.left(new OriginNotAllowed({ origin }))
}

export const offeredProtocols = (request: Request): Array<string> =>
  (request.headers.get("sec-websocket-protocol") ?? "")
    .split(",")
    .map((protocol) => protocol.trim())
    .filter((protocol) => protocol.length > 0)

/**
 * The first offered protocol the server supports, or the one `accept` insists on; `''` when the
 * client offers none. Credential entries (`bearer.…`) are never chosen.
 */
export const negotiateProtocol = (
  offered: ReadonlyArray<string>,
  supported: ReadonlyArray<string>,
  insisted: string | undefined
): Either.Either<string, HandshakeFailed> => {
  const candidates = offered.filter((protocol) => !isCredential(protocol))
  if (insisted !== undefined) {
    return candidates.includes(insisted)
      ? Either.right(insisted)
      : Either.left(
        new HandshakeFailed({ reason: "UnsupportedProtocol", detail: `the client does not offer "${insisted}"` })
      )
  }
  if (candidates.length === 0 || supported.length === 0) return Either.right("")
  const chosen = candidates.find((protocol) => supported.includes(protocol))
  return chosen !== undefined
    ? Either.right(chosen)
    : Either.left(
      new HandshakeFailed({
        reason: "UnsupportedProtocol",
        detail: `none of ${candidates.join(", ")} is supported (${supported.join(", ")})`
      })
    )
}

const chosenProtocol = Symbol("effect-websocket-manager/chosenProtocol")

/** `ws`'s server in `noServer` mode: it does the handshake and the framing, we do the rest. */
export const makeServer = (config: WebSocketManagerConfig): WebSocketServer =>
  new WebSocketServer({
    noServer: true,
    clientTracking: false,
    maxPayload: config.maxPayload,
    WebSocket: ManagedWebSocket,
    perMessageDeflate: config.compression.enabled
      ? { threshold: config.compression.threshold, zlibDeflateOptions: { level: config.compression.level } }
      : false,
    handleProtocols: (_offered, request: IncomingMessage) => (request as any)[chosenProtocol] || false
  })

/**
 * Completes the handshake. `ws` answers it synchronously when the request is sound; when it is
 * not (bad key, bad version), `ws` has already answered 400 and closed the socket.
 *
 * A browser that offered protocols fails a handshake that answers none, so a client that offered
 * only a credential entry gets that entry echoed; it is still not the negotiated protocol.
 */
export const complete = (
  server: WebSocketServer,
  raw: RawUpgrade,
  negotiated: string,
  offered: ReadonlyArray<string>
): Either.Either<ManagedWebSocket, HandshakeFailed> => {
  ;(raw.request as any)[chosenProtocol] = negotiated || offered.find(isCredential) || ""
  let accepted: ManagedWebSocket | undefined
  server.handleUpgrade(raw.request, raw.socket, raw.head, (socket) => {
    accepted = socket as ManagedWebSocket
  })
  if (accepted === undefined) {
    return Either.left(new HandshakeFailed({ reason: "BadRequest", detail: "ws refused the handshake" }))
  }
  raw.upgraded = true
  return Either.right(accepted)
}
