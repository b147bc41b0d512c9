/**
 * Shared test helpers: real servers on 127.0.0.1 port 0, real `ws` clients, and waits that are
 * bounded in time so a broken behaviour fails a test instead of hanging it.
 */
import WebSocket from "ws"
import type { WebSocketManagerOptions } from "../../src/options.js"
import type { AcceptOptions, AcceptResult } from "../../src/promise/index.js"
import { serve, type Server, WebSocketManager } from "../../src/promise/index.js"

export interface Harness {
  readonly manager: WebSocketManager
  readonly server: Server
  /** ws://127.0.0.1:PORT */
  readonly url: string
  /** Every error `accept` rejected with, in order. */
  readonly errors: Array<unknown>
  /** Closes the manager, then the HTTP server. */
  close(): Promise<void>
}

/**
 * A facade manager served on a free port; every upgrade is accepted, and `onAccept` sees each
 * accepted connection before the response is returned.
 */
export const startManager = async (
  options: WebSocketManagerOptions = {},
  onAccept: (accepted: AcceptResult, request: Request) => void = () => {},
  acceptOptions?: (request: Request) => AcceptOptions | undefined
): Promise<Harness> => {
  const manager = new WebSocketManager(options)
  const errors: Array<unknown> = []
  const server = await serve({
    port: 0,
    fetch: async (request) => {
      if (request.headers.get("upgrade") === null) return new Response("plain http")
      const accepted = await manager.accept(request, acceptOptions?.(request)).catch((error) => {
        errors.push(error)
        throw error
      })
      onAccept(accepted, request)
      return accepted.response
    }
  })
  return {
    manager,
    server,
    errors,
    url: server.url.replace("http://", "ws://"),
    close: async () => {
      await manager.close()
      await server.close()
    }
  }
}

/** Opens a client and resolves once it is open; rejects with the HTTP status if the upgrade is refused. */
export const openClient = (url: string, protocols?: string | Array<string>, options?: WebSocket.ClientOptions) =>
  new Promise<WebSocket>((resolve, reject) => {
    const ws = new WebSocket(url, protocols, options)
    ws.once("open", () => resolve(ws))
    ws.once("unexpected-response", (_request, response) => {
      reject(Object.assign(new Error(`HTTP ${response.statusCode}`), { status: response.statusCode }))
      response.resume()
      ws.terminate()
    })
    ws.once("error", reject)
  })

/** The HTTP status an upgrade is refused with (fails the test if it is accepted). */
export const refusedStatus = async (url: string, protocols?: string | Array<string>, options?: WebSocket.ClientOptions) => {
  try {
    const ws = await openClient(url, protocols, options)
    ws.terminate()
    throw new Error("expected the upgrade to be refused")
  } catch (error) {
    const status = (error as { status?: number }).status
    if (status === undefined) throw error
    return status
  }
}

export const openClients = (url: string, count: number, options?: WebSocket.ClientOptions) =>
  Promise.all(Array.from({ length: count }, () => openClient(url, undefined, options)))

export const withTimeout = <A>(promise: Promise<A>, millis: number, what: string): Promise<A> =>
  new Promise<A>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${millis} ms waiting for ${what}`)), millis)
    promise.then(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (error) => {
        clearTimeout(timer)
        reject(error)
      }
    )
  })

/** The next `count` messages a client receives, text as strings, binary as Buffers. */
export const nextMessages = (ws: WebSocket, count: number, millis = 5_000) =>
  withTimeout(
    new Promise<Array<string | Buffer>>((resolve) => {
      const received: Array<string | Buffer> = []
      const onMessage = (data: Buffer, isBinary: boolean) => {
        received.push(isBinary ? data : data.toString())
        if (received.length === count) {
          ws.off("message", onMessage)
          resolve(received)
        }
      }
      ws.on("message", onMessage)
    }),
    millis,
    `${count} messages`
  )

export const nextMessage = (ws: WebSocket, millis = 5_000) => nextMessages(ws, 1, millis).then(([message]) => message!)

/** The close code and reason a client sees. */
export const closeOf = (ws: WebSocket, millis = 5_000) =>
  withTimeout(
    new Promise<{ code: number; reason: string }>((resolve) => {
      if (ws.readyState === WebSocket.CLOSED) resolve({ code: 1006, reason: "" })
      ws.once("close", (code, reason) => resolve({ code, reason: reason.toString() }))
    }),
    millis,
    "close"
  )

/** Polls until the condition holds, failing after `millis`. */
export const eventually = async (condition: () => boolean, millis = 5_000, what = "condition") => {
  const deadline = Date.now() + millis
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${millis} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

export const sleep = (millis: number) => new Promise<void>((resolve) => setTimeout(resolve, millis))
