/**
 * Options of every service, as Schemas. Each constructor decodes what it is given, so a bad
 * option fails early with an `InvalidOptions` error that names the field, and defaults live in
 * one place. Durations are milliseconds, as in the documented API.
 *
 * @since 0.1.0
 */
import { Effect, Either, ParseResult, Schema } from "effect"
import { createPublicKey } from "node:crypto"
import { InvalidOptions } from "./errors.js"

/** The longest delay a JavaScript timer honours; Node fires a longer one after 1 ms. */
const MAX_TIMER_MILLIS = 2 ** 31 - 1

/** @internal */
export const Millis = Schema.Number.pipe(
  Schema.finite(),
  Schema.nonNegative(),
  Schema.lessThanOrEqualTo(MAX_TIMER_MILLIS, {
    message: () => `must be at most ${MAX_TIMER_MILLIS} ms (about 24.8 days), the longest a timer can wait`
  })
)

/** A timeout or interval that must leave time for something to happen: zero would fail it at once. */
const PositiveMillis = Millis.pipe(Schema.positive())

/** @internal */
export const PositiveInt = Schema.Int.pipe(Schema.positive())

/** @internal */
export const NonNegativeInt = Schema.Int.pipe(Schema.nonNegative())

/** @internal */
export const AnyFunction = Schema.declare(
  (u: unknown): u is (...args: Array<any>) => any => typeof u === "function",
  { identifier: "Function" }
)

const StringOrStrings = Schema.Union(Schema.String, Schema.Array(Schema.String))

/**
 * The JWS algorithms a JWT may be verified with. `none` is not one: a token must be signed.
 *
 * @since 0.1.0
 * @category options
 */
export const JwtAlgorithm = Schema.Literal(
  "HS256", "HS384", "HS512",
  "RS256", "RS384", "RS512",
  "PS256", "PS384", "PS512",
  "ES256", "ES384", "ES512",
  "EdDSA", "Ed25519"
)

const keyTypes: Record<string, ReadonlyArray<string>> = {
  RS: ["rsa"],
  PS: ["rsa", "rsa-pss"],
  ES: ["ec"],
  Ed: ["ed25519", "ed448"]
}

/**
 * Why `secret` cannot verify `algorithm`'s signatures, if it cannot: parsed now, so a bad key fails
 * the options instead of refusing every upgrade later.
 */
const publicKeyProblem = (secret: unknown, algorithm: string): string | undefined => {
  if (typeof secret !== "string") return `an ${algorithm} key is a PEM public key (SPKI) string`
  let keyType: string | undefined
  try {
    keyType = createPublicKey(secret).asymmetricKeyType
  } catch (cause) {
    return `not a PEM public key: ${cause instanceof Error ? cause.message : String(cause)}`
  }
  return keyTypes[algorithm.slice(0, 2)]!.includes(keyType ?? "")
    ? undefined
    : `a ${keyType} key cannot verify ${algorithm} signatures`
}

/**
 * Authentication. Without `type` it is `'custom'`: `validator(request)` returns the user (an
 * object with `userId`, `id` or `sub`, or a user id string), or something falsy to refuse; a user
 * without an id lets the request in anonymously. `required: false` lets a request without
 * credentials in for `'api-key'` and `'jwt'`; a custom validator decides that itself.
 * For `'jwt'`, `context.userId` is the `userIdClaim` claim (`sub` by default).
 *
 * @since 0.1.0
 * @category options
 */
