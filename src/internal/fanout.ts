/**
 * The bounded fan-out shared by the Broadcaster's channels and the manager's `broadcast`: messages
 * written to many sockets, each framed once, with a bound on what may wait in a socket's send
 * buffer and a slow-consumer policy past it.
 *
 * Sockets are not fibers: waking a fiber per recipient per message would cost several times the
 * write it does. A recipient's mailbox is its socket's send buffer; past the bound the policy
 * decides, so a slow socket never holds up the others nor grows the server's memory without end.
 */
import type { Metric } from "effect"
import WebSocket from "ws"
import type { ChannelConfig } from "../options.js"
import type { ConnectionImpl } from "./connection.js"
import * as Encode from "./encode.js"
import type { Encoded } from "./encode.js"

/** WebSocket close code for a policy violation (RFC 6455 §7.4.1). */
const CLOSE_POLICY_VIOLATION = 1008

const EMPTY = Buffer.alloc(0)

/** How often a backlog over its bound only through ws's compression queue looks again (zlib takes ms). */
const COMPRESSION_RECHECK_MILLIS = 2

/** Who gets a message: every target, or only the targets in the set. */
export type Audience = true | ReadonlySet<ConnectionImpl>

/** A `'drop-oldest'` backlog, and whether a wake-up is due to flush it. */
interface Backlog {
  readonly messages: Array<Encoded>
  armed: boolean
}

export interface FanOutMetrics {
  readonly delivered: Metric.Metric.Counter<number>
  readonly dropped: Metric.Metric.Counter<number>
}

export class FanOut {
  /** Messages written to sockets. */
  delivered = 0
  /** Messages a socket did not get, by the policy (or left in its backlog when it went away). */
  dropped = 0
  /** `'drop-oldest'` backlogs, only for sockets over their bound. */
  private readonly backlogs = new Map<ConnectionImpl, Backlog>()

  constructor(readonly config: ChannelConfig, private readonly metrics: FanOutMetrics) {}

  /** Sockets over their bound with a `'drop-oldest'` backlog. */
  get backlogged(): number {
    return this.backlogs.size
  }

  /**
   * Writes each message, in order, to the open targets its audience (at the same index) keeps;
   * returns how many sockets each message was written to.
   */
  send(
    targets: Iterable<ConnectionImpl>,
    messages: ReadonlyArray<Encoded>,
    audiences: ReadonlyArray<Audience>
  ): Array<number> {
    const counts = new Array<number>(messages.length).fill(0)
    this.counted(() => this.fanOut(targets, messages, audiences, counts))
    return counts
  }

  /** A connection leaves: its backlog goes, and what it still held counts as dropped. */
  discard(connection: ConnectionImpl): void {
    this.counted(() => this.drop(connection))
  }

  /** Runs `f` and reports what it delivered and dropped to the metrics: the one place they are updated. */
  private counted(f: () => void): void {
    const delivered = this.delivered
    const dropped = this.dropped
    f()
    if (this.delivered > delivered) this.metrics.delivered.unsafeUpdate(this.delivered - delivered, [])
    if (this.dropped > dropped) this.metrics.dropped.unsafeUpdate(this.dropped - dropped, [])
  }

  private fanOut(
    targets: Iterable<ConnectionImpl>,
    messages: ReadonlyArray<Encoded>,
    audiences: ReadonlyArray<Audience>,
    counts: Array<number>
  ): void {
    const several = messages.length > 1
    const uniform = messages.length > 0 && audiences.every((audience) => audience === true)
    // What goes to everyone is framed into one Buffer: one write per socket for the lot. This is
    // the path of nearly every delivery, so it does no more per socket than the checks the bound needs.
    const combined = !uniform ? undefined : several ? Buffer.concat(messages.map(Encode.frameOf)) : Encode.frameOf(messages[0]!)
    const { maxBackpressure } = this.config
    for (const connection of targets) {
      const socket = connection.socket
      if (socket.readyState !== WebSocket.OPEN) continue
      if (
        combined !== undefined && !this.backlogs.has(connection) &&
        Encode.canTakeRawFrame(socket) && socket.bufferedAmount + combined.length <= maxBackpressure
      ) {
        Encode.rawSocketOf(socket).write(combined)
        for (let i = 0; i < counts.length; i++) counts[i]!++
        this.delivered += counts.length
        continue
      }
      const raw = Encode.rawSocketOf(socket)
      if (several) raw.cork()
      for (let i = 0; i < messages.length; i++) {
        const audience = audiences[i]!
        if (audience !== true && !audience.has(connection)) continue
        if (this.offer(connection, messages[i]!)) counts[i]!++
      }
      if (several) raw.uncork()
    }
  }

