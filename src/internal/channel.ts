/**
 * A channel actor: one `PubSub`, one fiber that takes published messages in batches, and a set
 * of subscribed connections it writes to through the shared bounded fan-out.
 *
 * Every published envelope is also kept here until it is settled, in publish order: the PubSub
 * hands a message to the fiber before the fiber runs, so the mailbox alone cannot tell whether
 * something is still on its way. A channel with an unsettled envelope is not idle, and a channel
 * shut down delivers what is still unsettled once its fiber has stopped, so no broadcast is lost.
 */
import type { Fiber, Metric, PubSub, Queue, Scope } from "effect"
import { Effect, Exit } from "effect"
import type WebSocket from "ws"
import type { ChannelConfig } from "../options.js"
import type { ConnectionImpl } from "./connection.js"
import type { Encoded } from "./encode.js"
import type { Audience, FanOutMetrics } from "./fanout.js"
import { FanOut } from "./fanout.js"

export interface Envelope {
  readonly message: unknown
  readonly encoded: Encoded
  /** The socket that does not get this message. */
  readonly exclude: WebSocket | undefined
  readonly filter: ((socket: WebSocket) => boolean) | undefined
  /**
   * Resumes the broadcast with the number of sockets written to, once the channel has delivered.
   * A callback of `Effect.async` rather than a `Deferred`: `Deferred.unsafeMake` copies the whole
   * Effect prototype into each instance, and was the largest cost of a broadcast after the writes.
   */
  readonly done: (result: Effect.Effect<number>) => void
}

export interface ChannelMetrics extends FanOutMetrics {
  readonly subscribers: Metric.Metric.Gauge<number>
}

export class ChannelActor {
  readonly subscribers = new Set<ConnectionImpl>()
  /** Server-side `Stream` consumers of this channel. */
  consumers = 0
  fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined
  readonly fanOut: FanOut
  /** Published and not yet delivered, in publish order. */
  private readonly unsettled = new Set<Envelope>()

  constructor(
    readonly name: string,
    config: ChannelConfig,
    readonly pubsub: PubSub.PubSub<Envelope>,
    readonly mailbox: Queue.Dequeue<Envelope>,
    readonly scope: Scope.CloseableScope,
    private readonly metrics: ChannelMetrics,
    /** Called when a delivery leaves the channel idle, so that it can be removed. */
    private readonly onIdle: (actor: ChannelActor) => void
  ) {
    this.fanOut = new FanOut(config, metrics)
  }

  /** Nothing is on its way and nobody listens: the channel can go without losing anything. */
  get idle(): boolean {
    return this.subscribers.size === 0 && this.consumers === 0 && this.unsettled.size === 0
  }

  add(connection: ConnectionImpl): boolean {
    if (this.subscribers.has(connection)) return false
    this.subscribers.add(connection)
    this.metrics.subscribers.unsafeUpdate(this.subscribers.size, [])
    return true
  }

  remove(connection: ConnectionImpl): boolean {
    if (!this.subscribers.delete(connection)) return false
    this.fanOut.discard(connection)
    this.metrics.subscribers.unsafeUpdate(this.subscribers.size, [])
    return true
  }

  /** Synchronous, so that nothing can come between keeping the envelope and handing it to the PubSub. */
  publish(envelope: Envelope): void {
    this.unsettled.add(envelope)
    this.pubsub.unsafeOffer(envelope)
  }

  /** The channel fiber's loop: take what has been published, at least one message, in order. */
  run(maxBatch: number): Effect.Effect<never> {
    return Effect.forever(
      Effect.flatMap(
        this.mailbox.takeBetween(1, maxBatch),
        (batch) =>
          Effect.sync(() => {
            this.deliver(batch)
            if (this.idle) this.onIdle(this)
          })
      )
    )
  }

  /** After the fiber has stopped: what is still unsettled is delivered, and every subscriber let go. */
  close(): void {
    this.deliver(this.unsettled)
    for (const connection of this.subscribers) this.remove(connection)
  }

  deliver(batch: Iterable<Envelope>): void {
    const envelopes: Array<Envelope> = []
    const audiences: Array<Audience> = []
    for (const envelope of Array.from(batch)) {
      this.unsettled.delete(envelope)
      const audience = this.audienceOf(envelope)
      if (audience === undefined) continue
      envelopes.push(envelope)
      audiences.push(audience)
    }
    const counts = this.fanOut.send(this.subscribers, envelopes.map((envelope) => envelope.encoded), audiences)
    envelopes.forEach((envelope, i) => envelope.done(Exit.succeed(counts[i]!)))
  }

  /**
   * Who gets a message: `true` for every subscriber, or the set the filter and `exclude` keep.
   * The filter runs over all subscribers before anything is written, so one that throws fails
   * its broadcast whole (`undefined`) instead of delivering half of it.
   */
  private audienceOf(envelope: Envelope): Audience | undefined {
    if (envelope.filter === undefined && envelope.exclude === undefined) return true
    try {
      const kept = new Set<ConnectionImpl>()
      for (const connection of this.subscribers) {
        if (connection.socket === envelope.exclude) continue
        if (envelope.filter === undefined || envelope.filter(connection.socket)) kept.add(connection)
      }
      return kept
    } catch (error) {
      envelope.done(Effect.die(error))
      return undefined
    }
  }
}
