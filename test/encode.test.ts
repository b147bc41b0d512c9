/**
 * The one encoder for outbound messages, and the frame built once per message: properties over
 * arbitrary inputs, the frames decoded by `ws`'s own Receiver.
 */
import { Either } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import * as WS from "ws"
import { MessageEncodeError } from "../src/errors.js"
import * as Encode from "../src/internal/encode.js"

const encoded = (message: unknown) => {
  const result = Encode.encode(message)
  if (Either.isLeft(result)) throw result.left
  return result.right
}

const failure = (message: unknown) => {
  const result = Encode.encode(message)
  return Either.isLeft(result) ? result.left : undefined
}

interface ReceiverLike {
  on(event: "message", listener: (data: Buffer, isBinary: boolean) => void): void
  on(event: "error", listener: (error: Error) => void): void
  write(chunk: Buffer): boolean
}
const Receiver = (WS as unknown as { Receiver: new(options: Record<string, unknown>) => ReceiverLike }).Receiver

/** What a client reading `frame` gets: ws's Receiver as a client uses it (unmasked frames from a server). */
const decode = (frame: Buffer) =>
  new Promise<{ data: Buffer; isBinary: boolean }>((resolve, reject) => {
    const receiver = new Receiver({ isServer: false, maxPayload: 0 })
    receiver.on("message", (data, isBinary) => resolve({ data, isBinary }))
    receiver.on("error", reject)
    receiver.write(frame)
  })

/** JSON has no -0: it is written as 0. */
const positiveZero = (value: unknown): unknown =>
  Object.is(value, -0)
    ? 0
    : Array.isArray(value)
    ? value.map(positiveZero)
    : value !== null && typeof value === "object"
    ? Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, positiveZero(inner)]))
    : value

/** Any JSON value but a string (a string goes as it is, not as JSON). */
const json = fc.jsonValue().filter((value) => typeof value !== "string")

const views = [
  Uint8Array,
  Uint8ClampedArray,
  Int8Array,
  Uint16Array,
  Int16Array,
  Uint32Array,
  Int32Array,
  Float32Array,
  Float64Array,
  BigInt64Array,
  DataView
] as const

/** A typed-array (or DataView) window on a larger buffer, at an offset its element size allows. */
const view = fc
  .record({
    bytes: fc.uint8Array({ minLength: 0, maxLength: 256 }),
    kind: fc.integer({ min: 0, max: views.length - 1 }),
    start: fc.nat(64),
    length: fc.nat(64)
  })
  .map(({ bytes, kind, length, start }) => {
    const View = views[kind] as unknown as new(buffer: ArrayBuffer, offset: number, length: number) => ArrayBufferView
    // A DataView's length is in bytes.
    const size = (views[kind] as { BYTES_PER_ELEMENT?: number }).BYTES_PER_ELEMENT ?? 1
    const buffer = new ArrayBuffer(bytes.length + 64 * size + 64 * size)
    new Uint8Array(buffer).set(bytes, 64)
    const offset = Math.floor(start / size) * size
    const count = Math.min(length, Math.floor((buffer.byteLength - offset) / size))
    return new View(buffer, offset, count)
  })

