/**
 * A pool of outbound WebSocket connections to one or more backends, on effect's `Pool`.
 *
 * Each pooled connection is opened to a backend picked by the load-balancing strategy among the
 * healthy ones whose circuit is not open; opening retries with exponential backoff and jitter
 * while no backend answers, so a dead connection is replaced as soon as its backend is back.
 * Checkout is exclusive and scoped (`get`), or explicit (`checkout` / `release`) for the facade;
 * every acquisition ends by its deadline, and an interrupted one leaves its connection to the pool.
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import {
  Context,
  Duration,
  Effect,
  Exit,
  FiberId,
  Layer,
  Option,
  Pool,
  PubSub,
  Runtime,
  Schedule,
  Scope as ScopeModule,
  Stream
} from "effect"
import WebSocket from "ws"
import type { BackendConnectFailed, InvalidOptions } from "./errors.js"
import { InvalidRelease, NoHealthyBackend, PoolAcquireTimeout, PoolClosed } from "./errors.js"
import { Admission } from "./internal/admission.js"
import { makePicker } from "./internal/loadBalancing.js"
import type { CircuitState, HealthChange } from "./internal/poolBackend.js"
import { PoolBackend } from "./internal/poolBackend.js"
import type { Loan } from "./internal/poolConnections.js"
import { PoolConnections } from "./internal/poolConnections.js"
import * as PoolSocket from "./internal/poolSocket.js"
import type { WebSocketPoolConfig, WebSocketPoolOptions } from "./options.js"
import { decode, WebSocketPoolOptions as WebSocketPoolOptionsSchema } from "./options.js"

export type { WebSocketPoolOptions } from "./options.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-websocket-manager/WebSocketPool")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * @since 0.1.0
 * @category models
 */
export interface BackendHealth {
  readonly healthy: boolean
  /** Round trip of the last successful health check, in ms. */
  readonly latency: number | undefined
  readonly lastCheck: Date | undefined
  readonly consecutiveFailures: number
  readonly circuit: CircuitState
  readonly active: number
  readonly idle: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface HealthEvent {
  readonly type: HealthChange
  readonly backend: string
  readonly at: Date
}

/**
 * @since 0.1.0
 * @category models
 */
export type AcquireError = PoolAcquireTimeout | NoHealthyBackend | PoolClosed

/**
 * @since 0.1.0
 * @category models
 */
export interface WebSocketPool {
  readonly [TypeId]: TypeId
  readonly config: WebSocketPoolConfig
  /** An open connection, checked out exclusively until the scope closes. */
  readonly get: Effect.Effect<WebSocket, AcquireError, Scope.Scope>
  /** An open connection, checked out exclusively until `release`. */
  readonly checkout: Effect.Effect<WebSocket, AcquireError>
  /** Gives back a connection from `checkout`; `InvalidRelease` if it is not checked out. */
  readonly release: (connection: WebSocket) => Effect.Effect<void, InvalidRelease>
  /** Connections checked out, a dead one included until it is released. */
  readonly activeCount: Effect.Effect<number>
  /** Open connections nobody holds. */
  readonly idleCount: Effect.Effect<number>
  /** Acquisitions not settled yet; each settles by `acquireTimeout` at the latest. */
  readonly waitingCount: Effect.Effect<number>
  /** Per backend id. */
  readonly health: Effect.Effect<Readonly<Record<string, BackendHealth>>>
  /** Each time a backend turns healthy or unhealthy. */
  readonly healthChanges: Stream.Stream<HealthEvent>
  /** The id of the backend a pooled connection goes to. */
  readonly backendOf: (connection: WebSocket) => Option.Option<string>
  /**
   * Waiters fail with `PoolClosed`, idle connections close now, checked-out ones when released.
   */
  readonly close: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export const WebSocketPool: Context.Tag<WebSocketPool, WebSocketPool> = Context.GenericTag<WebSocketPool>(
  "effect-websocket-manager/WebSocketPool"
)

/** Reconnect delays while no backend answers: 50 ms doubling, at most 5 s, jittered. */
const reconnectSchedule = Schedule.exponential(Duration.millis(50)).pipe(
  Schedule.union(Schedule.spaced(Duration.seconds(5))),
  Schedule.jittered
)

const VALIDATION_PING_TIMEOUT = 1_000

/**
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: WebSocketPoolOptions): Effect.Effect<WebSocketPool, InvalidOptions, Scope.Scope> =>
  Effect.gen(function*() {
    const config = yield* decode(WebSocketPoolOptionsSchema, options)
    const backends = (config.backends ?? [{ id: "default", url: config.url!, weight: 1 }]).map(
      (backend) => new PoolBackend(backend.id, backend.url, backend.weight, config)
    )
    const backendIds = backends.map((backend) => backend.id)
    const pick = makePicker<PoolBackend>(config.loadBalancing)
    const connections = new PoolConnections()
    const loans = connections.loans
    const admission = new Admission(config.maxConnections)
    /** Acquisitions searching in a fiber of their own, each with what fails it with `PoolClosed`. */
    const searching = new Set<() => void>()
    /** Idle connections that acquisitions are about to take (see `lendIdle`). */
    let claimed = 0
    const healthEvents = yield* PubSub.unbounded<HealthEvent>()
    const validationTimeout = Math.min(VALIDATION_PING_TIMEOUT, config.acquireTimeout)
    let closed = false

