/**
 * The cluster bus on Redis pub/sub: one publishing and one subscribing connection per node
 * (`ioredis`), topics and presence keys under `keyPrefix`, reconnection on an effect `Schedule`.
 *
 * Metrics (tag `role`: `publisher` or `subscriber` where given):
 * - `websocket_cluster_connected` (gauge, `role`): 1 while that connection is ready.
 * - `websocket_cluster_reconnections_total` (counter, `role`): connections made again after a
 *   loss or a failed first attempt.
 * - `websocket_cluster_connection_errors_total` (counter, `role`): failed attempts and losses.
 * - `websocket_cluster_publish_failures_total` (counter): publishes that failed.
 * - `websocket_cluster_listener_errors_total` (counter): listeners that threw.
 *
 * @since 0.1.0
 */
import type { Redis } from "ioredis"
import type { ConfigError } from "effect/ConfigError"
import { Config, Effect, Layer, Schedule, Schema } from "effect"
import type { Scope } from "effect"
import { ClusterBus } from "./ClusterBus.js"
import type { ClusterUnavailable, InvalidOptions } from "./errors.js"
import * as internal from "./internal/redisBus.js"
import * as Link from "./internal/redisLink.js"
import { decode, Millis } from "./options.js"

/**
 * The bus's metrics, listed in this module's description.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics = Link.metrics

/**
 * Exponential backoff from 100 ms, capped at 5 s, with ±20% jitter so that nodes which lost
 * Redis together do not reconnect in step. Never gives up.
 *
 * @since 0.1.0
 * @category schedules
 */
export const defaultReconnect: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.union(Schedule.spaced("5 seconds")),
  Schedule.jittered
)

// Duck-typed rather than `instanceof`: an application may hold a client from its own copy of ioredis.
const RedisClient = Schema.declare(
  (u: unknown): u is Redis =>
    typeof u === "object" && u !== null && typeof (u as Redis).duplicate === "function" &&
    typeof (u as Redis).publish === "function" && typeof (u as Redis).status === "string",
  { identifier: "Redis", description: "an ioredis Redis instance" }
)

const ReconnectSchedule = Schema.declare(
  (u: unknown): u is Schedule.Schedule<unknown, ClusterUnavailable> => Schedule.isSchedule(u),
  { identifier: "Schedule", description: "an effect Schedule" }
)

/**
 * Where Redis is (`url`, e.g. `redis://:password@host:6379/0`, or `client`, an ioredis instance
 * the application already holds: it publishes with it, subscribes with a `duplicate()` of it, and
 * never closes it), `keyPrefix` (of every channel and key), `connectTimeout` (ms: a connection
 * attempt, and the whole of `make`'s first connection), `commandTimeout` (ms: a PUBLISH or
 * presence command without a reply fails after it), `heartbeatInterval` (ms between PINGs on
 * each of its own connections; one unanswered within `commandTimeout` drops the connection, which
 * is then made again; 0 turns it off), `reconnect` (a `Schedule`, default
 * `defaultReconnect`) and `nodeId` (default: random).
 *
 * @since 0.1.0
 * @category options
 */
export const RedisBusOptions = Schema.Struct({
  url: Schema.optional(
    Schema.String.pipe(Schema.pattern(/^rediss?:\/\//, { message: () => "must be a redis:// or rediss:// URL" }))
  ),
  client: Schema.optional(RedisClient),
  keyPrefix: Schema.optionalWith(Schema.String, { default: () => "ewm:" }),
  connectTimeout: Schema.optionalWith(Millis.pipe(Schema.positive()), { default: () => 5_000 }),
  commandTimeout: Schema.optionalWith(Millis.pipe(Schema.positive()), { default: () => 2_000 }),
  heartbeatInterval: Schema.optionalWith(Millis, { default: () => 10_000 }),
  reconnect: Schema.optionalWith(ReconnectSchedule, { default: () => defaultReconnect }),
  nodeId: Schema.optional(Schema.NonEmptyString)
}).pipe(
  Schema.filter((options) =>
    (options.url === undefined) === (options.client === undefined)
      ? { path: ["url"], message: "give either url or client" }
      : undefined
  )
)

/**
 * @since 0.1.0
 * @category options
 */
export type RedisBusOptions = typeof RedisBusOptions.Encoded

/**
 * A bus connected before it is returned: Redis unreachable within `connectTimeout` (attempts are
 * retried on `reconnect` until then) fails with `ClusterUnavailable`, naming the URL without
 * credentials. Closing the scope quits its connections (never the given `client`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: RedisBusOptions
): Effect.Effect<ClusterBus, ClusterUnavailable | InvalidOptions, Scope.Scope> =>
  Effect.gen(function*() {
    const { bus, connectNow } = yield* internal.build(yield* decode(RedisBusOptions, options))
    yield* connectNow
    return bus
  })

/**
 * A bus that connects in the background, for constructors that cannot wait (the Promise
 * facade's). Publishes and presence commands issued before its first connection attempt has
 * settled wait for it and keep their order; after that, while Redis is down, they fail at once
 * with `ClusterUnavailable`. Connection failures are logged and counted, never thrown. The only
 * failure is `InvalidOptions`, before anything connects.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeBackground = (
  options: RedisBusOptions
): Effect.Effect<ClusterBus, InvalidOptions, Scope.Scope> =>
  Effect.gen(function*() {
    const { bus, connectInBackground } = yield* internal.build(yield* decode(RedisBusOptions, options))
    yield* connectInBackground
    return bus
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: RedisBusOptions): Layer.Layer<ClusterBus, ClusterUnavailable | InvalidOptions> =>
  Layer.scoped(ClusterBus, make(options))

/**
 * The bus with its options read from `Config`, e.g. `{ url: Config.string("REDIS_URL") }`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<RedisBusOptions>
): Layer.Layer<ClusterBus, ClusterUnavailable | InvalidOptions | ConfigError> =>
  Layer.scoped(ClusterBus, Effect.flatMap(Config.unwrap(config), make))
