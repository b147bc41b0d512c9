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
 * What no app should see is refused here: a request a fetch `Request` cannot represent (400), one
 * Node's parser refuses (400, 431), a head slower than `headersTimeout` (408). Each is counted.
 *
 * @since 0.1.0
 */
import type * as HttpApp from "@effect/platform/HttpApp"
import { causeResponse, ServeError } from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Cause, Effect, FiberSet, Option, Schema, Scope } from "effect"
import { UnknownException } from "effect/Cause"
import * as Http from "node:http"
import type { AddressInfo } from "node:net"
import type { Duplex } from "node:stream"
import type WebSocket from "ws"
import type { InvalidOptions } from "../errors.js"
import { fromSocket } from "../internal/connection.js"
import {
  answerClientError,
  countBadRequest,
  destroyThis,
  errorResponse,
  metrics as refusalMetrics,
  rawUpgradeOf,
  Refusals,
  refusePlain,
  refuseUpgrade,
  requestUrl,
  toWebRequest,
  writeResponse
} from "../internal/upgrade.js"
import { decode, PositiveInt } from "../options.js"

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
  /**
   * Milliseconds a client has to send its whole request head (10 s by default): a connection
   * that has not finished it by then (slowloris, or one that never sends a byte) is answered 408
   * and closed, within a second of the deadline.
   */
  readonly headersTimeout?: number | undefined
}

/**
 * What the server refused before any app saw it.
 *
 * @since 0.1.0
 * @category models
 */
export interface ServerStats {
  /** Requests answered 400 (or 431): ones a fetch `Request` cannot represent, or Node's parser refused. */
  readonly badRequests: number
  /** Connections answered 408 and closed: the request head did not arrive within `headersTimeout`. */
  readonly requestTimeouts: number
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
  readonly stats: Effect.Effect<ServerStats>
}

/**
 * Process-wide counters of what every server (and `fromFetch` on any server) refused:
 * `websocket_bad_requests_total` and `websocket_request_timeouts_total`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const metrics = refusalMetrics

const ServeTimeouts = Schema.Struct({
  headersTimeout: Schema.optionalWith(PositiveInt, { default: () => 10_000 })
})

/** Node's default, kept unless `headersTimeout` exceeds it (Node requires headers <= request). */
const NODE_REQUEST_TIMEOUT = 300_000

const badRequest = Effect.sync(() => {
  countBadRequest(undefined)
  return errorResponse({ status: 400 })
})

// A thrown accept error answers with its status; anything else is a bug in the handler, logged
// with its cause before the 500 it becomes.
const answerThrown = (error: UnknownException) => {
  const response = errorResponse(error.cause)
  return response.status === 500
    ? Effect.as(Effect.logError("The fetch handler failed; answered 500", Cause.die(error.cause)), response)
    : Effect.succeed(response)
}

const callHandler = (handler: FetchHandler, request: Request) =>
  Effect.catchAll(Effect.tryPromise(async () => handler(request)), answerThrown)

/**
 * An app from a fetch handler. A handler that throws an error with an HTTP `status` (every
 * `accept` error has one) is answered with that status; any other throw is logged and answered
 * 500. A request that cannot become a fetch `Request` is answered 400 without calling it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromFetch = (handler: FetchHandler): HttpApp.Default<never, HttpServerRequest.HttpServerRequest> => {
  const app = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
    Effect.orElseSucceed(Effect.sandbox(HttpServerRequest.toWeb(request)), () => undefined).pipe(
      Effect.flatMap((webRequest) => webRequest === undefined ? badRequest : callHandler(handler, webRequest)),
      Effect.map(HttpServerResponse.fromWeb)
    ))
  fetchHandlers.set(app, handler)
  return app
}

/** The handler behind each app `fromFetch` made, which an upgrade calls directly (see `upgradeWithFetch`). */
const fetchHandlers = new WeakMap<object, FetchHandler>()

