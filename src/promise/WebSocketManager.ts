/**
 * The documented `WebSocketManager` class, over the Effect service of the same name.
 *
 * @since 0.1.0
 */
import { Effect, Exit, Option, Scope } from "effect"
import type WebSocket from "ws"
import type { CloseInfo, ConnectionContext } from "../Connection.js"
import { fromSocket } from "../Connection.js"
import type { WebSocketManagerOptions as CoreOptions } from "../options.js"
import type { RedisBusOptions } from "../RedisBus.js"
import * as Core from "../WebSocketManager.js"
import { onBus } from "./cluster.js"
import { buildInScope, runPromise, runSync } from "./runtime.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface AcceptResult {
  readonly socket: WebSocket
  readonly response: Response
  readonly context: ConnectionContext
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AcceptOptions {
  /** Insist on this subprotocol: the client must offer it, or the upgrade is refused with 400. */
  readonly protocol?: string
}

/**
 * @since 0.1.0
 * @category models
 */
export interface WebSocketManagerOptions extends CoreOptions {
  /**
   * `broadcast` and `sendToUser` reach every node's connections, and `getClusterConnections`
   * counts them: `{ url }` or `{ client }` (an `ioredis` client you hold). Connecting happens in
   * the background.
   */
  readonly redis?: RedisBusOptions
}

/**
 * @since 0.1.0
 * @category facade
 */
export class WebSocketManager {
  readonly #scope: Scope.CloseableScope
  /** The Effect service behind this object, for code that mixes both APIs. */
  readonly service: Core.WebSocketManager

  /** Throws `InvalidOptions` (naming the field) when an option is invalid. */
  constructor(options?: WebSocketManagerOptions) {
    const { redis, ...core } = options ?? {}
    const { scope, service } = buildInScope(onBus(redis, Core.make(core)))
    this.#scope = scope
    this.service = service
  }

  /** Resolves once the handshake is complete; rejects with a tagged error carrying the HTTP `status`. */
  accept(request: Request, options?: AcceptOptions): Promise<AcceptResult> {
    return runPromise(
      Effect.map(this.service.accept(request, options), ({ context, response, socket }) => ({ socket, response, context }))
    )
  }

  getActiveConnections(): number {
    return runSync(this.service.activeConnections)
  }

  getUserSockets(userId: string): Array<WebSocket> {
    return runSync(this.service.userConnections(userId)).map((connection) => connection.socket)
  }

  /** Open connections, connections being authenticated, and live connection fibers. */
  getStats(): Core.Stats {
    return runSync(this.service.stats)
  }

  /**
   * Resolves with the number of this node's connections reached. With `redis`, every other node's
   * connections get it too; a filter then needs `{ local: true }` (it rejects with
   * `FilterNotSerializable` otherwise), and it rejects with `ClusterPublishFailed` (carrying the
   * local count in `delivered`) when the bus cannot take the message.
   */
  broadcast(message: unknown, filter?: Core.BroadcastFilter, options?: Core.BroadcastOptions): Promise<number> {
    return runPromise(this.service.broadcast(message, filter, options))
  }

  /**
   * Every open socket of the user, on every node with `redis`: resolves with the number reached
   * on this node.
   */
  sendToUser(userId: string, message: unknown): Promise<number> {
    return runPromise(this.service.sendToUser(userId, message))
  }

  /**
   * Open connections across the cluster: this node's live count plus every other node's last
   * announced one (refreshed every third of `presenceTtl`); this node's alone without `redis`.
   * Rejects with `ClusterUnavailable` while Redis cannot be reached.
   */
  getClusterConnections(): Promise<number> {
    return runPromise(this.service.clusterConnections)
  }

  /**
   * How a socket of this manager ended (`{ code, reason, end, error }`), once it has closed; known
   * already inside the socket's own 'close' listeners. `undefined` while it is open, or for a
   * socket the manager did not accept.
   */
  getCloseInfo(socket: WebSocket): CloseInfo | undefined {
    return Option.getOrUndefined(fromSocket(socket))?.closeInfo
  }

  /**
   * Resolves when every connection is gone. Rejects with `InvalidClose`, closing nothing, for a
   * code or reason the protocol does not allow.
   */
  close(code?: number, reason?: string): Promise<void> {
    return runPromise(Effect.zipRight(this.service.close(code, reason), Scope.close(this.#scope, Exit.void)))
  }
}
