/**
 * Broadcast channels. Each channel is an actor: an effect `PubSub` and one fiber that takes what
 * is published in batches and writes it to the channel's subscribed sockets, framed once, in
 * publish order. Server-side consumers (`Channel.messages`) subscribe to the same `PubSub`, and
 * with a cross-node `ClusterBus` what other nodes publish on the channel is put into it as well.
 *
 * A subscription lives in its connection's scope: a connection that ends leaves every channel
 * without anyone calling `unsubscribe`.
 *
 * Every accepted broadcast settles: delivered to the channel's subscribers of the moment (a
 * channel is never removed with a message on its way), or failed. Closing the Broadcaster (its
 * scope, or `close`) delivers what was already accepted, ends every channel and its streams,
 * and later calls that would publish, subscribe or create a channel fail with `BroadcasterClosed`.
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import {
  Context,
  Effect,
  Either,
  Exit,
  Fiber,
  FiberSet,
  Layer,
  Metric,
  Option,
  PubSub,
  Scope as ScopeModule,
  Stream
} from "effect"
import type WebSocket from "ws"
import type { Connection } from "./Connection.js"
import * as ClusterBus from "./ClusterBus.js"
import type { InvalidOptions, MessageEncodeError } from "./errors.js"
import { BroadcasterClosed, ClusterPublishFailed, FilterNotSerializable, NotAManagedSocket } from "./errors.js"
import type { ChannelMetrics, Envelope } from "./internal/channel.js"
import { ChannelActor } from "./internal/channel.js"
import * as ClusterEnvelope from "./internal/clusterEnvelope.js"
import type { ConnectionImpl } from "./internal/connection.js"
import { fromSocket } from "./internal/connection.js"
import * as Encode from "./internal/encode.js"
import type { BroadcasterConfig, BroadcasterOptions } from "./options.js"
import { BroadcasterOptions as BroadcasterOptionsSchema, decode } from "./options.js"

export type { BroadcasterOptions, SlowConsumerPolicy } from "./options.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-websocket-manager/Broadcaster")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * A subscriber: an accepted socket (what the facade's `accept` returns) or its `Connection`.
 *
 * @since 0.1.0
 * @category models
 */
export type Subscriber = WebSocket | Connection

/**
 * @since 0.1.0
 * @category models
 */
export interface BroadcastOptions {
  /** This socket (or connection) does not get the message, typically its sender. */
  readonly exclude?: Subscriber | undefined
  /**
   * Only sockets for which it returns true get the message. A function cannot reach other nodes:
   * with a cross-node bus it needs `local: true`, or the broadcast fails with `FilterNotSerializable`.
   */
  readonly filter?: ((socket: WebSocket) => boolean) | undefined
  /** This node's subscribers only, even with a cross-node bus. */
  readonly local?: boolean | undefined
}

/**
 * A channel, by name: it stays valid when the channel is removed and created again.
 *
 * @since 0.1.0
 * @category models
 */
