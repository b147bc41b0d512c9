/**
 * Part of the load: connections opened on demand, each keeping the number of the last broadcast it
 * received. `ws` clients answer pings by themselves. Connections spread over 127.0.0.1–127.0.0.8
 * so that tens of thousands of them do not run out of ephemeral ports.
 */
import WebSocket from "ws"
import { clientAddress } from "../lib.js"

const port = Number(process.argv[2])
const offset = Number(process.argv[3])
const send = (message: object) => process.send!(message)

const sockets: Array<WebSocket> = []
const lastSeq: Array<number> = []
let closed = 0
let failed = 0

const open = (index: number) =>
  new Promise<void>((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { localAddress: clientAddress(index), perMessageDeflate: false })
    const slot = sockets.push(ws) - 1
    lastSeq[slot] = 0
    ws.on("message", (data) => {
      lastSeq[slot] = JSON.parse(String(data)).seq
    })
    ws.once("open", () => resolve())
    ws.once("error", () => {
      failed++
      resolve()
    })
    ws.once("close", () => closed++)
  })

process.on("message", async (command: any) => {
  if (command.type === "open") {
    const from = sockets.length
    for (let index = from; index < from + command.count; index += 200) {
      await Promise.all(Array.from({ length: Math.min(200, from + command.count - index) }, (_, i) => open(offset + index + i)))
    }
    send({ type: "opened", open: sockets.length - closed, failed })
  }
  // How many open sockets got broadcast number `seq` or a later one.
  if (command.type === "reached") {
    let reached = 0
    for (let i = 0; i < sockets.length; i++) if (lastSeq[i]! >= command.seq && sockets[i]!.readyState === WebSocket.OPEN) reached++
    send({ type: "reached", reached, open: sockets.length - closed, failed })
  }
  if (command.type === "close") {
    for (const ws of sockets) ws.terminate()
    send({ type: "closed" })
  }
})
send({ type: "ready" })
