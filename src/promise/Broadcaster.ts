/**
 * The documented `Broadcaster` class, over the Effect service of the same name.
 *
 * @since 0.1.0
 */
import { Exit, Scope } from "effect"
import type WebSocket from "ws"
import type * as Core from "../Broadcaster.js"
import { make } from "../Broadcaster.js"
import type { BroadcasterOptions as CoreOptions } from "../options.js"
import type { RedisBusOptions } from "../RedisBus.js"
import { onBus } from "./cluster.js"
import { buildInScope, runPromise, runSync } from "./runtime.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface BroadcastOptions {
  readonly exclude?: WebSocket
  /** A function of this process: with `redis`, it needs `local: true` (`FilterNotSerializable` otherwise). */
  readonly filter?: (socket: WebSocket) => boolean
  /** This node's subscribers only, even with `redis`. */
  readonly local?: boolean
}

/**
 * @since 0.1.0
 * @category models
 */
export interface BroadcasterOptions extends CoreOptions {
  /**
   * Broadcasts reach the channel's subscribers on every node: `{ url }` or `{ client }` (an
   * `ioredis` client you hold). Connecting happens in the background; a broadcast the bus cannot
   * take rejects with `ClusterPublishFailed`.
   */
  readonly redis?: RedisBusOptions
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Channel {
  readonly name: string
  readonly subscriberCount: number
  broadcast(message: unknown, options?: BroadcastOptions): Promise<number>
}

/**
 * @since 0.1.0
 * @category facade
 */
export class Broadcaster {
  readonly #scope: Scope.CloseableScope
  /** The Effect service behind this object, for code that mixes both APIs. */
  readonly service: Core.Broadcaster

  /** Throws `InvalidOptions` (naming the field) when an option is invalid. */
  constructor(options?: BroadcasterOptions) {
    const { redis, ...core } = options ?? {}
    const { scope, service } = buildInScope(onBus(redis, make(core)))
    this.#scope = scope
    this.service = service
  }

  /** Throws `BroadcasterClosed` once the broadcaster is closed. */
  createChannel(name: string): Channel {
    const channel = runSync(this.service.createChannel(name))
    return {
      name,
      get subscriberCount() {
        return channel.subscriberCount
      },
      broadcast: (message, options) => runPromise(channel.broadcast(message, options))
    }
  }

  /**
   * Throws `NotAManagedSocket` for a socket no WebSocketManager accepted, or one not open, and
   * `BroadcasterClosed` once the broadcaster is closed.
   */
  subscribe(socket: WebSocket, channel: string): void {
    runSync(this.service.subscribe(socket, channel))
  }

  /** False (a no-op) when the channel does not exist or the socket is not subscribed. */
  unsubscribe(socket: WebSocket, channel: string): boolean {
    return runSync(this.service.unsubscribe(socket, channel))
  }

  /**
   * Resolves with the number of this node's sockets the message was written to; rejects with
   * `MessageEncodeError`, or `BroadcasterClosed` once the broadcaster is closed. With `redis`, it
   * is also published once for every other node, and rejects with `ClusterPublishFailed`
   * (carrying the local count in `delivered`) when the bus cannot take it.
   */
  broadcast(channel: string, message: unknown, options?: BroadcastOptions): Promise<number> {
    return runPromise(this.service.broadcast(channel, message, options))
  }

  getChannels(socket: WebSocket): Array<string> {
    return [...runSync(this.service.channelsOf(socket))]
  }

  getStats(): Core.Stats {
    return runSync(this.service.stats)
  }

  /**
   * Delivers what was already broadcast, shuts every channel, and makes later `broadcast`,
   * `subscribe` and `createChannel` calls fail with `BroadcasterClosed`.
   */
  close(): Promise<void> {
    return runPromise(Scope.close(this.#scope, Exit.void))
  }
}
