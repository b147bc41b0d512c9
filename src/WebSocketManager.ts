/**
 * Accepts WebSocket upgrades and runs every connection as a supervised actor.
 *
 * `accept(request)` checks the upgrade (origin, subprotocol, limits, authentication), completes
 * the handshake with `ws`, and forks the connection's fiber into the manager's `FiberSet`. The
 * fiber runs the heartbeat `Schedule`; the socket's close event interrupts it, and its exit
 * gives back the connection's slot and user index entry and closes the connection's scope
 * (its channel subscriptions), however the connection ended.
 *
 * @since 0.1.0
 */
import type * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import {
  Cause,
  Config,
  Context,
  Duration,
  Effect,
  Either,
  Exit,
  FiberSet,
  Layer,
  Metric,
  Option,
  Schedule,
  Scope
} from "effect"
import type { ConfigError } from "effect/ConfigError"
import { randomUUID } from "node:crypto"
import type WebSocket from "ws"
import * as ClusterBus from "./ClusterBus.js"
import type { Connection, ConnectionContext } from "./Connection.js"
import type { AcceptError, ClusterUnavailable, InvalidClose, InvalidOptions } from "./errors.js"
import {
  ClusterPublishFailed,
  ConnectionTimeout,
  FilterNotSerializable,
  HandlerFailed,
  HandshakeFailed,
  HeartbeatTimeout,
  ManagerClosed
} from "./errors.js"
import type { MessageEncodeError } from "./errors.js"
import * as Heartbeat from "./Heartbeat.js"
import type { Identity } from "./internal/authenticate.js"
import { anonymous, authenticate } from "./internal/authenticate.js"
import * as ClusterEnvelope from "./internal/clusterEnvelope.js"
import { checkClose, ConnectionImpl, endCounters } from "./internal/connection.js"
import * as Encode from "./internal/encode.js"
import { FanOut } from "./internal/fanout.js"
import * as Handshake from "./internal/handshake.js"
import type { Reservation } from "./internal/registry.js"
import { ConnectionRegistry, registries } from "./internal/registry.js"
import { rawUpgradeOf, UpgradeResponse } from "./internal/upgrade.js"
import type { RawUpgrade } from "./internal/upgrade.js"
import type { WebSocketManagerConfig } from "./options.js"
import { decode, WebSocketManagerOptions } from "./options.js"

export type { WebSocketManagerConfig, WebSocketManagerOptions } from "./options.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-websocket-manager/WebSocketManager")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * @since 0.1.0
 * @category models
 */
export interface AcceptOptions {
  /** Insist on this subprotocol: the client must offer it, or the upgrade is refused with 400. */
  readonly protocol?: string | undefined
  /**
   * The connection's behaviour. It runs as long as the connection: when it completes the
   * connection closes with 1000, when it fails the connection closes with 1011, and nothing
   * else is affected.
   */
  readonly handler?: ((connection: Connection) => Effect.Effect<unknown, unknown>) | undefined
}

/**
 * What `accept` resolves to: the open socket, the response to return from a fetch handler, and
 * what is known of the connection.
 *
 * @since 0.1.0
 * @category models
 */
export interface Accepted {
  readonly socket: WebSocket
  readonly response: Response
  readonly context: ConnectionContext
  readonly connection: Connection
}

/**
 * @since 0.1.0
 * @category models
 */
export type BroadcastFilter = (socket: WebSocket, context: ConnectionContext) => boolean

/**
 * @since 0.1.0
 * @category models
 */
