/**
 * The cluster behaviour of the Broadcaster and the manager, two nodes in one process on a
 * `MemoryHub` bus: what crosses, in which order, what stays local, and what is refused. The same
 * behaviour over Redis, with nodes in separate processes, is in Cluster.redis.test.ts.
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Layer, Metric, Scope, Stream } from "effect"
import { Broadcaster, ClusterBus, NodeServer, WebSocketManager } from "effect-websocket-manager"
import type WebSocket from "ws"
import { eventually, nextMessage, nextMessages, openClient } from "./utils/index.js"

interface Node {
  readonly manager: WebSocketManager.WebSocketManager
  readonly broadcaster: Broadcaster.Broadcaster
  readonly bus: ClusterBus.ClusterBus
  readonly url: string
  /** The accepted socket of each client, by the `user` query parameter's order of arrival. */
  readonly accepted: Array<WebSocket>
}

/** A node: manager and broadcaster on one bus of the hub, serving upgrades that join "room". */
const startNode = (hub: ClusterBus.MemoryHub, options?: WebSocketManager.WebSocketManagerOptions) =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const context = yield* Layer.buildWithScope(
      Layer.mergeAll(WebSocketManager.layer({
        authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") ?? "guest" },
        ...options
      }), Broadcaster.layer()).pipe(Layer.provideMerge(ClusterBus.layerMemory(hub))),
      scope
    )
    const manager = yield* Effect.provide(WebSocketManager.WebSocketManager, context)
    const broadcaster = yield* Effect.provide(Broadcaster.Broadcaster, context)
    const bus = yield* Effect.provide(ClusterBus.ClusterBus, context)
    const accepted: Array<WebSocket> = []
    const server = yield* NodeServer.serve(
      NodeServer.fromFetch((request) =>
        Effect.runPromise(
          manager.accept(request).pipe(
            Effect.tap(({ socket }) => {
              accepted.push(socket)
              return broadcaster.subscribe(socket, "room")
            }),
            Effect.map(({ response }) => response)
          )
        )
      )
    )
    return { manager, broadcaster, bus, url: server.url.replace("http", "ws"), accepted } satisfies Node
  })

const client = (url: string) =>
  Effect.acquireRelease(Effect.promise(() => openClient(url)), (ws) => Effect.sync(() => ws.terminate()))

const silent = (ws: WebSocket) => Effect.promise(() => nextMessage(ws, 150).then(() => "heard", () => "silent"))

