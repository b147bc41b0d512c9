import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { describe, expect, it } from "@effect/vitest"
import { Config, ConfigProvider, Context, Deferred, Duration, Effect, Either, HashMap, Layer, Logger, LogLevel, Metric, Option, Stream } from "effect"
import { Connection, HandlerFailed, InvalidClose, NodeServer, WebSocketManager } from "effect-websocket-manager"
import fc from "fast-check"
import type WebSocket from "ws"
import { checkClose } from "../src/internal/connection.js"
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

describe("WebSocketManager (Effect API): lifecycle", () => {
  it.scoped("a handler that throws before returning an Effect closes only its connection with 1011", () =>
    Effect.gen(function*() {
      const manager = yield* WebSocketManager.WebSocketManager
      const refused: Array<unknown> = []
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, {
          handler: (connection) => {
            if (connection.context.url.endsWith("/bug")) throw new Error("sync handler bug")
            return connection.messages.pipe(Stream.runForEach((message) => connection.send(`ok:${message}`)))
          }
        }).pipe(
          Effect.map(({ response }) => response),
          Effect.catchAllCause((cause) => {
            refused.push(cause)
            return Effect.succeed(new Response(null, { status: 500 }))
          })
        )
      )
      const good = yield* client(url)
      const bad = yield* client(`${url}/bug`)
      const closed = yield* Effect.promise(() => closeOf(bad, 3_000))
      expect(closed.code).toBe(1011)
      expect(refused).toEqual([])
      good.send("x")
      expect(yield* Effect.promise(() => nextMessage(good))).toBe("ok:x")
      good.close()
      yield* Effect.promise(() => eventually(() => Effect.runSync(manager.stats).fibers === 0))
      expect(yield* manager.stats).toEqual({ connections: 0, pending: 0, fibers: 0 })
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.scoped("Connection.close refuses a code ws refuses or a long reason with InvalidClose, and the connection stays open", () =>
    Effect.gen(function*() {
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, {
          handler: (connection) =>
            Effect.gen(function*() {
              // The first message says the client listens.
              yield* connection.messages.pipe(Stream.take(1), Stream.runDrain)
              const refusals = [
                yield* Effect.flip(connection.close(1005)),
                yield* Effect.flip(connection.close(1000, "x".repeat(124)))
              ]
              yield* connection.send(refusals.map((error) => `${error._tag}:${error.reason}`).join(","))
              yield* connection.messages.pipe(
                Stream.takeWhile((message) => message !== "bye"),
                Stream.runForEach((message) => connection.send(`ok:${message}`))
              )
              yield* connection.close(4000, "x".repeat(123))
            })
        }).pipe(Effect.map(({ response }) => response), Effect.orDie)
      )
      const ws = yield* client(url)
      const refusals = nextMessage(ws)
      ws.send("ready")
      expect(yield* Effect.promise(() => refusals)).toBe("InvalidClose:InvalidCode,InvalidClose:ReasonTooLong")
      ws.send("x")
      expect(yield* Effect.promise(() => nextMessage(ws))).toBe("ok:x")
      const closed = closeOf(ws)
      ws.send("bye")
      expect(yield* Effect.promise(() => closed)).toEqual({ code: 4000, reason: "x".repeat(123) })
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.scoped("close(code, reason) fails with InvalidClose before changing anything", () =>
    Effect.gen(function*() {
      const manager = yield* WebSocketManager.WebSocketManager
      const url = yield* serveWith((manager, request) =>
        manager.accept(request).pipe(Effect.map(({ response }) => response), Effect.orDie)
      )
      const ws = yield* client(url)
      const error = yield* Effect.flip(manager.close(1006, "cut"))
      expect(error).toBeInstanceOf(InvalidClose)
      expect(error.message).toContain("1006")
      yield* client(url)
      expect(ws.readyState).toBe(1)
      expect(yield* manager.activeConnections).toBe(2)
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.scoped("Connection.closed tells how the connection ended, and ends are counted by reason", () =>
    Effect.gen(function*() {
      const counted = (reason: Connection.ConnectionEnd) =>
        Metric.value(Metric.tagged(Connection.endsTotal, "reason", reason)).pipe(Effect.map((state) => state.count))
      const failedBefore = yield* counted("handler-failed")
      const normalBefore = yield* counted("normal")
      const ends: Array<Connection.CloseInfo> = []
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, {
          handler: (connection) =>
            Effect.zipRight(
              Effect.forkDaemon(Effect.flatMap(connection.closed, (info) => Effect.sync(() => ends.push(info)))),
              connection.messages.pipe(
                Stream.runForEach((message): Effect.Effect<void, string> =>
                  message === "boom" ? Effect.fail("handler failed") : Effect.void
                )
              )
            )
        }).pipe(Effect.map(({ response }) => response), Effect.orDie)
      )
      const bad = yield* client(url)
      const good = yield* client(url)
      bad.send("boom")
      good.close(1000)
      yield* Effect.promise(() => eventually(() => ends.length === 2))
      const failed = ends.find((info) => info.end === "handler-failed")!
      expect(failed.code).toBe(1011)
      expect(failed.error).toBeInstanceOf(HandlerFailed)
      expect((failed.error as HandlerFailed).cause).toBe("handler failed")
      expect(ends.find((info) => info.end === "normal")).toEqual({ code: 1000, reason: "", end: "normal", error: undefined })
      const manager = yield* WebSocketManager.WebSocketManager
      yield* Effect.promise(() => eventually(() => Effect.runSync(manager.stats).fibers === 0))
      expect((yield* counted("handler-failed")) - failedBefore).toBe(1)
      expect((yield* counted("normal")) - normalBefore).toBe(1)
    }).pipe(Effect.provide(WebSocketManager.layer())))

  it.live("logs an 'error' nobody listens to at debug level, with the connection id", () =>
    Effect.gen(function*() {
      const logs: Array<{ level: string; text: string; annotations: Record<string, unknown> }> = []
      const logger = Logger.make(({ annotations, cause, logLevel, message }) => {
        logs.push({
          level: logLevel.label,
          text: JSON.stringify(message) + String(cause),
          annotations: Object.fromEntries(HashMap.toEntries(annotations))
        })
      })
      yield* Effect.gen(function*() {
        let id = ""
        const url = yield* serveWith((manager, request) =>
          manager.accept(request).pipe(
            Effect.map(({ context, response }) => {
              id = context.id
              return response
            }),
            Effect.orDie
          )
        )
        const ws = yield* client(url)
        const closed = closeOf(ws)
        ws.send("x".repeat(64))
        expect((yield* Effect.promise(() => closed)).code).toBe(1009)
        yield* Effect.promise(() => eventually(() => logs.some((log) => log.annotations.connectionId === id)))
        const log = logs.find((log) => log.annotations.connectionId === id)!
        expect(log.level).toBe("DEBUG")
        expect(log.text).toContain("Max payload size exceeded")
      }).pipe(
        Effect.scoped,
        Effect.provide(WebSocketManager.layer({ maxPayload: 16 })),
        Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
    }))

  it.live("leaves no half-made connection when accept is interrupted or times out at any point", () =>
    Effect.gen(function*() {
      const manager = yield* WebSocketManager.WebSocketManager
      let attempt = 0
      const url = yield* serveWith((manager, request) =>
        manager.accept(request, { handler: () => Effect.never }).pipe(
          Effect.map(({ response }) => response),
          // The caller gives up at a different moment each time: during authentication, or after.
          Effect.timeout(Duration.millis(attempt++ % 4)),
          Effect.catchAllCause(() => Effect.succeed(new Response(null, { status: 503 })))
        )
      )
      const outcomes = yield* Effect.forEach(
        Array.from({ length: 40 }),
        () => Effect.promise(() => openClient(url).then((ws) => ws, () => undefined)),
        { concurrency: 8 }
      )
      for (const ws of outcomes) ws?.terminate()
      yield* Effect.promise(() =>
        eventually(() => {
          const stats = Effect.runSync(manager.stats)
          return stats.connections === 0 && stats.fibers === 0 && stats.pending === 0
        }, 10_000, "every count back to zero")
      )
    }).pipe(
      Effect.provide(WebSocketManager.layer({
        authentication: {
          validator: (request: Request) => new Promise((resolve) => setTimeout(() => resolve(request.url), 2))
        }
      })),
      Effect.scoped
    ))
})

describe("close codes and reasons", () => {
  const sendable = (code: number) =>
    (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999)

  it("allows exactly the codes RFC 6455 lets an endpoint send, and reasons up to 123 UTF-8 bytes", () => {
    for (const code of [1000, 1003, 1007, 1014, 3000, 4999]) expect(Either.isRight(checkClose(code, ""))).toBe(true)
    for (const code of [999, 1004, 1005, 1006, 1015, 2999, 5000, 1000.5, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(checkClose(code, "")).toMatchObject({ left: { _tag: "InvalidClose", reason: "InvalidCode", code } })
    }
    fc.assert(
      fc.property(fc.integer({ min: -10, max: 6_000 }), (code) => {
        expect(Either.isRight(checkClose(code, ""))).toBe(sendable(code))
      })
    )
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 80 }), (reason) => {
        const result = checkClose(1000, reason)
        if (Buffer.byteLength(reason) <= 123) expect(Either.isRight(result)).toBe(true)
        else expect(result).toMatchObject({ left: { _tag: "InvalidClose", reason: "ReasonTooLong" } })
      })
    )
    expect(checkClose(1000, "x".repeat(123))).toEqual(Either.void)
    expect(checkClose(1000, 42 as unknown as string)).toMatchObject({ left: { reason: "ReasonNotAString" } })
    expect(Either.getLeft(checkClose(1000, "é".repeat(62))).pipe(Option.getOrThrow).message).toBe(
      "Invalid close (ReasonTooLong, code 1000): 124 UTF-8 bytes, at most 123"
    )
  })
})
