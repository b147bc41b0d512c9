/**
 * The documented `Broadcaster` class, over the Effect service of the same name.
 *
 * @since 0.1.0
 */
import { Exit, Scope } from "effect"
import type WebSocket from "ws"
import type * as Core from "../Broadcaster.js"
import { make } from "../Broadcaster.js"
import type { BroadcasterOptions } from "../options.js"
import { buildInScope, runPromise, runSync } from "./runtime.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface BroadcastOptions {
  readonly exclude?: WebSocket
  readonly filter?: (socket: WebSocket) => boolean
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
    const { scope, service } = buildInScope(make(options))
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
   * Resolves with the number of sockets the message was written to; rejects with
   * `MessageEncodeError`, or `BroadcasterClosed` once the broadcaster is closed.
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
