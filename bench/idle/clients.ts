/**
 * The load: N clients opened as a burst, as fast as this process can (a bounded number of
 * handshakes in flight), then left idle; they answer pings as their library does. Reports how long
 * the burst took. Connections spread over 127.0.0.1–127.0.0.8 so repeated runs do not exhaust
 * ephemeral ports.
 */
import { io as connectSocketIO } from "socket.io-client"
import WebSocket from "ws"
import { clientAddress } from "../lib.js"

const [variant, port, count, inFlight] = process.argv.slice(2).map((arg, i) => i === 0 ? arg : Number(arg)) as [
  string,
  number,
  number,
  number
]

const closers: Array<() => void> = []
/** Pings the clients answered: evidence that the heartbeat ran before memory was sampled. */
let pings = 0
const onPing = () => pings++

const open = (index: number) =>
  new Promise<void>((resolve, reject) => {
    const localAddress = clientAddress(index)
    if (variant === "socket.io") {
      const socket = connectSocketIO(`http://127.0.0.1:${port}`, {
        transports: ["websocket"],
        reconnection: false,
        localAddress
      } as any)
      socket.once("connect", () => {
        socket.io.engine.on("ping", onPing)
        resolve()
      })
      socket.once("connect_error", reject)
      closers.push(() => socket.disconnect())
    } else {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { localAddress, perMessageDeflate: false })
      ws.on("ping", onPing)
      ws.once("open", () => resolve())
      ws.once("error", reject)
      closers.push(() => ws.terminate())
    }
  })

const started = performance.now()
let next = 0
const worker = async () => {
  while (next < count) await open(next++)
}
await Promise.all(Array.from({ length: Math.min(inFlight, count) }, worker))
process.send!({ type: "connected", millis: performance.now() - started })

process.on("message", (command: any) => {
  if (command.type === "pings") process.send!({ type: "pings", pings })
  if (command.type === "close") {
    closers.forEach((close) => close())
    process.send!({ type: "closed" })
  }
})
