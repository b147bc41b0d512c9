import type { Redis, RedisOptions } from "ioredis"
import { Cause, Duration, Effect, Metric, Schedule } from "effect"
import { ClusterUnavailable } from "../errors.js"

/** @internal */
export type Role = "publisher" | "subscriber"

/** @internal */
export const metrics = {
  connected: Metric.gauge("websocket_cluster_connected", {
    description: "1 while the cluster bus connection of this role is ready, 0 otherwise"
  }),
  reconnections: Metric.counter("websocket_cluster_reconnections_total", {
    description: "cluster bus connections made again after a loss or a failed first attempt",
    incremental: true
  }),
  connectionErrors: Metric.counter("websocket_cluster_connection_errors_total", {
    description: "failed connection attempts and lost connections of the cluster bus",
    incremental: true
  }),
  publishFailures: Metric.counter("websocket_cluster_publish_failures_total", {
    description: "publishes the cluster bus could not hand to the broker",
    incremental: true
  }),
  listenerErrors: Metric.counter("websocket_cluster_listener_errors_total", {
    description: "cluster bus listeners that threw",
    incremental: true
  })
}

const byRole = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>, role: Role) =>
  Metric.tagged(metric, "role", role)

/**
 * One connection of the bus. While `settled` is false (the first connection attempt has not
 * ended yet), commands are handed to ioredis's offline queue, which sends them in order once the
 * connection is ready; afterwards a command on a connection that is not ready fails at once.
 *
 * @internal
 */
export interface Link {
  readonly role: Role
  readonly redis: Redis
  /** False for the user's own client: its reconnection is its own options' business, and it is never closed here. */
  readonly owned: boolean
  /** Where the connection goes, without credentials. */
  readonly engine: string
  settled: boolean
  lastError: unknown
}

/**
 * What ioredis must leave to the bus: reconnection (an effect `Schedule` instead of
 * `retryStrategy`), resubscription (the bus knows which topics still have listeners) and the
 * resending of commands that were in flight when a connection dropped (they are reported failed).
 *
 * @internal
 */
export const ownedOptions = (connectTimeout: number, connectionName: string): RedisOptions => ({
  lazyConnect: true,
  retryStrategy: () => null,
  autoResubscribe: false,
  autoResendUnfulfilledCommands: false,
  enableOfflineQueue: true,
  connectTimeout,
  connectionName
})

/** @internal */
export const makeLink = (role: Role, redis: Redis, owned: boolean, engine: string): Link => {
  const link: Link = { role, redis, owned, engine, settled: false, lastError: undefined }
  // ioredis emits connection errors as events as well as rejections; without a listener it prints them.
  redis.on("error", (error: unknown) => {
    link.lastError = error
  })
  return link
}

/** The link's first connection attempt is over: from now on a command while it is down fails at once. */
export const settle = (link: Link): void => {
  link.settled = true
  if (link.owned) link.redis.options.enableOfflineQueue = false
}

/** An error's message, for a log line (an Error object logs as `{}`). @internal */
export const reason = (error: unknown): string => error instanceof Error ? error.message : String(error)

/**
 * A cause safe to keep in an error: ioredis's reply errors carry the failed command with its
 * arguments, which for AUTH (a wrong password) or HELLO is the password itself.
 */
const withoutCommand = (error: unknown): unknown => {
  if (!(error instanceof Error)) return error
  const copy = new Error(error.message)
  copy.name = error.name
  const code = (error as { code?: unknown }).code
  return code === undefined ? copy : Object.assign(copy, { code })
}

/** @internal */
export const unavailable = (link: Link, cause?: unknown): ClusterUnavailable =>
  new ClusterUnavailable({
    engine: link.engine,
    cause: withoutCommand(
      cause ?? link.lastError ?? new Error(`the ${link.role} connection is not ready (${link.redis.status})`)
    )
  })

/**
 * Runs one command on the link: sent synchronously when the effect starts (so commands keep the
 * order in which their effects ran), failed at once if the link is down, and failed when no reply
 * comes within `timeout` (a broker that stopped answering must not hold its callers forever).
 *
 * @internal
 */