  /** Writes now (true), or applies the slow-consumer policy (false). */
  private offer(connection: ConnectionImpl, encoded: Encoded): boolean {
    const backlog = this.backlogs.get(connection)
    if (backlog !== undefined && !this.flush(connection, backlog)) {
      this.enqueue(backlog, encoded)
      return false
    }
    if (connection.socket.bufferedAmount > this.config.maxBackpressure) {
      this.overBound(connection, encoded)
      return false
    }
    if (!Encode.write(connection.socket, encoded)) return false
    this.delivered++
    return true
  }

  private overBound(connection: ConnectionImpl, encoded: Encoded): void {
    switch (this.config.policy) {
      case "drop-newest":
        this.dropped++
        return
      case "close":
        this.dropped++
        connection.closeSocket(CLOSE_POLICY_VIOLATION, "Slow consumer", "slow-consumer")
        return
      case "drop-oldest": {
        const backlog: Backlog = { messages: [encoded], armed: false }
        this.backlogs.set(connection, backlog)
        this.flushLater(connection, backlog)
        return
      }
    }
  }

  /** Keeps the newest `maxQueuedMessages`. */
  private enqueue(backlog: Backlog, encoded: Encoded): void {
    backlog.messages.push(encoded)
    if (backlog.messages.length > this.config.maxQueuedMessages) {
      backlog.messages.shift()
      this.dropped++
    }
  }

  /**
   * One wake-up per backlog at most, however many messages arrive while it waits. A socket that
   * closes instead lets its backlog go (it would never drain).
   *
   * `'drain'` fires only after a write that went past the TCP stream's high-water mark; a bound
   * below it, or bytes still in ws's compression queue, would otherwise leave accepted messages
   * waiting for the next broadcast. Hence: the drain when one is due, else the callback of an
   * empty write (it runs once everything before it has reached the kernel, i.e. when the peer
   * reads), else a short timer while only the compression queue is over the bound.
   */
  private flushLater(connection: ConnectionImpl, backlog: Backlog): void {
    if (backlog.armed) return
    backlog.armed = true
    const raw = Encode.rawSocketOf(connection.socket)
    let woken = false
    const wake = () => {
      if (woken) return
      woken = true
      raw.off("drain", wake)
      raw.off("close", wake)
      backlog.armed = false
      this.counted(() => this.flush(connection, backlog))
    }
    raw.once("close", wake)
    if (raw.writableNeedDrain) raw.once("drain", wake)
    else if (raw.writableLength > 0) raw.write(EMPTY, wake)
    else setTimeout(wake, COMPRESSION_RECHECK_MILLIS)
  }

  /**
   * Writes a backlog out while the socket is under its bound; true once it is gone. Runs on the
   * socket's drain and before the next message for it, whichever comes first.
   */
  private flush(connection: ConnectionImpl, backlog: Backlog): boolean {
    if (this.backlogs.get(connection) !== backlog) return true
    const socket = connection.socket
    const { messages } = backlog
    while (messages.length > 0 && socket.readyState === WebSocket.OPEN && socket.bufferedAmount <= this.config.maxBackpressure) {
      Encode.write(socket, messages.shift()!)
      this.delivered++
    }
    if (messages.length > 0 && socket.readyState === WebSocket.OPEN) {
      this.flushLater(connection, backlog)
      return false
    }
    this.drop(connection)
    return true
  }

  private drop(connection: ConnectionImpl): void {
    const backlog = this.backlogs.get(connection)
    if (backlog === undefined) return
    this.backlogs.delete(connection)
    this.dropped += backlog.messages.length
  }
}
