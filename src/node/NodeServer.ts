/**
 * Node's HTTP server, upgrades included, for `@effect/platform` apps and fetch-style handlers.
 *
 * Plain requests are served by `@effect/platform-node`'s handler. Upgrades, which Node hands out
 * as `(req, socket, head)`, become a standard `Request` remembered with its socket; the app's
 * `accept(request)` completes the handshake on that socket, and any other answer the app gives
 * is written as a plain HTTP response before the socket is closed.
 *
 * A fetch handler is an app too: it reads the request with `HttpServerRequest.toWeb` and answers
 * with `HttpServerResponse.fromWeb`, so both kinds take the same path.
 *
 * @since 0.1.0
 */
import type * as HttpApp from "@effect/platform/HttpApp"
import { causeResponse, ServeError } from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, FiberSet, Scope } from "effect"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import type { Duplex } from "node:stream"
import { errorResponse, rawUpgradeOf, toWebRequest, writeResponse } from "../internal/upgrade.js"

/**
 * @since 0.1.0
 * @category models
 */
export type FetchHandler = (request: Request) => Response | Promise<Response>

/**
 * @since 0.1.0
 * @category models
 */
export interface ServeOptions {
  /** 0 (the default) picks a free port. */
  readonly port?: number | undefined
  /** Defaults to 127.0.0.1: listening on every interface is a choice to make explicitly. */
  readonly hostname?: string | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface NodeServer {
  readonly server: Http.Server
  readonly port: number
  readonly hostname: string
  readonly url: string
}

/**
 * An app from a fetch handler. A handler that throws an error with an HTTP `status` (every
 * `accept` error has one) is answered with that status.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromFetch = (handler: FetchHandler): HttpApp.Default<never, HttpServerRequest.HttpServerRequest> =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const response = yield* HttpServerRequest.toWeb(request).pipe(
      Effect.flatMap((webRequest) => Effect.tryPromise(async () => handler(webRequest))),
      Effect.catchAll((error) => Effect.succeed(errorResponse(error.cause ?? error)))
    )
    return HttpServerResponse.fromWeb(response)
  })

const answerUpgrade = (request: Request, response: HttpServerResponse.HttpServerResponse) => {
  const raw = rawUpgradeOf(request)!
  // Once accepted, the socket speaks WebSocket: the app's answer only signalled the upgrade.
  if (raw.upgraded) return Effect.void
  return Effect.promise(() => writeResponse(raw.socket, HttpServerResponse.toWeb(response)))
}

// Until ws takes the socket over, an error on it (a reset) must not go unhandled. Shared, not a
// closure per socket.
function destroyOnError(this: Duplex) {
  this.destroy()
}

/**
 * A listener for Node's `upgrade` event that runs the app on each upgrade.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeUpgradeListener = <E, R>(
  app: HttpApp.Default<E, R>
): Effect.Effect<(req: Http.IncomingMessage, socket: Duplex, head: Buffer) => void, never, Scope.Scope | Exclude<R, HttpServerRequest.HttpServerRequest>> =>
  Effect.map(FiberSet.makeRuntime<Exclude<R, HttpServerRequest.HttpServerRequest>>(), (runFork) =>
    (req: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on("error", destroyOnError)
      const request = toWebRequest(req, socket, head)
      runFork(
        (app as HttpApp.Default<E, HttpServerRequest.HttpServerRequest>).pipe(
          Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(request)),
          Effect.catchAllCause((cause) => Effect.map(causeResponse(cause), ([response]) => response)),
          Effect.flatMap((response) => answerUpgrade(request, response))
        ) as Effect.Effect<void, never, Exclude<R, HttpServerRequest.HttpServerRequest>>
      )
    })

/**
 * Adds the app's upgrade handling to an existing `http.Server` (Express and the like) for the
 * life of the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const attach = <E, R>(
  server: Http.Server,
  app: HttpApp.Default<E, R>
): Effect.Effect<void, never, Scope.Scope | Exclude<R, HttpServerRequest.HttpServerRequest>> =>
  Effect.flatMap(makeUpgradeListener(app), (listener) =>
    Effect.acquireRelease(
      Effect.sync(() => server.on("upgrade", listener)),
      () => Effect.sync(() => server.off("upgrade", listener))
    ))

/**
 * Serves the app, upgrades included, until the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const serve = <E, R>(
  app: HttpApp.Default<E, R>,
  options: ServeOptions = {}
): Effect.Effect<NodeServer, ServeError, Scope.Scope | Exclude<R, HttpServerRequest.HttpServerRequest>> =>
  Effect.gen(function*() {
    const server = yield* Effect.acquireRelease(
      Effect.sync(() => Http.createServer()),
      (server) =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeIdleConnections()
        })
    )
    const handleRequest = yield* (NodeHttpServer.makeHandler(app) as Effect.Effect<
      (req: Http.IncomingMessage, res: Http.ServerResponse) => void,
      never,
      Exclude<R, HttpServerRequest.HttpServerRequest>
    >)
    server.on("request", handleRequest)
    yield* attach(server, app)
    const hostname = options.hostname ?? "127.0.0.1"
    yield* Effect.async<void, ServeError>((resume) => {
      const onError = (cause: Error) => resume(Effect.fail(new ServeError({ cause })))
      server.once("error", onError)
      server.listen(options.port ?? 0, hostname, () => {
        server.off("error", onError)
        resume(Effect.void)
      })
    })
    const port = (server.address() as AddressInfo).port
    const host = hostname.includes(":") ? `[${hostname}]` : hostname
    return { server, port, hostname, url: `http://${host}:${port}` }
  })
