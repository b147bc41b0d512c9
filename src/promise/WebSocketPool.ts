/**
 * The documented `WebSocketPool` class, over the Effect service of the same name.
 *
 * @since 0.1.0
 */
import { Effect, Exit, Scope, Stream } from "effect"
import { EventEmitter } from "node:events"
import type WebSocket from "ws"
import type { WebSocketPoolOptions } from "../options.js"
import type * as Core from "../WebSocketPool.js"
import { make } from "../WebSocketPool.js"
import { buildInScope, runPromise, runSync } from "./runtime.js"

/**
 * Emits `'backend-healthy'` and `'backend-unhealthy'` with a `{ type, backend, at }` event.
 *
 * @since 0.1.0
 * @category facade
 */
export class WebSocketPool extends EventEmitter {
  readonly #scope: Scope.CloseableScope
  /** The Effect service behind this object, for code that mixes both APIs. */
  readonly service: Core.WebSocketPool

  /** Throws `InvalidOptions` (naming the field) when an option is invalid. */
  constructor(options: WebSocketPoolOptions) {
    super()
    const { scope, service } = buildInScope(make(options))
    this.#scope = scope
    this.service = service
    const emitChanges = Stream.runForEach(this.service.healthChanges, (event) => Effect.sync(() => this.emit(event.type, event)))
    runSync(Effect.forkIn(emitChanges, scope))
  }

  /** Rejects with `PoolAcquireTimeout`, `NoHealthyBackend` or `PoolClosed`. */
  acquire(): Promise<WebSocket> {
    return runPromise(this.service.checkout)
  }

  /** Throws `InvalidRelease` for a connection that is not checked out. */
  release(connection: WebSocket): void {
    runSync(this.service.release(connection))
  }

  getActiveCount(): number {
    return runSync(this.service.activeCount)
  }

  getIdleCount(): number {
    return runSync(this.service.idleCount)
  }

  getWaitingCount(): number {
    return runSync(this.service.waitingCount)
  }

  getHealthStatus(): Readonly<Record<string, Core.BackendHealth>> {
    return runSync(this.service.health)
  }

  /** Waiters fail with `PoolClosed`, idle connections close now, checked-out ones when released. */
  close(): Promise<void> {
    return runPromise(Effect.zipRight(this.service.close, Scope.close(this.#scope, Exit.void)))
  }
}
