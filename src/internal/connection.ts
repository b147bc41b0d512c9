/**
 * The connection actor's state. One `ManagedWebSocket` and one `ConnectionImpl` per connection,
 * and no listeners of our own on the socket: `emit` is the single hook through which liveness,
 * the end of the connection and a throwing user listener reach the actor, so users' listeners
 * get `ws`'s events first-hand and a connection costs no closures.
 */
import { Effect, Either, Exit, Fiber, FiberId, Mailbox, Metric, Option, Scope, Stream } from "effect"
import { EventEmitter } from "node:events"
import WebSocket from "ws"
import type { CloseInfo, Connection, ConnectionContext, ConnectionEnd, Message } from "../Connection.js"
import { HandlerFailed, InvalidClose, SocketNotOpen } from "../errors.js"
import type { HeartbeatTimeout, MessageEncodeError } from "../errors.js"
import * as Encode from "./encode.js"
import type { Reservation } from "./registry.js"

export const TypeId: unique symbol = Symbol.for("effect-websocket-manager/Connection")

export type TypeId = typeof TypeId

/** WebSocket close code for an unexpected condition on the server (RFC 6455 §7.4.1). */
const CLOSE_INTERNAL_ERROR = 1011

/** What a socket reports when it closed without a close frame (RFC 6455 §7.1.5). */
const CLOSE_ABNORMAL = 1006

/** A close frame's payload is at most 125 bytes, two of them the code (RFC 6455 §5.5). */
const MAX_CLOSE_REASON_BYTES = 123

/**
 * The codes an endpoint may send (RFC 6455 §7.4): 1004-1006 and 1015 are reserved for reports,
 * 1016-2999 for future protocol use; `ws` throws on anything else, after the caller has begun.
 */
const isSendableCloseCode = (code: number): boolean =>
  Number.isInteger(code) && (
    (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999)
  )

/** Checked before anything is closed, so that a bad close changes nothing. */
export const checkClose = (code: number, reason: string): Either.Either<void, InvalidClose> => {
  if (!isSendableCloseCode(code)) {
    return Either.left(
      new InvalidClose({ reason: "InvalidCode", code, detail: "allowed are 1000-1003, 1007-1014 and 3000-4999" })
    )
  }
  if (typeof reason !== "string") {
    return Either.left(new InvalidClose({ reason: "ReasonNotAString", code, detail: `got ${typeof reason}` }))
  }
  const bytes = Buffer.byteLength(reason)
  return bytes > MAX_CLOSE_REASON_BYTES
    ? Either.left(
      new InvalidClose({
        reason: "ReasonTooLong",
        code,
        detail: `${bytes} UTF-8 bytes, at most ${MAX_CLOSE_REASON_BYTES}`
      })
    )
    : Either.void
}

/** The error behind a connection's end, when there is one. */
export type EndError = HandlerFailed | HeartbeatTimeout | Error

export const endsTotal = Metric.counter("websocket_connection_ends_total", {
  description: "connections ended, tagged with the reason they ended",
  incremental: true
})

const endReasons: ReadonlyArray<ConnectionEnd> = [
  "normal",
  "connection-lost",
  "protocol-error",
  "handler-failed",
  "heartbeat-timeout",
  "slow-consumer",
  "server-shutdown"
]

/** Tagged once per reason rather than once per connection. */
export const endCounters = Object.fromEntries(
  endReasons.map((end) => [end, Metric.tagged(endsTotal, "reason", end)])
) as Record<ConnectionEnd, Metric.Metric.Counter<number>>

type Listener = ((this: ManagedWebSocket, event: unknown) => unknown) | { handleEvent(event: unknown): unknown }

/** One guard per listener function, shared by every socket it is added to (it reads the socket from `this`). */
const guards = new WeakMap<object, (this: ManagedWebSocket, event: unknown) => void>()
const guarded = new WeakMap<object, Listener>()

/**
 * A listener as `ws` calls it (`handleEvent` objects included), except that a promise it returns
 * is watched: `ws`'s EventTarget wrappers drop it, so a rejection would go unhandled.
 */