export const AuthenticationOptions = Schema.Struct({
  type: Schema.optionalWith(Schema.Literal("custom", "api-key", "jwt"), { default: () => "custom" as const }),
  required: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  // Zero would refuse every upgrade before its validator could answer.
  timeout: Schema.optionalWith(Millis.pipe(Schema.positive()), { default: () => 5_000 }),
  validator: Schema.optional(AnyFunction),
  header: Schema.optionalWith(Schema.String, { default: () => "x-api-key" }),
  secret: Schema.optional(Schema.Union(Schema.String, Schema.Uint8ArrayFromSelf)),
  algorithm: Schema.optionalWith(JwtAlgorithm, { default: () => "HS256" as const }),
  issuer: Schema.optional(StringOrStrings),
  audience: Schema.optional(StringOrStrings),
  userIdClaim: Schema.optionalWith(Schema.NonEmptyString, { default: () => "sub" })
}).pipe(
  Schema.filter((auth) => {
    if (auth.type === "jwt" && auth.secret === undefined) {
      return { path: ["secret"], message: "a JWT authentication needs a secret" }
    }
    if (auth.type === "jwt" && !auth.algorithm.startsWith("HS")) {
      const problem = publicKeyProblem(auth.secret, auth.algorithm)
      if (problem !== undefined) return { path: ["secret"], message: problem }
    }
    if (auth.type === "jwt" && auth.algorithm.startsWith("HS")) {
      // RFC 7518 3.2: an HMAC key at least as long as the hash, so it cannot be guessed offline.
      const bytes = Number(auth.algorithm.slice(2)) / 8
      const length = typeof auth.secret === "string" ? new TextEncoder().encode(auth.secret).length : auth.secret!.length
      if (length < bytes) return { path: ["secret"], message: `an ${auth.algorithm} secret needs at least ${bytes} bytes` }
    }
    if (auth.type !== "jwt" && auth.validator === undefined) {
      return { path: ["validator"], message: `a ${auth.type} authentication needs a validator function` }
    }
    return undefined
  })
)

/**
 * permessage-deflate. Off by default: it costs CPU and memory per connection.
 *
 * @since 0.1.0
 * @category options
 */
export const CompressionOptions = Schema.Struct({
  enabled: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  threshold: Schema.optionalWith(NonNegativeInt, { default: () => 1024 }),
  level: Schema.optionalWith(Schema.Int.pipe(Schema.between(0, 9)), { default: () => 6 })
})

/**
 * `WebSocketManager` options: the documented ones plus the limits users of `ws` and socket.io
 * expect (`maxConnectionsPerUser`, `maxConnectionsPerIP`, `allowedOrigins`, `maxPayload`,
 * `closeTimeout`).
 *
 * @since 0.1.0
 * @category options
 */
export const WebSocketManagerOptions = Schema.Struct({
  maxConnections: Schema.optionalWith(PositiveInt, { default: () => 10_000 }),
  maxConnectionsPerUser: Schema.optional(PositiveInt),
  maxConnectionsPerIP: Schema.optional(PositiveInt),
  connectionTimeout: Schema.optionalWith(PositiveMillis, { default: () => 10_000 }),
  /** 0 turns the heartbeat off. */
  heartbeatInterval: Schema.optionalWith(Millis, { default: () => 30_000 }),
  heartbeatTimeout: Schema.optionalWith(PositiveMillis, { default: () => 10_000 }),
  authentication: Schema.optional(AuthenticationOptions),
  compression: Schema.optionalWith(CompressionOptions, { default: () => CompressionOptions.make({}) }),
  protocols: Schema.optionalWith(Schema.Array(Schema.String), { default: () => [] }),
  allowedOrigins: Schema.optional(Schema.Array(Schema.String)),
  maxPayload: Schema.optionalWith(PositiveInt, { default: () => 1024 * 1024 }),
  /** 0 cuts every connection at once, without waiting for close handshakes. */
  closeTimeout: Schema.optionalWith(Millis, { default: () => 5_000 }),
  /**
   * The bound and slow-consumer policy of `broadcast`, as a Broadcaster channel has them and
   * with the same defaults. Suspended: `ChannelOptions` is declared below, with the Broadcaster's.
   */
  broadcast: Schema.optionalWith(Schema.suspend((): typeof ChannelOptions => ChannelOptions), {
    default: () => ChannelOptions.make({})
  }),
  /**
   * With a cross-node bus: how long this node's connection count stays in the cluster's presence
   * table unless refreshed (every third of it). A node that dies without a goodbye drops out of
   * `getClusterConnections` within this time.
   */
  presenceTtl: Schema.optionalWith(PositiveMillis.pipe(Schema.greaterThanOrEqualTo(30)), { default: () => 15_000 })
}).pipe(
  Schema.filter((options) =>
    options.heartbeatInterval > 0 && options.heartbeatTimeout > options.heartbeatInterval
      ? { path: ["heartbeatTimeout"], message: "must not exceed heartbeatInterval" }
      : undefined
  )
)