    const poolScope = yield* ScopeModule.make()
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    /**
     * A new pooled connection, registered as soon as it is open: closing the pool interrupts
     * openings, and one interrupted after this point is closed by `close()` as an idle one.
     */
    const connect = Effect.suspend((): Effect.Effect<WebSocket, NoHealthyBackend | BackendConnectFailed> => {
      const available = backends.filter((backend) => backend.available)
      if (available.length === 0) return Effect.fail(new NoHealthyBackend({ backends: backendIds }))
      const backend = pick(available)
      backend.connecting()
      return PoolSocket.open(backend, config.connectTimeout).pipe(
        Effect.onExit((exit) =>
          Effect.sync(() => {
            if (Exit.isSuccess(exit)) {
              backend.connectSucceeded()
              adopt(exit.value, backend)
            } else if (Exit.isInterrupted(exit)) {
              backend.connectAborted()
            } else {
              backend.connectFailed()
            }
          })
        )
      )
    })

    const adopt = (socket: WebSocket, backend: PoolBackend) => {
      connections.adopt(socket, backend)
      socket.once("close", onPooledClose)
      if (closed) socket.close(1000)
    }

    // One close listener for every connection of the pool, rather than a closure per connection.
    // A connection that dies leaves the pool, which opens a replacement if it is below min.
    const onPooledClose = function(this: WebSocket) {
      connections.forget(this)
      if (closed) return
      connections.dropping++
      runFork(Effect.ensuring(invalidate(this), Effect.sync(() => connections.dropping--)))
    }

    const pool: Pool.Pool<WebSocket, NoHealthyBackend | BackendConnectFailed> = yield* ScopeModule.extend(
      Pool.makeWithTTL({
        // Opening retries while no backend answers, so a dead connection is replaced as soon as
        // its backend is back; it stays interruptible, so closing the pool stops it.
        acquire: Effect.acquireRelease(
          Effect.interruptible(Effect.retry(connect, reconnectSchedule)),
          (socket) =>
            Effect.sync(() => {
              connections.forget(socket)
              socket.close(1000)
            })
        ),
        min: config.minConnections,
        max: config.maxConnections,
        timeToLive: Duration.millis(Math.max(1, config.idleTimeout)),
        timeToLiveStrategy: "usage"
      }),
      poolScope
    )

    // Pool.invalidate's type asks for a Scope it does not use.
    const invalidate = (socket: WebSocket) => Effect.scoped(Pool.invalidate(pool, socket))

    /**
     * After effect's Pool has taken a connection back: the loan is over (unless the connection is
     * on a new loan already), and one that is no longer open is dropped rather than kept.
     */
    const settle = (loan: Loan) =>
      Effect.suspend(() => {
        if (loans.get(loan.socket) === loan) loans.delete(loan.socket)
        return loan.socket.readyState === WebSocket.OPEN ? Effect.void : invalidate(loan.socket)
      })

    /** A loan that was not handed out (or whose caller left) goes back, its place kept. */
    const giveBack = (loan: Loan) => Effect.zipRight(ScopeModule.close(loan.scope!, Exit.void), settle(loan))

    /** A held loan's end, once its connection is back: its place goes to the next waiter. */
    const endLoan = (loan: Loan) =>
      Effect.suspend(() => {
        admission.leave()
        return settle(loan)
      })

    const validate = (socket: WebSocket) =>
      socket.readyState !== WebSocket.OPEN
        ? Effect.succeed(false)
        : config.validateOnCheckout
        ? PoolSocket.answersPing(socket, validationTimeout)
        : Effect.succeed(true)

    type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