const guard = (listener: Listener): (this: ManagedWebSocket, event: unknown) => void => {
  let guard = guards.get(listener)
  if (guard === undefined) {
    guard = function(this: ManagedWebSocket, event: unknown) {
      const result = typeof listener === "object" && listener.handleEvent
        ? listener.handleEvent.call(listener, event)
        : (listener as (this: ManagedWebSocket, event: unknown) => unknown).call(this, event)
      if (isThenable(result)) result.then(undefined, (cause) => this.connection?.fail(cause))
    }
    guards.set(listener, guard)
    guarded.set(guard, listener)
  }
  return guard
}

const isThenable = (value: unknown): value is PromiseLike<unknown> =>
  value !== null && (typeof value === "object" || typeof value === "function") &&
  typeof (value as PromiseLike<unknown>).then === "function"

/**
 * `ws`'s server socket, with the connection it belongs to. `ws` constructs it through the
 * `WebSocket` option of its server, so every accepted socket is one of these.
 */
export class ManagedWebSocket extends WebSocket {
  connection: ConnectionImpl | undefined = undefined
  /** `Date.now()` of the last pong or message: any inbound traffic proves the peer alive. */
  lastSeen = Date.now()

  // ws's server constructs it as `new WebSocket(null, undefined, options)`.
  constructor(address: any, protocols?: any, options?: any) {
    // An async `.on()` listener that rejects must end its connection as a throwing one does.
    // `ws` builds its sockets without EventEmitter options, and EventEmitter reads this default
    // while constructing, synchronously: it is set for this one socket only, at no cost per socket
    // (every emitter has the flag), and the rejection comes back to the method below.
    const previous = EventEmitter.captureRejections
    EventEmitter.captureRejections = true
    try {
      super(address, protocols, options)
    } finally {
      EventEmitter.captureRejections = previous
    }
  }

  override emit(event: string | symbol, ...args: Array<any>): boolean {
    if (event === "message" || event === "pong") this.lastSeen = Date.now()
    // Like ws's own client set, the manager forgets a closed socket before user listeners run,
    // so a 'close' listener already sees the updated counts and the end's reason.
    if (event === "close") this.connection?.ended(args[0], args[1])
    if (event === "error") {
      // ws emits 'error' before closing with the matching code (1002, 1007, 1009): the end is
      // recorded (and logged) so that it does not vanish; with nobody listening, EventEmitter
      // would throw it and take the process down.
      this.connection?.protocolError(args[0])
      if (this.listenerCount("error") === 0) return false
    }
    try {
      return super.emit(event, ...args)
    } catch (cause) {
      // A throwing listener would otherwise unwind into ws's parser and crash the process.
      this.connection?.fail(cause)
      return true
    }
  }

  /** Where EventEmitter hands a rejection from an async `.on()` listener (`captureRejections`). */
  [Symbol.for("nodejs.rejection")](cause: unknown): void {
    this.connection?.fail(cause)
  }

  override addEventListener(type: any, listener: any, options?: any): void {
    // Anything else is ws's to accept or refuse, as without a guard.
    const guardable = typeof listener === "function" || (typeof listener === "object" && listener !== null)
    super.addEventListener(type, guardable ? guard(listener) : listener, options)
  }

  override removeEventListener(type: any, listener: any): void {
    super.removeEventListener(type, guards.get(listener) ?? listener)
  }

  static {
    // The `on<event>` attributes read back the listener `ws` was given, which is our guard:
    // they answer with the user's own. (An accessor cannot be declared over `ws`'s typings,
    // which declare these as plain properties.)
    for (const name of ["onopen", "onerror", "onclose", "onmessage"]) {
      const inherited = Object.getOwnPropertyDescriptor(WebSocket.prototype, name)!
      Object.defineProperty(this.prototype, name, {
        enumerable: true,
        get(this: ManagedWebSocket) {
          const listener = inherited.get!.call(this)
          return guarded.get(listener) ?? listener
        },
        set: inherited.set!
      })
    }
  }
}

