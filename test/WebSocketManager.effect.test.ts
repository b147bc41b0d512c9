import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { describe, expect, it } from "@effect/vitest"
import { Config, ConfigProvider, Context, Deferred, Effect, Layer, Option, Stream } from "effect"
import { Connection, NodeServer, WebSocketManager } from "effect-websocket-manager"
import type WebSocket from "ws"
import { closeOf, eventually, nextMessage, nextMessages, openClient, refusedStatus } from "./utils/index.js"

/** Serves a fetch-style handler built from the manager in context; yields the ws:// URL. */
const serveWith = (handle: (manager: WebSocketManager.WebSocketManager, request: Request) => Effect.Effect<Response>) =>
  Effect.gen(function*() {
    const manager = yield* WebSocketManager.WebSocketManager
    const server = yield* NodeServer.serve(
      NodeServer.fromFetch((request) => Effect.runPromiseExit(handle(manager, request)).then((exit) => {
        if (exit._tag === "Success") return exit.value
        throw exit.cause
      }))
    )
    return server.url.replace("http", "ws")
  })

const client = (url: string, protocols?: Array<string>) =>
  Effect.acquireRelease(Effect.promise(() => openClient(url, protocols)), (ws) => Effect.sync(() => ws.terminate()))

describe("WebSocketManager (Effect API)", () => {
  it.scoped("runs a handler per connection over its message Stream and typed send", () =>
    Effect.gen(function*() {
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, {
          handler: (connection) =>
            connection.messages.pipe(
              Stream.takeWhile((message) => message !== "bye"),
              Stream.runForEach((message) => connection.send({ echo: message }))
            )
        }).pipe(Effect.map(({ response }) => response), Effect.orDie)
      )
      const ws = yield* client(url)
      ws.send("a")
      ws.send("b")
      expect(yield* Effect.promise(() => nextMessages(ws, 2))).toEqual([
        JSON.stringify({ echo: "a" }),
        JSON.stringify({ echo: "b" })
      ])
      // When the handler completes, the connection closes normally.
      const closed = closeOf(ws)
      ws.send("bye")
      expect((yield* Effect.promise(() => closed)).code).toBe(1000)
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.live("pushes back on a client that sends faster than the handler reads, losing nothing", () =>
    Effect.scoped(Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      let serverSocket: WebSocket | undefined
      const received: Array<number> = []
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, {
          handler: (connection) =>
            connection.messages.pipe(
              Stream.runForEach((message) =>
                Effect.suspend(() => {
                  received.push(Number.parseInt(message.toString(), 10))
                  // A consumer stuck on its first message until the test has seen the pushback.
                  return received.length === 1 ? Deferred.await(gate) : Effect.void
                })
              )
            )
        }).pipe(
          Effect.map((accepted) => {
            serverSocket = accepted.socket
            return accepted.response
          }),
          Effect.orDie
        )
      )
      const ws = yield* client(url)
      // 1 KB messages: 5 MB cannot arrive in one read, so the socket must stay paused while the consumer is stuck.
      for (let i = 0; i < 5_000; i++) ws.send(`${i}:`.padEnd(1_000, "."))
      yield* Effect.promise(() => eventually(() => serverSocket?.isPaused === true, 5_000, "the socket to pause"))
      yield* Deferred.succeed(gate, undefined)
      yield* Effect.promise(() => eventually(() => received.length === 5_000, 15_000, "every message"))
      expect(serverSocket!.isPaused).toBe(false)
      expect(received).toEqual(Array.from({ length: 5_000 }, (_, i) => i))
    }).pipe(Effect.provide(WebSocketManager.layer()))))

  it.scoped("closes only the connection whose handler fails, with 1011", () =>
    Effect.gen(function*() {
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, {
          handler: (connection) =>
            connection.messages.pipe(
              Stream.runForEach((message): Effect.Effect<void, unknown> =>
                message === "boom" ? Effect.fail("handler failed") : connection.send(`ok:${message}`)
              )
            )
        }).pipe(Effect.map(({ response }) => response), Effect.orDie)
      )
      const [bad, good] = [yield* client(url), yield* client(url)]
      const closed = closeOf(bad)
      bad.send("boom")
      expect((yield* Effect.promise(() => closed)).code).toBe(1011)
      good.send("x")
      expect(yield* Effect.promise(() => nextMessage(good))).toBe("ok:x")
      const manager = yield* WebSocketManager.WebSocketManager
      expect(yield* manager.activeConnections).toBe(1)
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.scoped("lets a service catch typed accept errors with Effect.catchTag", () =>
    Effect.gen(function*() {
      const seen: Array<string> = []
      const url = yield* serveWith((manager, request) =>
        manager.accept(request).pipe(
          Effect.map(({ response }) => response),
          Effect.catchTag("ConnectionLimitExceeded", (error) => {
            seen.push(`${error._tag}:${error.scope}:${error.limit}`)
            return Effect.succeed(new Response("busy, try later", { status: 503, headers: { "retry-after": "5" } }))
          }),
          Effect.catchAll((error) => Effect.succeed(new Response(error.message, { status: error.status })))
        )
      )
      yield* client(url)
      expect(yield* Effect.promise(() => refusedStatus(url))).toBe(503)
      expect(seen).toEqual(["ConnectionLimitExceeded:total:1"])
    }).pipe(Effect.provide(WebSocketManager.layer({ maxConnections: 1 }))))

  it.scoped("maps an accepted socket back to its Connection", () =>
    Effect.gen(function*() {
      let socket: WebSocket | undefined
      const url = yield* serveWith((manager, request) =>
        manager.accept(request).pipe(
          Effect.map((accepted) => {
            socket = accepted.socket
            return accepted.response
          }),
          Effect.orDie
        )
      )
      yield* client(url)
      const connection = Connection.fromSocket(socket)
      expect(Option.isSome(connection)).toBe(true)
      const manager = yield* WebSocketManager.WebSocketManager
      expect((yield* manager.connections).map((c) => c.id)).toEqual([Option.getOrThrow(connection).id])
      expect(Connection.fromSocket({})).toEqual(Option.none())
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.effect("reads its options from Config with layerConfig", () =>
    Effect.gen(function*() {
      const manager = yield* WebSocketManager.WebSocketManager
      expect(manager.config.maxConnections).toBe(42)
      expect(manager.config.heartbeatInterval).toBe(1_000)
    }).pipe(
      Effect.provide(
        WebSocketManager.layerConfig({
          maxConnections: Config.integer("WS_MAX_CONNECTIONS"),
          heartbeatInterval: Config.integer("WS_HEARTBEAT_INTERVAL"),
          heartbeatTimeout: Config.integer("WS_HEARTBEAT_TIMEOUT")
        }).pipe(
          Layer.provide(Layer.setConfigProvider(ConfigProvider.fromMap(
            new Map([["WS_MAX_CONNECTIONS", "42"], ["WS_HEARTBEAT_INTERVAL", "1000"], ["WS_HEARTBEAT_TIMEOUT", "500"]])
          )))
        )
      )
    ))

  it.effect("fails the layer with InvalidOptions naming the field", () =>
    Effect.gen(function*() {
      const error = yield* Layer.build(WebSocketManager.layer({ maxConnections: 0 })).pipe(Effect.scoped, Effect.flip)
      expect(error._tag).toBe("InvalidOptions")
      expect(error.field).toBe("maxConnections")
    }))

  it.scoped("is swappable in a service through Layers", () =>
    Effect.gen(function*() {
      class Presence extends Context.Tag("test/Presence")<Presence, { readonly online: Effect.Effect<number> }>() {}
      const PresenceLive = Layer.effect(
        Presence,
        Effect.map(WebSocketManager.WebSocketManager, (manager) => ({ online: manager.activeConnections }))
      )
      const online = yield* Effect.flatMap(Presence, (presence) => presence.online).pipe(
        Effect.provide(PresenceLive.pipe(Layer.provide(WebSocketManager.layer())))
      )
      expect(online).toBe(0)
    }))

  it.scoped("accepts upgrades from an @effect/platform HttpRouter app", () =>
    Effect.gen(function*() {
      const manager = yield* WebSocketManager.WebSocketManager
      const app = HttpRouter.empty.pipe(
        HttpRouter.get("/health", HttpServerResponse.text("ok")),
        HttpRouter.get(
          "/ws",
          Effect.gen(function*() {
            const request = yield* HttpServerRequest.HttpServerRequest
            yield* manager.accept(request, {
              handler: (connection) => connection.messages.pipe(Stream.runForEach((m) => connection.send(`router:${m}`)))
            })
            return HttpServerResponse.empty()
          }).pipe(Effect.catchAll((error) => HttpServerResponse.text(error.message, { status: error.status })))
        )
      )
      const server = yield* NodeServer.serve(app)
      expect(yield* Effect.promise(() => fetch(`${server.url}/health`).then((r) => r.text()))).toBe("ok")
      const ws = yield* client(`${server.url.replace("http", "ws")}/ws`)
      ws.send("hi")
      expect(yield* Effect.promise(() => nextMessage(ws))).toBe("router:hi")
      // A route that does not exist answers the upgrade with 404 and closes the socket.
      expect(yield* Effect.promise(() => refusedStatus(`${server.url.replace("http", "ws")}/nope`))).toBe(404)
    }).pipe(Effect.provide(WebSocketManager.layer())))
})
