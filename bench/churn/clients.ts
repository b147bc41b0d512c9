/**
 * The load: waves of clients that connect, all at once, and leave again (half close, half vanish),
 * until the number of cycles asked for is done. Reports how long it took. Connections spread over
 * 127.0.0.1–127.0.0.8 so that the churn does not exhaust ephemeral ports.
 */
import { io as connectSocketIO } from "socket.io-client"
import WebSocket from "ws"
import { clientAddress } from "../lib.js"

const [variant, port, cycles, wave] = process.argv.slice(2).map((arg, i) => i === 0 ? arg : Number(arg)) as [
  string,
  number,
  number,
  number
]

/** Opens a client; resolves to a function that ends it (closing or vanishing) and resolves once it is gone. */
const open = (index: number) =>
  new Promise<() => Promise<void>>((resolve, reject) => {
    const localAddress = clientAddress(index)
    const vanish = index % 2 === 1
    if (variant === "socket.io") {
      const socket = connectSocketIO(`http://127.0.0.1:${port}`, {
        transports: ["websocket"],
        reconnection: false,
        localAddress
      } as any)
      socket.once("connect_error", reject)
      socket.once("connect", () =>
        resolve(() =>
          new Promise<void>((gone) => {
            const engine = socket.io.engine
            // Cut already (a heartbeat answered late on a loaded machine): nothing left to end.
            if (engine.readyState === "closed") return gone()
            engine.once("close", () => gone())
            if (vanish) (engine.transport as any).ws?.terminate?.() ?? socket.disconnect()
            else socket.disconnect()
          })
        )
      )
    } else {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { localAddress, perMessageDeflate: false })
      ws.once("error", reject)
      ws.once("open", () =>
        resolve(() =>
          new Promise<void>((gone) => {
            if (ws.readyState === WebSocket.CLOSED) return gone()
            ws.once("close", () => gone())
            if (vanish) ws.terminate()
            else ws.close()
          })
        )
      )
    }
  })

const runWave = async (first: number, size: number) => {
  const enders = await Promise.all(Array.from({ length: size }, (_, i) => open(first + i)))
  await Promise.all(enders.map((end) => end()))
}

// One wave first, so that the server's baseline holds what warming up costs (compiled code, pools).
await runWave(0, wave)
await new Promise<void>((resolve) => {
  process.once("message", () => resolve())
  process.send!({ type: "warmed" })
})
const started = performance.now()
for (let done = 0; done < cycles; done += wave) await runWave(done, Math.min(wave, cycles - done))
process.send!({ type: "done", millis: performance.now() - started })
