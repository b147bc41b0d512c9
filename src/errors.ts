/**
 * Every failure of the library is one of these tagged classes. They are real `Error`s, so the
 * Promise facade rejects with the very same instances: `err._tag` works in plain JavaScript and
 * `Effect.catchTag` works in Effect code.
 *
 * Errors that stop an upgrade carry the HTTP `status` the Node adapter answers with; errors that
 * end an open connection carry the WebSocket close `code` the peer sees.
 *
 * @since 0.1.0
 */
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Respondable from "@effect/platform/HttpServerRespondable"
import { Data, Effect } from "effect"

/**
 * An upgrade-refusing error answers for itself in an `@effect/platform` app: its status, and its
 * `publicMessage` as the body (the same body the Node adapter writes for a fetch handler).
 */
const respond = (error: { readonly status: number; readonly publicMessage: string }) =>
  Effect.succeed(HttpServerResponse.text(error.publicMessage, { status: error.status }))

/**
 * An option failed to decode. `field` is the dotted path of the offending option.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidOptions extends Data.TaggedError("InvalidOptions")<{
  readonly field: string
  readonly reason: string
}> {
  get message() {
    return `Invalid option "${this.field}": ${this.reason}`
  }
}

/**
 * `accept` was given a request that is not a WebSocket upgrade.
 *
 * @since 0.1.0
 * @category errors
 */
