import type { Schema } from "effect"
import { Effect, Either } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import type { InvalidOptions } from "../src/errors.js"
import { BroadcasterOptions, decode, WebSocketManagerOptions, WebSocketPoolOptions } from "../src/options.js"

const decodeEither = (schema: Schema.Schema<any, any>, input: unknown) =>
  Effect.runSync(Effect.either(decode(schema, input)))

/** The largest delay a JavaScript timer honours; a longer one fires at once in Node. */
const MAX_TIMER = 2 ** 31 - 1

const positiveMillis = fc.oneof(fc.integer({ min: 1, max: MAX_TIMER }), fc.double({ min: 0.001, max: MAX_TIMER, noNaN: true }))
const nonNegativeMillis = fc.oneof(fc.constant(0), positiveMillis)
const notANumber = fc.constantFrom<unknown>("10", null, true, {}, [], 10n)
const notFinite = fc.constantFrom(Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY)
const negative = fc.oneof(fc.integer({ max: -1 }), fc.double({ max: -Number.MIN_VALUE, noNaN: true }))
const tooLong = fc.oneof(fc.constant(MAX_TIMER + 1), fc.double({ min: MAX_TIMER + 1, max: 1e300, noNaN: true }))

/** Values no timeout, interval or count accepts. */
const neverValid = fc.oneof(notANumber, notFinite, negative)
/** Values a duration of something that must take time (a timeout, an interval) refuses. */
const invalidPositiveMillis = fc.oneof(neverValid, fc.constant(0), tooLong)
const invalidMillis = fc.oneof(neverValid, tooLong)
const invalidPositiveInt = fc.oneof(neverValid, fc.constant(0), fc.double({ min: 0.01, max: 1e6, noNaN: true }).filter((n) => !Number.isInteger(n)))
const invalidNonNegativeInt = fc.oneof(neverValid, fc.double({ min: 0.01, max: 1e6, noNaN: true }).filter((n) => !Number.isInteger(n)))

const set = (path: ReadonlyArray<string>, value: unknown, base: Record<string, unknown> = {}): Record<string, unknown> => {
  const [head, ...rest] = path
  if (rest.length === 0) return { ...base, [head!]: value }
  return { ...base, [head!]: set(rest, value, (base[head!] as Record<string, unknown>) ?? {}) }
}

const failsOn = (schema: Schema.Schema<any, any>, input: unknown, field: string, reason?: string) => {
  const result = decodeEither(schema, input)
  expect(Either.isLeft(result)).toBe(true)
  const error = (result as Either.Left<InvalidOptions, unknown>).left
  expect(error._tag).toBe("InvalidOptions")
  expect(error.field).toBe(field)
  expect(error.message).toContain(field)
  if (reason !== undefined) expect(error.reason).toBe(reason)
}

const unknownKey = fc.string({ minLength: 1, maxLength: 12 }).map((key) => `unknown_${key}`)

