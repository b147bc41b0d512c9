/**
 * The facade's `redis` option. Facade objects given the same Redis (URL and key prefix, or the
 * same client instance) share one bus, so a process keeps one publishing and one subscribing
 * connection however many managers and broadcasters use it; the bus closes with the last of them.
 * The first object's other bus options (timeouts, reconnect schedule) are the ones used.
 */
import { Effect, Exit, Scope } from "effect"
import type { ClusterBus as Bus } from "../ClusterBus.js"
import { ClusterBus } from "../ClusterBus.js"
import type { InvalidOptions } from "../errors.js"
import type { RedisBusOptions } from "../RedisBus.js"
import { makeBackground } from "../RedisBus.js"

interface SharedBus {
  readonly bus: Bus
  readonly scope: Scope.CloseableScope
  users: number
}

const shared = new Map<unknown, SharedBus>()

const keyOf = (options: RedisBusOptions): unknown => options.client ?? `${options.url}\u0000${options.keyPrefix ?? "ewm:"}`

/** The process's bus for these options, held until the scope closes. */
const acquire = (options: RedisBusOptions): Effect.Effect<Bus, InvalidOptions, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.suspend(() => {
      const key = keyOf(options)
      const existing = shared.get(key)
      if (existing !== undefined) {
        existing.users++
        return Effect.succeed(existing)
      }
      return Effect.gen(function*() {
        const scope = yield* Scope.make()
        const bus = yield* Effect.tapError(Scope.extend(makeBackground(options), scope), () => Scope.close(scope, Exit.void))
        const entry: SharedBus = { bus, scope, users: 1 }
        shared.set(key, entry)
        return entry
      })
    }),
    (entry) =>
      Effect.suspend(() => {
        if (--entry.users > 0) return Effect.void
        shared.delete(keyOf(options))
        return Scope.close(entry.scope, Exit.void)
      })
  ).pipe(Effect.map((entry) => entry.bus))

/**
 * A facade's service on the cluster bus its `redis` option names, or on none (this process
 * alone) without it. The bus is released after the service has closed.
 */
export const onBus = <A, E, R>(
  redis: RedisBusOptions | undefined,
  make: Effect.Effect<A, E, R>
): Effect.Effect<A, E | InvalidOptions, Exclude<R, Bus> | Scope.Scope> =>
  redis === undefined
    ? make as Effect.Effect<A, E, Exclude<R, Bus>>
    : Effect.flatMap(acquire(redis), (bus) => Effect.provideService(make, ClusterBus, bus))
