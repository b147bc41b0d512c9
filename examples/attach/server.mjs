// Plain JavaScript, an existing http.Server (as Express gives you from app.listen), no build step:
//   npm run build && node examples/attach/server.mjs
import { createServer } from "node:http"
import { attach, WebSocketManager } from "effect-websocket-manager/promise"

const manager = new WebSocketManager({ heartbeatInterval: 30_000, heartbeatTimeout: 10_000 })
const server = createServer((req, res) => res.end("an ordinary HTTP app\n"))

await attach(server, async (request) => {
  const { socket, response } = await manager.accept(request)
  socket.addEventListener("message", (event) => socket.send(`echo: ${event.data}`))
  return response
})

server.listen(Number(process.env.PORT ?? 3002), "127.0.0.1", () =>
  console.log(`listening on http://127.0.0.1:${server.address().port}`))