describe("WebSocketManager options", () => {
  const defaults = {
    maxConnections: 10_000,
    connectionTimeout: 10_000,
    heartbeatInterval: 30_000,
    heartbeatTimeout: 10_000,
    protocols: [],
    maxPayload: 1024 * 1024,
    closeTimeout: 5_000,
    compression: { enabled: false, threshold: 1024, level: 6 }
  }

  const heartbeat = fc.oneof(
    fc.record({ heartbeatInterval: fc.constant(0), heartbeatTimeout: positiveMillis }),
    positiveMillis.chain((interval) =>
      fc.record({
        heartbeatInterval: fc.constant(interval),
        heartbeatTimeout: fc.double({ min: Math.min(0.001, interval), max: interval, noNaN: true }).filter((t) => t > 0)
      })
    )
  )

  const valid = fc.tuple(
    fc.record(
      {
        maxConnections: fc.integer({ min: 1, max: 1e7 }),
        maxConnectionsPerUser: fc.integer({ min: 1, max: 1e4 }),
        maxConnectionsPerIP: fc.integer({ min: 1, max: 1e4 }),
        connectionTimeout: positiveMillis,
        protocols: fc.array(fc.string()),
        maxPayload: fc.integer({ min: 1, max: 2 ** 30 }),
        closeTimeout: nonNegativeMillis,
        compression: fc.record(
          { enabled: fc.boolean(), threshold: fc.nat(), level: fc.integer({ min: 0, max: 9 }) },
          { requiredKeys: [] }
        )
      },
      { requiredKeys: [] }
    ),
    fc.option(heartbeat, { nil: undefined })
  ).map(([options, beat]) => ({ ...options, ...beat }))

  it("decodes valid options, filling in the defaults", () => {
    fc.assert(
      fc.property(valid, (options) => {
        const config = Effect.runSync(decode(WebSocketManagerOptions, options)) as Record<string, any>
        for (const [key, value] of Object.entries(defaults)) {
          if (key === "compression") {
            expect(config.compression).toEqual({ ...(value as object), ...options.compression })
          } else {
            expect(config[key]).toEqual(key in options ? (options as any)[key] : value)
          }
        }
        expect(config.maxConnectionsPerUser).toBe(options.maxConnectionsPerUser)
        expect(config.maxConnectionsPerIP).toBe(options.maxConnectionsPerIP)
      })
    )
  })

  const invalid: Array<[string, fc.Arbitrary<unknown>]> = [
    ["maxConnections", invalidPositiveInt],
    ["maxConnectionsPerUser", invalidPositiveInt],
    ["maxConnectionsPerIP", invalidPositiveInt],
    ["connectionTimeout", invalidPositiveMillis],
    ["heartbeatInterval", invalidMillis],
    ["heartbeatTimeout", invalidPositiveMillis],
    ["closeTimeout", invalidMillis],
    ["maxPayload", invalidPositiveInt],
    ["compression.threshold", invalidNonNegativeInt],
    ["compression.level", fc.oneof(neverValid, fc.integer({ min: 10 }), fc.constant(4.5))],
    ["authentication.timeout", invalidPositiveMillis]
  ]

  it("refuses any invalid value with InvalidOptions naming its field", () => {
    for (const [field, values] of invalid) {
      const base = field.startsWith("authentication") ? { authentication: { validator: () => true } } : {}
      fc.assert(
        fc.property(values, (value) => failsOn(WebSocketManagerOptions, set(field.split("."), value, base), field)),
        { numRuns: 30 }
      )
    }
  })

  it("refuses a heartbeatTimeout longer than the interval, and heartbeatTimeout 0 even with the heartbeat off", () => {
    fc.assert(
      fc.property(positiveMillis, positiveMillis, (a, b) => {
        fc.pre(a !== b)
        const [interval, timeout] = a < b ? [a, b] : [b, a]
        failsOn(WebSocketManagerOptions, { heartbeatInterval: interval, heartbeatTimeout: timeout }, "heartbeatTimeout")
      })
    )
    failsOn(WebSocketManagerOptions, { heartbeatInterval: 0, heartbeatTimeout: 0 }, "heartbeatTimeout")
    failsOn(
      WebSocketManagerOptions,
      { heartbeatInterval: 10, heartbeatTimeout: 20 },
      "heartbeatTimeout",
      "must not exceed heartbeatInterval"
    )
  })

  it("names the first issue only, and the whole options when they are not an object", () => {
    failsOn(
      WebSocketManagerOptions,
      { closeTimeout: MAX_TIMER + 1 },
      "closeTimeout",
      "must be at most 2147483647 ms (about 24.8 days), the longest a timer can wait"
    )
    failsOn(WebSocketManagerOptions, 42, "(options)", "Expected Struct (Encoded side), actual 42")
    expect(Effect.runSync(decode(WebSocketManagerOptions, undefined)).maxConnections).toBe(10_000)
  })

  it("refuses unknown options, at the top and nested", () => {
    fc.assert(
      fc.property(unknownKey, fc.anything(), (key, value) => {
        failsOn(WebSocketManagerOptions, { [key]: value }, key)
        failsOn(WebSocketManagerOptions, { compression: { [key]: value } }, `compression.${key}`)
      })
    )
  })
})