export interface BroadcastOptions {
  /** This node's connections only, even with a cross-node bus (the only way to use a filter there). */
  readonly local?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category errors
 */
export type BroadcastError = MessageEncodeError | ClusterPublishFailed | FilterNotSerializable

/**
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  /** Open connections. */
  readonly connections: number
  /** Upgrades being authenticated. */
  readonly pending: number
  /** Live connection fibers. */
  readonly fibers: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface WebSocketManager {
  readonly [TypeId]: TypeId
  readonly config: WebSocketManagerConfig
  readonly accept: (
    request: Request | HttpServerRequest.HttpServerRequest,
    options?: AcceptOptions
  ) => Effect.Effect<Accepted, AcceptError>
  readonly activeConnections: Effect.Effect<number>
  readonly connections: Effect.Effect<ReadonlyArray<Connection>>
  readonly userConnections: (userId: string) => Effect.Effect<ReadonlyArray<Connection>>
  /**
   * Encodes once, frames once, writes to every open connection the filter keeps; the count reached
   * on this node. A connection over the `broadcast` option's bound is handled by its policy
   * (counted in `broadcastMetrics`). With a cross-node bus the message is also published once for
   * every other node's connections: a filter then needs `local: true` (`FilterNotSerializable`
   * otherwise), and a message the bus cannot take fails with `ClusterPublishFailed`.
   */
  readonly broadcast: (
    message: unknown,
    filter?: BroadcastFilter,
    options?: BroadcastOptions
  ) => Effect.Effect<number, BroadcastError>
  /**
   * Every open socket of the user, on this node and, with a cross-node bus, on every other node:
   * the count reached on this node.
   */
  readonly sendToUser: (
    userId: string,
    message: unknown
  ) => Effect.Effect<number, MessageEncodeError | ClusterPublishFailed>
  /**
   * Open connections across the cluster: this node's live count plus every other node's last
   * announced one (refreshed every third of `presenceTtl`). This node's count without a bus.
   */
  readonly clusterConnections: Effect.Effect<number, ClusterUnavailable>
  /**
   * Stops accepting, sends every connection a close frame after what is already queued for it,
   * waits for the close handshakes up to `closeTimeout`, then cuts the rest. A code or reason the
   * protocol does not allow fails with `InvalidClose` first, and nothing changes.
   */
  readonly close: (code?: number, reason?: string) => Effect.Effect<void, InvalidClose>
  readonly stats: Effect.Effect<Stats>
}

/**
 * @since 0.1.0
 * @category tags
 */
export const WebSocketManager: Context.Tag<WebSocketManager, WebSocketManager> = Context.GenericTag<WebSocketManager>(
  "effect-websocket-manager/WebSocketManager"
)

/**
 * What `broadcast` wrote and what slow sockets did not get, by the `broadcast` option's policy:
 * `websocket_broadcast_delivered_total` and `websocket_broadcast_dropped_total`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const broadcastMetrics = {
  delivered: Metric.counter("websocket_broadcast_delivered_total", {
    description: "messages broadcast written to sockets",
    incremental: true
  }),
  dropped: Metric.counter("websocket_broadcast_dropped_total", {
    description: "messages broadcast that slow sockets did not get",
    incremental: true
  })
}

const webRequestOf = (request: Request | HttpServerRequest.HttpServerRequest): Request | undefined => {
  if (request instanceof Request) return request
  return request.source instanceof Request ? request.source : undefined
}

/**
 * `randomUUID()` builds its text by concatenation, and kept as it comes it is a rope of 14
 * strings (~450 bytes per connection); copied once, it is one flat string of 36 characters.
 */
const flatId = () => Buffer.from(randomUUID(), "latin1").toString("latin1")

const contextOf = (
  request: Request,
  raw: RawUpgrade,
  socket: WebSocket,
  protocol: string,
  userId: string | undefined,
  user: unknown
): ConnectionContext => ({
  id: flatId(),
  userId,
  user,
  protocol,
  extensions: socket.extensions,
  remoteAddress: raw.request.socket.remoteAddress ?? "",
  url: request.url,
  // Node built this object for the handshake already; sharing it costs nothing per connection.
  headers: raw.request.headers,
  connectedAt: new Date()
})

/** A handler's failure is the user's bug, worth a warning; the other ends are routine, kept for debugging. */
const logEnd = (connection: ConnectionImpl): Effect.Effect<void> | undefined => {
  const error = connection.failure
  if (error === undefined) return undefined
  const log = error instanceof HandlerFailed
    ? Effect.logWarning(error.message, Cause.die(error.cause))
    : Effect.logDebug(error.message)
  return Effect.annotateLogs(log, { connectionId: connection.id, end: connection.end })
}

/**
 * What a connection's fiber runs when the heartbeat is off. Not `Effect.never`, which keeps a
 * timer of its own per fiber to hold the process open: the connection's socket does that.
 */
const untilEnded: Effect.Effect<never> = Effect.async<never>(() => {})

const noTags: ReadonlyArray<never> = []

const PRESENCE_GROUP = "connections"

/**
 * With a cross-node bus: every other node's broadcasts reach this node's connections, a user's
 * messages reach that user's connections here (its topic is subscribed only while the user has
 * one), and this node's connection count is announced every third of its TTL, for as long as the
 * manager's scope is open.
 */
const joinCluster = (
  bus: ClusterBus.ClusterBus,
  origin: Buffer,
  registry: ConnectionRegistry,
  fanOut: FanOut,
  runFork: <A, E>(effect: Effect.Effect<A, E>) => unknown,
  presenceMember: string,
  presenceTtl: number
) =>
  Effect.gen(function*() {
    yield* ClusterEnvelope.listen(bus, origin, ClusterEnvelope.topics.everyone, (received) => {
      fanOut.send(registry.connections.values(), [received.encoded], [true])
    })
    const userTopics = new Map<string, Scope.CloseableScope>()
    registry.onUserPresence = (userId, present) => {
      if (present) {
        const scope = Effect.runSync(Scope.make())
        userTopics.set(userId, scope)
        Effect.runSync(Scope.extend(
          ClusterEnvelope.listen(bus, origin, ClusterEnvelope.topics.user(userId), (received) => {
            const sockets = registry.userSet(userId)
            if (sockets !== undefined) fanOut.send(sockets.values(), [received.encoded], [true])
          }),
          scope
        ))
      } else {
        const scope = userTopics.get(userId)
        userTopics.delete(userId)
        if (scope !== undefined) runFork(Scope.close(scope, Exit.void))
      }
    }
    yield* Effect.addFinalizer(() =>
      Effect.forEach(userTopics.values(), (scope) => Scope.close(scope, Exit.void), { discard: true })
    )
    const announce = Effect.suspend(() =>
      bus.announce(PRESENCE_GROUP, presenceMember, String(registry.size), presenceTtl)
    ).pipe(
      Effect.catchAll((error) => Effect.logWarning(`Could not announce this node's connection count: ${error.message}`))
    )
    yield* Effect.forkScoped(Effect.repeat(announce, Schedule.spaced(Duration.millis(Math.floor(presenceTtl / 3)))))
  })

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options?: WebSocketManagerOptions
): Effect.Effect<WebSocketManager, InvalidOptions, Scope.Scope> =>
  Effect.gen(function*() {
    const config = yield* decode(WebSocketManagerOptions, options)
    const server = Handshake.makeServer(config)
    const registry = new ConnectionRegistry(config)
    const fibers = yield* FiberSet.make<unknown, unknown>()
    const runFork = yield* FiberSet.runtime(fibers)<never>()
    let closing = false
    // The same bounded fan-out as a Broadcaster channel's, with the `broadcast` option's bound and policy.
    const fanOut = new FanOut(config.broadcast, broadcastMetrics)
    const bus = Option.getOrElse(yield* Effect.serviceOption(ClusterBus.ClusterBus), () => ClusterBus.local)
    // Its own origin and presence entry, so that two managers sharing a bus count and reach each other.
    const origin = ClusterEnvelope.makeOrigin()
    const presenceMember = origin.toString()
    if (bus.crossNode) yield* joinCluster(bus, origin, registry, fanOut, runFork, presenceMember, config.presenceTtl)

    // Shared by every connection: no per-connection closure may be made inside `establish`, whose
    // scope (which a closure keeps alive whole) holds the upgrade request and its raw socket parts.
    const unregister = (connection: ConnectionImpl) => registry.remove(connection, connection.reservation)
    const heartbeat = config.heartbeatInterval > 0
      ? yield* Heartbeat.make(config.heartbeatInterval, config.heartbeatTimeout)
      : () => untilEnded

    /**
     * The actor's end, as an observer of its fiber rather than `Effect.onExit`, whose frames stay on
     * every idle fiber's stack (~1 KB per connection). What must run as an Effect (a log, the
     * connection scope's finalizers) is rare and runs in a fiber of its own, forked into the same
     * FiberSet so that `close` and `stats` wait for it; the rest is done here, synchronously.
     */
    const end = (connection: ConnectionImpl, exit: Exit.Exit<unknown, unknown>) => {
      const missed = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
      if (Option.isSome(missed) && missed.value instanceof HeartbeatTimeout) connection.heartbeatTimeout(missed.value)
      // Only an unexpected end of the fiber leaves the socket open; the manager is shutting it down.
      if (connection.isOpen && !closing) connection.closeSocket(1001, "Going away", "server-shutdown")
      endCounters[connection.end].unsafeUpdate(1, noTags)
      const release = connection.finish(exit)
      const log = logEnd(connection)
      if (log !== undefined || release !== undefined) {
        runFork(Effect.zipRight(log ?? Effect.void, release ?? Effect.void))
      }
    }

    const runHandler = (connection: ConnectionImpl, handler: NonNullable<AcceptOptions["handler"]>) =>
      // Called inside the fiber: a handler that throws before returning an Effect fails like one that fails.
      Effect.suspend(() => handler(connection)).pipe(
        Effect.matchCauseEffect({
          onFailure: (cause) =>
            Cause.isInterruptedOnly(cause) ? Effect.void : Effect.sync(() => connection.fail(Cause.squash(cause))),
          onSuccess: () => Effect.sync(() => connection.closeSocket(1000, ""))
        }),
        Effect.forkIn(connection.scope)
      )

    const lifecycle = (connection: ConnectionImpl, handler: AcceptOptions["handler"]) =>
      handler === undefined ? heartbeat(connection) : Effect.zipRight(runHandler(connection, handler), heartbeat(connection))

    const fork = (connection: ConnectionImpl, handler: AcceptOptions["handler"]) => {
      const fiber = runFork(lifecycle(connection, handler))
      connection.fiber = fiber
      fiber.addObserver((exit) => end(connection, exit))
    }

    const connectionTimeout = Duration.millis(config.connectionTimeout)
    const onConnectionTimeout = () => new ConnectionTimeout({ timeoutMillis: config.connectionTimeout })

    /**
     * The handshake and the registration, once the identity is known: synchronous, so nothing can
     * come between them. The caller forks the fiber, and gives the slot back on any failure.
     */
    const admit = (
      request: Request,
      raw: RawUpgrade,
      offered: ReadonlyArray<string>,
      protocol: string,
      reservation: Reservation,
      identity: Identity
    ): Either.Either<ConnectionImpl, AcceptError> => {
      if (identity.userId !== undefined) {
        const user = registry.reserveUser(reservation, identity.userId)
        if (Either.isLeft(user)) return Either.left(user.left)
      }
      if (closing) return Either.left(new ManagerClosed())
      const socket = Handshake.complete(server, raw, protocol, offered)
      if (Either.isLeft(socket)) return Either.left(socket.left)
      const context = contextOf(request, raw, socket.right, protocol, identity.userId, identity.user)
      const connection = new ConnectionImpl(socket.right, context, reservation, unregister)
      registry.add(connection)
      return Either.right(connection)
    }

    const acceptedOf = (connection: ConnectionImpl): Accepted => ({
      socket: connection.socket,
      response: new UpgradeResponse(),
      context: connection.context,
      connection
    })

    /**
     * Authentication, then the handshake, the registration and the fork of the connection's fiber
     * as one step that cannot be half-done: only the authentication can be interrupted (or time
     * out), so no exit leaves an open, registered socket without its fiber, or a slot not given back.
     *
     * Without authentication and handler nothing in it waits: it runs as one synchronous step, with
     * no generator, interruption mask or timeout race (two fibers and a timer) on every upgrade.
     */
    const establish = (
      request: Request,
      raw: RawUpgrade,
      offered: ReadonlyArray<string>,
      protocol: string,
      reservation: Reservation,
      handler: AcceptOptions["handler"]
    ): Effect.Effect<Accepted, AcceptError> => {
      const release = () => Effect.sync(() => registry.release(reservation))
      if (config.authentication === undefined && handler === undefined) {
        return Effect.suspend(() => {
          const admitted = admit(request, raw, offered, protocol, reservation, anonymous)
          if (Either.isLeft(admitted)) return Effect.fail(admitted.left)
          fork(admitted.right, undefined)
          return Effect.succeed(acceptedOf(admitted.right))
        }).pipe(Effect.onError(release))
      }
      return Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          const identity = config.authentication === undefined
            ? anonymous
            : yield* restore(
              Effect.timeoutFail(authenticate(config.authentication, request, offered), {
                duration: connectionTimeout,
                onTimeout: onConnectionTimeout
              })
            )
          const connection = yield* admit(request, raw, offered, protocol, reservation, identity)
          if (handler !== undefined) yield* connection.bufferMessages()
          fork(connection, handler)
          return acceptedOf(connection)
        }).pipe(Effect.onError(release))
      )
    }

    // Checks that answer at once, as plain values rather than a generator: this runs on every upgrade.
    const accept: WebSocketManager["accept"] = (input, acceptOptions) =>
      Effect.suspend((): Effect.Effect<Accepted, AcceptError> => {
        if (closing) return Effect.fail(new ManagerClosed())
        // Before the socket lookup: a request that is no upgrade is the client's mistake (426), not a 500.
        const upgrade = Handshake.checkUpgrade(input)
        if (Either.isLeft(upgrade)) return Effect.fail(upgrade.left)
        const request = webRequestOf(input)
        if (request === undefined) {
          return Effect.fail(
            new HandshakeFailed({
              reason: "NoUnderlyingSocket",
              detail: "serve the app with NodeServer so its upgrades can be accepted"
            })
          )
        }
        const raw = rawUpgradeOf(request)
        if (raw === undefined) {
          return Effect.fail(
            new HandshakeFailed({
              reason: "NoUnderlyingSocket",
              detail: "the request did not come through the Node adapter (serve, attach or NodeServer)"
            })
          )
        }
        const origin = Handshake.checkOrigin(request, config.allowedOrigins)
        if (Either.isLeft(origin)) return Effect.fail(origin.left)
        const offered = Handshake.offeredProtocols(request)
        const protocol = Handshake.negotiateProtocol(offered, config.protocols, acceptOptions?.protocol)
        if (Either.isLeft(protocol)) return Effect.fail(protocol.left)
        const reservation = registry.reserve(raw.request.socket.remoteAddress ?? "")
        if (Either.isLeft(reservation)) return Effect.fail(reservation.left)
        return establish(request, raw, offered, protocol.right, reservation.right, acceptOptions?.handler)
      })

    /** Issues the bus publish of what was delivered here; its failure carries the local count. */
    const publishToCluster = (topic: string, message: unknown, encoded: Encode.Encoded, delivered: number) =>
      Effect.as(
        Effect.mapError(
          bus.publish(topic, ClusterEnvelope.wrap(origin, message, encoded)),
          (cause) => new ClusterPublishFailed({ topic, delivered, cause })
        ),
        delivered
      )

    const broadcast: WebSocketManager["broadcast"] = (message, filter, broadcastOptions) =>
      Effect.suspend((): Effect.Effect<number, BroadcastError> => {
        const crossNode = bus.crossNode && broadcastOptions?.local !== true
        if (crossNode && filter !== undefined) return Effect.fail(new FilterNotSerializable())
        const encoded = Encode.encode(message)
        if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
        // The filter runs over every connection before any write, so one that throws delivers nothing.
        const targets = filter === undefined
          ? registry.connections.values()
          : Array.from(registry.connections.values()).filter((c) => filter(c.socket, c.context))
        const delivered = fanOut.send(targets, [encoded.right], [true])[0]!
        return crossNode
          ? publishToCluster(ClusterEnvelope.topics.everyone, message, encoded.right, delivered)
          : Effect.succeed(delivered)
      })

    const sendToUser: WebSocketManager["sendToUser"] = (userId, message) =>
      Effect.suspend((): Effect.Effect<number, MessageEncodeError | ClusterPublishFailed> => {
        const encoded = Encode.encode(message)
        if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
        const sockets = registry.userSet(userId)
        const delivered = sockets === undefined ? 0 : fanOut.send(sockets.values(), [encoded.right], [true])[0]!
        return bus.crossNode
          ? publishToCluster(ClusterEnvelope.topics.user(userId), message, encoded.right, delivered)
          : Effect.succeed(delivered)
      })

    const clusterConnections = Effect.map(bus.members(PRESENCE_GROUP), (states) => {
      let total = registry.size
      for (const [member, state] of states) if (member !== presenceMember) total += Number(state) || 0
      return total
    })

    const close: WebSocketManager["close"] = (code = 1001, reason = "Server shutdown") =>
      Effect.gen(function*() {
        yield* checkClose(code, reason)
        closing = true
        for (const connection of registry.connections.values()) connection.closeSocket(code, reason, "server-shutdown")
        const drained = yield* FiberSet.awaitEmpty(fibers).pipe(
          Effect.timeout(Duration.millis(config.closeTimeout)),
          Effect.option
        )
        if (Option.isNone(drained)) {
          for (const connection of registry.connections.values()) connection.terminate()
          yield* FiberSet.awaitEmpty(fibers)
        }
        // A goodbye, so that the other nodes stop counting this one at once rather than after its TTL.
        if (bus.crossNode) yield* Effect.ignore(bus.announce(PRESENCE_GROUP, presenceMember, "0", 1))
      })

    yield* Effect.addFinalizer(() => Effect.orDie(close()))

    const manager: WebSocketManager = {
      [TypeId]: TypeId,
      config,
      accept,
      activeConnections: Effect.sync(() => registry.size),
      connections: Effect.sync(() => Array.from(registry.connections.values())),
      userConnections: (userId) => Effect.sync(() => registry.ofUser(userId)),
      broadcast,
      sendToUser,
      clusterConnections,
      close,
      stats: Effect.map(FiberSet.size(fibers), (size) => ({
        connections: registry.size,
        pending: registry.pending,
        fibers: size
      }))
    }
    registries.set(manager, registry)
    return manager
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: WebSocketManagerOptions): Layer.Layer<WebSocketManager, InvalidOptions> =>
  Layer.scoped(WebSocketManager, make(options))

/**
 * The manager with its options read from `Config`, e.g. `Config.integer("WS_MAX_CONNECTIONS")`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<WebSocketManagerOptions>
): Layer.Layer<WebSocketManager, InvalidOptions | ConfigError> =>
  Layer.scoped(WebSocketManager, Effect.flatMap(Config.unwrap(config), make))
