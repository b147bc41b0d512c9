/**
 * The soak's hostile side: at a steady rate, raw `net` connections that send what no proper client
 * would, before the handshake (malformed upgrades, credentials in the URL, an unfinished head)
 * and after it (frames that break RFC 6455, resets). Each attempt is judged by what the server
 * answers and whether it closes the connection. Driven over IPC by run.ts.
 */
import { randomBytes } from "node:crypto"
import { connect, type Socket } from "node:net"
import {
  ANSWER_WITHIN,
  closeCodeIn,
  exponential,
  frame,
  HEADERS_SLACK,
  HEADERS_TIMEOUT,
  MAX_PAYLOAD,
  sleep,
  Tally,
  textFrame
} from "./protocol.js"
import { clientAddress } from "../lib.js"

const { durationMillis, perSecond, port } = JSON.parse(process.argv[2]!) as {
  port: number
  perSecond: number
  durationMillis: number
}
const send = (message: object) => process.send!(message)

interface Attempt {
  readonly outcome: string
  readonly ok: boolean
}

let serial = 0
let connections = 0

const upgradeHead = (
  { connection = "Upgrade", host = `127.0.0.1:${port}`, key = randomBytes(16).toString("base64"), method = "GET",
    target = `/chat?id=h-${serial++}`, version = "13", extra = [] as Array<string> } = {}
) =>
  [
    `${method} ${target} HTTP/1.1`,
    `Host: ${host}`,
    "Upgrade: websocket",
    ...(connection ? [`Connection: ${connection}`] : []),
    `Sec-WebSocket-Key: ${key}`,
    `Sec-WebSocket-Version: ${version}`,
    ...extra,
    "",
    ""
  ].join("\r\n")

/** A raw connection that remembers everything the server sent and when the server closed it. */
const open = () =>
  new Promise<{ socket: Socket; bytes: () => Buffer; serverClosed: Promise<void> }>(
    (resolve, reject) => {
      const socket = connect({ host: "127.0.0.1", port, localAddress: clientAddress(connections++) })
      const chunks: Array<Buffer> = []
      socket.on("data", (chunk) => chunks.push(chunk))
      // A reset from the server is one way of closing; it is not an error here.
      socket.on("error", () => {})
      const serverClosed = new Promise<void>((settle) => {
        socket.once("end", settle)
        socket.once("close", settle)
      })
      socket.once("connect", () => resolve({ socket, bytes: () => Buffer.concat(chunks), serverClosed }))
      socket.once("error", reject)
    }
  )

const within = (promise: Promise<unknown>, millis: number) =>
  Promise.race([promise.then(() => true), sleep(millis).then(() => false)])

const statusOf = (bytes: Buffer) => /^HTTP\/1\.[01] (\d{3})/.exec(bytes.toString("latin1"))?.[1]

/**
 * Sends a request head the server must refuse with a 4xx (or exactly `status`). An upgrade must
 * also be closed; a plain request (Node saw no upgrade) may stay open for keep-alive.
 */
const refused = (head: string, { plain = false, status }: { plain?: boolean; status?: string } = {}) =>
async (): Promise<Attempt> => {
  const { bytes, serverClosed, socket } = await open()
  socket.write(head)
  const answered = plain ? until(() => statusOf(bytes()) !== undefined, ANSWER_WITHIN) : new Promise(() => {})
  const closedInTime = await within(Promise.race([serverClosed, answered]), ANSWER_WITHIN)
  socket.destroy()
  const answer = statusOf(bytes()) ?? "no answer"
  const outcome = closedInTime || plain ? answer : `${answer}, left open`
  const ok = (closedInTime || plain) && (status === undefined ? /^4\d\d$/.test(answer) : answer === status)
  return { outcome, ok }
}

/** Polls `condition` until it holds (true) or `millis` pass (false). */
const until = async (condition: () => boolean, millis: number) => {
  for (const endAt = Date.now() + millis; !condition();) {
    if (Date.now() > endAt) return false
    await sleep(20)
  }
  return true
}

/** Completes a proper handshake; resolves with the connection once the 101 head is in. */
const upgraded = async () => {
  const connection = await open()
  connection.socket.write(upgradeHead())
  await until(() => connection.bytes().includes("\r\n\r\n"), ANSWER_WITHIN)
  const status = statusOf(connection.bytes())
  return { ...connection, status }
}

/** After the handshake, a frame the server must answer with a close frame of `code` and then close. */
const badFrame = (bytes: Buffer, code: number) => async (): Promise<Attempt> => {
  const { bytes: received, serverClosed, socket, status } = await upgraded()
  if (status !== "101") {
    socket.destroy()
    return { outcome: `handshake ${status ?? "unanswered"}`, ok: false }
  }
  socket.write(bytes)
  const closedInTime = await within(serverClosed, ANSWER_WITHIN)
  socket.destroy()
  const all = received()
  const got = closeCodeIn(all.subarray(all.indexOf("\r\n\r\n") + 4))
  const outcome = `${got === undefined ? "no close frame" : `close ${got}`}${closedInTime ? "" : ", left open"}`
  return { outcome, ok: closedInTime && got === code }
}

