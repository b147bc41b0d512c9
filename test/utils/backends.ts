/**
 * Real `ws` backend servers for pool tests, on 127.0.0.1: started on a free port, stopped (every
 * connection cut) and restarted on the same port; they can refuse upgrades with an HTTP status
 * or be slow to complete them.
 */
import type { AddressInfo } from "node:net"
import WebSocket, { WebSocketServer } from "ws"

export interface Backend {
  readonly id: string
  readonly url: string
  /** Server-side sockets currently open. */
  readonly sockets: Set<WebSocket>
  /** Connections accepted since start. */
  accepted: number
  /** Upgrade requests received since start, accepted or not. */
  attempts: number
  /** While set, upgrades are refused with this HTTP status (e.g. 503). */
  refuseWith: number | undefined
  /** How long each upgrade waits before it completes, in ms. */
  handshakeDelay: number
  stop(): Promise<void>
  restart(): Promise<void>
}

type State = Pick<Backend, "sockets" | "accepted" | "attempts" | "refuseWith" | "handshakeDelay">

const listen = (port: number, backend: State) =>
  new Promise<WebSocketServer>((resolve, reject) => {
    const server = new WebSocketServer({
      host: "127.0.0.1",
      port,
      verifyClient: (_info, callback) => {
        backend.attempts++
        if (backend.refuseWith !== undefined) return callback(false, backend.refuseWith)
        if (backend.handshakeDelay === 0) return callback(true)
        setTimeout(() => callback(true), backend.handshakeDelay)
      }
    })
    server.on("connection", (socket) => {
      backend.accepted++
      backend.sockets.add(socket)
      socket.on("close", () => backend.sockets.delete(socket))
      socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary }))
    })
    server.once("listening", () => resolve(server))
    server.once("error", reject)
  })

export const startBackend = async (id = "backend"): Promise<Backend> => {
  const state: State = { sockets: new Set<WebSocket>(), accepted: 0, attempts: 0, refuseWith: undefined, handshakeDelay: 0 }
  let server = await listen(0, state)
  const port = (server.address() as AddressInfo).port
  let running = true
  return Object.assign(state, {
    id,
    url: `ws://127.0.0.1:${port}`,
    stop: async () => {
      if (!running) return
      running = false
      for (const socket of state.sockets) socket.terminate()
      await new Promise((resolve) => server.close(resolve))
    },
    restart: async () => {
      server = await listen(port, state)
      running = true
    }
  })
}

export const startBackends = (count: number) =>
  Promise.all(Array.from({ length: count }, (_, i) => startBackend(`b${i + 1}`)))
