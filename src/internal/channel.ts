/**
 * A channel actor: one `PubSub`, one fiber that takes published messages in batches, and a set
 * of subscribed connections it writes to synchronously.
 *
 * Sockets are not fibers: waking a fiber per subscriber per message would cost several times
 * the `ws.send` it does. A subscriber's mailbox is its socket's send buffer; past the channel's
 * bound the slow-consumer policy decides, so a slow socket never holds up the others.
 */
import type { Fiber, Metric, PubSub, Queue, Scope } from "effect"
import { Deferred, Effect, Exit, Option } from "effect"
import WebSocket from "ws"
import type { ChannelConfig } from "../options.js"
import type { ConnectionImpl } from "./connection.js"
import * as Encode from "./encode.js"
import type { Encoded } from "./encode.js"

/** WebSocket close code for a policy violation (RFC 6455 §7.4.1). */
const CLOSE_POLICY_VIOLATION = 1008

export interface Envelope {
  readonly message: unknown
  readonly encoded: Encoded
  /** The socket that does not get this message. */
  readonly exclude: WebSocket | undefined
  readonly filter: ((socket: WebSocket) => boolean) | undefined
  /** Completed with the number of sockets written to, once the channel fiber has delivered. */
  readonly done: Deferred.Deferred<number> | undefined
}

/** A `'drop-oldest'` backlog, and whether a drain listener is waiting to flush it. */
interface Backlog {
  readonly messages: Array<Encoded>
  armed: boolean
}

export interface ChannelMetrics {
  readonly delivered: Metric.Metric.Counter<number>
  readonly dropped: Metric.Metric.Counter<number>
  readonly subscribers: Metric.Metric.Gauge<number>
}

export class ChannelActor {
  readonly subscribers = new Set<ConnectionImpl>()
  /** `'drop-oldest'` backlogs, only for sockets over their bound. */
  private readonly backlogs = new Map<ConnectionImpl, Backlog>()
  delivered = 0
  dropped = 0
  /** Server-side `Stream` consumers of this channel. */
  consumers = 0
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined

  constructor(
    readonly name: string,
    readonly config: ChannelConfig,
    readonly pubsub: PubSub.PubSub<Envelope>,
    readonly mailbox: Queue.Dequeue<Envelope>,
    readonly scope: Scope.CloseableScope,
    private readonly metrics: ChannelMetrics
  ) {}

  get backlogged(): number {
    return this.backlogs.size
  }

  /** Nothing is waiting and nobody listens: the channel can go without losing anything. */
  get idle(): boolean {
    return this.subscribers.size === 0 && this.consumers === 0 &&
      Option.getOrElse(this.mailbox.unsafeSize(), () => 0) === 0
  }

  add(connection: ConnectionImpl): boolean {
    if (this.subscribers.has(connection)) return false
    this.subscribers.add(connection)
    this.metrics.subscribers.unsafeUpdate(this.subscribers.size, [])
    return true
  }

  remove(connection: ConnectionImpl): boolean {
    if (!this.subscribers.delete(connection)) return false
    this.backlogs.delete(connection)
    this.metrics.subscribers.unsafeUpdate(this.subscribers.size, [])
    return true
  }

  /** The channel fiber's loop: take what has been published, at least one message, in order. */
  run(maxBatch: number): Effect.Effect<never> {
    return Effect.forever(
      Effect.flatMap(
        this.mailbox.takeBetween(1, maxBatch),
        (batch) => Effect.sync(() => this.deliver(batch))
      )
    )
  }

  /** Runs `f` and reports what it delivered and dropped to the metrics: the one place they are updated. */
  private counted(f: () => void): void {
    const delivered = this.delivered
    const dropped = this.dropped
    f()
    if (this.delivered > delivered) this.metrics.delivered.unsafeUpdate(this.delivered - delivered, [])
    if (this.dropped > dropped) this.metrics.dropped.unsafeUpdate(this.dropped - dropped, [])
  }

