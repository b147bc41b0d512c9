/**
 * The Node adapter for fetch-style handlers: `serve({ port, hostname, fetch })` and `attach`.
 *
 * @since 0.1.0
 */
import { Effect, Exit, Scope } from "effect"
import type * as Http from "node:http"
import type { FetchHandler } from "../node/NodeServer.js"
import * as NodeServer from "../node/NodeServer.js"
import { runPromise, runSync } from "./runtime.js"

export type { FetchHandler, ServerStats } from "../node/NodeServer.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface ServeOptions extends NodeServer.ServeOptions {
  readonly fetch: FetchHandler
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Server {
  readonly server: Http.Server
  readonly port: number
  readonly hostname: string
  readonly url: string
  /** What the server refused before `fetch` saw it: bad requests (400, 431) and slow heads (408). */
  getStats(): NodeServer.ServerStats
  /** Stops listening; resolves once the HTTP server is closed. */
  close(): Promise<void>
}

const inScope = async <A, E>(effect: Effect.Effect<A, E, Scope.Scope>) => {
  const scope = await runPromise(Scope.make())
  const close = () => runPromise(Scope.close(scope, Exit.void))
  const value = await runPromise(Scope.extend(effect, scope)).catch(async (error) => {
    await close()
    throw error
  })
  return { value, close }
}

/**
 * Starts a Node HTTP server that hands every request, upgrades included, to `fetch`. Requests a
 * fetch `Request` cannot represent are answered 400 without calling it; a request head slower
 * than `headersTimeout` (10 s) is answered 408 and closed.
 *
 * @since 0.1.0
 * @category constructors
 */
export const serve = async ({ fetch, ...options }: ServeOptions): Promise<Server> => {
  const { close, value } = await inScope(NodeServer.serve(NodeServer.fromFetch(fetch), options))
  const { hostname, port, server, stats, url } = value
  return { server, port, hostname, url, getStats: () => runSync(stats), close }
}

/**
 * Hands the upgrades of an existing `http.Server` (Express and the like) to `fetch`.
 * Resolves to a function that detaches it again.
 *
 * @since 0.1.0
 * @category constructors
 */
export const attach = async (server: Http.Server, fetch: FetchHandler): Promise<() => Promise<void>> => {
  const { close } = await inScope(NodeServer.attach(server, NodeServer.fromFetch(fetch)))
  return close
}