describe("WebSocketPool options", () => {
  const url = "ws://127.0.0.1:1"

  it("decodes valid options, filling in the defaults", () => {
    fc.assert(
      fc.property(
        fc.record(
          {
            acquireTimeout: positiveMillis,
            idleTimeout: positiveMillis,
            connectTimeout: positiveMillis,
            healthCheck: fc.record(
              { interval: positiveMillis, timeout: positiveMillis, unhealthyThreshold: fc.integer({ min: 1, max: 100 }) },
              { requiredKeys: [] }
            ),
            circuitBreaker: fc.record({ recoveryTimeout: positiveMillis, failureThreshold: fc.integer({ min: 1, max: 100 }) }, {
              requiredKeys: []
            })
          },
          { requiredKeys: [] }
        ),
        (options) => {
          const config = Effect.runSync(decode(WebSocketPoolOptions, { url, ...options }))
          expect(config.acquireTimeout).toBe(options.acquireTimeout ?? 10_000)
          expect(config.idleTimeout).toBe(options.idleTimeout ?? 60_000)
          expect(config.connectTimeout).toBe(options.connectTimeout ?? 5_000)
          expect(config.maxConnections).toBe(10)
          expect(config.minConnections).toBe(0)
          expect(config.loadBalancing).toBe("round-robin")
          expect(config.validateOnCheckout).toBe(false)
          expect(config.healthCheck).toEqual({
            enabled: false,
            interval: 10_000,
            timeout: 2_000,
            unhealthyThreshold: 3,
            healthyThreshold: 2,
            ...options.healthCheck
          })
          expect(config.circuitBreaker).toEqual({
            enabled: true,
            failureThreshold: 5,
            recoveryTimeout: 30_000,
            ...options.circuitBreaker
          })
        }
      )
    )
  })

  const invalid: Array<[string, fc.Arbitrary<unknown>]> = [
    ["maxConnections", invalidPositiveInt],
    ["minConnections", invalidNonNegativeInt],
    ["acquireTimeout", invalidPositiveMillis],
    ["idleTimeout", invalidPositiveMillis],
    ["connectTimeout", invalidPositiveMillis],
    ["healthCheck.interval", invalidPositiveMillis],
    ["healthCheck.timeout", invalidPositiveMillis],
    ["healthCheck.unhealthyThreshold", invalidPositiveInt],
    ["healthCheck.healthyThreshold", invalidPositiveInt],
    ["circuitBreaker.failureThreshold", invalidPositiveInt],
    ["circuitBreaker.recoveryTimeout", invalidPositiveMillis]
  ]

  it("refuses any invalid value with InvalidOptions naming its field", () => {
    for (const [field, values] of invalid) {
      fc.assert(
        fc.property(values, (value) => failsOn(WebSocketPoolOptions, set(field.split("."), value, { url }), field)),
        { numRuns: 30 }
      )
    }
  })

  it("checks the options against each other: minConnections, the target, backend ids", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 100 }), fc.integer({ min: 1, max: 100 }), (a, b) => {
        const [max, min] = a < b ? [a, b] : [b, a]
        if (min > max) failsOn(WebSocketPoolOptions, { url, maxConnections: max, minConnections: min }, "minConnections")
        else expect(Effect.runSync(decode(WebSocketPoolOptions, { url, maxConnections: max, minConnections: min })).minConnections).toBe(min)
      })
    )
    const backends = [{ id: "a", url }, { id: "b", url: "wss://example.test" }]
    expect(Effect.runSync(decode(WebSocketPoolOptions, { backends })).backends).toEqual(
      backends.map((backend) => ({ ...backend, weight: 1 }))
    )
    const target = "give either url or a non-empty backends list"
    failsOn(WebSocketPoolOptions, {}, "url", target)
    failsOn(WebSocketPoolOptions, { backends: [] }, "url", target)
    failsOn(WebSocketPoolOptions, { url, backends }, "url", target)
    failsOn(WebSocketPoolOptions, { backends: [...backends, { id: "a", url }] }, "backends", "backend ids must be unique")
    failsOn(WebSocketPoolOptions, { url: "http://127.0.0.1:1" }, "url", "must be a ws:// or wss:// URL")
    failsOn(WebSocketPoolOptions, { url, maxConnections: 1, minConnections: 2 }, "minConnections", "must not exceed maxConnections")
    failsOn(WebSocketPoolOptions, { backends: [{ id: "a", url, weight: 0 }] }, "backends.0.weight")
  })

  it("refuses unknown options, at the top and nested", () => {
    fc.assert(
      fc.property(unknownKey, fc.anything(), (key, value) => {
        failsOn(WebSocketPoolOptions, { url, [key]: value }, key)
        failsOn(WebSocketPoolOptions, { url, healthCheck: { [key]: value } }, `healthCheck.${key}`)
        failsOn(WebSocketPoolOptions, { url, circuitBreaker: { [key]: value } }, `circuitBreaker.${key}`)
      })
    )
  })
})

describe("Broadcaster options", () => {
  it("decodes valid options, filling in the defaults", () => {
    fc.assert(
      fc.property(
        fc.record(
          {
            maxBackpressure: fc.nat(),
            maxQueuedMessages: fc.integer({ min: 1, max: 1e6 }),
            policy: fc.constantFrom("drop-newest" as const, "drop-oldest" as const, "close" as const)
          },
          { requiredKeys: [] }
        ),
        (options) => {
          const config = Effect.runSync(decode(BroadcasterOptions, options))
          expect(config.maxBackpressure).toBe(options.maxBackpressure ?? 1024 * 1024)
          expect(config.maxQueuedMessages).toBe(options.maxQueuedMessages ?? 64)
          expect(config.policy).toBe(options.policy ?? "drop-newest")
          expect(config.channels).toEqual({})
        }
      )
    )
  })

  it("refuses any invalid value with InvalidOptions naming its field, per channel too", () => {
    const invalid: Array<[string, fc.Arbitrary<unknown>]> = [
      ["maxBackpressure", invalidNonNegativeInt],
      ["maxQueuedMessages", invalidPositiveInt],
      ["channels.room.maxBackpressure", invalidNonNegativeInt],
      ["channels.room.maxQueuedMessages", invalidPositiveInt]
    ]
    for (const [field, values] of invalid) {
      fc.assert(fc.property(values, (value) => failsOn(BroadcasterOptions, set(field.split("."), value), field)), {
        numRuns: 30
      })
    }
  })

  it("refuses unknown options", () => {
    fc.assert(fc.property(unknownKey, fc.anything(), (key, value) => failsOn(BroadcasterOptions, { [key]: value }, key)))
  })
})
