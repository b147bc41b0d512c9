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
import type { InvalidOptions } from "./errors.js"
import { BackendConnectFailed, InvalidRelease, NoHealthyBackend, PoolAcquireTimeout, PoolClosed } from "./errors.js"
import { makePicker } from "./internal/loadBalancing.js"
import type { CircuitState, HealthChange } from "./internal/poolBackend.js"
import { PoolBackend } from "./internal/poolBackend.js"
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

/** Pings `socket` and calls `done` once: true on its pong, false after `timeoutMillis`. Returns a cancel. */
const ping = (socket: WebSocket, timeoutMillis: number, done: (ok: boolean) => void) => {
  const stop = () => {
    clearTimeout(timer)
    socket.off("pong", onPong)
  }
  const finish = (ok: boolean) => {
    stop()
    done(ok)
  }
  const onPong = () => finish(true)
  const timer = setTimeout(() => finish(false), timeoutMillis)
  socket.once("pong", onPong)
  try {
    socket.ping()
  } catch {
    finish(false)
  }
  return stop
}

const waitForPong = (socket: WebSocket, timeoutMillis: number) =>
  Effect.async<boolean>((resume) => Effect.sync(ping(socket, timeoutMillis, (ok) => resume(Effect.succeed(ok)))))

// A pooled connection must not crash the process on a late error; its close is handled.
const ignoreError = () => {}

const openSocket = (backend: PoolBackend, timeoutMillis: number) =>
  Effect.async<WebSocket, BackendConnectFailed>((resume) => {
    const socket = new WebSocket(backend.url, { handshakeTimeout: timeoutMillis })
    const onOpen = () => {
      socket.off("error", onError)
      socket.on("error", ignoreError)
      resume(Effect.succeed(socket))
    }
    const onError = (cause: Error) => {
      socket.off("open", onOpen)
      socket.terminate()
      resume(Effect.fail(new BackendConnectFailed({ backend: backend.id, cause })))
    }
    socket.once("open", onOpen)
    socket.once("error", onError)
    return Effect.sync(() => {
      socket.off("open", onOpen)
      socket.off("error", onError)
      socket.on("error", ignoreError)
      socket.terminate()
    })
  })

/** A backend's health check: an HTTP GET of `path`, or a ping round trip on a fresh connection. */
const probe = (backend: PoolBackend, config: WebSocketPoolConfig) => {
  const { path, timeout } = config.healthCheck
  const started = Date.now()
  const check: Effect.Effect<boolean, unknown> = path !== undefined
    ? Effect.tryPromise(() =>
      fetch(new URL(path, backend.url.replace(/^ws/, "http")), { signal: AbortSignal.timeout(timeout) })
    ).pipe(Effect.map((response) => response.status < 500))
    : Effect.acquireUseRelease(
      openSocket(backend, timeout),
      (socket) => waitForPong(socket, timeout),
      (socket) => Effect.sync(() => socket.terminate())
    )
  return check.pipe(
    Effect.timeout(Duration.millis(timeout)),
    Effect.orElseSucceed(() => false),
    Effect.map((ok) => ({ ok, latency: Date.now() - started }))
  )
}