export class ConnectionImpl implements Connection {
  readonly [TypeId]: TypeId = TypeId
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined
  /** When the outstanding heartbeat ping was sent; 0 when none is outstanding. */
  pingSentAt = 0
  /** The heartbeat's next step (see `Heartbeat.make`), stopped when the actor ends. */
  heartbeatTimer: ReturnType<typeof setTimeout> | undefined = undefined
  /** Ends the actor's fiber with the heartbeat's failure. */
  heartbeatMissed: ((failure: Effect.Effect<never, HeartbeatTimeout>) => void) | undefined = undefined
  /** The first error seen as the connection ends (logged when the actor ends). */
  failure: EndError | undefined = undefined
  /** Why the connection is ending, when something other than a plain close ends it. */
  endReason: ConnectionEnd | undefined = undefined
  closeInfo: CloseInfo | undefined = undefined

  private ownScope: Scope.CloseableScope | undefined = undefined
  /** Inbound messages gathered for a consumer still to come; see `bufferMessages`. */
  private inbox: Inbox | undefined = undefined
  private finished = false

  constructor(
    readonly socket: ManagedWebSocket,
    readonly context: ConnectionContext,
    /** The slot this connection holds in the manager's counts. */
    readonly reservation: Reservation,
    /** Takes a connection out of the manager's registry; idempotent, and shared by all connections. */
    private readonly unregister: (connection: ConnectionImpl) => void
  ) {
    socket.connection = this
  }

  get id(): string {
    return this.context.id
  }

  /**
   * Made on first use: most connections never need one, and a scope with its finalizer map is a
   * good part of an idle connection's bytes. Asked for after the end, it comes closed, so a
   * finalizer added to it runs at once.
   */
  get scope(): Scope.Scope {
    if (this.ownScope === undefined) {
      this.ownScope = Effect.runSync(Scope.make())
      if (this.finished) Effect.runSync(Scope.close(this.ownScope, Exit.void))
    }
    return this.ownScope
  }

