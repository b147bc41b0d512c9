/** The backend the pools connect to, in its own process: it echoes every message. */
import type { AddressInfo } from "node:net"
import { WebSocketServer } from "ws"

const server = new WebSocketServer({ host: "127.0.0.1", port: 0 })
server.on("connection", (socket) => socket.on("message", (data, isBinary) => socket.send(data, { binary: isBinary })))
server.once("listening", () => process.send!({ type: "listening", port: (server.address() as AddressInfo).port }))
