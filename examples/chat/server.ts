/**
 * A chat server on the Promise facade: `npm start`, then open http://127.0.0.1:3000 in two tabs.
 *
 * PORT and HOST may be set in the environment (PORT=0 picks a free port).
 */
import { readFileSync } from "node:fs"
import { Broadcaster, serve, WebSocketManager } from "effect-websocket-manager/promise"

const page = readFileSync(new URL("./index.html", import.meta.url))
const MAX_TEXT = 500

const manager = new WebSocketManager({
  maxConnections: 1_000,
  maxConnectionsPerIP: 50,
  heartbeatInterval: 30_000,
  heartbeatTimeout: 10_000,
  // Anyone may join; the name comes from the query string, the way a browser can pass it.
  authentication: {
    validator: (request: Request) => {
      const name = new URL(request.url).searchParams.get("name")?.trim().slice(0, 24)
      return name ? { id: name, name } : null
    }
  }
})

// One channel everyone joins; a slow reader misses messages rather than slowing the room down.
const broadcaster = new Broadcaster({ policy: "drop-newest" })
const lobby = broadcaster.createChannel("lobby")

const server = await serve({
  port: Number(process.env.PORT ?? 3000),
  hostname: process.env.HOST ?? "127.0.0.1",
  fetch: async (request) => {
    const { pathname } = new URL(request.url)
    if (pathname === "/") return new Response(page, { headers: { "content-type": "text/html; charset=utf-8" } })
    if (pathname !== "/chat") return new Response("Not found", { status: 404 })

    const { socket, response, context } = await manager.accept(request)
    const name = (context.user as { name: string }).name
    const online = () => manager.getActiveConnections()

    socket.addEventListener("message", (event) => {
      let text: unknown
      try {
        text = JSON.parse(String(event.data)).text
      } catch {
        return socket.send(JSON.stringify({ type: "error", message: "send JSON: { \"text\": \"…\" }" }))
      }
      if (typeof text !== "string" || text.trim() === "" || text.length > MAX_TEXT) {
        return socket.send(JSON.stringify({ type: "error", message: `text must be 1-${MAX_TEXT} characters` }))
      }
      void lobby.broadcast({ type: "message", from: name, text, at: Date.now() })
    })
    // The subscription ends with the connection; no unsubscribe needed.
    broadcaster.subscribe(socket, "lobby")
    socket.addEventListener("close", () => {
      void lobby.broadcast({ type: "left", name, online: online() })
    })
    void lobby.broadcast({ type: "joined", name, online: online() })
    return response
  }
})

console.log(`chat on ${server.url}`)

const shutdown = async () => {
  await manager.close(1001, "Server shutdown")
  await broadcaster.close()
  await server.close()
  process.exit(0)
}
process.once("SIGINT", shutdown)
process.once("SIGTERM", shutdown)