const answerUpgrade = (request: Request, response: HttpServerResponse.HttpServerResponse) => {
  const raw = rawUpgradeOf(request)!
  // Once accepted, the socket speaks WebSocket: the app's answer only signalled the upgrade.
  if (raw.upgraded) return Effect.void
  return Effect.promise(() => writeResponse(raw.socket, HttpServerResponse.toWeb(response), request.method))
}

// What an app's failure answers, as @effect/platform's handler does; a 500 is a bug, logged.
const respondToCause = (cause: Cause.Cause<unknown>) =>
  Effect.flatMap(causeResponse(cause), ([response]) =>
    response.status === 500
      ? Effect.as(Effect.logError("The app failed on an upgrade; answered 500", cause), response)
      : Effect.succeed(response))

/** An app's answer, or what its failure answers, written unless the app accepted the upgrade. */
const answerWith = <E, R>(request: Request, answer: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  answer.pipe(
    Effect.catchAllCause(respondToCause),
    Effect.flatMap((response) => answerUpgrade(request, response))
  )

type Fork = (effect: Effect.Effect<void>) => unknown

/**
 * An upgrade for an app `fromFetch` made: its handler is called directly, without the fiber and the
 * platform's request and response wrappers the app would run in, which cost more per upgrade than the
 * handshake itself (issue 9). It answers and logs as the app does: an accepted upgrade needs nothing
 * more, a plain `Response` is written as is, and the rare rest (a throw, a value that is no
 * `Response`) takes the app's own path in a fiber.
 */
const upgradeWithFetch = (handler: FetchHandler, request: Request, fork: Fork) => {
  const answered = (response: Response | undefined): Promise<void> | undefined => {
    if (!(response instanceof Response)) {
      fork(answerWith(request, Effect.sync(() => HttpServerResponse.fromWeb(response!))))
      return undefined
    }
    const raw = rawUpgradeOf(request)!
    return raw.upgraded ? undefined : writeResponse(raw.socket, response, request.method)
  }
  const thrown = (cause: unknown) => {
    fork(answerWith(request, Effect.map(answerThrown(new UnknownException(cause)), HttpServerResponse.fromWeb)))
  }
  let result: Response | Promise<Response>
  try {
    result = handler(request)
  } catch (cause) {
    return thrown(cause)
  }
  if (result instanceof Response) return answered(result)?.catch((cause) => fork(Effect.die(cause)))
  Promise.resolve(result).then(answered, thrown).catch((cause) => fork(Effect.die(cause)))
}

const upgradeListener = <E, R>(app: HttpApp.Default<E, R>, refusals: Refusals | undefined) =>
  Effect.map(FiberSet.makeRuntime<Exclude<R, HttpServerRequest.HttpServerRequest>>(), (runFork) => {
    const handler = fetchHandlers.get(app)
    return (req: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
      // Until ws takes the socket over, an error on it (a reset) must not go unhandled.
      socket.on("error", destroyThis)
      const request = toWebRequest(req, socket, head)
      if (request === undefined) return refuseUpgrade(socket, refusals)
      if (handler !== undefined) return upgradeWithFetch(handler, request, runFork as Fork)
      runFork(
        answerWith(
          request,
          (app as HttpApp.Default<E, HttpServerRequest.HttpServerRequest>).pipe(
            Effect.provideService(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(request))
          )
        ) as Effect.Effect<void, never, Exclude<R, HttpServerRequest.HttpServerRequest>>
      )
    }
  })

/**
 * A listener for Node's `upgrade` event that runs the app on each upgrade. An upgrade a fetch
 * `Request` cannot represent is answered 400 and closed without running the app.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeUpgradeListener = <E, R>(
  app: HttpApp.Default<E, R>
): Effect.Effect<(req: Http.IncomingMessage, socket: Duplex, head: Buffer) => void, never, Scope.Scope | Exclude<R, HttpServerRequest.HttpServerRequest>> =>
  upgradeListener(app, undefined)

const attachWith = <E, R>(server: Http.Server, app: HttpApp.Default<E, R>, refusals: Refusals | undefined) =>
  Effect.flatMap(upgradeListener(app, refusals), (listener) =>
    Effect.acquireRelease(
      Effect.sync(() => server.on("upgrade", listener)),
      () => Effect.sync(() => server.off("upgrade", listener))
    ))

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
  attachWith(server, app, undefined)

/**
 * Ends an upgraded socket when its server shuts down: a WebSocket with a close frame (1001), as its
 * manager's own `close` would, and a socket that never became one at once.
 */
const closeUpgraded = (socket: Duplex) => {
  // ws keeps the WebSocket on its socket under a symbol it does not export.
  const key = Object.getOwnPropertySymbols(socket).find((symbol) => symbol.description === "websocket")
  const webSocket = key === undefined ? undefined : (socket as unknown as Record<symbol, WebSocket>)[key]
  if (webSocket === undefined) return socket.destroy()
  const connection = fromSocket(webSocket)
  if (Option.isSome(connection)) connection.value.closeSocket(1001, "Server shutdown", "server-shutdown")
  else webSocket.close(1001, "Server shutdown")
}

/**
 * Serves the app, upgrades included, until the scope closes. Closing it ends the WebSockets it
 * upgraded with 1001 (after what is already queued for them). Requests a fetch `Request` cannot
 * represent are answered 400 before the app sees them, and a request head that takes longer than
 * `headersTimeout` is answered 408; `stats` counts both.
 *
 * @since 0.1.0
 * @category constructors
 */
export const serve = <E, R>(
  app: HttpApp.Default<E, R>,
  options: ServeOptions = {}
): Effect.Effect<
  NodeServer,
  ServeError | InvalidOptions,
  Scope.Scope | Exclude<R, HttpServerRequest.HttpServerRequest>
> =>
  Effect.gen(function*() {
    const { headersTimeout } = yield* decode(ServeTimeouts, { headersTimeout: options.headersTimeout })
    const server = yield* Effect.acquireRelease(
      Effect.sync(() =>
        Http.createServer({
          headersTimeout,
          requestTimeout: Math.max(NODE_REQUEST_TIMEOUT, headersTimeout),
          // Node checks the deadlines on this period (30 s by default): a second keeps them tight.
          connectionsCheckingInterval: Math.min(1_000, headersTimeout)
        })
      ),
      (server) =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.closeIdleConnections()
          // The server stays open until its upgraded sockets end, and the manager that would close
          // them may be closed after this scope: without this, shutting down with clients
          // connected would wait for the clients to leave.
          for (const socket of upgraded) closeUpgraded(socket)
        })
    )
    const upgraded = new Set<Duplex>()
    server.on("upgrade", (_request: Http.IncomingMessage, socket: Duplex) => {
      upgraded.add(socket)
      socket.once("close", () => upgraded.delete(socket))
    })
    const refusals = new Refusals()
    const handleRequest = yield* (NodeHttpServer.makeHandler(app) as Effect.Effect<
      (req: Http.IncomingMessage, res: Http.ServerResponse) => void,
      never,
      Exclude<R, HttpServerRequest.HttpServerRequest>
    >)
    server.on("request", (req: Http.IncomingMessage, res: Http.ServerResponse) => {
      if (requestUrl(req) === undefined) refusePlain(res, refusals)
      else handleRequest(req, res)
    })
    server.on("clientError", (error: Error, socket: Duplex) => answerClientError(error, socket, refusals))
    yield* attachWith(server, app, refusals)
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
    const stats = Effect.sync((): ServerStats => ({
      badRequests: refusals.badRequests,
      requestTimeouts: refusals.requestTimeouts
    }))
    return { server, port, hostname, url: `http://${host}:${port}`, stats }
  })
