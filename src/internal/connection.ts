/**
 * The connection actor's state. One `ManagedWebSocket` and one `ConnectionImpl` per connection,
 * and no listeners of our own on the socket: `emit` is the single hook through which liveness,
 * the end of the connection and a throwing user listener reach the actor, so users' listeners
 * get `ws`'s events first-hand and a connection costs no closures.
 */
import { Effect, Either, Exit, Fiber, FiberId, Mailbox, Option, Scope, Stream } from "effect"
import WebSocket from "ws"
import type { CloseInfo, Connection, ConnectionContext, Message } from "../Connection.js"
import { HandlerFailed, SocketNotOpen } from "../errors.js"
import type { MessageEncodeError } from "../errors.js"
import * as Encode from "./encode.js"
import type { Reservation } from "./registry.js"

export const TypeId: unique symbol = Symbol.for("effect-websocket-manager/Connection")

export type TypeId = typeof TypeId

/** WebSocket close code for an unexpected condition on the server (RFC 6455 §7.4.1). */
const CLOSE_INTERNAL_ERROR = 1011

/**
 * `ws`'s server socket, with the connection it belongs to. `ws` constructs it through the
 * `WebSocket` option of its server, so every accepted socket is one of these.
 */
export class ManagedWebSocket extends WebSocket {
  connection: ConnectionImpl | undefined = undefined
  /** `Date.now()` of the last pong or message: any inbound traffic proves the peer alive. */
  lastSeen = Date.now()

  override emit(event: string | symbol, ...args: Array<any>): boolean {
    if (event === "message" || event === "pong") this.lastSeen = Date.now()
    // Like ws's own client set, the manager forgets a closed socket before user listeners run,
    // so a 'close' listener already sees the updated counts.
    if (event === "close") this.connection?.ended(args[0], args[1])
    // ws emits 'error' before closing with the matching code (1002, 1007, 1009); with nobody
    // listening, EventEmitter would throw it and take the process down.
    if (event === "error" && this.listenerCount("error") === 0) return false
    try {
      return super.emit(event, ...args)
    } catch (cause) {
      // A throwing listener would otherwise unwind into ws's parser and crash the process.
      this.connection?.fail(cause)
      return true
    }
  }
}

export class ConnectionImpl implements Connection {
  readonly [TypeId]: TypeId = TypeId
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined
  /** When the outstanding heartbeat ping was sent; 0 when none is outstanding. */
  pingSentAt = 0
  failure: HandlerFailed | undefined = undefined
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

  /** The actor's end: leave the registry and close the scope, with how the actor ended. */
  finish(exit: Exit.Exit<unknown, unknown>): Effect.Effect<void> {
    this.finished = true
    this.unregister(this)
    return this.ownScope === undefined ? Effect.void : Scope.close(this.ownScope, exit)
  }

  /** A user handler failed: close this connection, and only this one, with 1011. */
  fail(cause: unknown): void {
    this.failure ??= new HandlerFailed({ connectionId: this.id, cause })
    this.closeSocket(CLOSE_INTERNAL_ERROR, "Internal error")
  }

  /** The socket is closed: leave the registry now, and end the actor, whose finalizers release the rest. */
  ended(code: number, reason: Buffer | string): void {
    this.closeInfo ??= { code, reason: reason.toString() }
    this.unregister(this)
    this.fiber?.unsafeInterruptAsFork(FiberId.none)
  }

  /** The one place a connection is closed: a close handshake, or a cut when it cannot finish. */
  closeSocket(code: number, reason: string): void {
    const state = this.socket.readyState
    if (state === WebSocket.OPEN) this.socket.close(code, reason)
    else if (state === WebSocket.CONNECTING) this.socket.terminate()
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

  close(code = 1000, reason = ""): Effect.Effect<void> {
    return Effect.sync(() => this.closeSocket(code, reason))
  }

  get closed(): Effect.Effect<CloseInfo> {
    return Effect.async<CloseInfo>((resume) => {
      if (this.closeInfo !== undefined) return resume(Effect.succeed(this.closeInfo))
      const onClose = (code: number, reason: Buffer) => resume(Effect.succeed({ code, reason: reason.toString() }))
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
