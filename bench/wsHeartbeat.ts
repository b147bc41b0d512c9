/**
 * The raw `ws` reference server with the heartbeat `ws`'s README recommends: one shared
 * `setInterval` that cuts the sockets which missed the last ping and pings the rest.
 */
import type WebSocket from "ws"
import { WebSocketServer } from "ws"

export const listenWithHeartbeat = async (intervalMillis: number): Promise<WebSocketServer> => {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" })
  const alive = new WeakSet<WebSocket>()
  wss.on("connection", (ws) => {
    alive.add(ws)
    ws.on("pong", () => alive.add(ws))
  })
  setInterval(() => {
    for (const ws of wss.clients) {
      if (!alive.has(ws)) ws.terminate()
      alive.delete(ws)
      ws.ping()
    }
  }, intervalMillis)
  await new Promise((resolve) => wss.once("listening", resolve))
  return wss
}