describe("encode", () => {
  it("sends a string as text, its UTF-8 bytes", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), (text) => {
        const result = encoded(text)
        expect(result.binary).toBe(false)
        expect(result.data.equals(Buffer.from(text, "utf8"))).toBe(true)
        expect(result.data.toString("utf8")).toBe(text)
      })
    )
  })

  it("sends a Buffer as binary, the very same bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        const buffer = Buffer.from(bytes)
        const result = encoded(buffer)
        expect(result.binary).toBe(true)
        expect(result.data).toBe(buffer)
      })
    )
  })

  it("sends an ArrayBuffer as binary, its bytes", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
        const arrayBuffer = bytes.slice().buffer
        const result = encoded(arrayBuffer)
        expect(result.binary).toBe(true)
        expect([...result.data]).toEqual([...bytes])
      })
    )
  })

  it("sends a typed array or DataView as binary, exactly the bytes of its window", () => {
    fc.assert(
      fc.property(view, (message) => {
        const result = encoded(message)
        expect(result.binary).toBe(true)
        expect([...result.data]).toEqual([...new Uint8Array(message.buffer, message.byteOffset, message.byteLength)])
      })
    )
  })

  it("sends any other JSON value as JSON text that parses back equal", () => {
    fc.assert(
      fc.property(json, (value) => {
        const result = encoded(value)
        expect(result.binary).toBe(false)
        expect(result.data.toString("utf8")).toBe(JSON.stringify(value))
        expect(JSON.parse(result.data.toString("utf8"))).toEqual(positiveZero(value))
      })
    )
  })

  it("refuses undefined, functions and symbols with MessageEncodeError", () => {
    for (const message of [undefined, () => 1, function named() {}, Symbol("s")]) {
      const error = failure(message)
      expect(error).toBeInstanceOf(MessageEncodeError)
      expect(error!.message).toMatch(/has no JSON form/)
    }
  })

  it("refuses a BigInt anywhere in a value with MessageEncodeError", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(fc.string(), fc.nat(8)), { maxLength: 6 }),
        fc.bigInt(),
        (path, big) => {
          // The BigInt at the end of a path of object keys and array indices.
          const value = path.reduceRight<unknown>(
            (inner, step) => (typeof step === "number" ? [...Array(step).fill(null), inner] : { [step]: inner }),
            big
          )
          const error = failure(value)
          expect(error).toBeInstanceOf(MessageEncodeError)
          expect((error!.cause as Error).name).toBe("TypeError")
        }
      )
    )
  })

  it("refuses a cycle at any depth with MessageEncodeError", () => {
    fc.assert(
      fc.property(fc.array(fc.string(), { maxLength: 6 }), fc.jsonValue(), (keys, filler) => {
        const root: Record<string, unknown> = { filler }
        let node = root
        for (const key of keys) {
          const child: Record<string, unknown> = { filler }
          node[`k${key}`] = child
          node = child
        }
        node.back = root
        expect(failure(root)).toBeInstanceOf(MessageEncodeError)
        expect(failure([root])).toBeInstanceOf(MessageEncodeError)
      })
    )
  })
})

describe("frameOf", () => {
  it("builds a message's frame once: a second call returns the same Buffer", () => {
    fc.assert(
      fc.property(fc.oneof(fc.string(), fc.uint8Array().map((bytes) => Buffer.from(bytes)), json), (message) => {
        const message_ = encoded(message)
        const frame = Encode.frameOf(message_)
        expect(Encode.frameOf(message_)).toBe(frame)
        expect(message_.frame).toBe(frame)
      })
    )
  })

  // Payload lengths around the three length encodings: 7 bits (≤ 125), 16 bits (≤ 65535), 64 bits.
  const length = fc.oneof(
    fc.constantFrom(0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537),
    fc.integer({ min: 0, max: 70_000 })
  )

  it("decodes, with ws's Receiver, to the same payload and opcode for any length", async () => {
    await fc.assert(
      fc.asyncProperty(length, fc.boolean(), fc.integer({ min: 1, max: 255 }), async (size, binary, seed) => {
        const payload = binary
          ? Buffer.from(Array.from({ length: size }, (_, i) => (i * seed) & 0xff))
          : "ab-cd".repeat(Math.ceil(size / 5)).slice(0, size)
        const message = encoded(payload)
        const frame = Encode.frameOf(message)
        // FIN and the opcode in the first byte; the header is 2, 4 or 10 bytes, never masked.
        expect(frame[0]).toBe(binary ? 0x82 : 0x81)
        expect(frame.length).toBe(size + (size <= 125 ? 2 : size <= 65535 ? 4 : 10))
        const { data, isBinary } = await decode(frame)
        expect(isBinary).toBe(binary)
        expect(data.equals(message.data)).toBe(true)
      }),
      { numRuns: 60 }
    )
  })
})
