import { Redis } from "ioredis"
import type { Schedule, Scope } from "effect"
import { Deferred, Duration, Effect, Exit, FiberId, FiberSet, Metric } from "effect"
import { type ClusterBus, makeNodeId, TypeId } from "../ClusterBus.js"
import type { ClusterUnavailable } from "../errors.js"
import * as Link from "./redisLink.js"

/** The decoded options of a Redis bus. @internal */
export interface RedisBusConfig {
  readonly url?: string | undefined
  readonly client?: Redis | undefined
  readonly keyPrefix: string
  readonly connectTimeout: number
  readonly commandTimeout: number
  readonly heartbeatInterval: number
  readonly reconnect: Schedule.Schedule<unknown, ClusterUnavailable>
  readonly nodeId?: string | undefined
}

/**
 * A URL fit for an error message or a log: user name and password removed, as both end up in
 * places (logs, error trackers) that must not hold credentials.
 *
 * @internal
 */
export const redact = (url: string): string => {
  try {
    const parsed = new URL(url)
    parsed.username = ""
    parsed.password = ""
    return parsed.toString()
  } catch {
    return url.replace(/\/\/[^/]*@/, "//")
  }
}

const describeClient = (client: Redis): string => {
  const { host, port, path, tls } = client.options as { host?: string; port?: number; path?: string; tls?: unknown }
  return path ? `redis+unix://${path}` : `${tls ? "rediss" : "redis"}://${host}:${port}`
}

interface Topic {
  readonly listeners: Set<{ readonly listener: (payload: Buffer) => void }>
  /** Done once the topic's first SUBSCRIBE is answered, or failed (a reconnection takes it again). */
  readonly subscribed: Deferred.Deferred<void>
}

/** @internal */
export interface Built {
  readonly bus: ClusterBus
  /** Connects both links before it returns, or fails. */
  readonly connectNow: Effect.Effect<void, ClusterUnavailable>
  /** Connects both links in the bus's fibers, never fails. */
  readonly connectInBackground: Effect.Effect<void>
}

/**
 * The bus: the publisher link (the user's client, or ours) sends PUBLISH and the presence
 * commands; the subscriber link (always ours, a duplicate of the user's client if given) holds
 * the SUBSCRIBEs of the topics that have listeners on this node.
 * Not connected yet: the caller runs one of the two ways of connecting.
 *
 * @internal
 */