/**
 * @since 0.1.0
 * @category options
 */
export type WebSocketManagerOptions = Schema.Schema.Encoded<typeof WebSocketManagerOptions>

/**
 * @since 0.1.0
 * @category options
 */
export type WebSocketManagerConfig = Schema.Schema.Type<typeof WebSocketManagerOptions>

/**
 * @since 0.1.0
 * @category options
 */
export type AuthenticationConfig = Schema.Schema.Type<typeof AuthenticationOptions>

/**
 * Decodes options with a schema; the first issue becomes an `InvalidOptions` naming its field.
 * Unknown options are refused too, so a misspelt option does not pass silently.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decode = <A, I>(schema: Schema.Schema<A, I>, input: unknown): Effect.Effect<A, InvalidOptions> =>
  Either.match(Schema.decodeUnknownEither(schema, { onExcessProperty: "error", errors: "first" })(input ?? {}), {
    onRight: Effect.succeed,
    onLeft: (error) => {
      const [issue] = ParseResult.ArrayFormatter.formatErrorSync(error)
      return Effect.fail(
        new InvalidOptions({
          field: issue && issue.path.length > 0 ? issue.path.join(".") : "(options)",
          reason: issue?.message ?? String(error)
        })
      )
    }
  })

/**
 * What happens to a subscriber whose socket is over its bound (a slow or dead consumer):
 * `'drop-newest'` skips this message for it, `'drop-oldest'` keeps a small backlog (the newest
 * `maxQueuedMessages`) flushed when the socket drains, `'close'` closes it with 1008.
 *
 * @since 0.1.0
 * @category options
 */
export const SlowConsumerPolicy = Schema.Literal("drop-newest", "drop-oldest", "close")

/**
 * @since 0.1.0
 * @category options
 */
export type SlowConsumerPolicy = typeof SlowConsumerPolicy.Type

const channelFields = {
  /** A socket is over its bound while more than this many bytes wait in its send buffer. */
  maxBackpressure: Schema.optionalWith(NonNegativeInt, { default: () => 1024 * 1024 }),
  /** The length of the `'drop-oldest'` backlog of a socket over its bound. */
  maxQueuedMessages: Schema.optionalWith(PositiveInt, { default: () => 64 }),
  policy: Schema.optionalWith(SlowConsumerPolicy, { default: () => "drop-newest" as const })
}

/**
 * Slow-consumer bounds and policy of one channel.
 *
 * @since 0.1.0
 * @category options
 */
export const ChannelOptions = Schema.Struct(channelFields)

/**
 * @since 0.1.0
 * @category options
 */
export type ChannelConfig = typeof ChannelOptions.Type

/**
 * `Broadcaster` options: the defaults for every channel, and per-channel overrides by name.
 *
 * @since 0.1.0
 * @category options
 */
export const BroadcasterOptions = Schema.Struct({
  ...channelFields,
  channels: Schema.optionalWith(
    Schema.Record({
      key: Schema.String,
      value: Schema.Struct({
        maxBackpressure: Schema.optional(NonNegativeInt),
        maxQueuedMessages: Schema.optional(PositiveInt),
        policy: Schema.optional(SlowConsumerPolicy)
      })
    }),
    { default: () => ({}) }
  )
})

