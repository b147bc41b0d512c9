/**
 * How the facade runs Effects: failures reject (or throw) with the error instance itself, not a
 * wrapper, so `err._tag` and `instanceof` work in plain JavaScript.
 */
import { Cause, Effect, Exit, Scope } from "effect"

/**
 * One Promise and no `then` hop: the fiber starts at once, one that completes without waiting
 * (an accept without authentication, the pool's checkout of an idle connection) settles its
 * Promise directly, and one that waits settles it from an observer of its exit.
 */
export const runPromise = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => {
  const fiber = Effect.runFork(effect)
  const exit = fiber.unsafePoll()
  if (exit !== null) return Exit.isSuccess(exit) ? Promise.resolve(exit.value) : Promise.reject(Cause.squash(exit.cause))
  return new Promise((resolve, reject) =>
    fiber.addObserver((exit) => Exit.isSuccess(exit) ? resolve(exit.value) : reject(Cause.squash(exit.cause)))
  )
}

export const runSync = <A, E>(effect: Effect.Effect<A, E>): A => {
  const exit = Effect.runSyncExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/**
 * A facade's service, built in a scope of its own that the facade closes when it is closed.
 * Construction is synchronous, so a bad option throws from the constructor.
 */
export const buildInScope = <A, E>(make: Effect.Effect<A, E, Scope.Scope>) => {
  const scope = runSync(Scope.make())
  const service = runSync(Effect.tapError(Scope.extend(make, scope), () => Scope.close(scope, Exit.void)))
  return { scope, service }
}