export const build = (config: RedisBusConfig): Effect.Effect<Built, never, Scope.Scope> =>
  Effect.gen(function*() {
    const nodeId = config.nodeId ?? makeNodeId()
    const { commandTimeout, connectTimeout, keyPrefix, reconnect } = config
    const engine = config.client ? describeClient(config.client) : redact(config.url!)
    const options = (role: Link.Role) => Link.ownedOptions(connectTimeout, `ewm:${nodeId}:${role}`)

    const { publisher, subscriber } = yield* Effect.acquireRelease(
      Effect.sync(() => ({
        publisher: config.client
          ? Link.makeLink("publisher", config.client, false, engine)
          : Link.makeLink("publisher", new Redis(config.url!, options("publisher")), true, engine),
        subscriber: Link.makeLink(
          "subscriber",
          config.client ? config.client.duplicate(options("subscriber")) : new Redis(config.url!, options("subscriber")),
          true,
          engine
        )
      })),
      ({ publisher, subscriber }) =>
        Effect.zipRight(Link.close(subscriber, commandTimeout), Link.close(publisher, commandTimeout))
    )
    // Made after the links, so closing the scope stops the supervisors before it closes the links.
    const fibers = yield* FiberSet.make()
    const runFork = yield* FiberSet.runtime(fibers)<never>()
    const topics = new Map<string, Topic>()

    subscriber.redis.on("messageBuffer", (channel: Buffer, payload: Buffer) => {
      const topic = topics.get(channel.toString())
      if (topic === undefined) return
      for (const { listener } of topic.listeners) {
        try {
          listener(payload)
        } catch (error) {
          runFork(Link.listenerError(channel.toString(), error))
        }
      }
    })

    const logFailure = (what: string) => (error: ClusterUnavailable) =>
      Effect.logWarning(`Cluster bus ${what} failed, taken again after the next reconnection: ${Link.reason(error.cause)}`)

    // After every (re)connection: the topics that still have listeners, and only those.
    const resubscribe = Effect.suspend(() =>
      topics.size === 0
        ? Effect.void
        : Effect.catchAll(
          Link.command(subscriber, commandTimeout, (redis) => redis.subscribe(...topics.keys())),
          logFailure("SUBSCRIBE")
        )
    )

    const connectPublisher = publisher.owned
      ? Link.attempt(publisher, connectTimeout, Effect.void)
      : Link.awaitUnowned(publisher, connectTimeout)
    const connectSubscriber = Link.attempt(subscriber, connectTimeout, resubscribe)
    const beat = (link: Link.Link) =>
      config.heartbeatInterval === 0
        ? Effect.never
        : Link.heartbeat(link, config.heartbeatInterval, commandTimeout)
    // Interruptible whatever the caller's mask: a bus made inside an acquire (a Layer, a facade's
    // shared bus) would otherwise fork loops that closing its scope could never stop.
    const supervise = (link: Link.Link, onReady: Effect.Effect<void>) =>
      Effect.interruptible(
        link.owned
          ? Link.superviseOwned(link, reconnect, connectTimeout, beat(link), onReady)
          : Link.watchUnowned(link)
      )

    // Connects before returning: retried on the schedule within connectTimeout, so that a node
    // may start a moment before its Redis.
    const connectNow = Effect.all([
      publisher.owned ? Effect.retry(connectPublisher, reconnect) : connectPublisher,
      Effect.retry(connectSubscriber, reconnect)
    ], { concurrency: 2, discard: true }).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(connectTimeout),
        onTimeout: () => Link.unavailable(publisher.redis.status === "ready" ? subscriber : publisher)
      }),
      Effect.zipRight(Effect.sync(() => {
        Link.settle(publisher)
        Link.settle(subscriber)
      })),
      Effect.zipRight(FiberSet.run(fibers, supervise(publisher, Effect.void))),
      Effect.zipRight(FiberSet.run(fibers, supervise(subscriber, resubscribe))),
      Effect.asVoid
    )

    // Connects in fibers; commands issued during each link's first attempt wait for it.
    const connectInBackground = Effect.forEach(
      [[publisher, connectPublisher, Effect.void], [subscriber, connectSubscriber, resubscribe]] as const,
      ([link, connect, onReady]) =>
        FiberSet.run(
          fibers,
          connect.pipe(
            Effect.ignore,
            Effect.ensuring(Effect.sync(() => Link.settle(link))),
            Effect.zipRight(supervise(link, onReady)),
            Effect.interruptible
          )
        ),
      { discard: true }
    )

    const subscribe: ClusterBus["subscribe"] = (topic, listener) => {
      const channel = keyPrefix + topic
      const entry = { listener }
      return Effect.acquireRelease(
        Effect.sync(() => {
          let state = topics.get(channel)
          if (state === undefined) {
            const subscribed = Deferred.unsafeMake<void>(FiberId.none)
            state = { listeners: new Set(), subscribed }
            topics.set(channel, state)
            // Sent now, in this step, so that it reaches Redis before a later UNSUBSCRIBE of the same topic.
            if (subscriber.redis.status === "ready") {
              subscriber.redis.subscribe(channel).then(
                () => Deferred.unsafeDone(subscribed, Exit.void),
                (error) => {
                  Deferred.unsafeDone(subscribed, Exit.void)
                  runFork(logFailure("SUBSCRIBE")(Link.unavailable(subscriber, error)))
                }
              )
            } else {
              Deferred.unsafeDone(subscribed, Exit.void)
            }
          }
          state.listeners.add(entry)
          return state
        }),
        (state) =>
          Effect.suspend(() => {
            state.listeners.delete(entry)
            if (state.listeners.size > 0 || topics.get(channel) !== state) return Effect.void
            topics.delete(channel)
            return subscriber.redis.status === "ready"
              ? Effect.catchAll(
                Link.command(subscriber, commandTimeout, (redis) => redis.unsubscribe(channel)),
                logFailure("UNSUBSCRIBE")
              )
              : Effect.void
          })
      ).pipe(
        // Waiting for the answer means a message published after `subscribe` returns is received.
        Effect.flatMap((state) => Effect.ignore(Effect.timeout(Deferred.await(state.subscribed), commandTimeout)))
      )
    }

    const groupKey = (group: string) => `${keyPrefix}presence:${group}`

    const bus: ClusterBus = {
      [TypeId]: TypeId,
      nodeId,
      crossNode: true,
      publish: (topic, payload) =>
        Link.command(publisher, commandTimeout, (redis) => redis.publish(keyPrefix + topic, payload)).pipe(
          Effect.tapError(() => Metric.increment(Link.metrics.publishFailures))
        ),
      subscribe,
      announce: (group, member, state, ttl) =>
        Link.command(publisher, commandTimeout, async (redis) => {
          const key = groupKey(group)
          // PX takes whole milliseconds, and at least one.
          const millis = Math.max(1, Math.ceil(Duration.toMillis(ttl)))
          const results = await redis.multi().set(`${key}:${member}`, state, "PX", millis).sadd(key, member).exec()
          for (const [error] of results ?? []) if (error) throw error
        }),
      members: (group) =>
        Link.command(publisher, commandTimeout, async (redis) => {
          const key = groupKey(group)
          const names = await redis.smembers(key)
          const states = new Map<string, string>()
          if (names.length === 0) return states
          const values = await redis.mget(names.map((name) => `${key}:${name}`))
          const expired: Array<string> = []
          names.forEach((name, i) => {
            const value = values[i]
            if (value === null || value === undefined) expired.push(name)
            else states.set(name, value)
          })
          // Not awaited: a member whose SREM is lost is dropped again by the next read.
          if (expired.length > 0) redis.srem(key, ...expired).catch(() => {})
          return states
        })
    }
    return { bus, connectNow, connectInBackground }
  })