/**
 * @since 0.1.0
 * @category options
 */
export type BroadcasterOptions = typeof BroadcasterOptions.Encoded

/**
 * @since 0.1.0
 * @category options
 */
export type BroadcasterConfig = typeof BroadcasterOptions.Type

/**
 * @since 0.1.0
 * @category options
 */
export const LoadBalancing = Schema.Literal("round-robin", "least-connections", "weighted-round-robin", "random")

const BackendOptions = Schema.Struct({
  id: Schema.String,
  url: Schema.String.pipe(Schema.pattern(/^wss?:\/\//, { message: () => "must be a ws:// or wss:// URL" })),
  weight: Schema.optionalWith(PositiveInt, { default: () => 1 })
})

/**
 * Health checks: a WebSocket ping round trip on a fresh connection, or an HTTP GET of `path`.
 *
 * @since 0.1.0
 * @category options
 */
export const HealthCheckOptions = Schema.Struct({
  enabled: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  interval: Schema.optionalWith(PositiveMillis, { default: () => 10_000 }),
  timeout: Schema.optionalWith(PositiveMillis, { default: () => 2_000 }),
  unhealthyThreshold: Schema.optionalWith(PositiveInt, { default: () => 3 }),
  healthyThreshold: Schema.optionalWith(PositiveInt, { default: () => 2 }),
  path: Schema.optional(Schema.String)
})

/**
 * @since 0.1.0
 * @category options
 */
export const CircuitBreakerOptions = Schema.Struct({
  enabled: Schema.optionalWith(Schema.Boolean, { default: () => true }),
  failureThreshold: Schema.optionalWith(PositiveInt, { default: () => 5 }),
  recoveryTimeout: Schema.optionalWith(PositiveMillis, { default: () => 30_000 })
})

/**
 * `WebSocketPool` options: the documented ones, the target (`url` or `backends`), and balancing,
 * health checks and circuit breaking.
 *
 * @since 0.1.0
 * @category options
 */
export const WebSocketPoolOptions = Schema.Struct({
  url: Schema.optional(BackendOptions.fields.url),
  backends: Schema.optional(Schema.Array(BackendOptions)),
  maxConnections: Schema.optionalWith(PositiveInt, { default: () => 10 }),
  minConnections: Schema.optionalWith(NonNegativeInt, { default: () => 0 }),
  acquireTimeout: Schema.optionalWith(PositiveMillis, { default: () => 10_000 }),
  idleTimeout: Schema.optionalWith(PositiveMillis, { default: () => 60_000 }),
  validateOnCheckout: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** How long a new connection may take to open. */
  connectTimeout: Schema.optionalWith(PositiveMillis, { default: () => 5_000 }),
  loadBalancing: Schema.optionalWith(LoadBalancing, { default: () => "round-robin" as const }),
  healthCheck: Schema.optionalWith(HealthCheckOptions, { default: () => HealthCheckOptions.make({}) }),
  circuitBreaker: Schema.optionalWith(CircuitBreakerOptions, { default: () => CircuitBreakerOptions.make({}) })
}).pipe(
  Schema.filter((options) => {
    if (options.minConnections > options.maxConnections) {
      return { path: ["minConnections"], message: "must not exceed maxConnections" }
    }
    if ((options.url === undefined) === (options.backends === undefined || options.backends.length === 0)) {
      return { path: ["url"], message: "give either url or a non-empty backends list" }
    }
    const ids = (options.backends ?? []).map((backend) => backend.id)
    if (new Set(ids).size !== ids.length) return { path: ["backends"], message: "backend ids must be unique" }
    return undefined
  })
)

/**
 * @since 0.1.0
 * @category options
 */
export type WebSocketPoolOptions = typeof WebSocketPoolOptions.Encoded

/**
 * @since 0.1.0
 * @category options
 */
export type WebSocketPoolConfig = typeof WebSocketPoolOptions.Type
