/**
 * The load of one node: N clients of one variant in this process, all on the node's one channel,
 * recording for every delivery the time from the message's `t` (the monotonic clock, shared by
 * every process on the machine) to its arrival here. Connections spread over 127.0.0.1–127.0.0.8
 * so repeated runs do not exhaust ephemeral ports.
 *
 *   clients.ts ws|broadcaster|socket.io PORT N
 */
import { io as connectSocketIO } from "socket.io-client"
import WebSocket from "ws"
import { clientAddress } from "../lib.js"

const [variant, port, count] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])]
const send = (message: object) => process.send!(message)
const now = () => Number(process.hrtime.bigint()) / 1e6

let latencies = new Float64Array(0)
/** Per message, its first delivery here: how long the node took to start writing it. */
let firsts = new Float64Array(0)
let received = 0
let lastAt = 0

const record = (sentAt: number, seq: number) => {
  lastAt = now()
  const latency = lastAt - sentAt
  if (received < latencies.length) latencies[received] = latency
  if (seq < firsts.length && latency < firsts[seq]!) firsts[seq] = latency
  received++
}

// The server writes `{"t":…,"s":…,"pad":…}`: both numbers are read without a JSON.parse of the
// whole, which would make the clients' CPU, on the same two cores, a larger part of what is measured.
const onText = (data: Buffer) => {
  const text = data.toString()
  const comma = text.indexOf(',"s":')
  record(Number(text.slice(5, comma)), parseInt(text.slice(comma + 5, comma + 16), 10))
}

const open = (index: number) =>
  new Promise<void>((resolve, reject) => {
    const localAddress = clientAddress(index)
    if (variant === "socket.io") {
      const socket = connectSocketIO(`http://127.0.0.1:${port}`, { transports: ["websocket"], reconnection: false, localAddress } as any)
      socket.on("m", (message: { t: number; s: number }) => record(message.t, message.s))
      socket.once("connect", () => resolve())
      socket.once("connect_error", reject)
    } else {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { localAddress, perMessageDeflate: false })
      ws.on("message", onText)
      ws.once("open", () => resolve())
      ws.once("error", reject)
    }
  })

for (let index = 0; index < count; index += 250) {
  await Promise.all(Array.from({ length: Math.min(250, count - index) }, (_, i) => open(index + i)))
}
send({ type: "connected" })

const percentile = (sorted: Float64Array, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!

process.on("message", async (command: any) => {
  if (command.type !== "expect") return
  const { messages, timeout } = command as { messages: number; timeout: number }
  const total = messages * count
  latencies = new Float64Array(total)
  firsts = new Float64Array(messages).fill(Infinity)
  received = 0
  lastAt = 0
  send({ type: "expecting" })
  const deadline = now() + timeout
  while (received < total && now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  // Anything more than expected would be a duplicate; give it a moment to show.
  await new Promise((resolve) => setTimeout(resolve, 100))
  const sorted = latencies.slice(0, Math.min(received, total)).sort()
  send({
    type: "received",
    received,
    expected: total,
    lastAt,
    // Every 0.1% of this process's distribution, so run.ts can merge two processes' without their
    // million samples crossing IPC; and each message's first delivery (null over IPC: never arrived).
    quantiles: Array.from({ length: 1001 }, (_, i) => percentile(sorted, i / 1000)),
    max: sorted.at(-1) ?? 0,
    firsts: Array.from(firsts)
  })
})
