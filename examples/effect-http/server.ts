/**
 * The Effect way: an `@effect/platform` HttpRouter app whose `/ws` route accepts upgrades, a
 * connection handler over the inbound Stream, typed errors, and Layers composed at the edge.
 *
 *   npx tsx examples/effect-http/server.ts      # then: npx wscat -c ws://127.0.0.1:3001/ws?user=ann
 */
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Schema, Stream } from "effect"
import { NodeServer, WebSocketManager } from "effect-websocket-manager"

// Inbound messages are decoded with a Schema; anything else gets a typed error back.
const Inbound = Schema.parseJson(Schema.Struct({ text: Schema.String.pipe(Schema.maxLength(500)) }))

const app = Effect.gen(function*() {
  const manager = yield* WebSocketManager.WebSocketManager

  const chat = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    yield* manager.accept(request, {
      // One fiber per connection; a failure here closes this connection with 1011 and nothing else.
      handler: (connection) =>
        connection.messages.pipe(
          Stream.mapEffect((raw) => Schema.decodeUnknown(Inbound)(raw).pipe(Effect.either)),
          Stream.runForEach((decoded): Effect.Effect<unknown, unknown> =>
            decoded._tag === "Right"
              ? manager.broadcast({ from: connection.context.userId, text: decoded.right.text })
              : connection.send({ error: "expected {\"text\": string}" })
          )
        )
    }).pipe(
      // Typed errors: answer a full server with a Retry-After, let the rest answer for themselves.
      Effect.catchTag("ConnectionLimitExceeded", () =>
        HttpServerResponse.text("busy", { status: 503, headers: { "retry-after": "10" } }))
    )
    return HttpServerResponse.empty()
  })

  return HttpRouter.empty.pipe(
    HttpRouter.get("/health", Effect.map(manager.activeConnections, (online) => HttpServerResponse.unsafeJson({ online }))),
    HttpRouter.get("/ws", chat)
  )
})

const ManagerLive = WebSocketManager.layer({
  maxConnections: 10_000,
  authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") }
})

const ServerLive = Layer.scopedDiscard(
  Effect.gen(function*() {
    const server = yield* NodeServer.serve(yield* app, { port: Number(process.env.PORT ?? 3001) })
    yield* Effect.log(`listening on ${server.url}`)
  })
).pipe(Layer.provide(ManagerLive))

NodeRuntime.runMain(Layer.launch(ServerLive))
