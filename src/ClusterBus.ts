/**
 * The cluster bus: how broadcasts, channel messages and user messages reach the other processes
 * (nodes) of a service. The Broadcaster and the manager consume it; an engine implements it.
 *
 * Its interface is deliberately small, a pub/sub of opaque payloads by topic plus a presence
 * table with expiry, so that any broker with those two (Redis, NATS with its KV store) fits it
 * without the Broadcaster knowing which one runs. What travels in a payload (format version,
 * origin node, the encoded message) is the consumers' business.
 *
 * Without a bus in the context the services use `local`: nothing crosses, which is the
 * single-process behaviour and costs nothing.
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import type { Duration } from "effect"
import { Context, Effect, Layer, Metric } from "effect"
import { randomUUID } from "node:crypto"
import type { ClusterUnavailable } from "./errors.js"
import { PresenceTable } from "./internal/presence.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-websocket-manager/ClusterBus")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * @since 0.1.0
 * @category models
 */
export interface ClusterBus {
  readonly [TypeId]: TypeId
  /**
   * This node's name on the engine (with Redis, its connections' client names), for operators.
   * Envelopes carry their service's own origin id instead, so that two services sharing a bus
   * still reach each other.
   */
  readonly nodeId: string
  /** False for `local`: the services then skip the encoding and publishing meant for other nodes. */
  readonly crossNode: boolean
  /**
   * Hands a payload to the engine for every node subscribed to the topic, this one included (its
   * consumers drop their own echo). Issued synchronously, so one caller's publishes keep their
   * order; fails when the engine cannot take it, never waits for a connection that is down.
   */
  readonly publish: (topic: string, payload: Buffer) => Effect.Effect<void, ClusterUnavailable>
  /**
   * Calls `listener` with every payload published on the topic while the scope is open. The
   * engine's own subscription is taken with the first listener of a topic and dropped with the
   * last, and taken again after a reconnection.
   */
  readonly subscribe: (topic: string, listener: (payload: Buffer) => void) => Effect.Effect<void, never, Scope.Scope>
  /** Sets this member's state in a group; it expires after `ttl` unless announced again. */
  readonly announce: (
    group: string,
    member: string,
    state: string,
    ttl: Duration.DurationInput
  ) => Effect.Effect<void, ClusterUnavailable>
  /** The unexpired states of a group, by member. */
  readonly members: (group: string) => Effect.Effect<ReadonlyMap<string, string>, ClusterUnavailable>
}

/**
 * @since 0.1.0
 * @category tags
 */
export const ClusterBus: Context.Tag<ClusterBus, ClusterBus> = Context.GenericTag<ClusterBus>(
  "effect-websocket-manager/ClusterBus"
)

/**
 * What the services read off the bus: `websocket_cluster_received_total` (envelopes from other
 * nodes) and `websocket_cluster_malformed_total` (payloads dropped because they were not a whole
 * envelope: another program publishing on the topic, or an unknown format version).
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics = {
  received: Metric.counter("websocket_cluster_received_total", {
    description: "cluster envelopes received from other nodes",
    incremental: true
  }),
  malformed: Metric.counter("websocket_cluster_malformed_total", {
    description: "cluster payloads dropped because they were not a valid envelope",
    incremental: true
  })
}

/**
 * A node id: random, so that a restarted process is a new node.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeNodeId = (): string => randomUUID()

/**
 * One process alone: publishing does nothing, nothing arrives, presence is kept in memory.
 *
 * @since 0.1.0
 * @category constructors
 */
export const local: ClusterBus = (() => {
  const presence = new PresenceTable()
  return {
    [TypeId]: TypeId,
    nodeId: makeNodeId(),
    crossNode: false,
    publish: () => Effect.void,
    subscribe: () => Effect.void,
    announce: (group, member, state, ttl) => Effect.sync(() => presence.set(group, member, state, ttl)),
    members: (group) => Effect.sync(() => presence.read(group))
  }
})()

/**
 * @since 0.1.0
 * @category layers
 */
export const layerLocal: Layer.Layer<ClusterBus> = Layer.succeed(ClusterBus, local)

/**
 * Several nodes in one process, each a `memory(hub)` bus: for tests and examples that need a
 * cluster without a broker. Delivery is asynchronous and in publish order, as with a broker.
 *
 * @since 0.1.0
 * @category models
 */
export class MemoryHub {
  /** @internal */
  readonly topics = new Map<string, Set<(payload: Buffer) => void>>()
  /** @internal */
  readonly presence = new PresenceTable()
}

/**
 * A node on a `MemoryHub`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const memory = (hub: MemoryHub): ClusterBus => ({
  [TypeId]: TypeId,
  nodeId: makeNodeId(),
  crossNode: true,
  publish: (topic, payload) =>
    Effect.sync(() => {
      const listeners = hub.topics.get(topic)
      if (listeners === undefined) return
      const receivers = Array.from(listeners)
      setImmediate(() => {
        for (const listener of receivers) listener(payload)
      })
    }),
  subscribe: (topic, listener) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const listeners = hub.topics.get(topic) ?? new Set()
        hub.topics.set(topic, listeners.add(listener))
      }),
      () =>
        Effect.sync(() => {
          const listeners = hub.topics.get(topic)
          listeners?.delete(listener)
          if (listeners?.size === 0) hub.topics.delete(topic)
        })
    ),
  announce: (group, member, state, ttl) => Effect.sync(() => hub.presence.set(group, member, state, ttl)),
  members: (group) => Effect.sync(() => hub.presence.read(group))
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (hub: MemoryHub): Layer.Layer<ClusterBus> => Layer.sync(ClusterBus, () => memory(hub))