/** A connection out of the pool, and the scope that gives it back when closed. */
interface Taken {
  readonly socket: WebSocket
  readonly scope: Scope.CloseableScope
}

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
    const backendBySocket = new WeakMap<WebSocket, PoolBackend>()
    /** Open pooled connections, until they close or the pool drops them. */
    const live = new Set<WebSocket>()
    /** Connections out of effect's Pool: being validated, or checked out. */
    const taken = new Set<WebSocket>()
    /** Connections checked out, a dead one included until it is given back. */
    const checkedOut = new Set<WebSocket>()
    const checkouts = new Map<WebSocket, Scope.CloseableScope>()
    /** Acquisitions still waiting, each with what fails it with `PoolClosed`. */
    const pending = new Set<() => void>()
    const healthEvents = yield* PubSub.unbounded<HealthEvent>()
    const validationTimeout = Math.min(VALIDATION_PING_TIMEOUT, config.acquireTimeout || VALIDATION_PING_TIMEOUT)
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
      return openSocket(backend, config.connectTimeout).pipe(
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
      backendBySocket.set(socket, backend)
      live.add(socket)
      socket.once("close", onPooledClose)
      if (closed) socket.close(1000)
    }

    const forget = (socket: WebSocket) => {
      if (!live.delete(socket)) return
      backendBySocket.get(socket)!.open--
    }

    // One close listener for every connection of the pool, rather than a closure per connection.
    // A connection that dies leaves the pool, which opens a replacement if it is below min.
    const onPooledClose = function(this: WebSocket) {
      forget(this)
      if (!closed) runFork(invalidate(this))
    }

    const pool: Pool.Pool<WebSocket, NoHealthyBackend | BackendConnectFailed> = yield* ScopeModule.extend(
      Pool.makeWithTTL({
        // Opening retries while no backend answers, so a dead connection is replaced as soon as
        // its backend is back; it stays interruptible, so closing the pool stops it.
        acquire: Effect.acquireRelease(
          Effect.interruptible(Effect.retry(connect, reconnectSchedule)),
          (socket) =>
            Effect.sync(() => {
              forget(socket)
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

    /** Back to the pool when its scope closes; a connection that is no longer open, never. */
    const giveBack = (socket: WebSocket) =>
      Effect.suspend(() => {
        taken.delete(socket)
        checkedOut.delete(socket)
        return socket.readyState === WebSocket.OPEN ? Effect.void : invalidate(socket)
      })

    const validate = (socket: WebSocket) =>
      socket.readyState !== WebSocket.OPEN
        ? Effect.succeed(false)
        : config.validateOnCheckout
        ? waitForPong(socket, validationTimeout)
        : Effect.succeed(true)

    type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

    /** One try: a valid connection, or `undefined` after giving back one that is not. */
    const attempt = (restore: Restore) =>
      Effect.flatMap(ScopeModule.make(), (scope) =>
        restore(ScopeModule.extend(Pool.get(pool), scope)).pipe(
          // Connecting retries until it succeeds, so the pool hands out no failed acquisitions.
          Effect.orDie,
          Effect.tap((socket) =>
            Effect.zipRight(
              ScopeModule.addFinalizer(scope, giveBack(socket)),
              Effect.sync(() => taken.add(socket))
            )
          ),
          Effect.flatMap((socket) =>
            Effect.map(validate(socket), (valid): Taken | undefined => {
              if (valid) {
                checkedOut.add(socket)
                return { socket, scope }
              }
              // It does not answer: terminated, so giving it back drops it.
              socket.terminate()
              return undefined
            })
          ),
          Effect.onExit((exit) =>
            Exit.isSuccess(exit) && exit.value !== undefined ? Effect.void : ScopeModule.close(scope, exit)
          )
        ))

    /**
     * Tries until a valid connection is found. Interruptible only while effect's Pool makes it
     * wait for a permit: once a connection is taken, the search ends with it (a validation runs
     * to its end) and `found` gets it, to hand out or to give back.
     */
    const search = (found: (taken: Taken) => void): Effect.Effect<void> =>
      Effect.uninterruptibleMask((restore) => {
        const loop: Effect.Effect<void> = Effect.flatMap(
          attempt(restore),
          (got) => got === undefined ? loop : Effect.sync(() => found(got))
        )
        return loop
      })

    const giveBackTaken = (got: Taken) => runFork(ScopeModule.close(got.scope, Exit.void))

    /**
     * A connection, or a typed failure by `acquireTimeout`. effect's Pool waits uninterruptibly
     * while it opens a connection, so the search runs in a fiber of its own that the caller can
     * leave: at its deadline, on `close()`, or when interrupted. A connection that fiber finds
     * after its caller left goes straight back.
     */
    const acquire = Effect.suspend((): Effect.Effect<Taken, AcquireError> => {
      if (closed) return Effect.fail(new PoolClosed())
      if (!backends.some((backend) => backend.available)) {
        return Effect.fail(new NoHealthyBackend({ backends: backendIds }))
      }
      return Effect.async<Taken, AcquireError>((resume) => {
        let settled = false
        /** What was handed to the caller, until the caller has it. */
        let delivered: Taken | undefined
        const settle = () => {
          settled = true
          pending.delete(onClose)
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
        pending.add(onClose)
        const timer = setTimeout(() => {
          leave()
          resume(Effect.fail(new PoolAcquireTimeout({ timeoutMillis: config.acquireTimeout })))
        }, config.acquireTimeout)
        const fiber = runFork(search((got) => {
          if (settled) return giveBackTaken(got)
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
        return Effect.sync(() => (settled ? delivered && giveBackTaken(delivered) : leave()))
      })
    })

    // Uninterruptible but for the wait: a connection handed to a caller interrupted at that
    // moment is still given back by the caller's scope.
    const get = Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(restore(acquire), ({ scope, socket }) =>
        Effect.as(Effect.addFinalizer(() => ScopeModule.close(scope, Exit.void)), socket))
    )

    const checkout = Effect.uninterruptibleMask((restore) =>
      Effect.map(restore(acquire), ({ scope, socket }) => {
        checkouts.set(socket, scope)
        return socket
      })
    )

    const release = (socket: WebSocket) =>
      Effect.suspend(() => {
        const scope = checkouts.get(socket)
        if (scope === undefined) {
          return Effect.fail(new InvalidRelease({ reason: "the connection is not checked out from this pool" }))
        }
        checkouts.delete(socket)
        return ScopeModule.close(scope, Exit.void)
      })

    const isIdle = (socket: WebSocket) => !taken.has(socket) && socket.readyState === WebSocket.OPEN

    const idleCount = () => {
      let idle = 0
      for (const socket of live) if (isIdle(socket)) idle++
      return idle
    }

    const health = Effect.sync(() => {
      const status: Record<string, BackendHealth> = {}
      for (const backend of backends) {
        let active = 0
        let idle = 0
        for (const socket of checkedOut) if (backendBySocket.get(socket) === backend) active++
        for (const socket of live) if (backendBySocket.get(socket) === backend && isIdle(socket)) idle++
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
        const check = Effect.flatMap(probe(backend, config), ({ latency, ok }) => {
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
      for (const onClose of Array.from(pending)) onClose()
      const idle = Array.from(live).filter((socket) => !taken.has(socket))
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
      activeCount: Effect.sync(() => checkedOut.size),
      idleCount: Effect.sync(idleCount),
      waitingCount: Effect.sync(() => pending.size),
      health,
      healthChanges: Stream.fromPubSub(healthEvents),
      backendOf: (socket) => Option.fromNullable(backendBySocket.get(socket)?.id),
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
