/**
 * How the facade runs Effects: failures reject (or throw) with the error instance itself, not a
 * wrapper, so `err._tag` and `instanceof` work in plain JavaScript.
 */
import { Cause, Effect, Exit, Fiber, Runtime, Scope } from "effect"

export const runPromise = <A, E>(effect: Effect.Effect<A, E>): Promise<A> =>
  Effect.runPromiseExit(effect).then((exit) =>
    Exit.isSuccess(exit) ? exit.value : Promise.reject(Cause.squash(exit.cause))
  )

/**
 * As `runPromise`, but run synchronously as far as the effect goes: one that completes without
 * waiting (the pool's checkout of an idle connection) settles without a fiber hop, and one that
 * waits is joined where it stopped.
 */
export const runPromiseSyncFirst = <A, E>(effect: Effect.Effect<A, E>): Promise<A> => {
  const exit = Effect.runSyncExit(effect)
  if (Exit.isSuccess(exit)) return Promise.resolve(exit.value)
  const defect = Cause.isDieType(exit.cause) ? exit.cause.defect : undefined
  if (!Runtime.isAsyncFiberException(defect)) return Promise.reject(Cause.squash(exit.cause))
  const fiber = defect.fiber as Fiber.RuntimeFiber<A, E>
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
