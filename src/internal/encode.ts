/**
 * The one encoder for outbound messages, and the frame-once write path.
 *
 * A broadcast encodes its message once and frames it once into a single Buffer, which is then
 * written to every uncompressed socket as it is: the per-socket cost is one `socket.write`,
 * where `ws.send` would re-frame (and allocate a header) for every recipient.
 */
import { Either } from "effect"
import * as WS from "ws"
import type { Socket } from "node:net"
import WebSocket from "ws"
import { MessageEncodeError } from "../errors.js"

/** A message ready for the wire: its payload, and its frame built on first use. */
export interface Encoded {
  readonly data: Buffer
  readonly binary: boolean
  frame: Buffer | undefined
}

const OPCODE_TEXT = 0x1
const OPCODE_BINARY = 0x2
const PERMESSAGE_DEFLATE = "permessage-deflate"
// ws's Sender is idle (not deflating, not reading a Blob) in state 0; only then may a frame bypass its queue.
const SENDER_IDLE = 0

/** Strings go as text, binary data as binary, anything else as JSON text. */
export const encode = (message: unknown): Either.Either<Encoded, MessageEncodeError> => {
  if (typeof message === "string") return Either.right({ data: Buffer.from(message), binary: false, frame: undefined })
  if (Buffer.isBuffer(message)) return Either.right({ data: message, binary: true, frame: undefined })
  if (message instanceof ArrayBuffer) {
    return Either.right({ data: Buffer.from(message), binary: true, frame: undefined })
  }
  if (ArrayBuffer.isView(message)) {
    return Either.right({
      data: Buffer.from(message.buffer, message.byteOffset, message.byteLength),
      binary: true,
      frame: undefined
    })
  }
  try {
    const json = JSON.stringify(message)
    if (json === undefined) {
      return Either.left(new MessageEncodeError({ cause: new TypeError(`${typeof message} has no JSON form`) }))
    }
    return Either.right({ data: Buffer.from(json), binary: false, frame: undefined })
  } catch (cause) {
    return Either.left(new MessageEncodeError({ cause }))
  }
}

// ws exports its Sender at runtime (named in ESM, a property in CommonJS); @types/ws does not declare it.
const Sender = (WS as unknown as {
  readonly Sender: { frame(data: Buffer, options: Record<string, unknown>): Array<Buffer> }
}).Sender

/** The message framed once (unmasked, uncompressed), built on first use and shared by every socket. */
export const frameOf = (encoded: Encoded): Buffer => {
  if (encoded.frame === undefined) {
    const parts = Sender.frame(encoded.data, {
      fin: true,
      rsv1: false,
      mask: false,
      readOnly: true,
      opcode: encoded.binary ? OPCODE_BINARY : OPCODE_TEXT
    })
    encoded.frame = parts.length === 1 ? parts[0]! : Buffer.concat(parts)
  }
  return encoded.frame
}

/** The TCP socket under a `ws` socket, where frames are written. */
export const rawSocketOf = (socket: WebSocket): Socket => (socket as unknown as { _socket: Socket })._socket

/** Whether a frame may be written to the socket as it is: no compression, nothing queued in ws. */
export const canTakeRawFrame = (socket: WebSocket): boolean => {
  const internals = socket as any
  return internals._extensions[PERMESSAGE_DEFLATE] === undefined && internals._sender._state === SENDER_IDLE
}

/**
 * Writes an encoded message to one socket; false when the socket is not open.
 * A socket that negotiated permessage-deflate gets its own compressed send through `ws`.
 */
export const write = (socket: WebSocket, encoded: Encoded): boolean => {
  if (socket.readyState !== WebSocket.OPEN) return false
  if (canTakeRawFrame(socket)) {
    rawSocketOf(socket).write(frameOf(encoded))
  } else {
    socket.send(encoded.data, { binary: encoded.binary })
  }
  return true
}
