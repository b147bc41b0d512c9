/**
 * The load: one publisher and N receivers of one variant in this process, so that the timestamp a
 * message carries and the time it arrives are read on the same clock. Connections spread over
 * 127.0.0.1–127.0.0.8 so repeated runs do not exhaust ephemeral ports.
 */
import { performance } from "node:perf_hooks"
import { io as connectSocketIO } from "socket.io-client"
import WebSocket from "ws"
import { clientAddress } from "../lib.js"

const [variant, port, count] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])]
const send = (message: object) => process.send!(message)

let latencies = new Float64Array(0)
let received = 0
const onMessage = (data: unknown) => {
  const now = performance.now()
  const sentAt = JSON.parse(String(data)).t as number
  if (received < latencies.length) latencies[received] = now - sentAt
  received++
}

const closers: Array<() => void> = []
let publish: (text: string) => void = () => {}

const open = (index: number, publisher: boolean) =>
  new Promise<void>((resolve, reject) => {
    const localAddress = clientAddress(index)
    if (variant === "socket.io") {
      const socket = connectSocketIO(`http://127.0.0.1:${port}`, {
        transports: ["websocket"],
        reconnection: false,
        localAddress,
        auth: { role: publisher ? "pub" : "sub" }
      } as any)
      if (publisher) publish = (text) => socket.emit("m", text)
      else socket.on("m", onMessage)
      socket.once("connect", () => resolve())
      socket.once("connect_error", reject)
      closers.push(() => socket.disconnect())
    } else {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/${publisher ? "pub" : ""}`, { localAddress, perMessageDeflate: false })
      if (publisher) publish = (text) => ws.send(text)
      else ws.on("message", onMessage)
      ws.once("open", () => resolve())
      ws.once("error", reject)
      closers.push(() => ws.terminate())
    }
  })

for (let index = 0; index < count; index += 250) {
  await Promise.all(Array.from({ length: Math.min(250, count - index) }, (_, i) => open(index + i, false)))
}
await open(count, true)
send({ type: "connected" })

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0

process.on("message", async (command: any) => {
  if (command.type === "run") {
    const { rate, seconds } = command as { rate: number; seconds: number }
    const total = rate * seconds
    latencies = new Float64Array(total * count)
    received = 0
    const pad = "x".repeat(64)
    // Each message goes at its scheduled time, whatever the last one cost, so a slow relay is not
    // given more room by a publisher that waits for it.
    const start = performance.now()
    for (let seq = 0; seq < total; seq++) {
      const due = start + (seq * 1000) / rate
      const wait = due - performance.now()
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
      publish(JSON.stringify({ t: performance.now(), seq, pad }))
    }
    const deadline = performance.now() + 30_000
    while (received < latencies.length && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    const sorted = latencies.slice(0, Math.min(received, latencies.length)).sort()
    send({
      type: "latency",
      received,
      expected: latencies.length,
      p50: percentile(sorted, 0.5),
      p99: percentile(sorted, 0.99),
      max: sorted.at(-1) ?? 0
    })
  }
  if (command.type === "close") {
    closers.forEach((close) => close())
    send({ type: "closed" })
  }
})