export const command = <A>(
  link: Link,
  timeout: number,
  run: (redis: Redis) => Promise<A>
): Effect.Effect<A, ClusterUnavailable> =>
  Effect.async<A, ClusterUnavailable>((resume) => {
    if (link.settled && link.redis.status !== "ready") {
      resume(Effect.fail(unavailable(link)))
      return
    }
    let pending = true
    const finish = (result: Effect.Effect<A, ClusterUnavailable>) => {
      if (!pending) return
      pending = false
      clearTimeout(timer)
      resume(result)
    }
    const timer = setTimeout(
      () => finish(Effect.fail(unavailable(link, new Error(`no reply within ${timeout} ms`)))),
      timeout
    )
    try {
      run(link.redis).then(
        (value) => finish(Effect.succeed(value)),
        (error) => finish(Effect.fail(unavailable(link, error)))
      )
    } catch (error) {
      finish(Effect.fail(unavailable(link, error)))
    }
    return Effect.sync(() => {
      pending = false
      clearTimeout(timer)
    })
  })

/** Resolves when the connection has ended for good (ioredis gives up at once: `retryStrategy` says so). */
const ended = (redis: Redis): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (redis.status === "end") return resume(Effect.void)
    const onEnd = () => resume(Effect.void)
    redis.once("end", onEnd)
    return Effect.sync(() => redis.off("end", onEnd))
  })

/** Resolves when the connection is `status` now or the next time it emits `event`. */
const reaches = (redis: Redis, ready: boolean): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if ((redis.status === "ready") === ready) return resume(Effect.void)
    const event = ready ? "ready" : "close"
    const onEvent = () => resume(Effect.void)
    redis.once(event, onEvent)
    return Effect.sync(() => redis.off(event, onEvent))
  })

/**
 * One connection attempt of an owned link, bounded by `connectTimeout`; an interrupted attempt
 * (a timeout, or the bus closing) disconnects, so no socket outlives it.
 */
const connectOnce = (link: Link, connectTimeout: number): Effect.Effect<void, ClusterUnavailable> =>
  Effect.async<void, unknown>((resume) => {
    link.lastError = undefined
    link.redis.connect().then(
      () => resume(Effect.void),
      (error) => resume(Effect.fail(error))
    )
    return Effect.sync(() => link.redis.disconnect())
  }).pipe(
    Effect.timeoutFail({
      duration: Duration.millis(connectTimeout),
      onTimeout: () => new Error(`not ready within ${connectTimeout} ms`)
    }),
    // ioredis rejects with a plain "Connection is closed." and emits the reason (ECONNREFUSED,
    // WRONGPASS) as an 'error' event just before: the reason is what the user needs.
    Effect.mapError((error) => {
      link.lastError ??= error
      return unavailable(link)
    })
  )

/**
 * An attempt as the supervisor makes it: logged and counted when it fails; when it succeeds the
 * gauge says so and `onReady` runs (the subscriber takes its topics again there).
 *
 * @internal
 */
export const attempt = (
  link: Link,
  connectTimeout: number,
  onReady: Effect.Effect<void>
): Effect.Effect<void, ClusterUnavailable> =>
  connectOnce(link, connectTimeout).pipe(
    Effect.tapError((error) =>
      Effect.zipRight(
        Effect.logWarning(`Cluster bus ${link.role} could not connect to ${link.engine}: ${reason(error.cause)}`),
        Metric.increment(byRole(metrics.connectionErrors, link.role))
      )
    ),
    Effect.zipRight(Effect.suspend(() => {
      link.lastError = undefined
      return Metric.set(byRole(metrics.connected, link.role), 1)
    })),
    Effect.zipRight(onReady)
  )

/**
 * Keeps an owned link connected for as long as it runs: waits for the connection to end, then
 * connects again on `schedule` (a fresh run of it after each loss). A schedule that gives up
 * leaves the link down, logged; commands then keep failing with `ClusterUnavailable`.
 *
 * @internal
 */
