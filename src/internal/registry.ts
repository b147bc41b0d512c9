/**
 * The one registry of live connections, with the counts the limits are checked against.
 *
 * Counts include connections still being accepted (authenticating), so concurrent upgrades
 * cannot overshoot a limit: a slot is reserved before authentication and either becomes a
 * connection or is given back.
 */
import { Either } from "effect"
import { ConnectionLimitExceeded } from "../errors.js"
import type { WebSocketManagerConfig } from "../options.js"
import type { ConnectionImpl } from "./connection.js"

export interface Reservation {
  readonly ip: string
  userId: string | undefined
  released: boolean
}

const increment = (counts: Map<string, number>, key: string) => counts.set(key, (counts.get(key) ?? 0) + 1)

const decrement = (counts: Map<string, number>, key: string) => {
  const count = (counts.get(key) ?? 0) - 1
  if (count > 0) counts.set(key, count)
  else counts.delete(key)
}

export class ConnectionRegistry {
  readonly connections = new Map<string, ConnectionImpl>()
  private readonly byUser = new Map<string, Set<ConnectionImpl>>()
  private readonly perUser = new Map<string, number>()
  private readonly perIp = new Map<string, number>()
  private reserved = 0
  /** Told when a user's first connection arrives (true) and when the last one leaves (false). */
  onUserPresence: ((userId: string, present: boolean) => void) | undefined = undefined

  constructor(private readonly config: WebSocketManagerConfig) {}

  get size(): number {
    return this.connections.size
  }

  get pending(): number {
    return this.reserved - this.connections.size
  }

  reserve(ip: string): Either.Either<Reservation, ConnectionLimitExceeded> {
    const { maxConnections, maxConnectionsPerIP } = this.config
    if (this.reserved >= maxConnections) {
      return Either.left(new ConnectionLimitExceeded({ scope: "total", limit: maxConnections }))
    }
    if (maxConnectionsPerIP !== undefined && (this.perIp.get(ip) ?? 0) >= maxConnectionsPerIP) {
      return Either.left(new ConnectionLimitExceeded({ scope: "ip", limit: maxConnectionsPerIP }))
    }
    this.reserved++
    increment(this.perIp, ip)
    return Either.right({ ip, userId: undefined, released: false })
  }

  reserveUser(reservation: Reservation, userId: string): Either.Either<void, ConnectionLimitExceeded> {
    const limit = this.config.maxConnectionsPerUser
    if (limit !== undefined && (this.perUser.get(userId) ?? 0) >= limit) {
      return Either.left(new ConnectionLimitExceeded({ scope: "user", limit }))
    }
    reservation.userId = userId
    increment(this.perUser, userId)
    return Either.void
  }

  release(reservation: Reservation): void {
    if (reservation.released) return
    reservation.released = true
    this.reserved--
    decrement(this.perIp, reservation.ip)
    if (reservation.userId !== undefined) decrement(this.perUser, reservation.userId)
  }

  add(connection: ConnectionImpl): void {
    this.connections.set(connection.id, connection)
    const userId = connection.context.userId
    if (userId === undefined) return
    const sockets = this.byUser.get(userId)
    if (sockets !== undefined) {
      sockets.add(connection)
      return
    }
    this.byUser.set(userId, new Set([connection]))
    this.onUserPresence?.(userId, true)
  }

  remove(connection: ConnectionImpl, reservation: Reservation): void {
    if (!this.connections.delete(connection.id)) return
    const userId = connection.context.userId
    const sockets = userId === undefined ? undefined : this.byUser.get(userId)
    if (sockets !== undefined) {
      sockets.delete(connection)
      if (sockets.size === 0) {
        this.byUser.delete(userId!)
        this.onUserPresence?.(userId!, false)
      }
    }
    this.release(reservation)
  }

  ofUser(userId: string): ReadonlyArray<ConnectionImpl> {
    return Array.from(this.userSet(userId) ?? [])
  }

  /** A user's live connections, without copying them. */
  userSet(userId: string): ReadonlySet<ConnectionImpl> | undefined {
    return this.byUser.get(userId)
  }

  /** Every map's size and the reserved count: all 0 once every connection and upgrade is gone. */
  get sizes(): RegistrySizes {
    return {
      connections: this.connections.size,
      byUser: this.byUser.size,
      perUser: this.perUser.size,
      perIp: this.perIp.size,
      reserved: this.reserved
    }
  }
}

export interface RegistrySizes {
  readonly connections: number
  readonly byUser: number
  readonly perUser: number
  readonly perIp: number
  readonly reserved: number
}

/**
 * A manager's registry, for the churn test and benchmark, which check that nothing is left
 * behind in it; keyed by the manager's service object.
 */
export const registries = new WeakMap<object, ConnectionRegistry>()