  /**
   * The actor's end: stop the heartbeat and leave the registry; what is left is closing the scope,
   * with how the actor ended, when there is one.
   */
  finish(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> | undefined {
    this.finished = true
    clearTimeout(this.heartbeatTimer)
    this.heartbeatMissed = undefined
    this.unregister(this)
    return this.ownScope === undefined ? undefined : Scope.close(this.ownScope, exit)
  }

  /** A user handler or listener failed: close this connection, and only this one, with 1011. */
  fail(cause: unknown): void {
    this.failure ??= new HandlerFailed({ connectionId: this.id, cause })
    this.closeSocket(CLOSE_INTERNAL_ERROR, "Internal error", "handler-failed")
  }

  /** `ws` refused what the peer sent and is closing the socket itself. */
  protocolError(error: Error): void {
    this.failure ??= error
    this.endReason ??= "protocol-error"
  }

  /** The peer missed its heartbeat: cut it, with no close handshake it could not answer. */
  heartbeatTimeout(error: HeartbeatTimeout): void {
    this.failure ??= error
    this.endReason ??= "heartbeat-timeout"
    this.socket.terminate()
  }

  /** How the connection ended, or is ending. */
  get end(): ConnectionEnd {
    return this.closeInfo?.end ?? this.endReason ?? "normal"
  }

  /** The socket is closed: leave the registry now, and end the actor, whose finalizers release the rest. */
  ended(code: number, reason: Buffer | string): void {
    this.closeInfo ??= {
      code,
      reason: reason.toString(),
      end: this.endReason ?? (code === CLOSE_ABNORMAL ? "connection-lost" : "normal"),
      error: this.failure
    }
    this.unregister(this)
    this.fiber?.unsafeInterruptAsFork(FiberId.none)
  }

  /**
   * The one place a connection is closed: a close handshake, or a cut when it cannot finish.
   * `end` says why, for `closeInfo` and the ends metric; it counts only if this call is what
   * closes the connection (a connection already closing keeps the reason it had).
   */
  closeSocket(code: number, reason: string, end?: ConnectionEnd): void {
    const state = this.socket.readyState
    if (state > WebSocket.OPEN) return
    if (end !== undefined) this.endReason ??= end
    if (state === WebSocket.OPEN) this.socket.close(code, reason)
    else this.socket.terminate()
  }

  terminate(): void {
    this.socket.terminate()
  }

  get isOpen(): boolean {
    return this.socket.readyState === WebSocket.OPEN
  }

  send(message: unknown): Effect.Effect<void, MessageEncodeError | SocketNotOpen> {
    return Effect.suspend((): Effect.Effect<void, MessageEncodeError | SocketNotOpen> => {
      const encoded = Encode.encode(message)
      if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
      return Encode.write(this.socket, encoded.right)
        ? Effect.void
        : Effect.fail(new SocketNotOpen({ readyState: this.socket.readyState }))
    })
  }

  close(code = 1000, reason = ""): Effect.Effect<void, InvalidClose> {
    return Effect.flatMap(checkClose(code, reason), () => Effect.sync(() => this.closeSocket(code, reason)))
  }

  get closed(): Effect.Effect<CloseInfo> {
    return Effect.async<CloseInfo>((resume) => {
      if (this.closeInfo !== undefined) return resume(Effect.succeed(this.closeInfo))
      // `emit` has set `closeInfo` by the time any 'close' listener runs.
      const onClose = () => resume(Effect.succeed(this.closeInfo!))
      this.socket.once("close", onClose)
      return Effect.sync(() => this.socket.off("close", onClose))
    })
  }

  /**
   * Starts buffering inbound messages now, for a consumer that comes later: a handler's fiber
   * starts after `accept` returns, and what arrives meanwhile must not be lost.
   */
  bufferMessages(): Effect.Effect<void> {
    return Effect.map(openInbox(this.socket), (inbox) => {
      this.inbox = inbox
    })
  }

  /**
   * Built only when consumed (the first consumer takes over what `bufferMessages` gathered);
   * messages are handed over in chunks. The buffer is bounded by backpressure, not by dropping:
   * past `INBOUND_HIGH_WATER` waiting messages the socket stops reading (TCP pushes back on the
   * sender), and it reads again once the consumer has caught up.
   */
  get messages(): Stream.Stream<Message> {
    return Stream.unwrapScoped(
      Effect.gen(this, function*() {
        const inbox = this.inbox ?? (yield* openInbox(this.socket))
        this.inbox = undefined
        yield* Effect.addFinalizer(() => Effect.sync(inbox.detach))
        return Mailbox.toStream(inbox.mailbox).pipe(
          Stream.mapChunks((chunk) => {
            inbox.drained()
            return chunk
          })
        )
      })
    )
  }
}

interface Inbox {
  readonly mailbox: Mailbox.Mailbox<Message>
  /** The consumer took what was waiting: read again if the socket was paused. */
  readonly drained: () => void
  readonly detach: () => void
}

const openInbox = (socket: ManagedWebSocket): Effect.Effect<Inbox> =>
  Effect.map(Mailbox.make<Message>(), (mailbox) => {
    const backlog = () => Option.getOrElse(mailbox.unsafeSize(), () => 0)
    const onMessage = (data: Buffer, isBinary: boolean) => {
      mailbox.unsafeOffer(isBinary ? data : data.toString())
      if (backlog() >= INBOUND_HIGH_WATER && !socket.isPaused) socket.pause()
    }
    const onClose = () => mailbox.unsafeDone(Exit.void)
    if (socket.readyState >= WebSocket.CLOSING) onClose()
    socket.on("message", onMessage)
    socket.once("close", onClose)
    return {
      mailbox,
      drained: () => {
        if (socket.isPaused && backlog() <= INBOUND_LOW_WATER) socket.resume()
      },
      detach: () => {
        socket.off("message", onMessage)
        socket.off("close", onClose)
        if (socket.isPaused) socket.resume()
      }
    }
  })

/** Inbound messages a `messages` consumer may fall behind by before the socket stops reading. */
const INBOUND_HIGH_WATER = 1024
const INBOUND_LOW_WATER = INBOUND_HIGH_WATER / 4

/** The connection a socket belongs to, if the socket was accepted by a WebSocketManager. */
export const fromSocket = (socket: unknown): Option.Option<ConnectionImpl> =>
  socket instanceof ManagedWebSocket && socket.connection !== undefined
    ? Option.some(socket.connection)
    : Option.none()