    /**
     * A connection from effect's Pool, on loan in a scope of its own. Connecting retries until it
     * succeeds, so the pool hands out no failed acquisitions. An exit while the Pool is handing
     * it over (an interruption, by `restore`) gives it back.
     */
    const borrow = (restore: Restore) =>
      Effect.flatMap(ScopeModule.make(), (scope) =>
        Effect.map(
          Effect.onExit(
            Effect.orDie(restore(ScopeModule.extend(Pool.get(pool), scope))),
            (exit) => Exit.isSuccess(exit) ? Effect.void : ScopeModule.close(scope, exit)
          ),
          (socket): Loan => {
            const loan: Loan = { socket, scope, holder: "validating" }
            loans.set(socket, loan)
            return loan
          }
        ))

    /** One try: a valid connection, or `undefined` after giving back one that is not. */
    const attempt = (restore: Restore) =>
      Effect.flatMap(borrow(restore), (loan) =>
        Effect.flatMap(validate(loan.socket), (valid): Effect.Effect<Loan | undefined> => {
          if (valid) return Effect.succeed(loan)
          // It does not answer: terminated, so giving it back drops it.
          loan.socket.terminate()
          return Effect.as(giveBack(loan), undefined)
        }))

    /**
     * Tries until a valid connection is found. Interruptible only while effect's Pool makes it
     * wait for a permit: once a connection is taken, the search ends with it (a validation runs
     * to its end) and `found` gets it, to hand out or to give back.
     */
    const search = (found: (loan: Loan) => void): Effect.Effect<void> =>
      Effect.uninterruptibleMask((restore) => {
        const loop: Effect.Effect<void> = Effect.flatMap(
          attempt(restore),
          (got) => got === undefined ? loop : Effect.sync(() => found(got))
        )
        return loop
      })

    /**
     * A connection by `deadline`, or a typed failure. effect's Pool waits uninterruptibly while it
     * opens a connection, so the search runs in a fiber of its own that the caller can leave: at
     * its deadline, on `close()`, or when interrupted. A connection that fiber finds after its
     * caller left goes straight back.
     */
    const searchUntil = (deadline: number) =>
      Effect.async<Loan, AcquireError>((resume) => {
        let settled = false
        /** What was handed to the caller, until the caller has it. */
        let delivered: Loan | undefined
        const settle = () => {
          settled = true
          searching.delete(onClose)
          clearTimeout(timer)
        }
        const leave = () => {
          settle()
          fiber.unsafeInterruptAsFork(FiberId.none)
        }
        const onClose = () => {
          leave()
          resume(Effect.fail(new PoolClosed()))
        }
        searching.add(onClose)
        const timer = setTimeout(() => {
          leave()
          resume(Effect.fail(new PoolAcquireTimeout({ timeoutMillis: config.acquireTimeout })))
        }, deadline - Date.now())
        const fiber = runFork(search((got) => {
          if (settled) return runFork(giveBack(got))
          settle()
          delivered = got
          resume(Effect.succeed(got))
        }))
        // The search ends without a connection only by a defect.
        fiber.addObserver((exit) => {
          if (settled || Exit.isSuccess(exit)) return
          settle()
          resume(Effect.failCause(exit.cause))
        })
        // A caller interrupted after its connection was handed over, but before it got it.
        return Effect.sync(() => (settled ? delivered && runFork(giveBack(delivered)) : leave()))
      })

    /**
     * An idle connection, taken from effect's Pool in this fiber into the scope it runs in: no
     * search fiber, no timer, no scope of its own. Only when `lendable` holds: every connection
     * is open, so there is nothing to check, and more are idle than `claimed` (takers that could
     * lose their turn to another fiber before the Pool hands theirs over). The loan's end is
     * added to the scope before the Pool's release, so it runs after it. There is no loan scope
     * to give a connection back through, so one that dies during this step is handed out, like
     * one that dies just after it.
     */
    const lendIdle = (holder: Loan["holder"]): Effect.Effect<Loan, never, ScopeModule.Scope> =>
      Effect.scopeWith((scope) => {
        const loan: Loan = { socket: undefined!, scope: undefined, holder }
        claimed++
        return Effect.zipRight(
          ScopeModule.addFinalizer(scope, endLoan(loan)),
          Effect.map(Effect.orDie(Pool.get(pool)), (socket) => {
            claimed--
            loan.socket = socket
            loans.set(socket, loan)
            return loan
          })
        )
      })

    const lendable = () => !config.validateOnCheckout && connections.lendable(claimed)

    /**
     * A connection searched for (to be opened, or validated) in its own loan scope, which the
     * scope this runs in closes: the place is given back if none is found.
     */
    const lendFound = (holder: Loan["holder"], deadline: number, restore: Restore) =>
      Effect.flatMap(
        Effect.onError(restore(searchUntil(deadline)), () => Effect.sync(() => admission.leave())),
        (loan) => {
          loan.holder = holder
          const end = Effect.zipRight(ScopeModule.close(loan.scope!, Exit.void), endLoan(loan))
          return Effect.scopeWith((scope) => Effect.as(ScopeModule.addFinalizer(scope, end), loan))
        }
      )