const kinds: Record<string, () => Promise<Attempt>> = {
  "bad Sec-WebSocket-Key": () => refused(upgradeHead({ key: "not-a-key" }))(),
  "Sec-WebSocket-Version: 12": () => refused(upgradeHead({ version: "12" }))(),
  "Host: a:b@x": () => refused(upgradeHead({ host: "a:b@x" }))(),
  "absolute-form target with user:pass@": () =>
    refused(upgradeHead({ target: `http://user:pass@127.0.0.1:${port}/chat?id=h-${serial++}` }))(),
  "TRACE upgrade": () => refused(upgradeHead({ method: "TRACE" }))(),
  "Upgrade without Connection: Upgrade": () => refused(upgradeHead({ connection: "" }), { plain: true })(),
  "plain GET with Host: a:b@x": () => refused(`GET / HTTP/1.1\r\nHost: a:b@x\r\n\r\n`, { plain: true })(),
  "request head over 16 KB": () =>
    refused(upgradeHead({ extra: [`X-Fill: ${"a".repeat(20_000)}`] }), { status: "431" })(),
  "unfinished request head": async () => {
    const { serverClosed, socket } = await open()
    const startedAt = Date.now()
    socket.write(`GET /chat?id=h-${serial++} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n`)
    const closedInTime = await within(serverClosed, HEADERS_TIMEOUT + HEADERS_SLACK)
    socket.destroy()
    return closedInTime
      ? { outcome: `closed after ${Math.round((Date.now() - startedAt) / 1000)} s`, ok: true }
      : { outcome: `still open after ${(HEADERS_TIMEOUT + HEADERS_SLACK) / 1000} s`, ok: false }
  },
  "reset during the handshake": async () => {
    const { socket } = await open()
    socket.write(upgradeHead())
    socket.resetAndDestroy()
    return { outcome: "reset", ok: true }
  },
  "invalid UTF-8 text": badFrame(frame({ opcode: 0x1, payload: Buffer.from([0xc3, 0x28, 0xff]) }), 1007),
  "frame over maxPayload": badFrame(frame({ opcode: 0x2, payload: Buffer.alloc(16), announced: MAX_PAYLOAD + 1 }), 1009),
  "unmasked frame": badFrame(frame({ opcode: 0x1, payload: Buffer.from("hi"), masked: false }), 1002),
  "reserved opcode 0x3": badFrame(frame({ opcode: 0x3, payload: Buffer.from("hi") }), 1002),
  "RSV1 without an extension": badFrame(frame({ opcode: 0x1, payload: Buffer.from("hi"), rsv: 4 }), 1002),
  "fragment never finished": async () => {
    const { serverClosed, socket, status } = await upgraded()
    if (status !== "101") {
      socket.destroy()
      return { outcome: `handshake ${status ?? "unanswered"}`, ok: false }
    }
    socket.write(frame({ opcode: 0x1, payload: Buffer.from("part one of"), fin: false }))
    await sleep(1_000)
    // The server owes nothing for the unfinished message; it must close once we do.
    socket.end()
    const closedInTime = await within(serverClosed, ANSWER_WITHIN)
    socket.destroy()
    return { outcome: closedInTime ? "closed after our FIN" : "left open after our FIN", ok: closedInTime }
  },
  "reset after joining a channel": async () => {
    const { bytes, socket, status } = await upgraded()
    if (status !== "101") {
      socket.destroy()
      return { outcome: `handshake ${status ?? "unanswered"}`, ok: false }
    }
    const before = bytes().length
    socket.write(textFrame({ t: "join", ch: "room-0" }))
    await until(() => bytes().length > before, ANSWER_WITHIN)
    socket.resetAndDestroy()
    return { outcome: bytes().length > before ? "reset after joined" : "reset, join unanswered", ok: true }
  }
}

const tried: Record<string, { tried: number; ok: number; outcomes: Tally }> = {}
for (const kind of Object.keys(kinds)) tried[kind] = { tried: 0, ok: 0, outcomes: new Tally() }

const attempt = async (kind: string) => {
  const record = tried[kind]!
  record.tried++
  try {
    const { ok, outcome } = await kinds[kind]!()
    record.outcomes.add(outcome)
    if (ok) record.ok++
  } catch (error) {
    record.outcomes.add(`connect failed: ${(error as NodeJS.ErrnoException).code ?? String(error)}`)
  }
}

process.once("message", async () => {
  const names = Object.keys(kinds)
  const running = new Set<Promise<void>>()
  const endAt = Date.now() + durationMillis
  // Kinds take turns, so each is tried about as often; arrivals are random at a steady rate.
  for (let i = 0; Date.now() < endAt; i++) {
    const attempt_ = attempt(names[i % names.length]!)
    running.add(attempt_)
    void attempt_.then(() => running.delete(attempt_))
    await sleep(exponential(1_000 / perSecond))
  }
  await Promise.all(running)
  send({
    type: "done",
    kinds: Object.fromEntries(Object.entries(tried).map(([kind, r]) => [kind, { ...r, outcomes: r.outcomes.counts }]))
  })
})
send({ type: "ready" })