export const superviseOwned = (
  link: Link,
  schedule: Schedule.Schedule<unknown, ClusterUnavailable>,
  connectTimeout: number,
  heartbeat: Effect.Effect<void>,
  onReady: Effect.Effect<void>
): Effect.Effect<void> =>
  Effect.gen(function*() {
    const connected = byRole(metrics.connected, link.role)
    while (true) {
      if (link.redis.status !== "ready") {
        const reconnected = yield* Effect.retry(attempt(link, connectTimeout, onReady), schedule).pipe(
          Effect.as(true),
          Effect.catchAll((error) =>
            Effect.as(
              Effect.logError(`Cluster bus ${link.role} gave up reconnecting to ${link.engine}: ${reason(error.cause)}`),
              false
            )
          )
        )
        if (!reconnected) return
        yield* Metric.increment(byRole(metrics.reconnections, link.role))
      }
      yield* Effect.raceFirst(ended(link.redis), heartbeat)
      link.lastError ??= new Error("connection closed")
      yield* Metric.set(connected, 0)
      yield* Metric.increment(byRole(metrics.connectionErrors, link.role))
      yield* Effect.logWarning(`Cluster bus ${link.role} lost its connection to ${link.engine}: ${reason(link.lastError)}`)
    }
  })

/**
 * PING on `schedule` while the link is up: a connection that stops answering (a half-open TCP
 * connection, a broker that hangs) is dropped, so that the supervisor connects again. Without it
 * a subscriber could stay "ready" and receive nothing, unnoticed. Runs until interrupted.
 *
 * @internal
 */
export const heartbeat = (
  link: Link,
  interval: number,
  timeout: number
): Effect.Effect<void> =>
  Effect.repeat(
    Effect.catchAll(command(link, timeout, (redis) => redis.ping()), (error) =>
      Effect.zipRight(
        Effect.logWarning(`Cluster bus ${link.role} missed its heartbeat, reconnecting: ${reason(error.cause)}`),
        Effect.sync(() => {
          link.lastError = error.cause
          link.redis.disconnect()
        })
      )),
    Schedule.spaced(Duration.millis(interval))
  ).pipe(
    // The connection has just answered its ready check: the first PING is due an interval later.
    Effect.delay(Duration.millis(interval)),
    Effect.zipRight(Effect.never)
  )

/**
 * Follows the user's own client: its reconnection is its own, the gauge and the counter still
 * say what it does.
 *
 * @internal
 */
export const watchUnowned = (link: Link): Effect.Effect<void> =>
  Effect.gen(function*() {
    const connected = byRole(metrics.connected, link.role)
    let first = true
    while (true) {
      yield* reaches(link.redis, true)
      yield* Metric.set(connected, 1)
      if (!first) yield* Metric.increment(byRole(metrics.reconnections, link.role))
      first = false
      yield* reaches(link.redis, false)
      yield* Metric.set(connected, 0)
      yield* Effect.logWarning(`Cluster bus ${link.role} (the given client) lost its connection to ${link.engine}`)
    }
  })

/**
 * The user's client ready, connecting it if it was made with `lazyConnect`; bounded by
 * `connectTimeout`. A client that has ended is not revived here: the user closed it.
 *
 * @internal
 */
export const awaitUnowned = (link: Link, connectTimeout: number): Effect.Effect<void, ClusterUnavailable> =>
  Effect.suspend(() => {
    const { redis } = link
    if (redis.status === "end") return Effect.fail(unavailable(link, new Error("the given client is closed")))
    if (redis.status === "wait") {
      redis.connect().catch((error) => {
        link.lastError = error
      })
    }
    return reaches(redis, true).pipe(
      Effect.timeoutFail({
        duration: Duration.millis(connectTimeout),
        onTimeout: () => unavailable(link, link.lastError ?? new Error(`not ready within ${connectTimeout} ms`))
      })
    )
  })

/**
 * Closes an owned link: `QUIT` when it is ready (Redis answers the commands before it first),
 * a plain disconnect otherwise or when `QUIT` gets no answer.
 *
 * @internal
 */
export const close = (link: Link, timeout: number): Effect.Effect<void> =>
  Effect.gen(function*() {
    yield* Metric.set(byRole(metrics.connected, link.role), 0)
    if (!link.owned) return
    if (link.redis.status === "ready") {
      yield* Effect.ignore(command(link, timeout, (redis) => redis.quit()))
    }
    link.redis.disconnect()
  })

/** @internal */
export const listenerError = (topic: string, error: unknown): Effect.Effect<void> =>
  Effect.zipRight(
    Effect.logWarning(`A cluster bus listener of ${topic} threw`, Cause.die(error)),
    Metric.increment(metrics.listenerErrors)
  )
