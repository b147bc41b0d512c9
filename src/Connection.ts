/**
 * One accepted WebSocket connection: an actor whose fiber owns its lifecycle (heartbeat, close).
 * When it ends, however it ends, it leaves the manager's counts and closes its scope, which holds
 * what others attached to it (channel subscriptions).
 *
 * @since 0.1.0
 */
import type { Effect, Option, Scope, Stream } from "effect"
import type WebSocket from "ws"
import type { MessageEncodeError, SocketNotOpen } from "./errors.js"
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
 * @since 0.1.0
 * @category models
 */
export interface CloseInfo {
  readonly code: number
  readonly reason: string
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
  readonly close: (code?: number, reason?: string) => Effect.Effect<void>
  /** Completes with the close code and reason once the connection has ended. */
  readonly closed: Effect.Effect<CloseInfo>
}

/**
 * The connection an accepted socket belongs to.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromSocket: (socket: unknown) => Option.Option<Connection> = internal.fromSocket