describe("Cluster on a memory hub (Effect API)", () => {
  it.scoped("a channel broadcast on one node reaches every node's subscribers once, in order", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const b = yield* startNode(hub)
      const onA = yield* client(a.url)
      const [onB1, onB2] = [yield* client(b.url), yield* client(b.url)]
      yield* Effect.promise(() => eventually(() => hub.topics.has("channel:room") && hub.topics.get("channel:room")!.size === 2))
      const heard = Effect.promise(() => Promise.all([nextMessages(onA, 100), nextMessages(onB1, 100), nextMessages(onB2, 100)]))
      for (let i = 0; i < 100; i++) {
        expect(yield* a.broadcaster.broadcast("room", { i })).toBe(1)
      }
      const expected = Array.from({ length: 100 }, (_, i) => JSON.stringify({ i }))
      expect(yield* heard).toEqual([expected, expected, expected])
      // The echo of A's own publishes was ignored: nothing arrives twice.
      expect(yield* silent(onA)).toBe("silent")
    }))

  it.scoped("exclude keeps the publisher's own socket out; the other nodes get the message", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const b = yield* startNode(hub)
      const [sender, neighbour] = [yield* client(a.url), yield* client(a.url)]
      const remote = yield* client(b.url)
      yield* Effect.promise(() => eventually(() => (hub.topics.get("channel:room")?.size ?? 0) === 2))
      const heard = Effect.promise(() => Promise.all([nextMessage(neighbour), nextMessage(remote)]))
      expect(yield* a.broadcaster.broadcast("room", "hello", { exclude: a.accepted[0]! })).toBe(1)
      expect(yield* heard).toEqual(["hello", "hello"])
      expect(yield* silent(sender)).toBe("silent")
    }))

  it.scoped("a filter cannot cross nodes: refused with FilterNotSerializable, delivered here with local: true", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const b = yield* startNode(hub)
      const here = yield* client(a.url)
      const remote = yield* client(b.url)
      yield* Effect.promise(() => eventually(() => (hub.topics.get("channel:room")?.size ?? 0) === 2))
      const refused = yield* Effect.flip(a.broadcaster.broadcast("room", "x", { filter: () => true }))
      expect(refused._tag).toBe("FilterNotSerializable")
      const refusedByManager = yield* Effect.flip(a.manager.broadcast("x", () => true))
      expect(refusedByManager._tag).toBe("FilterNotSerializable")
      expect(yield* silent(here)).toBe("silent")

      expect(yield* a.broadcaster.broadcast("room", "local", { filter: () => true, local: true })).toBe(1)
      expect(yield* Effect.promise(() => nextMessage(here))).toBe("local")
      expect(yield* a.manager.broadcast("local too", () => true, { local: true })).toBe(1)
      expect(yield* Effect.promise(() => nextMessage(here))).toBe("local too")
      expect(yield* silent(remote)).toBe("silent")
    }))

  it.scoped("a server-side consumer on another node sees strings, JSON values and binary as published", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const b = yield* startNode(hub)
      const channel = yield* b.broadcaster.createChannel("feed")
      const collected = yield* channel.messages.pipe(Stream.take(3), Stream.runCollect, Effect.fork)
      yield* Effect.promise(() => eventually(() => hub.topics.has("channel:feed")))
      yield* a.broadcaster.broadcast("feed", "text")
      yield* a.broadcaster.broadcast("feed", { n: 1, list: [true, null] })
      yield* a.broadcaster.broadcast("feed", Buffer.from([1, 2, 3]))
      const messages = Chunk.toReadonlyArray(yield* Fiber.join(collected))
      expect(messages.slice(0, 2)).toEqual(["text", { n: 1, list: [true, null] }])
      expect(Buffer.isBuffer(messages[2])).toBe(true)
      expect([...(messages[2] as Buffer)]).toEqual([1, 2, 3])
    }))

  it.scoped("a channel's topic is listened to only while the node has a subscriber or consumer of it", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const ws = yield* client(a.url)
      yield* Effect.promise(() => eventually(() => hub.topics.has("channel:room")))
      expect(yield* a.broadcaster.unsubscribe(a.accepted[0]!, "room")).toBe(true)
      yield* Effect.promise(() => eventually(() => !hub.topics.has("channel:room"), 2_000, "the topic let go"))
      expect(ws.readyState).toBe(ws.OPEN)
    }))

  it.scoped("manager.broadcast reaches every node's connections; sendToUser every socket of that user", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const b = yield* startNode(hub)
      const annA = yield* client(`${a.url}/?user=ann`)
      const annB = yield* client(`${b.url}/?user=ann`)
      const bobB = yield* client(`${b.url}/?user=bob`)
      yield* Effect.promise(() => eventually(() => hub.topics.has("user:ann") && hub.topics.get("user:ann")!.size === 2))

      const everyone = Effect.promise(() => Promise.all([nextMessage(annA), nextMessage(annB), nextMessage(bobB)]))
      expect(yield* a.manager.broadcast({ notice: "all" })).toBe(1)
      expect(yield* everyone).toEqual(Array(3).fill(JSON.stringify({ notice: "all" })))

      const toAnn = Effect.promise(() => Promise.all([nextMessage(annA), nextMessage(annB)]))
      expect(yield* b.manager.sendToUser("ann", "for ann")).toBe(1)
      expect(yield* toAnn).toEqual(["for ann", "for ann"])
      expect(yield* silent(bobB)).toBe("silent")
      // A user with no connection on this node: 0 here, and still sent to the others.
      const toBob = Effect.promise(() => nextMessage(bobB))
      expect(yield* a.manager.sendToUser("bob", "for bob")).toBe(0)
      expect(yield* toBob).toBe("for bob")
    }))

  it.scoped("a user's topic is let go when the user's last connection on the node ends", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const first = yield* Effect.promise(() => openClient(`${a.url}/?user=cid`))
      const second = yield* Effect.promise(() => openClient(`${a.url}/?user=cid`))
      yield* Effect.promise(() => eventually(() => hub.topics.get("user:cid")?.size === 1))
      first.close()
      yield* Effect.promise(() => eventually(() => Effect.runSync(a.manager.activeConnections) === 1))
      expect(hub.topics.get("user:cid")?.size).toBe(1)
      second.close()
      yield* Effect.promise(() => eventually(() => !hub.topics.has("user:cid"), 2_000, "the user's topic let go"))
    }))

  // Live: the announcements are repeated on the real clock.
  it.scopedLive("clusterConnections counts every node, and a closed node leaves the count at once", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub, { presenceTtl: 300 })
      const bScope = yield* Scope.make()
      const b = yield* Scope.extend(startNode(hub, { presenceTtl: 300 }), bScope)
      yield* client(a.url)
      yield* client(b.url)
      yield* client(b.url)
      const count = () => Effect.runSync(Effect.orDie(a.manager.clusterConnections))
      yield* Effect.promise(() => eventually(() => count() === 3, 3_000, "3 across the cluster"))
      expect(yield* b.manager.clusterConnections).toBe(3)
      yield* Scope.close(bScope, Exit.void)
      expect(count()).toBe(1)
    }))

  it.scoped("an empty string and binary that is not UTF-8 cross as they are, text as text and binary as binary", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const b = yield* startNode(hub)
      const remote = yield* client(b.url)
      yield* Effect.promise(() => eventually(() => (hub.topics.get("channel:room")?.size ?? 0) === 1))
      const frames: Array<{ data: Buffer; binary: boolean }> = []
      remote.on("message", (data: Buffer, binary: boolean) => frames.push({ data, binary }))
      yield* a.broadcaster.broadcast("room", "")
      yield* a.broadcaster.broadcast("room", Buffer.from([0xff, 0xfe, 0x00]))
      yield* Effect.promise(() => eventually(() => frames.length === 2))
      expect(frames.map(({ binary, data }) => ({ binary, bytes: [...data] }))).toEqual([
        { binary: false, bytes: [] },
        { binary: true, bytes: [0xff, 0xfe, 0x00] }
      ])
    }))

  it.scoped("a broadcast to a channel no node has resolves with 0 and delivers nothing", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      expect(yield* a.broadcaster.broadcast("nobody-listens", "x")).toBe(0)
      expect(yield* a.manager.sendToUser("nobody", "x")).toBe(0)
    }))

  it.scoped("without a bus: clusterConnections is this node's count, sendToUser reaches the user's sockets here", () =>
    Effect.gen(function*() {
      const manager = yield* WebSocketManager.make({
        authentication: { validator: (request: Request) => new URL(request.url).searchParams.get("user") }
      })
      const server = yield* NodeServer.serve(NodeServer.fromFetch((request) =>
        Effect.runPromise(Effect.map(manager.accept(request), ({ response }) => response))
      ))
      const url = server.url.replace("http", "ws")
      const [ann1, ann2] = [yield* client(`${url}/?user=ann`), yield* client(`${url}/?user=ann`)]
      const bob = yield* client(`${url}/?user=bob`)
      expect(yield* manager.clusterConnections).toBe(3)
      const heard = Effect.promise(() => Promise.all([nextMessage(ann1), nextMessage(ann2)]))
      expect(yield* manager.sendToUser("ann", "hi ann")).toBe(2)
      expect(yield* heard).toEqual(["hi ann", "hi ann"])
      expect(yield* silent(bob)).toBe("silent")
    }))

  it.scoped("a payload that is not an envelope is counted and dropped; delivery goes on", () =>
    Effect.gen(function*() {
      const hub = new ClusterBus.MemoryHub()
      const a = yield* startNode(hub)
      const ws = yield* client(a.url)
      yield* Effect.promise(() => eventually(() => hub.topics.has("channel:room")))
      const malformed = ClusterBus.metrics.malformed
      const before = (yield* Metric.value(malformed)).count
      const stranger = ClusterBus.memory(hub)
      const garbage = [
        Buffer.from("not an envelope"),
        Buffer.from([1, 1, 4, 65, 66, 67, 68, 123]), // JSON kind, data "{" does not parse
        Buffer.from([1, 0, 1, 65, 0xff, 0xfe]), // string kind, not UTF-8
        Buffer.from([1, 9, 1, 65, 66]), // unknown kind
        Buffer.from([1, 0, 200, 65]), // origin longer than the payload
        Buffer.from([1, 0, 0, 65]), // no origin
        Buffer.from([2, 0, 1, 65, 66]), // a format version this node does not know
        Buffer.from([1, 0]) // shorter than a header
      ]
      for (const payload of garbage) yield* stranger.publish("channel:room", payload)
      yield* a.broadcaster.broadcast("room", "after the garbage")
      expect(yield* Effect.promise(() => nextMessage(ws))).toBe("after the garbage")
      yield* Effect.promise(() => eventually(() => Effect.runSync(Metric.value(malformed)).count - before === garbage.length))
      expect(yield* silent(ws)).toBe("silent")
    }))
})