  deliver(batch: Iterable<Envelope>): void {
    this.counted(() => this.fanOut(Array.from(batch)))
  }

  private fanOut(envelopes: Array<Envelope>): void {
    const keep = envelopes.map((envelope) => this.decide(envelope))
    const counts = new Array<number>(envelopes.length).fill(0)
    const uniform = envelopes.length > 1 && keep.every((kept) => kept === true)
    // A batch that goes to everyone is framed into one Buffer: one write per socket for the lot.
    const combined = uniform ? Buffer.concat(envelopes.map((envelope) => Encode.frameOf(envelope.encoded))) : undefined
    for (const connection of this.subscribers) {
      const socket = connection.socket
      if (socket.readyState !== WebSocket.OPEN) continue
      if (
        combined !== undefined && !this.backlogs.has(connection) && Encode.canTakeRawFrame(socket) &&
        socket.bufferedAmount + combined.length <= this.config.maxBackpressure
      ) {
        Encode.rawSocketOf(socket).write(combined)
        for (let i = 0; i < counts.length; i++) counts[i]!++
        this.delivered += counts.length
        continue
      }
      const raw = Encode.rawSocketOf(socket)
      if (envelopes.length > 1) raw.cork()
      for (let i = 0; i < envelopes.length; i++) {
        const kept = keep[i]!
        if (kept === false || (kept !== true && !kept.has(connection))) continue
        if (this.offer(connection, envelopes[i]!.encoded)) counts[i]!++
      }
      if (envelopes.length > 1) raw.uncork()
    }
    for (let i = 0; i < envelopes.length; i++) {
      const done = envelopes[i]!.done
      if (done !== undefined && keep[i] !== false) Deferred.unsafeDone(done, Exit.succeed(counts[i]!))
    }
  }

  /**
   * Who gets a message: `true` for every subscriber, or the set the filter and `exclude` keep.
   * The filter runs over all subscribers before anything is written, so one that throws fails
   * its broadcast whole (`false`) instead of delivering half of it.
   */
  private decide(envelope: Envelope): true | false | Set<ConnectionImpl> {
    if (envelope.filter === undefined && envelope.exclude === undefined) return true
    try {
      const kept = new Set<ConnectionImpl>()
      for (const connection of this.subscribers) {
        if (connection.socket === envelope.exclude) continue
        if (envelope.filter === undefined || envelope.filter(connection.socket)) kept.add(connection)
      }
      return kept
    } catch (error) {
      if (envelope.done !== undefined) Deferred.unsafeDone(envelope.done, Effect.die(error))
      return false
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
        connection.closeSocket(CLOSE_POLICY_VIOLATION, "Slow consumer")
        return
      case "drop-oldest": {
        const backlog: Backlog = { messages: [encoded], armed: false }
        this.backlogs.set(connection, backlog)
        this.flushOnDrain(connection, backlog)
        return
      }
    }
  }

  private enqueue(backlog: Backlog, encoded: Encoded): void {
    backlog.messages.push(encoded)
    if (backlog.messages.length > this.config.maxQueuedMessages) {
      backlog.messages.shift()
      this.dropped++
    }
  }

  /** One drain listener per backlog at most, however many messages arrive while it waits. */
  private flushOnDrain(connection: ConnectionImpl, backlog: Backlog): void {
    const raw = Encode.rawSocketOf(connection.socket)
    if (backlog.armed || !raw.writableNeedDrain) return
    backlog.armed = true
    raw.once("drain", () => {
      backlog.armed = false
      this.counted(() => this.flush(connection, backlog))
    })
  }

  /**
   * Writes a backlog out while the socket is under its bound; true once it is empty. Runs on the
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
    if (messages.length === 0 || socket.readyState !== WebSocket.OPEN) {
      this.backlogs.delete(connection)
      return true
    }
    this.flushOnDrain(connection, backlog)
    return false
  }
}
