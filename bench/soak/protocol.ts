/**
 * What the soak's server, clients and hostile process agree on: the chat protocol, the server's
 * limits, and raw WebSocket framing for the hostile side.
 *
 * The protocol makes delivery checkable exactly. The server numbers each channel's messages
 * (`seq`, one counter per channel name for the whole run). `join` is answered `joined` with the
 * first `seq` the client is owed, sent right after the subscription is made; `leave` is answered
 * `left` with the last `seq` it is owed, once every message published before the `leave` has been
 * delivered and the subscription is gone. A well-behaved client must then have received, on that
 * channel, one unbroken ascending run of `seq` covering `[from, upTo]`, and nothing after `left`.
 * Its own `say` messages come back to it (nobody is excluded), with its own counter `n`.
 *
 *   client → server  { t: "join", ch }   { t: "leave", ch }   { t: "say", ch, n, text }
 *   server → client  { t: "joined", ch, from }   { t: "left", ch, upTo }
 *                    { t: "m", ch, seq, from, n, text | pad }   { t: "error", reason }
 */

/** Chat channels; every client joins one to three of them at a time. */
export const chatChannels = (count: number) => Array.from({ length: count }, (_, i) => `room-${i}`)

/** Channels the server itself publishes large messages to, where slow consumers sit. */
export const BULK = "bulk" // 'drop-oldest': a slow socket keeps a small backlog
export const BULK_STRICT = "bulk-strict" // 'close': a slow socket is closed with 1008

/** Short, so clients that never answer pings are found within seconds. */
export const HEARTBEAT_INTERVAL = 5_000
export const HEARTBEAT_TIMEOUT = 2_500
/** Small, so an oversized frame is cheap to announce. */
export const MAX_PAYLOAD = 64 * 1024
/** A slow socket may hold this many bytes in its send buffer before the channel's policy applies. */
export const MAX_BACKPRESSURE = 256 * 1024
export const MAX_QUEUED = 16
export const BULK_BYTES = 64 * 1024
export const BULK_EVERY_MILLIS = 50
/** How long `leave` waits for the channel's last broadcast to settle before giving up on it. */
export const SETTLE_WAIT_MILLIS = 10_000
/**
 * What `serve()` is to enforce on unfinished request heads (issue 8, defect 11), and the slack
 * allowed. The client's clock starts at its TCP connect, the server's when Node accepts the
 * connection, which on a loaded machine can be seconds later (the accept queue fills). Node's
 * own default, 60 s checked every 30 s, still fails this by far.
 */
export const HEADERS_TIMEOUT = 10_000
export const HEADERS_SLACK = 20_000
/** How long a refused request may take to be answered and closed; generous for the same reason. */
export const ANSWER_WITHIN = 30_000


export type ClientMessage =
  | { readonly t: "join"; readonly ch: string }
  | { readonly t: "leave"; readonly ch: string }
  | { readonly t: "say"; readonly ch: string; readonly n: number; readonly text: string }

export type ServerMessage =
  | { readonly t: "joined"; readonly ch: string; readonly from: number }
  | { readonly t: "left"; readonly ch: string; readonly upTo: number }
  | { readonly t: "m"; readonly ch: string; readonly seq: number; readonly from: string; readonly n: number }
  | { readonly t: "error"; readonly reason: string }

/** Counts by key, for the report. */
export class Tally {
  readonly counts: Record<string, number> = {}
  add(key: string, by = 1) {
    this.counts[key] = (this.counts[key] ?? 0) + by
  }
  get(key: string) {
    return this.counts[key] ?? 0
  }
}

export const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis))

/** A uniformly random element. */
export const pick = <A>(items: ReadonlyArray<A>): A => items[Math.floor(Math.random() * items.length)]!

export const between = (low: number, high: number) => low + Math.random() * (high - low)

/** Exponentially distributed waits: events at a steady average rate, not in lockstep. */
export const exponential = (mean: number) => -Math.log(1 - Math.random()) * mean

export interface FrameSpec {
  readonly opcode: number
  readonly payload: Buffer
  readonly fin?: boolean
  readonly rsv?: number
  readonly masked?: boolean
  /** The length the header announces, when it is to differ from the payload's. */
  readonly announced?: number
}

/** One WebSocket frame, built by hand so it can break the rules (RFC 6455 §5.2). */
export const frame = ({ announced, fin = true, masked = true, opcode, payload, rsv = 0 }: FrameSpec): Buffer => {
  const length = announced ?? payload.length
  const head: Array<number> = [(fin ? 0x80 : 0) | (rsv << 4) | opcode]
  const mask = masked ? 0x80 : 0
  if (length < 126) head.push(mask | length)
  else if (length < 65_536) head.push(mask | 126, length >> 8, length & 0xff)
  else {
    head.push(mask | 127)
    const big = Buffer.alloc(8)
    big.writeBigUInt64BE(BigInt(length))
    head.push(...big)
  }
  if (!masked) return Buffer.concat([Buffer.from(head), payload])
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78])
  const body = Buffer.from(payload.map((byte, i) => byte ^ key[i % 4]!))
  return Buffer.concat([Buffer.from(head), key, body])
}

export const textFrame = (message: unknown) => frame({ opcode: 0x1, payload: Buffer.from(JSON.stringify(message)) })

/** The close code of the first close frame in what the server sent after its 101 head, if any. */
export const closeCodeIn = (bytes: Buffer): number | undefined => {
  let offset = 0
  while (offset + 2 <= bytes.length) {
    const opcode = bytes[offset]! & 0x0f
    let length = bytes[offset + 1]! & 0x7f
    let start = offset + 2
    if (length === 126) {
      if (start + 2 > bytes.length) return undefined
      length = bytes.readUInt16BE(start)
      start += 2
    } else if (length === 127) {
      if (start + 8 > bytes.length) return undefined
      length = Number(bytes.readBigUInt64BE(start))
      start += 8
    }
    if (opcode === 0x8) return start + 2 <= bytes.length ? bytes.readUInt16BE(start) : 1005
    offset = start + length
  }
  return undefined
}
