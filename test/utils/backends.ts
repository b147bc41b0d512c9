/**
 * Real `ws` backend servers for pool tests, on 127.0.0.1: started on a free port, stopped (every
 * connection cut) and restarted on the same port.
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
  stop(): Promise<void>
  restart(): Promise<void>
}

const listen = (port: number, backend: { sockets: Set<WebSocket>; accepted: number }) =>
  new Promise<WebSocketServer>((resolve, reject) => {
    const server = new WebSocketServer({ host: "127.0.0.1", port })
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
  const state = { sockets: new Set<WebSocket>(), accepted: 0 }
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