export class UpgradeRequired extends Data.TaggedError("UpgradeRequired")<{
  readonly reason: string
}> {
  readonly status = 426
  get message() {
    return `WebSocket upgrade required: ${this.reason}`
  }
  /** What the refused client is told. */
  get publicMessage() {
    return this.message
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * The upgrade request is malformed, offers no supported subprotocol, or did not come through
 * an adapter that can complete the handshake.
 *
 * @since 0.1.0
 * @category errors
 */
export class HandshakeFailed extends Data.TaggedError("HandshakeFailed")<{
  readonly reason: "UnsupportedProtocol" | "BadRequest" | "NoUnderlyingSocket"
  readonly detail: string
}> {
  get status() {
    return this.reason === "NoUnderlyingSocket" ? 500 : 400
  }
  get message() {
    return `WebSocket handshake failed (${this.reason}): ${this.detail}`
  }
  /** What the refused client is told: which protocols are supported, but no detail of a server fault. */
  get publicMessage() {
    return this.reason === "UnsupportedProtocol"
      ? this.message
      : this.status === 500
      ? "Internal Server Error"
      : "Bad Request"
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * The upgrade's `Origin` is not in `allowedOrigins` (cross-site WebSocket hijacking guard).
 *
 * @since 0.1.0
 * @category errors
 */
export class OriginNotAllowed extends Data.TaggedError("OriginNotAllowed")<{
  readonly origin: string
}> {
  readonly status = 403
  get message() {
    return `Origin not allowed: ${this.origin}`
  }
  /** What the refused client is told: not its own origin echoed back. */
  get publicMessage() {
    return "Origin not allowed"
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * A connection limit is reached: in total, for one user, or for one remote address.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionLimitExceeded extends Data.TaggedError("ConnectionLimitExceeded")<{
  readonly scope: "total" | "user" | "ip"
  readonly limit: number
}> {
  readonly status = 503
  get message() {
    return `Connection limit exceeded (${this.scope}: ${this.limit})`
  }
  /** What the refused client is told: which limit, not its value. */
  get publicMessage() {
    return `Connection limit exceeded (${this.scope})`
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * The manager is closing or closed and accepts no new connections.
 *
 * @since 0.1.0
 * @category errors
 */
export class ManagerClosed extends Data.TaggedError("ManagerClosed")<{}> {
  readonly status = 503
  get message() {
    return "The WebSocket manager is closed"
  }
  /** What the refused client is told. */
  get publicMessage() {
    return this.message
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * Authentication failed: no credentials (`MissingCredentials`), refused or empty credentials
 * (`InvalidCredentials`), a validator that threw or rejected, or a key that cannot be used
 * (`ValidatorFailed`), or no answer within `authentication.timeout` (`Timeout`).
 *
 * `detail` and `message` are for the server (logs, `Effect.catchTag`); the client is told only
 * `publicMessage`, as a validator's or jose's message can say more than an unauthenticated
 * client should learn.
 *
 * @since 0.1.0
 * @category errors
 */
export class AuthenticationFailed extends Data.TaggedError("AuthenticationFailed")<{
  readonly reason: "MissingCredentials" | "InvalidCredentials" | "ValidatorFailed" | "Timeout"
  readonly detail: string
  readonly cause?: unknown
}> {
  readonly status = 401
  get message() {
    return `Authentication failed (${this.reason}): ${this.detail}`
  }
  /** What the refused client is told. */
  get publicMessage() {
    return "Unauthorized"
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * The upgrade plus authentication did not finish within `connectionTimeout`.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionTimeout extends Data.TaggedError("ConnectionTimeout")<{
  readonly timeoutMillis: number
}> {
  readonly status = 408
  get message() {
    return `The WebSocket handshake did not complete within ${this.timeoutMillis} ms`
  }
  /** What the refused client is told. */
  get publicMessage() {
    return "The WebSocket handshake timed out"
  }
  [Respondable.symbol]() {
    return respond(this)
  }
}

/**
 * A message cannot be encoded for the wire (a circular object, a BigInt, `undefined`, a function).
 *
 * @since 0.1.0
 * @category errors
 */
export class MessageEncodeError extends Data.TaggedError("MessageEncodeError")<{
  readonly cause: unknown
}> {
  get message() {
    return `Message cannot be encoded: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
  }
}

/**
 * A send was attempted on a socket that is not open.
 *
 * @since 0.1.0
 * @category errors
 */
export class SocketNotOpen extends Data.TaggedError("SocketNotOpen")<{
  readonly readyState: number
}> {
  get message() {
    return `WebSocket is not open (readyState ${this.readyState})`
  }
}

/**
 * A connection's handler failed; the connection is closed with 1011 and nothing else is affected.
 *
 * @since 0.1.0
 * @category errors
 */
export class HandlerFailed extends Data.TaggedError("HandlerFailed")<{
  readonly connectionId: string
  readonly cause: unknown
}> {
  readonly code = 1011
  get message() {
    return `Handler of connection ${this.connectionId} failed`
  }
}

/**
 * The peer did not answer a heartbeat ping within `heartbeatTimeout`.
 *
 * @since 0.1.0
 * @category errors
 */
export class HeartbeatTimeout extends Data.TaggedError("HeartbeatTimeout")<{
  readonly connectionId: string
  readonly timeoutMillis: number
}> {
  get message() {
    return `Connection ${this.connectionId} missed its heartbeat (${this.timeoutMillis} ms)`
  }
}

/**
 * A socket given to the Broadcaster is not a connection of a WebSocketManager, or not open.
 *
 * @since 0.1.0
 * @category errors
 */
export class NotAManagedSocket extends Data.TaggedError("NotAManagedSocket")<{
  readonly reason: string
}> {
  get message() {
    return `Not a managed, open socket: ${this.reason}`
  }
}

/**
 * No connection became free within `acquireTimeout`.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolAcquireTimeout extends Data.TaggedError("PoolAcquireTimeout")<{
  readonly timeoutMillis: number
}> {
  get message() {
    return `No pooled connection became available within ${this.timeoutMillis} ms`
  }
}

/**
 * Every backend is unhealthy or has its circuit open.
 *
 * @since 0.1.0
 * @category errors
 */
export class NoHealthyBackend extends Data.TaggedError("NoHealthyBackend")<{
  readonly backends: ReadonlyArray<string>
}> {
  get message() {
    return `No healthy backend among: ${this.backends.join(", ") || "(none)"}`
  }
}

/**
 * The pool is closed.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolClosed extends Data.TaggedError("PoolClosed")<{}> {
  get message() {
    return "The WebSocket pool is closed"
  }
}

/**
 * `release` of a connection that is not checked out from this pool (or was released already).
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidRelease extends Data.TaggedError("InvalidRelease")<{
  readonly reason: string
}> {
  get message() {
    return `Invalid release: ${this.reason}`
  }
}

/**
 * Opening a connection to a backend failed.
 *
 * @since 0.1.0
 * @category errors
 */
export class BackendConnectFailed extends Data.TaggedError("BackendConnectFailed")<{
  readonly backend: string
  readonly cause: unknown
}> {
  get message() {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `Could not connect to backend ${this.backend}: ${cause}`
  }
}

/**
 * The Broadcaster is closed: it publishes, subscribes and creates channels no more.
 *
 * @since 0.1.0
 * @category errors
 */
export class BroadcasterClosed extends Data.TaggedError("BroadcasterClosed")<{}> {
  get message() {
    return "The Broadcaster is closed"
  }
}

/**
 * The cluster bus (Redis) cannot be reached: when its Layer is built, or for an operation that
 * needs it while it is down. `engine` is where it was looked for, without credentials.
 *
 * @since 0.1.0
 * @category errors
 */
export class ClusterUnavailable extends Data.TaggedError("ClusterUnavailable")<{
  readonly engine: string
  readonly cause: unknown
}> {
  get message() {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `Cluster bus unavailable at ${this.engine}: ${cause}`
  }
}

/**
 * A broadcast reached this node's sockets (`delivered` of them) but could not be handed to the
 * cluster bus, so other nodes did not get it. Nothing is retried: the caller decides.
 *
 * @since 0.1.0
 * @category errors
 */
export class ClusterPublishFailed extends Data.TaggedError("ClusterPublishFailed")<{
  readonly topic: string
  readonly delivered: number
  readonly cause: ClusterUnavailable
}> {
  get message() {
    return `Delivered on this node to ${this.delivered} socket(s), not published to other nodes (${this.topic}): ${this.cause.message}`
  }
}

/**
 * A broadcast with a `filter` function was asked to cross nodes: a function cannot travel
 * between processes. Pass `local: true` to deliver it on this node only.
 *
 * @since 0.1.0
 * @category errors
 */
export class FilterNotSerializable extends Data.TaggedError("FilterNotSerializable")<{}> {
  get message() {
    return "A broadcast filter is a function of this process and cannot reach other nodes: pass { local: true } to filter this node's sockets only"
  }
}

/**
 * A close code or reason the WebSocket protocol does not allow (RFC 6455 §7.4): the codes are
 * 1000–1003, 1007–1014 and 3000–4999, the reason at most 123 UTF-8 bytes. Nothing was closed.
 *
 * @since 0.1.0
 * @category errors
 */
export class InvalidClose extends Data.TaggedError("InvalidClose")<{
  readonly reason: "InvalidCode" | "ReasonTooLong" | "ReasonNotAString"
  readonly code: number
  readonly detail: string
}> {
  get message() {
    return `Invalid close (${this.reason}, code ${this.code}): ${this.detail}`
  }
}

/**
 * Errors that refuse an upgrade before it happens; each has the HTTP `status` to answer with,
 * the `publicMessage` a client may be told, and answers for itself in an `@effect/platform` app.
 *
 * @since 0.1.0
 * @category errors
 */
export type AcceptError =
  | UpgradeRequired
  | HandshakeFailed
  | OriginNotAllowed
  | ConnectionLimitExceeded
  | ManagerClosed
  | AuthenticationFailed
  | ConnectionTimeout
