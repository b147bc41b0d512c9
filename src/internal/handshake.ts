/**
 * The checks an upgrade passes before the handshake, and the handshake itself, which is `ws`'s.
 */
import { Either } from "effect"
import type { IncomingMessage } from "node:http"
import { WebSocketServer } from "ws"
import { HandshakeFailed, OriginNotAllowed, UpgradeRequired } from "../errors.js"
import type { WebSocketManagerConfig } from "../options.js"
import { isCredential } from "./authenticate.js"
import { ManagedWebSocket } from "./connection.js"
import type { RawUpgrade } from "./upgrade.js"

export const checkUpgrade = (request: Request): Either.Either<void, UpgradeRequired> => {
  if (request.method !== "GET") return Either.left(new UpgradeRequired({ reason: `method ${request.method}` }))
  const upgrade = request.headers.get("upgrade")
  return upgrade !== null && upgrade.toLowerCase() === "websocket"
    ? Either.void
    : Either.left(new UpgradeRequired({ reason: "no `Upgrade: websocket` header" }))
}

export const checkOrigin = (
  request: Request,
  allowedOrigins: ReadonlyArray<string> | undefined
): Either.Either<void, OriginNotAllowed> => {
  const origin = request.headers.get("origin")
  // Only browsers send Origin, and only browsers can be tricked into a cross-site upgrade.
  if (allowedOrigins === undefined || origin === null || allowedOrigins.includes("*")) return Either.void
  return allowedOrigins.includes(origin) ? Either.void : Either.left(new OriginNotAllowed({ origin }))
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
