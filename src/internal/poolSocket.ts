/**
 * A pool's sockets to its backends: opening one, a ping round trip, and the health check built on
 * them.
 */
import { Duration, Effect } from "effect"
import WebSocket from "ws"
import { BackendConnectFailed } from "../errors.js"
import type { WebSocketPoolConfig } from "../options.js"
import type { PoolBackend } from "./poolBackend.js"

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

/** Whether the socket answers a ping within `timeoutMillis`. */
export const answersPing = (socket: WebSocket, timeoutMillis: number): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => Effect.sync(ping(socket, timeoutMillis, (ok) => resume(Effect.succeed(ok)))))

// A pooled connection must not crash the process on a late error; its close is handled.
const ignoreError = () => {}

/** An open socket to the backend; interrupting the opening terminates it. */
export const open = (backend: PoolBackend, timeoutMillis: number): Effect.Effect<WebSocket, BackendConnectFailed> =>
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
export const probe = (
  backend: PoolBackend,
  config: WebSocketPoolConfig
): Effect.Effect<{ readonly ok: boolean; readonly latency: number }> => {
  const { path, timeout } = config.healthCheck
  const started = Date.now()
  const check: Effect.Effect<boolean, unknown> = path !== undefined
    ? Effect.tryPromise(() =>
      fetch(new URL(path, backend.url.replace(/^ws/, "http")), { signal: AbortSignal.timeout(timeout) })
    ).pipe(Effect.map((response) => response.status < 500))
    : Effect.acquireUseRelease(
      open(backend, timeout),
      (socket) => answersPing(socket, timeout),
      (socket) => Effect.sync(() => socket.terminate())
    )
  return check.pipe(
    Effect.timeout(Duration.millis(timeout)),
    Effect.orElseSucceed(() => false),
    Effect.map((ok) => ({ ok, latency: Date.now() - started }))
  )
}
