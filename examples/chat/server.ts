/**
 * A chat server on the Promise facade: `npm start`, then open http://127.0.0.1:3000 in two tabs.
 *
 * PORT and HOST may be set in the environment (PORT=0 picks a free port). With REDIS_URL set, this
 * server is one node of a cluster (`npm run example:cluster` starts two, named by NODE_NAME): what
 * is typed on any node reaches the people on every node, and the online count is the cluster's.
 */
import { readFileSync } from "node:fs"
import { Broadcaster, serve, WebSocketManager } from "effect-websocket-manager/promise"

const page = readFileSync(new URL("./index.html", import.meta.url))
const MAX_TEXT = 500
const node = process.env.NODE_NAME
const redis = process.env.REDIS_URL ? { url: process.env.REDIS_URL } : undefined

const manager = new WebSocketManager({
  redis,
  // In a cluster, each node's share of the online count is announced every 2 s and forgotten 6 s after a crash.
  presenceTtl: 6_000,
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
const broadcaster = new Broadcaster({ redis, policy: "drop-newest" })
const lobby = broadcaster.createChannel("lobby")

/**
 * Sends to the lobby (on every node, in a cluster). While Redis is down the people on this node
 * still get it; the others do not, and the rejection says so: log it rather than leave it unhandled.
 */
const say = (message: object) =>
  lobby.broadcast(node === undefined ? message : { ...message, node })
    .catch((error) => console.warn(`${node ?? "chat"}: ${error.message}`))

/** Everyone online (in the cluster), or on this node alone while Redis cannot be asked. */
const online = () => manager.getClusterConnections().catch(() => manager.getActiveConnections())

const server = await serve({
  port: Number(process.env.PORT ?? 3000),
  hostname: process.env.HOST ?? "127.0.0.1",
  fetch: async (request) => {
    const { pathname } = new URL(request.url)
    if (pathname === "/") return new Response(page, { headers: { "content-type": "text/html; charset=utf-8" } })
    if (pathname !== "/chat") return new Response("Not found", { status: 404 })

    const { socket, response, context } = await manager.accept(request)
    const name = (context.user as { name: string }).name

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
      void say({ type: "message", from: name, text, at: Date.now() })
    })
    // The subscription ends with the connection; no unsubscribe needed.
    broadcaster.subscribe(socket, "lobby")
    socket.addEventListener("close", () => {
      void online().then((count) => say({ type: "left", name, online: count }))
    })
    void online().then((count) => say({ type: "joined", name, online: count }))
    return response
  }
})

console.log(`${node === undefined ? "" : `node ${node}: `}chat on ${server.url}`)

let closing = false
// Ctrl-C may reach this process twice: from the terminal, and from a script that started it passing it on.
const shutdown = async () => {
  if (closing) return
  closing = true
  await manager.close(1001, "Server shutdown")
  await broadcaster.close()
  await server.close()
  process.exit(0)
}
process.once("SIGINT", shutdown)
process.once("SIGTERM", shutdown)