    /**
     * An acquisition held until the scope it runs in closes: a place among the `maxConnections`
     * inside effect's Pool (in arrival order), then a connection. Run uninterruptibly by its
     * caller, with `restore` for the waits only: no exit loses its place or its connection. With
     * a place and an open idle connection free, it is one synchronous step of the caller's fiber.
     */
    const acquire = (holder: Loan["holder"], restore: Restore) =>
      Effect.suspend((): Effect.Effect<Loan, AcquireError, ScopeModule.Scope> => {
        if (closed) return Effect.fail(new PoolClosed())
        if (!backends.some((backend) => backend.available)) {
          return Effect.fail(new NoHealthyBackend({ backends: backendIds }))
        }
        const deadline = Date.now() + config.acquireTimeout
        if (admission.tryEnter()) return lendable() ? lendIdle(holder) : lendFound(holder, deadline, restore)
        return Effect.zipRight(
          restore(admission.enter(deadline, config.acquireTimeout)),
          Effect.suspend(() => lendable() ? lendIdle(holder) : lendFound(holder, deadline, restore))
        )
      })

    const get = Effect.uninterruptibleMask((restore) => Effect.map(acquire("get", restore), (loan) => loan.socket))

    /** Held in a scope of its own, which `release` closes. */
    const checkout = Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(ScopeModule.make(), (scope) =>
        Effect.map(ScopeModule.extend(acquire("checkout", restore), scope), (loan) => {
          loan.scope = scope
          return loan.socket
        }))
    )

    const release = (socket: WebSocket) =>
      Effect.suspend(() => {
        const loan = loans.get(socket)
        if (loan?.holder !== "checkout") {
          return Effect.fail(new InvalidRelease({ reason: "the connection is not checked out from this pool" }))
        }
        // Released once: a second release of it fails, even before its scope has closed.
        loan.holder = "get"
        return ScopeModule.close(loan.scope!, Exit.void)
      })

    const health = Effect.sync(() => {
      const status: Record<string, BackendHealth> = {}
      for (const backend of backends) {
        const { active, idle } = connections.counts(backend)
        status[backend.id] = {
          healthy: backend.healthy,
          latency: backend.latency,
          lastCheck: backend.lastCheck,
          consecutiveFailures: backend.consecutiveFailures,
          circuit: backend.circuit,
          active,
          idle
        }
      }
      return status
    })

    if (config.healthCheck.enabled) {
      for (const backend of backends) {
        const check = Effect.flatMap(PoolSocket.probe(backend, config), ({ latency, ok }) => {
          const change = backend.checked(ok, latency)
          return change === undefined
            ? Effect.void
            : PubSub.publish(healthEvents, { type: change, backend: backend.id, at: new Date() })
        })
        yield* Effect.forkIn(
          Effect.repeat(check, Schedule.spaced(Duration.millis(config.healthCheck.interval))),
          poolScope
        )
      }
    }

    const close = Effect.suspend(() => {
      if (closed) return Effect.void
      closed = true
      admission.close()
      for (const onClose of Array.from(searching)) onClose()
      const idle = Array.from(connections.live).filter((socket) => !loans.has(socket))
      for (const socket of idle) socket.close(1000)
      // The pool's own shutdown waits for checked-out connections; it finishes in the background.
      runFork(ScopeModule.close(poolScope, Exit.void))
      return Effect.promise(() =>
        Promise.all(idle.map((socket) =>
          socket.readyState === WebSocket.CLOSED
            ? undefined
            : new Promise((resolve) => socket.once("close", resolve))
        ))
      ).pipe(Effect.timeout(Duration.seconds(5)), Effect.ignore)
    })

    yield* Effect.addFinalizer(() => close)

    const service: WebSocketPool = {
      [TypeId]: TypeId,
      config,
      get,
      checkout,
      release,
      activeCount: Effect.sync(() => connections.counts().active),
      idleCount: Effect.sync(() => connections.counts().idle),
      // An acquisition validating its connection is still searching.
      waitingCount: Effect.sync(() => admission.waiting + searching.size),
      health,
      healthChanges: Stream.fromPubSub(healthEvents),
      backendOf: (socket) => Option.fromNullable(connections.backendOf(socket)?.id),
      close
    }
    return service
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: WebSocketPoolOptions): Layer.Layer<WebSocketPool, InvalidOptions> =>
  Layer.scoped(WebSocketPool, make(options))