export interface Channel {
  readonly name: string
  readonly subscriberCount: number
  readonly broadcast: (
    message: unknown,
    options?: BroadcastOptions
  ) => Effect.Effect<number, BroadcastError>
  /**
   * Every message published to the channel, on any node, for server-side consumers; it ends when
   * the Broadcaster closes. Messages from other nodes come back as the publisher gave them: a
   * string, a JSON value (parsed again), or a Buffer.
   */
  readonly messages: Stream.Stream<unknown, BroadcasterClosed>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ChannelStats {
  readonly subscribers: number
  /** Messages written to sockets. */
  readonly delivered: number
  /** Messages a slow socket did not get, by the channel's policy. */
  readonly dropped: number
  /** Sockets over their bound with a `'drop-oldest'` backlog. */
  readonly backlogged: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Stats {
  readonly channels: Readonly<Record<string, ChannelStats>>
  /** Subscriptions, summed over channels. */
  readonly subscriptions: number
  /** Connections subscribed to at least one channel. */
  readonly subscribers: number
  /** Live channel fibers. */
  readonly fibers: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Broadcaster {
  readonly [TypeId]: TypeId
  /** The channel of that name, created if it does not exist. */
  readonly createChannel: (name: string) => Effect.Effect<Channel, BroadcasterClosed>
  /** Subscribing to a channel that does not exist creates it; subscribing twice is a no-op. */
  readonly subscribe: (
    subscriber: Subscriber,
    channel: string
  ) => Effect.Effect<void, NotAManagedSocket | BroadcasterClosed>
  /**
   * False (a no-op) when the channel does not exist or the socket is not subscribed. A channel
   * whose last subscriber leaves, with no stream consumer and nothing in flight, is removed.
   */
  readonly unsubscribe: (subscriber: Subscriber, channel: string) => Effect.Effect<boolean, NotAManagedSocket>
  /**
   * Resolves with the number of this node's sockets written to; 0 for a channel with no subscriber
   * here. With a cross-node bus the message is also published once for the other nodes; when the
   * bus cannot take it, it fails with `ClusterPublishFailed` (carrying the local count).
   */
  readonly broadcast: (
    channel: string,
    message: unknown,
    options?: BroadcastOptions
  ) => Effect.Effect<number, BroadcastError>
  /** The channels a socket is subscribed to. */
  readonly channelsOf: (subscriber: Subscriber) => Effect.Effect<ReadonlyArray<string>, NotAManagedSocket>
  readonly stats: Effect.Effect<Stats>
  /**
   * Delivers what was already published, shuts every channel (its fiber, PubSub and streams)
   * and refuses what comes later with `BroadcasterClosed`. Closing the Broadcaster's scope does
   * the same; a second close does nothing.
   */
  readonly close: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category errors
 */
export type BroadcastError = MessageEncodeError | BroadcasterClosed | ClusterPublishFailed | FilterNotSerializable

/**
 * @since 0.1.0
 * @category tags
 */
export const Broadcaster: Context.Tag<Broadcaster, Broadcaster> = Context.GenericTag<Broadcaster>(
  "effect-websocket-manager/Broadcaster"
)

/**
 * Per-channel metrics: `websocket_channel_delivered_total`, `websocket_channel_dropped_total`
 * and `websocket_channel_subscribers`, tagged with `channel`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics = {
  delivered: Metric.counter("websocket_channel_delivered_total", {
    description: "messages written to subscribed sockets",
    incremental: true
  }),
  dropped: Metric.counter("websocket_channel_dropped_total", {
    description: "messages slow sockets did not get",
    incremental: true
  }),
  subscribers: Metric.gauge("websocket_channel_subscribers", { description: "sockets subscribed to the channel" })
}

const channelMetrics = (name: string): ChannelMetrics => ({
  delivered: Metric.tagged(metrics.delivered, "channel", name),
  dropped: Metric.tagged(metrics.dropped, "channel", name),
  subscribers: Metric.tagged(metrics.subscribers, "channel", name)
})

const ignore = () => {}

/** What another node published, as the channel's envelope: no socket of this node is excluded. */
const remoteEnvelope = (received: ClusterEnvelope.Received): Envelope => ({
  get message() {
    return received.message
  },
  encoded: received.encoded,
  exclude: undefined,
  filter: undefined,
  done: ignore
})

/**
 * A local delivery's count, awaited after the bus publish was issued: `done` may come first
 * (no channel here) or later (the channel fiber's next batch).
 */
const settlement = () => {
  let result: Effect.Effect<number> | undefined
  let resume: ((result: Effect.Effect<number>) => void) | undefined
  return {
    done: (settled: Effect.Effect<number>) => {
      if (resume === undefined) result = settled
      else resume(settled)
    },
    wait: Effect.async<number>((callback) => {
      if (result === undefined) resume = callback
      else callback(result)
    })
  }
}

/** Enough to coalesce a burst into one write per socket without holding a socket's writes back. */
const MAX_BATCH = 256

/** The socket of a subscriber given as a socket or as its Connection. */
const socketOf = (subscriber: Subscriber): WebSocket => (subscriber as Connection).socket ?? (subscriber as WebSocket)

const connectionOf = (subscriber: Subscriber): Either.Either<ConnectionImpl, NotAManagedSocket> => {
  const connection = fromSocket(socketOf(subscriber))
  return connection._tag === "Some"
    ? Either.right(connection.value)
    : Either.left(new NotAManagedSocket({ reason: "the socket was not accepted by a WebSocketManager" }))
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (options?: BroadcasterOptions): Effect.Effect<Broadcaster, InvalidOptions, Scope.Scope> =>
  Effect.gen(function*() {
    const config: BroadcasterConfig = yield* decode(BroadcasterOptionsSchema, options)
    const bus = Option.getOrElse(yield* Effect.serviceOption(ClusterBus.ClusterBus), () => ClusterBus.local)
    const origin = ClusterEnvelope.makeOrigin()
    const fibers = yield* FiberSet.make<unknown, unknown>()
    const runFork = yield* FiberSet.runtime(fibers)<never>()
    const channels = new Map<string, ChannelActor>()
    const memberships = new Map<ConnectionImpl, Set<ChannelActor>>()
    let closed = false

    // Stops the fiber first, so that what it had taken and not delivered is delivered once, by `close`.
    const shut = (actor: ChannelActor) =>
      Effect.uninterruptible(Effect.gen(function*() {
        if (actor.fiber !== undefined) yield* Fiber.interrupt(actor.fiber)
        actor.close()
        yield* ScopeModule.close(actor.scope, Exit.void)
        yield* PubSub.shutdown(actor.pubsub)
      }))

    // The channel leaves the registry at once and is shut down in the background, so unsubscribing
    // stays synchronous for the facade. An idle channel has nothing on its way: nothing is lost.
    const removeIfIdle = (actor: ChannelActor): void => {
      if (!actor.idle || channels.get(actor.name) !== actor) return
      channels.delete(actor.name)
      runFork(shut(actor))
    }

    const open = (name: string) =>
      Effect.gen(function*() {
        if (closed) return yield* new BroadcasterClosed()
        const existing = channels.get(name)
        if (existing !== undefined) return existing
        const pubsub = yield* PubSub.unbounded<Envelope>()
        const scope = yield* ScopeModule.make()
        const mailbox = yield* ScopeModule.extend(PubSub.subscribe(pubsub), scope)
        const actor = new ChannelActor(
          name,
          { ...config, ...config.channels[name] },
          pubsub,
          mailbox,
          scope,
          channelMetrics(name),
          removeIfIdle
        )
        channels.set(name, actor)
        actor.fiber = runFork(actor.run(MAX_BATCH))
        // Other nodes' messages for the channel arrive only while it exists here, that is while
        // this node has a subscriber or a consumer of it (or a message on its way).
        if (bus.crossNode) {
          yield* ScopeModule.extend(
            ClusterEnvelope.listen(bus, origin, ClusterEnvelope.topics.channel(name), (received) => {
              if (channels.get(name) === actor) actor.publish(remoteEnvelope(received))
            }),
            scope
          )
        }
        return actor
      })

    const leaveAll = (connection: ConnectionImpl) =>
      Effect.sync(() => {
        const joined = memberships.get(connection)
        memberships.delete(connection)
        for (const actor of joined ?? []) {
          actor.remove(connection)
          removeIfIdle(actor)
        }
      })

    const subscribe: Broadcaster["subscribe"] = (subscriber, name) =>
      Effect.gen(function*() {
        const connection = yield* connectionOf(subscriber)
        if (!connection.isOpen) return yield* new NotAManagedSocket({ reason: "the socket is not open" })
        const actor = yield* open(name)
        if (!actor.add(connection)) return
        const joined = memberships.get(connection)
        if (joined !== undefined) {
          joined.add(actor)
          return
        }
        // One membership set and one finalizer per connection, kept however many channels it
        // joins and leaves, so a long-lived connection does not pile finalizers up. The finalizer
        // is a function that builds its Effect at the end: held for the connection's whole life,
        // it is one closure instead of an Effect and two closures (~180 of ~890 bytes per subscriber).
        memberships.set(connection, new Set([actor]))
        yield* ScopeModule.addFinalizerExit(connection.scope, () => leaveAll(connection))
      })

    const unsubscribe: Broadcaster["unsubscribe"] = (subscriber, name) =>
      Effect.map(connectionOf(subscriber), (connection) => {
        const actor = channels.get(name)
        if (actor === undefined || !actor.remove(connection)) return false
        memberships.get(connection)?.delete(actor)
        removeIfIdle(actor)
        return true
      })

    // One synchronous step from the `closed` check to the publish: a fiber may yield between two
    // effects, and a close in between would leave the message in a channel that no longer delivers.
    const broadcastHere = (name: string, message: unknown, options: BroadcastOptions | undefined) =>
      Effect.async<number, MessageEncodeError | BroadcasterClosed>((resume) => {
        if (closed) return resume(Effect.fail(new BroadcasterClosed()))
        const encoded = Encode.encode(message)
        if (Either.isLeft(encoded)) return resume(Effect.fail(encoded.left))
        const actor = channels.get(name)
        if (actor === undefined) return resume(Effect.succeed(0))
        const exclude = options?.exclude === undefined ? undefined : socketOf(options.exclude)
        actor.publish({ message, encoded: encoded.right, exclude, filter: options?.filter, done: resume })
      })

    /**
     * The bus publish is issued in the caller's first step, before the local delivery settles, so
     * one publisher's broadcasts reach the bus in the order they were made, whatever the channel.
     */
    const broadcastEverywhere = (name: string, message: unknown, options: BroadcastOptions | undefined) =>
      Effect.suspend((): Effect.Effect<number, BroadcastError> => {
        if (closed) return Effect.fail(new BroadcasterClosed())
        if (options?.filter !== undefined) return Effect.fail(new FilterNotSerializable())
        const encoded = Encode.encode(message)
        if (Either.isLeft(encoded)) return Effect.fail(encoded.left)
        const delivered = settlement()
        const actor = channels.get(name)
        if (actor === undefined) delivered.done(Exit.succeed(0))
        else {
          const exclude = options?.exclude === undefined ? undefined : socketOf(options.exclude)
          actor.publish({ message, encoded: encoded.right, exclude, filter: undefined, done: delivered.done })
        }
        const topic = ClusterEnvelope.topics.channel(name)
        return Effect.zipWith(
          Effect.either(bus.publish(topic, ClusterEnvelope.wrap(origin, message, encoded.right))),
          delivered.wait,
          (published, count) =>
            Either.isLeft(published)
              ? Effect.fail(new ClusterPublishFailed({ topic, delivered: count, cause: published.left }))
              : Effect.succeed(count)
        ).pipe(Effect.flatten)
      })

    const broadcast: Broadcaster["broadcast"] = (name, message, options) =>
      bus.crossNode && options?.local !== true
        ? broadcastEverywhere(name, message, options)
        : broadcastHere(name, message, options)

    const close = Effect.suspend(() => {
      if (closed) return Effect.void
      closed = true
      const actors = Array.from(channels.values())
      channels.clear()
      memberships.clear()
      return Effect.forEach(actors, shut, { discard: true })
    })
    // Added after the FiberSet, so it runs before the set interrupts the channel fibers.
    yield* Effect.addFinalizer(() => close)

    const channel = (name: string): Channel => ({
      name,
      get subscriberCount() {
        return channels.get(name)?.subscribers.size ?? 0
      },
      broadcast: (message, options) => broadcast(name, message, options),
      messages: Stream.unwrapScoped(
        Effect.gen(function*() {
          const actor = yield* Effect.acquireRelease(
            Effect.tap(open(name), (actor) => Effect.sync(() => actor.consumers++)),
            (actor) =>
              Effect.sync(() => {
                actor.consumers--
                removeIfIdle(actor)
              })
          )
          const queue = yield* PubSub.subscribe(actor.pubsub)
          return Stream.map(Stream.fromQueue(queue), (envelope) => envelope.message)
        })
      )
    })

    const stats = Effect.map(FiberSet.size(fibers), (fiberCount): Stats => {
      const perChannel: Record<string, ChannelStats> = {}
      let subscriptions = 0
      for (const [name, actor] of channels) {
        subscriptions += actor.subscribers.size
        perChannel[name] = {
          subscribers: actor.subscribers.size,
          delivered: actor.fanOut.delivered,
          dropped: actor.fanOut.dropped,
          backlogged: actor.fanOut.backlogged
        }
      }
      let subscribers = 0
      for (const joined of memberships.values()) if (joined.size > 0) subscribers++
      return { channels: perChannel, subscriptions, subscribers, fibers: fiberCount }
    })

    const broadcaster: Broadcaster = {
      [TypeId]: TypeId,
      createChannel: (name) => Effect.as(open(name), channel(name)),
      subscribe,
      unsubscribe,
      broadcast,
      channelsOf: (subscriber) =>
        Effect.map(connectionOf(subscriber), (connection) =>
          Array.from(memberships.get(connection) ?? [], (actor) => actor.name)),
      stats,
      close
    }
    return broadcaster
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: BroadcasterOptions): Layer.Layer<Broadcaster, InvalidOptions> =>
  Layer.scoped(Broadcaster, make(options))
