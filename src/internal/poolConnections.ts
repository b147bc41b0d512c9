/**
 * What a pool knows of its connections: which are open, which backend each goes to, and which
 * are out of effect's Pool (loans). Every count the pool reports derives from these.
 */
import type { Scope } from "effect"
import WebSocket from "ws"
import type { PoolBackend } from "./poolBackend.js"

/**
 * A connection out of effect's Pool. While it is validated nobody holds it; then its holder is a
 * scoped `get` or a `checkout` (which `release` ends). `scope` is the loan's own scope, closed to
 * end it; a `get` that took an idle connection has none, its caller's scope holds the loan. The
 * loan's end is set up before the Pool hands `socket` over, so `socket` is set once it has.
 */
export interface Loan {
  socket: WebSocket
  scope: Scope.CloseableScope | undefined
  holder: "validating" | "get" | "checkout"
}

const isHeld = (loan: Loan) => loan.holder !== "validating"

export class PoolConnections {
  private readonly backendBySocket = new WeakMap<WebSocket, PoolBackend>()
  /** Open pooled connections, until they close or the pool drops them. */
  readonly live = new Set<WebSocket>()
  readonly loans = new Map<WebSocket, Loan>()
  /** Connections that closed while in effect's Pool, until the Pool has dropped them. */
  dropping = 0

  /** A new connection to `backend` is open. */
  adopt(socket: WebSocket, backend: PoolBackend): void {
    this.backendBySocket.set(socket, backend)
    this.live.add(socket)
  }

  /** The connection closed, or the pool dropped it; idempotent. */
  forget(socket: WebSocket): void {
    if (!this.live.delete(socket)) return
    this.backendBySocket.get(socket)!.open--
  }

  backendOf(socket: WebSocket): PoolBackend | undefined {
    return this.backendBySocket.get(socket)
  }

  isIdle(socket: WebSocket): boolean {
    return !this.loans.has(socket) && socket.readyState === WebSocket.OPEN
  }

  /**
   * Whether effect's Pool would hand out an open connection at once: more than `claimed` are
   * idle, and every connection is open (one closing may be on its way back to the Pool).
   */
  lendable(claimed: number): boolean {
    if (this.dropping > 0) return false
    let idle = 0
    for (const socket of this.live) {
      if (socket.readyState !== WebSocket.OPEN) return false
      if (!this.loans.has(socket)) idle++
    }
    return idle > claimed
  }

  /** Held connections (a dead one until it is given back) and idle ones, of one backend or all. */
  counts(backend?: PoolBackend): { active: number; idle: number } {
    let active = 0
    let idle = 0
    for (const loan of this.loans.values()) {
      if (isHeld(loan) && (backend === undefined || this.backendBySocket.get(loan.socket) === backend)) active++
    }
    for (const socket of this.live) {
      if (this.isIdle(socket) && (backend === undefined || this.backendBySocket.get(socket) === backend)) idle++
    }
    return { active, idle }
  }
}
