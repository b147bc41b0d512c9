/**
 * The load: N clients of one variant in this process, counting what they receive.
 * Connections spread over 127.0.0.1–127.0.0.8 so repeated runs do not exhaust ephemeral ports.
 */
import { io as connectSocketIO } from "socket.io-client"
import WebSocket from "ws"
import { clientAddress } from "../lib.js"

const [variant, port, count] = [process.argv[2]!, Number(process.argv[3]), Number(process.argv[4])]
const send = (message: object) => process.send!(message)

let received = 0
let lastAt = 0
const onMessage = () => {
  received++
  lastAt = Date.now()
}

const closers: Array<() => void> = []

const open = (index: number) =>
  new Promise<void>((resolve, reject) => {
    const localAddress = clientAddress(index)
    if (variant === "socket.io") {
      const socket = connectSocketIO(`http://127.0.0.1:${port}`, {
        transports: ["websocket"],
        reconnection: false,
        localAddress
      } as any)
      socket.on("m", onMessage)
      socket.once("connect", () => resolve())
      socket.once("connect_error", reject)
      closers.push(() => socket.disconnect())
    } else {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { localAddress, perMessageDeflate: false })
      ws.on("message", onMessage)
      ws.once("open", () => resolve())
      ws.once("error", reject)
      closers.push(() => ws.terminate())
    }
  })

for (let index = 0; index < count; index += 250) {
  await Promise.all(Array.from({ length: Math.min(250, count - index) }, (_, i) => open(index + i)))
}
send({ type: "connected" })

process.on("message", async (command: any) => {
  if (command.type === "expect") {
    received = 0
    lastAt = 0
    const deadline = Date.now() + command.timeout
    while (received < command.total && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
    // Anything more than expected would be a duplicate; give it a moment to show.
    await new Promise((resolve) => setTimeout(resolve, 100))
    send({ type: "received", count: received, lastAt })
  }
  if (command.type === "close") {
    closers.forEach((close) => close())
    send({ type: "closed" })
  }
})
