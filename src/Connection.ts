/**
 * One accepted WebSocket connection: an actor whose fiber owns its lifecycle (heartbeat, close).
 * When it ends, however it ends, it leaves the manager's counts and closes its scope, which holds
 * what others attached to it (channel subscriptions).
 *
 * @since 0.1.0
 */
import type { Effect, Metric, Option, Scope, Stream } from "effect"
import type WebSocket from "ws"
import type { HandlerFailed, HeartbeatTimeout, InvalidClose, MessageEncodeError, SocketNotOpen } from "./errors.js"
import * as internal from "./internal/connection.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: typeof internal.TypeId = internal.TypeId

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * What the manager knows of a connection: who, from where, with what protocol.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionContext {
  readonly id: string
  /** Set when authentication identified a user. */
  readonly userId: string | undefined
  /** What the authentication validator returned (the JWT payload for `'jwt'`). */
  readonly user: unknown
  /** The negotiated subprotocol, `''` when none. */
  readonly protocol: string
  /** The negotiated extensions, as in `Sec-WebSocket-Extensions`; `''` when none. */
  readonly extensions: string
  readonly remoteAddress: string
  readonly url: string
  /** The upgrade request's headers, as Node parsed them (lower-case names). */
  readonly headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
  readonly connectedAt: Date
}

/**
 * An inbound message: text frames as strings, binary frames as Buffers.
 *
 * @since 0.1.0
 * @category models
 */
export type Message = string | Buffer

/**
 * Why a connection ended:
 * - `"normal"`: a close handshake, begun by either side (the code says which and why);
 * - `"connection-lost"`: the socket closed without a close frame (1006), e.g. the peer vanished;
 * - `"protocol-error"`: `ws` refused what the peer sent (an invalid frame 1002, invalid UTF-8
 *   1007, a frame over `maxPayload` 1009);
 * - `"handler-failed"`: the handler, or an event listener on the socket, threw or rejected (1011);
 * - `"heartbeat-timeout"`: no pong or message within `heartbeatTimeout` after a ping (cut, 1006);
 * - `"slow-consumer"`: a Broadcaster channel with the `'close'` policy closed it (1008);
 * - `"server-shutdown"`: the manager was closed.
 *
 * @since 0.1.0
 * @category models
 */
export type ConnectionEnd =
  | "normal"
  | "connection-lost"
  | "protocol-error"
  | "handler-failed"
  | "heartbeat-timeout"
  | "slow-consumer"
  | "server-shutdown"

/**
 * How a connection ended: the close code and reason of its 'close' event, and why.
 *
 * @since 0.1.0
 * @category models
 */
export interface CloseInfo {
  readonly code: number
  readonly reason: string
  readonly end: ConnectionEnd
  /**
   * The error seen as the connection ended, if any: `HandlerFailed` (with the handler's or
   * listener's error as `cause`), `HeartbeatTimeout`, or the `Error` `ws` reported for a
   * protocol error.
   */
  readonly error: HandlerFailed | HeartbeatTimeout | Error | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Connection {
  readonly [TypeId]: TypeId
  readonly id: string
  readonly context: ConnectionContext
  /** The standard WebSocket object (`ws`'s), shared with the Promise facade. */
  readonly socket: WebSocket
  /** Closes when the connection ends; add finalizers to release per-connection resources. */
  readonly scope: Scope.Scope
  readonly isOpen: boolean
  /** Inbound messages, ending when the connection closes. Built only when consumed. */
  readonly messages: Stream.Stream<Message>
  /** Objects go as JSON text, strings as text, binary data as binary. */
  readonly send: (message: unknown) => Effect.Effect<void, MessageEncodeError | SocketNotOpen>
  /** Fails with `InvalidClose`, closing nothing, for a code or reason the protocol does not allow. */
  readonly close: (code?: number, reason?: string) => Effect.Effect<void, InvalidClose>
  /** Completes with the close code and reason, and why the connection ended, once it has ended. */
  readonly closed: Effect.Effect<CloseInfo>
  /** The same, once the connection has ended (already inside its socket's 'close' listeners). */
  readonly closeInfo: CloseInfo | undefined
}

/**
 * The connection an accepted socket belongs to.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromSocket: (socket: unknown) => Option.Option<Connection> = internal.fromSocket

/**
 * `websocket_connection_ends_total`: connections ended, tagged with `reason` (a `ConnectionEnd`).
 *
 * @since 0.1.0
 * @category metrics
 */
export const endsTotal: Metric.Metric.Counter<number> = internal.endsTotal
