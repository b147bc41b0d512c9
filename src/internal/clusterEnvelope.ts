/**
 * What a message looks like on the cluster bus, and how a node reads what others published.
 *
 * An envelope is one Buffer: `[format version][kind][origin length][origin node id][data]`, where
 * the data is the message exactly as it goes to sockets (encoded once by the publisher, never
 * re-encoded), and the kind says whether it is a string, JSON text or binary, so a server-side
 * consumer on another node gets back a value of the same shape.
 *
 * A service (a Broadcaster, a manager) delivers its own publish locally at once, so the echo it
 * gets back from the engine carries its own origin id and is ignored. The origin is the
 * service's, not the process's: two services of one process sharing a bus reach each other. Anything that does not parse whole (another program
 * publishing on the topic, a future format) is counted and dropped, never delivered in part.
 */
import { Effect, Scope } from "effect"
import { isUtf8 } from "node:buffer"
import { randomUUID } from "node:crypto"
import type { ClusterBus } from "../ClusterBus.js"
import { metrics } from "../ClusterBus.js"
import type { Encoded } from "./encode.js"

const FORMAT_VERSION = 1
const HEADER = 3

const enum Kind {
  String = 0,
  Json = 1,
  Binary = 2
}

const noTags: ReadonlyArray<never> = []

const kindOf = (message: unknown, encoded: Encoded): Kind =>
  encoded.binary ? Kind.Binary : typeof message === "string" ? Kind.String : Kind.Json

/** The envelope of an encoded message, published by `origin`. */
export const wrap = (origin: Buffer, message: unknown, encoded: Encoded): Buffer => {
  const envelope = Buffer.allocUnsafe(HEADER + origin.length + encoded.data.length)
  envelope[0] = FORMAT_VERSION
  envelope[1] = kindOf(message, encoded)
  envelope[2] = origin.length
  origin.copy(envelope, HEADER)
  encoded.data.copy(envelope, HEADER + origin.length)
  return envelope
}

/** A message another node published: ready for sockets, and as a value for server-side consumers. */
export class Received {
  constructor(readonly encoded: Encoded, private readonly kind: Kind, private readonly json: unknown) {}

  /** Built on demand: only server-side consumers need the value, sockets take the bytes. */
  get message(): unknown {
    const data = this.encoded.data
    return this.kind === Kind.Binary ? data : this.kind === Kind.String ? data.toString() : this.json
  }
}

const ECHO = "echo"

/** The message of an envelope, `"echo"` for one this node published, or undefined when it does not parse. */
export const unwrap = (payload: Buffer, self: Buffer): Received | typeof ECHO | undefined => {
  if (payload.length < HEADER || payload[0] !== FORMAT_VERSION) return undefined
  const kind = payload[1]!
  const originLength = payload[2]!
  const dataStart = HEADER + originLength
  if (kind > Kind.Binary || originLength === 0 || payload.length < dataStart) return undefined
  if (originLength === self.length && payload.compare(self, 0, self.length, HEADER, dataStart) === 0) return ECHO
  const data = payload.subarray(dataStart)
  let json: unknown = undefined
  if (kind === Kind.Json) {
    // A JSON envelope that does not parse would reach sockets as text no client can read.
    try {
      json = JSON.parse(data.toString())
    } catch {
      return undefined
    }
  } else if (kind === Kind.String && !isUtf8(data)) {
    return undefined
  }
  return new Received({ data, binary: kind === Kind.Binary, frame: undefined }, kind, json)
}

/** A new origin id, as envelopes carry it. */
export const makeOrigin = (): Buffer => Buffer.from(randomUUID())

/**
 * Listens on a topic for what other nodes publish, while the scope is open: the node's own echo
 * is skipped, and a payload that is not a whole envelope is counted and dropped.
 *
 * Returns at once, without waiting for the engine to confirm the subscription (a Redis SUBSCRIBE
 * round trip): the facade subscribes sockets synchronously, and a pub/sub subscription is
 * asynchronous in every broker anyway. What other nodes publish before the engine has it is not
 * received, as with socket.io's adapter.
 */
export const listen = (
  bus: ClusterBus,
  self: Buffer,
  topic: string,
  onMessage: (received: Received) => void
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.flatMap(Effect.scope, (scope) =>
    Effect.asVoid(Effect.forkIn(
      Scope.extend(
        bus.subscribe(topic, (payload) => {
          const received = unwrap(payload, self)
          if (received === ECHO) return
          if (received === undefined) {
            metrics.malformed.unsafeUpdate(1, noTags)
            return
          }
          metrics.received.unsafeUpdate(1, noTags)
          onMessage(received)
        }),
        scope
      ),
      scope
    )))

/** The bus topics of the services, under the engine's own prefix. */
export const topics = {
  channel: (name: string) => `channel:${name}`,
  everyone: "manager:all",
  user: (userId: string) => `user:${userId}`
}
