/**
 * A pool of outbound WebSocket connections to one or more backends, on effect's `Pool`.
 *
 * Each pooled connection is opened to a backend picked by the load-balancing strategy among the
 * healthy ones whose circuit is not open; opening retries with exponential backoff and jitter
 * while no backend answers, so a dead connection is replaced as soon as its backend is back.
 * Checkout is exclusive and scoped (`get`), or explicit (`checkout` / `release`) for the facade.
 *
 * @since 0.1.0
 */
import type { Scope } from "effect"
import {
  Cause,
  Context,
  Duration,
  Effect,
  Exit,
  ExecutionStrategy,
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
  readonly activeCount: Effect.Effect<number>
  readonly idleCount: Effect.Effect<number>
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

const waitForPong = (socket: WebSocket, timeoutMillis: number) =>
  Effect.async<boolean>((resume) => {
    const onPong = () => done(true)
    const timer = setTimeout(() => done(false), timeoutMillis)
    const done = (ok: boolean) => {
      clearTimeout(timer)
      socket.off("pong", onPong)
      resume(Effect.succeed(ok))
    }
    socket.once("pong", onPong)
    try {
      socket.ping()
    } catch {
      done(false)
    }
    return Effect.sync(() => done(false))
  })

const openSocket = (backend: PoolBackend, timeoutMillis: number) =>
  Effect.async<WebSocket, BackendConnectFailed>((resume) => {
    const socket = new WebSocket(backend.url, { handshakeTimeout: timeoutMillis })
    const onOpen = () => {
      socket.off("error", onError)
      // A pooled connection must not crash the process on a late error; its close is handled.
      socket.on("error", () => {})
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
      socket.on("error", () => {})
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

/**
 * `effect` in a fiber of its own, failing with `onTimeout()` once `millis` have passed. Two
 * reasons not to use `Effect.timeout` here: it cost ~45 µs per call on the benchmark machine,
 * most of an acquisition, and it waits for the effect to be interrupted, while effect's Pool
 * waits uninterruptibly when it is opening a connection. The late fiber is interrupted and left
 * to finish on its own.
 */
const withDeadline = <A, E, E2>(
  effect: Effect.Effect<A, E>,
  millis: number,
  onTimeout: () => E2,
  /** Called when the caller stops waiting, by timeout or interruption. */
  abandon: () => void
) =>
  Effect.flatMap(Effect.forkDaemon(effect), (fiber) =>
    Effect.async<A, E | E2>((resume) => {
      let settled = false
      const timer = setTimeout(() => {
        if (settled) return
        settled = true
        abandon()
        fiber.unsafeInterruptAsFork(FiberId.none)
        resume(Effect.fail(onTimeout()))
      }, millis)
      fiber.addObserver((exit) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        resume(exit)
      })
      return Effect.sync(() => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        abandon()
        fiber.unsafeInterruptAsFork(FiberId.none)
      })
    }))

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
    const pick = makePicker(config.loadBalancing)
    const backendBySocket = new WeakMap<WebSocket, PoolBackend>()
    /** Open pooled connections. */
    const live = new Set<WebSocket>()
    const checkedOut = new Set<WebSocket>()
    const checkouts = new Map<WebSocket, Scope.CloseableScope>()
    const healthEvents = yield* PubSub.unbounded<HealthEvent>()
    let waiting = 0
    let closed = false

    const poolScope = yield* ScopeModule.make()
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())

    const connect = Effect.suspend((): Effect.Effect<
      { readonly socket: WebSocket; readonly backend: PoolBackend },
      NoHealthyBackend | BackendConnectFailed
    > => {
      const available = backends.filter((backend) => backend.available)
      if (available.length === 0) return Effect.fail(new NoHealthyBackend({ backends: backendIds }))
      const backend = pick(available)
      return openSocket(backend, config.connectTimeout).pipe(
        Effect.tapBoth({
          onFailure: () => Effect.sync(() => backend.connectFailed()),
          onSuccess: () => Effect.sync(() => backend.connectSucceeded())
        }),
        Effect.map((socket) => ({ socket, backend }))
      )
    })

    const forget = (socket: WebSocket) => {
      if (!live.delete(socket)) return
      backendBySocket.get(socket)!.open--
    }

    const pool: Pool.Pool<WebSocket, NoHealthyBackend | BackendConnectFailed> = yield* ScopeModule.extend(
      Pool.makeWithTTL({
        acquire: Effect.acquireRelease(
          Effect.retry(connect, reconnectSchedule).pipe(
            Effect.map(({ backend, socket }) => {
              backendBySocket.set(socket, backend)
              live.add(socket)
              backend.open++
              // A connection that dies leaves the pool, which opens a replacement if it is below min.
              socket.once("close", () => {
                forget(socket)
                if (!closed) runFork(invalidate(socket))
              })
              return socket
            })
          ),
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

    const validate = (socket: WebSocket) =>
      socket.readyState !== WebSocket.OPEN
        ? Effect.succeed(false)
        : config.validateOnCheckout
        ? waitForPong(socket, Math.min(VALIDATION_PING_TIMEOUT, config.acquireTimeout || VALIDATION_PING_TIMEOUT))
        : Effect.succeed(true)

    const idleCount = () => {
      let idle = 0
      for (const socket of live) if (!checkedOut.has(socket)) idle++
      return idle
    }

    /** Takes a connection from the pool into `itemScope`. */
    const take = (itemScope: Scope.Scope) =>
      ScopeModule.extend(Pool.get(pool), itemScope).pipe(
        // Connecting retries until it succeeds, so the pool hands out no failed acquisitions.
        Effect.orDie,
        // The pool's shutdown interrupts its waiters: for a caller that is `PoolClosed`.
        Effect.catchAllCause((cause) =>
          closed && Cause.isInterruptedOnly(cause) ? Effect.fail(new PoolClosed()) : Effect.failCause(cause)
        )
      )

    const markCheckedOut = (socket: WebSocket, itemScope: Scope.Scope) => {
      const backend = backendBySocket.get(socket)!
      checkedOut.add(socket)
      backend.active++
      return Effect.as(
        ScopeModule.addFinalizer(
          itemScope,
          Effect.sync(() => {
            checkedOut.delete(socket)
            backend.active--
            if (closed) socket.close(1000)
          })
        ),
        socket
      )
    }

    /**
     * One checkout attempt into `parent`: a valid connection, or `undefined` after invalidating a
     * dead one. A connection obtained after its caller gave up (`abandoned`) goes straight back.
     */
    const attempt = (parent: Scope.Scope, abandoned: { value: boolean }) =>
      Effect.flatMap(ScopeModule.fork(parent, ExecutionStrategy.sequential), (itemScope) =>
        take(itemScope).pipe(
          Effect.flatMap((socket) =>
            Effect.flatMap(validate(socket), (valid): Effect.Effect<WebSocket | undefined> =>
              abandoned.value
                ? Effect.interrupt
                : valid
                ? markCheckedOut(socket, itemScope)
                : Effect.as(invalidate(socket), undefined)
            )
          ),
          Effect.onExit((exit) =>
            Exit.isSuccess(exit) && exit.value !== undefined ? Effect.void : ScopeModule.close(itemScope, exit)
          )
        ))

    const acquireInto = (parent: Scope.Scope): Effect.Effect<WebSocket, AcquireError> =>
      Effect.suspend((): Effect.Effect<WebSocket, AcquireError> => {
        if (closed) return Effect.fail(new PoolClosed())
        if (!backends.some((backend) => backend.available)) {
          return Effect.fail(new NoHealthyBackend({ backends: backendIds }))
        }
        const abandoned = { value: false }
        const loop: Effect.Effect<WebSocket, PoolClosed> = Effect.flatMap(
          attempt(parent, abandoned),
          (socket) => socket === undefined ? loop : Effect.succeed(socket)
        )
        // An idle connection is handed out at once: no deadline to keep.
        if (idleCount() > 0) return loop
        waiting++
        return withDeadline(
          loop,
          config.acquireTimeout,
          () => new PoolAcquireTimeout({ timeoutMillis: config.acquireTimeout }),
          () => {
            abandoned.value = true
          }
        ).pipe(Effect.ensuring(Effect.sync(() => waiting--)))
      })

    const get = Effect.flatMap(Effect.scope, acquireInto)

    const checkout = Effect.gen(function*() {
      const scope = yield* ScopeModule.make()
      const socket = yield* acquireInto(scope).pipe(Effect.onError((cause) => ScopeModule.close(scope, Exit.failCause(cause))))
      checkouts.set(socket, scope)
      return socket
    })

    const release = (socket: WebSocket) =>
      Effect.suspend(() => {
        const scope = checkouts.get(socket)
        if (scope === undefined) {
          return Effect.fail(new InvalidRelease({ reason: "the connection is not checked out from this pool" }))
        }
        checkouts.delete(socket)
        return ScopeModule.close(scope, Exit.void)
      })

    const health = Effect.sync(() => {
      const status: Record<string, BackendHealth> = {}
      for (const backend of backends) {
        status[backend.id] = {
          healthy: backend.healthy,
          latency: backend.latency,
          lastCheck: backend.lastCheck,
          consecutiveFailures: backend.consecutiveFailures,
          circuit: backend.circuit,
          active: backend.active,
          idle: backend.open - backend.active
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
      const idle = Array.from(live).filter((socket) => !checkedOut.has(socket))
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
      waitingCount: Effect.sync(() => waiting),
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
