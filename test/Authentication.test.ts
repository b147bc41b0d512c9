import * as Respondable from "@effect/platform/HttpServerRespondable"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import { Cause, Effect, HashMap, Logger, LogLevel } from "effect"
import fc from "fast-check"
import * as Jose from "jose"
import { createHmac } from "node:crypto"
import { afterEach, describe, expect, it } from "vitest"
import WebSocket from "ws"
import {
  AuthenticationFailed,
  ConnectionLimitExceeded,
  ConnectionTimeout,
  HandshakeFailed,
  ManagerClosed,
  NodeServer,
  OriginNotAllowed,
  UpgradeRequired,
  WebSocketManager as Core
} from "../src/index.js"
import * as Auth from "../src/internal/authenticate.js"
import * as Handshake from "../src/internal/handshake.js"
import { errorResponse } from "../src/internal/upgrade.js"
import type { ConnectionContext } from "../src/promise/index.js"
import { WebSocketManager } from "../src/promise/index.js"
import type { Harness } from "./utils/index.js"
import { eventually, openClient, refusedStatus, startManager, withTimeout } from "./utils/index.js"

const SECRET = "a-test-secret-of-at-least-32-bytes!!"
const harnesses: Array<Harness> = []
const clients: Array<WebSocket> = []

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate()
  for (const harness of harnesses.splice(0)) await harness.close()
})

/** Starts a manager and records the context of every accepted connection. */
const start = async (authentication: any, options: Record<string, unknown> = {}) => {
  const contexts: Array<ConnectionContext> = []
  const harness = await startManager({ authentication, ...options }, ({ context }) => contexts.push(context))
  harnesses.push(harness)
  return { ...harness, contexts }
}

const connect = async (...args: Parameters<typeof openClient>) => {
  const ws = await openClient(...args)
  clients.push(ws)
  return ws
}

/** The status and body a refused upgrade is answered with (fails if the upgrade is accepted). */
const refusal = (url: string, protocols?: string | Array<string>, options?: WebSocket.ClientOptions) =>
  withTimeout(
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const ws = new WebSocket(url, protocols, options)
      ws.once("open", () => {
        ws.terminate()
        reject(new Error("expected the upgrade to be refused"))
      })
      ws.once("unexpected-response", (_request, response) => {
        const chunks: Array<Buffer> = []
        response.on("data", (chunk: Buffer) => chunks.push(chunk))
        response.on("end", () => {
          resolve({ status: response.statusCode!, body: Buffer.concat(chunks).toString() })
          ws.terminate()
        })
      })
      ws.once("error", reject)
    }),
    10_000,
    "the refusal"
  )

const bearer = (token: string): WebSocket.ClientOptions => ({ headers: { authorization: `Bearer ${token}` } })

const sign = (
  claims: Jose.JWTPayload,
  options: { secret?: string; expiresIn?: string; alg?: string; notBefore?: string } = {}
) => {
  const jwt = new Jose.SignJWT(claims)
    .setProtectedHeader({ alg: options.alg ?? "HS256" })
    .setIssuedAt()
    .setIssuer("tests")
    .setAudience("ws")
    .setExpirationTime(options.expiresIn ?? "1m")
  if (options.notBefore !== undefined) jwt.setNotBefore(options.notBefore)
  return jwt.sign(new TextEncoder().encode(options.secret ?? SECRET))
}

const jwtOptions = { type: "jwt", secret: SECRET, algorithm: "HS256", issuer: "tests", audience: "ws" } as const

describe("custom validator", () => {
  it("makes the validator's result the context's user and indexes its id", async () => {
    const { contexts, errors, manager, url } = await start({
      validator: async (request: Request) =>
        request.headers.get("x-user") === "ann" ? { id: "ann", role: "admin" } : null
    })
    await connect(url, undefined, { headers: { "x-user": "ann" } })
    expect(contexts[0]).toMatchObject({ userId: "ann", user: { id: "ann", role: "admin" } })
    expect(manager.getUserSockets("ann")).toHaveLength(1)
    expect(await refusedStatus(url, undefined, { headers: { "x-user": "eve" } })).toBe(401)
    expect(await refusedStatus(url)).toBe(401)
    // The library cannot tell where a custom validator looks: its refusal is always InvalidCredentials.
    expect(errors.map((error) => (error as AuthenticationFailed).message)).toEqual([
      "Authentication failed (InvalidCredentials): the validator refused the credential",
      "Authentication failed (InvalidCredentials): the validator refused the credential"
    ])
  })

  it("accepts every documented answer form: a user object (userId, id or sub), a user id string or number", async () => {
    const answers: Record<string, unknown> = {
      a: { userId: "u1", id: "x", sub: "y" },
      b: { id: "u2", sub: "y" },
      c: { sub: "u3" },
      d: "u4",
      e: 5,
      f: { name: "no id" },
      g: true,
      h: { sub: null }
    }
    const { contexts, url } = await start({
      validator: (request: Request) => answers[new URL(request.url).searchParams.get("as")!]
    })
    for (const as of Object.keys(answers)) await connect(`${url}/?as=${as}`)
    expect(contexts.map((context) => context.userId)).toEqual(["u1", "u2", "u3", "u4", "5", undefined, undefined, undefined])
    expect(contexts.map((context) => context.user)).toEqual([
      answers.a,
      answers.b,
      answers.c,
      { id: "u4" },
      { id: "5" },
      answers.f,
      undefined,
      answers.h
    ])
  })

  it("refuses with 401 when the validator throws", async () => {
    const { url } = await start({
      validator: () => {
        throw new Error("database down")
      }
    })
    expect(await refusedStatus(url)).toBe(401)
  })

  it("lets a request in anonymously when the validator answers a user without an id", async () => {
    const { contexts, url } = await start({ validator: () => ({ anonymous: true }) })
    await connect(url)
    expect(contexts[0]!.userId).toBeUndefined()
    expect(contexts[0]!.user).toEqual({ anonymous: true })
  })

  it("a falsy answer refuses (401), also with required: false, wherever the credential was (a cookie too)", async () => {
    const sessions: Record<string, string> = { good: "ann" }
    const { contexts, errors, url } = await start({
      required: false,
      validator: (request: Request) => sessions[/session=(\w+)/.exec(request.headers.get("cookie") ?? "")?.[1] ?? ""]
    })
    expect(await refusedStatus(url, undefined, { headers: { cookie: "session=forged" } })).toBe(401)
    expect(await refusedStatus(url, undefined, bearer("forged"))).toBe(401)
    expect(await refusedStatus(url)).toBe(401)
    expect(errors.map((error) => (error as AuthenticationFailed).reason)).toEqual(Array(3).fill("InvalidCredentials"))
    await connect(url, undefined, { headers: { cookie: "session=good" } })
    expect(contexts.map((context) => context.userId)).toEqual(["ann"])
  })

  it("required: false still refuses (401) when the validator throws or rejects, credentials or not", async () => {
    const { errors, url } = await start({
      required: false,
      validator: (request: Request) => {
        if (new URL(request.url).searchParams.has("sync")) throw new Error("database down")
        return Promise.reject(new Error("database down"))
      }
    })
    expect(await refusedStatus(url)).toBe(401)
    expect(await refusedStatus(`${url}/?sync`)).toBe(401)
    expect(await refusedStatus(url, undefined, bearer("t"))).toBe(401)
    expect(errors.map((error) => (error as AuthenticationFailed).reason)).toEqual(Array(3).fill("ValidatorFailed"))
  })

  it("a validator that rejects with a non-Error value (a string, undefined, null, a bare object) refuses with 401", async () => {
    for (const required of [true, false]) {
      const { errors, url } = await start({
        required,
        validator: (request: Request) => {
          const as = new URL(request.url).searchParams.get("as")
          if (as === "throw") throw "a thrown string"
          if (as === "bare") return Promise.reject(Object.create(null))
          return Promise.reject(as === "string" ? "nope" : as === "null" ? null : undefined)
        }
      })
      for (const as of ["string", "null", "undefined", "throw", "bare"]) {
        expect(await refusal(`${url}/?as=${as}`)).toEqual({ status: 401, body: "Unauthorized" })
      }
      expect(errors.every((error) => error instanceof AuthenticationFailed && error.reason === "ValidatorFailed"))
        .toBe(true)
      expect(errors.map((error) => (error as AuthenticationFailed).detail)).toEqual([
        "the validator threw: non-Error value: nope",
        "the validator threw: non-Error value: null",
        "the validator threw: non-Error value: undefined",
        "the validator threw: non-Error value: a thrown string",
        "the validator threw: a value without a string form"
      ])
    }
  })

  it("a validator that hangs past authentication.timeout: 401 Timeout, and nothing is left behind", async () => {
    const { errors, manager, url } = await start({ timeout: 100, validator: () => new Promise(() => {}) })
    expect(await Promise.all([refusedStatus(url), refusedStatus(url), refusedStatus(url)])).toEqual([401, 401, 401])
    expect(errors.map((error) => (error as AuthenticationFailed).reason)).toEqual(["Timeout", "Timeout", "Timeout"])
    await eventually(() => manager.getStats().pending === 0, 5_000, "the pending upgrades to be released")
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
    // The slots are given back: a later client is refused for the same reason, not for a limit.
    expect(await refusedStatus(url)).toBe(401)
  })

  it("a validator that hangs past connectionTimeout: 408, and nothing is left behind", async () => {
    const { errors, manager, url } = await start(
      { timeout: 60_000, validator: () => new Promise(() => {}) },
      { connectionTimeout: 100, maxConnections: 1 }
    )
    expect(await refusedStatus(url)).toBe(408)
    expect(await refusedStatus(url)).toBe(408)
    expect(errors.map((error) => (error as { _tag: string })._tag)).toEqual(["ConnectionTimeout", "ConnectionTimeout"])
    await eventually(() => manager.getStats().pending === 0, 5_000, "the pending upgrades to be released")
    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
  })
})

describe("api-key", () => {
  const keys: Record<string, string> = { "key-1": "ann", "key-2": "bob" }
  const options = { type: "api-key", header: "X-API-Key", validator: (key: string) => keys[key] } as const

  it("reads the key from the configured header", async () => {
    const { contexts, url } = await start(options)
    await connect(url, undefined, { headers: { "x-api-key": "key-1" } })
    expect(contexts[0]).toMatchObject({ userId: "ann", user: { id: "ann" } })
  })

  it("a key in Authorization is read without its Bearer scheme", async () => {
    const { contexts, url } = await start({ ...options, header: "Authorization" })
    await connect(url, undefined, bearer("key-2"))
    await connect(url, undefined, { headers: { authorization: "key-1" } })
    expect(contexts.map((context) => context.userId)).toEqual(["bob", "ann"])
  })

  it("reads the key from the token query parameter, for browsers, and from a bearer.<key> subprotocol", async () => {
    const { contexts, url } = await start(options)
    await connect(`${url}/?token=key-2`)
    await connect(url, ["bearer.key-1"])
    expect(contexts.map((context) => context.userId)).toEqual(["bob", "ann"])
  })

  it("refuses a missing or unknown key with 401", async () => {
    const { errors, url } = await start(options)
    expect(await refusedStatus(url)).toBe(401)
    expect(await refusedStatus(url, undefined, { headers: { "x-api-key": "nope" } })).toBe(401)
    expect(errors.map((error) => (error as AuthenticationFailed).message)).toEqual([
      "Authentication failed (MissingCredentials): no credentials were presented",
      "Authentication failed (InvalidCredentials): the validator refused the credential"
    ])
  })

  it("required: false lets a request without a key in, refuses a wrong or empty one", async () => {
    const seen: Array<string> = []
    const { contexts, errors, url } = await start({
      ...options,
      required: false,
      validator: (key: string) => {
        seen.push(key)
        return keys[key]
      }
    })
    await connect(url)
    expect(contexts[0]!.userId).toBeUndefined()
    expect(await refusedStatus(url, undefined, { headers: { "x-api-key": "nope" } })).toBe(401)
    expect(await refusedStatus(`${url}/?token=`)).toBe(401)
    expect(await refusedStatus(`${url}/?token=key-1`, undefined, { headers: { "x-api-key": "" } })).toBe(401)
    // An empty credential never reaches the validator.
    expect(seen).toEqual(["nope"])
    expect(errors.map((error) => (error as AuthenticationFailed).message).slice(1)).toEqual([
      "Authentication failed (InvalidCredentials): the credential is empty",
      "Authentication failed (InvalidCredentials): the credential is empty"
    ])
  })
})

describe("jwt", () => {
  it("verifies a bearer token and exposes its payload as the user", async () => {
    const { contexts, manager, url } = await start(jwtOptions)
    const token = await sign({ sub: "ann", role: "admin" })
    await connect(url, undefined, bearer(token))
    expect(contexts[0]!.userId).toBe("ann")
    expect(contexts[0]!.user).toMatchObject({ sub: "ann", role: "admin", iss: "tests" })
    expect(manager.getUserSockets("ann")).toHaveLength(1)
  })

  it("takes the token from the query string or a bearer.<token> subprotocol, never negotiating the latter", async () => {
    const contexts: Array<ConnectionContext> = []
    const harness = await startManager({ authentication: jwtOptions, protocols: ["chat"] }, ({ context }) =>
      contexts.push(context)
    )
    harnesses.push(harness)
    await connect(`${harness.url}/?token=${await sign({ sub: "q" })}`)
    const withApp = await connect(harness.url, ["chat", `bearer.${await sign({ sub: "p" })}`])
    expect(withApp.protocol).toBe("chat")
    // Offered alone, the entry is echoed, as a browser needs some protocol back, but none is negotiated.
    const tokenOnly = `bearer.${await sign({ sub: "t" })}`
    const alone = await connect(harness.url, [tokenOnly])
    expect(alone.protocol).toBe(tokenOnly)
    expect(contexts.map((c) => [c.userId, c.protocol])).toEqual([["q", ""], ["p", "chat"], ["t", ""]])
  })

  it("context.userId is the sub claim, whatever id or userId claims say", async () => {
    const { contexts, manager, url } = await start(jwtOptions)
    await connect(url, undefined, bearer(await sign({ sub: "alice", id: "admin" })))
    await connect(url, undefined, bearer(await sign({ sub: "alice", userId: "admin" })))
    // A valid token without sub is a user without an id.
    await connect(url, undefined, bearer(await sign({ id: "admin" })))
    expect(contexts.map((context) => context.userId)).toEqual(["alice", "alice", undefined])
    expect(manager.getUserSockets("admin")).toHaveLength(0)
  })

  it("authentication.userIdClaim names another claim; a claim that is not a string or number refuses", async () => {
    const { contexts, errors, url } = await start({ ...jwtOptions, userIdClaim: "uid" })
    await connect(url, undefined, bearer(await sign({ sub: "alice", uid: "u-1" })))
    await connect(url, undefined, bearer(await sign({ sub: "alice", uid: 42 })))
    expect(contexts.map((context) => context.userId)).toEqual(["u-1", "42"])
    expect(await refusedStatus(url, undefined, bearer(await sign({ uid: ["admin"] })))).toBe(401)
    expect(await refusedStatus(url, undefined, bearer(await sign({ uid: { id: "admin" } })))).toBe(401)
    // JSON can spell a number that is not finite (1e999): not an id either.
    const header = Buffer.from(JSON.stringify({ alg: "HS256" })).toString("base64url")
    const payload = Buffer.from(`{"uid":1e999,"iss":"tests","aud":"ws"}`).toString("base64url")
    const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url")
    expect(await refusedStatus(url, undefined, bearer(`${header}.${payload}.${signature}`))).toBe(401)
    expect(errors.map((error) => (error as AuthenticationFailed).detail)).toEqual(
      Array(3).fill(`the "uid" claim is not a string`)
    )
  })

  it("takes the secret as bytes too", async () => {
    const bytes = new Uint8Array(64).map((_, i) => i * 7)
    const { contexts, url } = await start({ type: "jwt", secret: bytes, algorithm: "HS512" })
    const token = await new Jose.SignJWT({ sub: "ann" }).setProtectedHeader({ alg: "HS512" }).sign(bytes)
    await connect(url, undefined, bearer(token))
    expect(contexts.map((context) => context.userId)).toEqual(["ann"])
  })

  it("refuses a wrong signature, an expired token, a wrong issuer or audience, and no token with 401", async () => {
    const { url } = await start(jwtOptions)
    expect(await refusedStatus(url, undefined, bearer(await sign({ sub: "x" }, { secret: "another-secret-another-secret!!!" })))).toBe(401)
    expect(await refusedStatus(url, undefined, bearer(await sign({ sub: "x" }, { expiresIn: "-1m" })))).toBe(401)
    const wrongIssuer = await new Jose.SignJWT({ sub: "x" }).setProtectedHeader({ alg: "HS256" }).setIssuer("evil")
      .setAudience("ws").sign(new TextEncoder().encode(SECRET))
    expect(await refusedStatus(url, undefined, bearer(wrongIssuer))).toBe(401)
    const wrongAudience = await new Jose.SignJWT({ sub: "x" }).setProtectedHeader({ alg: "HS256" }).setIssuer("tests")
      .setAudience("other").sign(new TextEncoder().encode(SECRET))
    expect(await refusedStatus(url, undefined, bearer(wrongAudience))).toBe(401)
    expect(await refusedStatus(url)).toBe(401)
    expect(await refusedStatus(url, undefined, bearer("not.a.jwt"))).toBe(401)
  })
})

describe("hostile credentials (jwt)", () => {
  it("alg none: an unsigned token is refused", async () => {
    const { errors, url } = await start(jwtOptions)
    const unsigned = new Jose.UnsecuredJWT({ sub: "admin" }).setIssuer("tests").setAudience("ws")
      .setExpirationTime("1m").encode()
    expect(await refusal(url, undefined, bearer(unsigned))).toEqual({ status: 401, body: "Unauthorized" })
    // Also with the signature part of a real token pasted on.
    const real = await sign({ sub: "ann" })
    const [, , signature] = real.split(".")
    expect(await refusedStatus(url, undefined, bearer(unsigned + signature))).toBe(401)
    expect((errors[0] as AuthenticationFailed).reason).toBe("InvalidCredentials")
  })

  it("a token signed with another algorithm than configured is refused (HS512 for HS256)", async () => {
    const { url } = await start(jwtOptions)
    expect(await refusedStatus(url, undefined, bearer(await sign({ sub: "x" }, { alg: "HS512" })))).toBe(401)
    expect(await refusedStatus(url, undefined, bearer(await sign({ sub: "x" }, { alg: "HS384" })))).toBe(401)
  })

  it("an RS256 public key used as an HMAC secret (key confusion) is refused; a real RS256 token passes", async () => {
    const { privateKey, publicKey } = await Jose.generateKeyPair("RS256", { extractable: true })
    const pem = await Jose.exportSPKI(publicKey)
    const { contexts, url } = await start({ type: "jwt", secret: pem, algorithm: "RS256" })
    const forged = await new Jose.SignJWT({ sub: "admin" }).setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(pem))
    expect(await refusal(url, undefined, bearer(forged))).toEqual({ status: 401, body: "Unauthorized" })
    const genuine = await new Jose.SignJWT({ sub: "ann" }).setProtectedHeader({ alg: "RS256" }).sign(privateKey)
    await connect(url, undefined, bearer(genuine))
    expect(contexts.map((context) => context.userId)).toEqual(["ann"])
  })

  it("a key that cannot verify the algorithm fails the options (InvalidOptions on secret), not every upgrade later", async () => {
    const refused = (authentication: Record<string, unknown>) => {
      try {
        new WebSocketManager({ authentication: authentication as any })
      } catch (error) {
        return { tag: (error as { _tag?: string })._tag, field: (error as { field?: string }).field }
      }
      return "accepted"
    }
    const invalidSecret = { tag: "InvalidOptions", field: "authentication.secret" }
    expect(refused({ type: "jwt", secret: "-----BEGIN PUBLIC KEY-----\nnot a key", algorithm: "ES256" })).toEqual(invalidSecret)
    const rsa = await Jose.exportSPKI((await Jose.generateKeyPair("RS256", { extractable: true })).publicKey)
    expect(refused({ type: "jwt", secret: rsa, algorithm: "ES256" })).toEqual(invalidSecret)
    expect(refused({ type: "jwt", secret: rsa, algorithm: "EdDSA" })).toEqual(invalidSecret)
    expect(refused({ type: "jwt", secret: new Uint8Array(64), algorithm: "RS256" })).toEqual(invalidSecret)
    const ec = await Jose.exportSPKI((await Jose.generateKeyPair("ES256", { extractable: true })).publicKey)
    const ed = await Jose.exportSPKI((await Jose.generateKeyPair("EdDSA", { extractable: true })).publicKey)
    for (const [secret, algorithm] of [[rsa, "RS256"], [rsa, "PS256"], [ec, "ES256"], [ed, "EdDSA"]]) {
      const manager = new WebSocketManager({ authentication: { type: "jwt", secret, algorithm: algorithm as any } })
      await manager.close()
    }
  })

  it("expired and not-yet-valid tokens are refused", async () => {
    const { url } = await start(jwtOptions)
    expect(await refusedStatus(url, undefined, bearer(await sign({ sub: "x" }, { expiresIn: "-10s" })))).toBe(401)
    expect(await refusedStatus(url, undefined, bearer(await sign({ sub: "x" }, { notBefore: "1h" })))).toBe(401)
  })

  it("garbage, an empty token= query and an empty bearer. entry are refused, also with required: false", async () => {
    for (const required of [true, false]) {
      const { url } = await start({ ...jwtOptions, required })
      for (const garbage of ["garbage", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30.", "%00", "Bearer"]) {
        expect(await refusedStatus(url, undefined, bearer(garbage))).toBe(401)
        expect(await refusedStatus(`${url}/?token=${encodeURIComponent(garbage)}`)).toBe(401)
      }
      expect(await refusedStatus(`${url}/?token=`)).toBe(401)
      expect(await refusedStatus(`${url}/?token`)).toBe(401)
      expect(await refusedStatus(url, ["bearer."])).toBe(401)
    }
  })

  it("conflicting credentials: the header wins over the query, the query over the subprotocol", async () => {
    const { contexts, url } = await start(jwtOptions)
    const [ann, bob, carl] = await Promise.all([sign({ sub: "ann" }), sign({ sub: "bob" }), sign({ sub: "carl" })])
    await connect(`${url}/?token=${bob}`, [`bearer.${carl}`], bearer(ann))
    await connect(`${url}/?token=${bob}`, [`bearer.${carl}`])
    expect(contexts.map((context) => context.userId)).toEqual(["ann", "bob"])
    // A bad credential in a higher place is not rescued by a good one lower down.
    expect(await refusedStatus(`${url}/?token=${bob}`, undefined, bearer("forged"))).toBe(401)
    expect(await refusedStatus(`${url}/?token=forged`, [`bearer.${carl}`])).toBe(401)
  })
})

describe("what a refused client learns", () => {
  it("the 401 body is generic; the detail (a validator's message) stays in the error for the server", async () => {
    const { errors, url } = await start({
      validator: () => {
        throw new Error("connection to db.internal:5432 refused")
      }
    })
    expect(await refusal(url)).toEqual({ status: 401, body: "Unauthorized" })
    const error = errors[0] as AuthenticationFailed
    expect(error).toBeInstanceOf(AuthenticationFailed)
    expect(error.detail).toBe("the validator threw: connection to db.internal:5432 refused")
    expect(error.message).toContain("db.internal:5432")
  })

  it("jose's claim messages do not reach the client either", async () => {
    const { errors, url } = await start(jwtOptions)
    const expired = await sign({ sub: "x" }, { expiresIn: "-1m" })
    expect(await refusal(url, undefined, bearer(expired))).toEqual({ status: 401, body: "Unauthorized" })
    expect((errors[0] as AuthenticationFailed).detail).toContain(`"exp" claim timestamp check failed`)
    expect(await refusal(url)).toEqual({ status: 401, body: "Unauthorized" })
  })

  it("every refused upgrade's body says only what the client may learn (errorResponse)", async () => {
    const harness = await startManager({ maxConnections: 1, allowedOrigins: ["https://ok.example"] })
    harnesses.push(harness)
    const origin = await refusal(harness.url, undefined, { origin: "https://evil.example/<script>" })
    expect(origin).toEqual({ status: 403, body: "Origin not allowed" })
    await connect(harness.url)
    expect(await refusal(harness.url)).toEqual({ status: 503, body: "Connection limit exceeded (total)" })
    // A thrown error with a status but no public message gets the status's reason phrase only.
    const thrown = Object.assign(new Error("SELECT * FROM users failed"), { status: 502 })
    expect([errorResponse(thrown).status, await errorResponse(thrown).text()]).toEqual([502, "Bad Gateway"])
    const bug = new Error("secret stack")
    expect([errorResponse(bug).status, await errorResponse(bug).text()]).toEqual([500, "Internal Server Error"])
    // A status a Response cannot carry is a 500, not a crash of the adapter.
    expect(errorResponse(Object.assign(new Error("x"), { status: 99 })).status).toBe(500)
    expect(errorResponse(Object.assign(new Error("x"), { status: 200 })).status).toBe(500)
    const statuses = [399, 400, 401.5, 599, 600, "404"].map((status) => errorResponse({ status }).status)
    expect(statuses).toEqual([500, 400, 500, 599, 500, 500])
    expect(await errorResponse({ status: 599 }).text()).toBe("Error")
    expect(await errorResponse(undefined).text()).toBe("Internal Server Error")
    expect(await errorResponse({ status: 418, publicMessage: "short and stout" }).text()).toBe("short and stout")
  })

  it("every accept error answers an @effect/platform app with the same status and body as errorResponse", async () => {
    const acceptErrors = [
      new UpgradeRequired({ reason: "method POST" }),
      new HandshakeFailed({ reason: "UnsupportedProtocol", detail: "none of x is supported (chat)" }),
      new HandshakeFailed({ reason: "BadRequest", detail: "Invalid URL: http://a:b@x" }),
      new HandshakeFailed({ reason: "NoUnderlyingSocket", detail: "serve it with NodeServer" }),
      new OriginNotAllowed({ origin: "https://evil.example" }),
      new ConnectionLimitExceeded({ scope: "ip", limit: 7 }),
      new ManagerClosed(),
      new AuthenticationFailed({ reason: "InvalidCredentials", detail: "secret detail" }),
      new ConnectionTimeout({ timeoutMillis: 1234 })
    ]
    const answers = await Promise.all(acceptErrors.map(async (error) => {
      expect(Respondable.isRespondable(error)).toBe(true)
      const platform = HttpServerResponse.toWeb(await Effect.runPromise(Respondable.toResponse(error as any)))
      const adapter = errorResponse(error)
      expect(adapter.headers.get("content-type")).toBe("text/plain; charset=utf-8")
      expect([platform.status, await platform.text()]).toEqual([adapter.status, await adapter.text()])
      return [adapter.status, error.publicMessage]
    }))
    expect(answers).toEqual([
      [426, "WebSocket upgrade required: method POST"],
      [400, "WebSocket handshake failed (UnsupportedProtocol): none of x is supported (chat)"],
      [400, "Bad Request"],
      [500, "Internal Server Error"],
      [403, "Origin not allowed"],
      [503, "Connection limit exceeded (ip)"],
      [503, "The WebSocket manager is closed"],
      [401, "Unauthorized"],
      [408, "The WebSocket handshake timed out"]
    ])
  })

  it("an @effect/platform app: an uncaught AuthenticationFailed answers a generic 401, the detail is logged", async () => {
    const logs: Array<{ level: string; text: string; annotations: Record<string, unknown> }> = []
    const logger = Logger.make(({ annotations, cause, logLevel, message }) => {
      logs.push({
        level: logLevel.label,
        text: [message].flat().join(" ") + String(cause),
        annotations: Object.fromEntries(HashMap.toEntries(annotations))
      })
    })
    const failures: Array<unknown> = []
    const program = Effect.gen(function*() {
      const manager = yield* Core.WebSocketManager
      const app = Effect.gen(function*() {
        const request = yield* HttpServerRequest.HttpServerRequest
        yield* manager.accept(request).pipe(Effect.tapError((error) => Effect.sync(() => failures.push(error))))
        return HttpServerResponse.empty()
      })
      const server = yield* NodeServer.serve(app)
      const url = server.url.replace("http", "ws")
      const expired = yield* Effect.promise(() => sign({ sub: "x" }, { expiresIn: "-1m" }))
      expect(yield* Effect.promise(() => refusal(url, undefined, bearer(expired)))).toEqual({
        status: 401,
        body: "Unauthorized"
      })
      expect(yield* Effect.promise(() => refusal(url))).toEqual({ status: 401, body: "Unauthorized" })
    })
    await Effect.runPromise(
      program.pipe(
        Effect.scoped,
        Effect.provide(Core.layer({ authentication: jwtOptions })),
        Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
        Logger.withMinimumLogLevel(LogLevel.Debug)
      )
    )
    expect(failures.map((error) => (error as AuthenticationFailed).reason)).toEqual([
      "InvalidCredentials",
      "MissingCredentials"
    ])
    const refusals = logs.filter((log) => log.annotations.reason !== undefined)
    expect(refusals.map((log) => [log.level, log.annotations.reason])).toEqual([
      ["DEBUG", "InvalidCredentials"],
      ["DEBUG", "MissingCredentials"]
    ])
    expect(refusals[0]!.text).toContain(`"exp" claim timestamp check failed`)
  })

  it("a validator that fails or hangs (not a refusal) is logged as a warning with its cause", async () => {
    const logs: Array<{ level: string; text: string; cause: Cause.Cause<unknown> }> = []
    const logger = Logger.make(({ cause, logLevel, message }) => {
      logs.push({ level: logLevel.label, text: [message].flat().join(" ") + String(cause), cause })
    })
    const program = Effect.gen(function*() {
      const manager = yield* Core.WebSocketManager
      const app = Effect.gen(function*() {
        yield* manager.accept(yield* HttpServerRequest.HttpServerRequest)
        return HttpServerResponse.empty()
      })
      const server = yield* NodeServer.serve(app)
      const url = server.url.replace("http", "ws")
      expect(yield* Effect.promise(() => refusal(url))).toEqual({ status: 401, body: "Unauthorized" })
      expect(yield* Effect.promise(() => refusal(`${url}/?hang`))).toEqual({ status: 401, body: "Unauthorized" })
    })
    await Effect.runPromise(
      program.pipe(
        Effect.scoped,
        Effect.provide(Core.layer({
          authentication: {
            timeout: 100,
            validator: (request: Request) => {
              if (new URL(request.url).searchParams.has("hang")) return new Promise(() => {})
              throw new Error("connection to db.internal:5432 refused")
            }
          }
        })),
        Effect.provide(Logger.replace(Logger.defaultLogger, logger))
      )
    )
    expect(logs.filter((log) => log.text.includes("db.internal:5432")).map((log) => log.level)).toEqual(["WARN"])
    expect(logs.filter((log) => log.text.includes("no answer within 100 ms")).map((log) => log.level)).toEqual(["WARN"])
    // The thrown error is the logged cause; a timeout has none.
    const [thrown, timedOut] = logs.filter((log) => log.level === "WARN")
    expect(Cause.squash(thrown!.cause)).toMatchObject({ message: "connection to db.internal:5432 refused" })
    expect(Cause.isEmpty(timedOut!.cause)).toBe(true)
  })
})

describe("options", () => {
  const invalid = (authentication: Record<string, unknown>) => {
    try {
      new WebSocketManager({ authentication } as any).close()
      return undefined
    } catch (error) {
      return (error as { field?: string }).field
    }
  }

  it("refuses unknown or unsigned algorithms, a key that does not fit the algorithm, a zero timeout", () => {
    expect(invalid({ type: "jwt", secret: SECRET, algorithm: "none" })).toBe("authentication.algorithm")
    expect(invalid({ type: "jwt", secret: SECRET, algorithm: "HS999" })).toBe("authentication.algorithm")
    expect(invalid({ type: "jwt", secret: new Uint8Array(64), algorithm: "RS256" })).toBe("authentication.secret")
    expect(invalid({ type: "jwt", secret: "short", algorithm: "HS256" })).toBe("authentication.secret")
    expect(invalid({ type: "jwt", secret: "x".repeat(47), algorithm: "HS384" })).toBe("authentication.secret")
    expect(invalid({ type: "jwt", secret: new Uint8Array(63), algorithm: "HS512" })).toBe("authentication.secret")
    expect(invalid({ validator: () => true, timeout: 0 })).toBe("authentication.timeout")
    expect(invalid({ type: "jwt", secret: SECRET, userIdClaim: "" })).toBe("authentication.userIdClaim")
    expect(invalid({ type: "jwt", secret: SECRET })).toBeUndefined()
    expect(invalid({ type: "jwt" })).toBe("authentication.secret")
    expect(invalid({ type: "api-key" })).toBe("authentication.validator")
    expect(invalid({})).toBe("authentication.validator")
    // The key checks are the JWT's only.
    expect(invalid({ type: "api-key", validator: () => true, algorithm: "RS256" })).toBeUndefined()
    expect(() => new WebSocketManager({ authentication: { type: "jwt", secret: "short" } })).toThrow(
      "an HS256 secret needs at least 32 bytes"
    )
    expect(() => new WebSocketManager({ authentication: { type: "jwt", secret: new Uint8Array(40), algorithm: "RS256" } }))
      .toThrow("an RS256 key is a PEM public key (SPKI) string")
    expect(invalid({ type: "jwt", secret: "x".repeat(31) })).toBe("authentication.secret")
    expect(invalid({ type: "jwt", secret: "x".repeat(32) })).toBeUndefined()
    expect(invalid({ type: "jwt", secret: "x".repeat(48), algorithm: "HS384" })).toBeUndefined()
    // Bytes, not characters: 16 two-byte characters are 32 bytes.
    expect(invalid({ type: "jwt", secret: "é".repeat(16) })).toBeUndefined()
    // A PEM is parsed when the options are: one that is no key fails them.
    expect(invalid({ type: "jwt", secret: "-----BEGIN PUBLIC KEY-----", algorithm: "ES256" })).toBe("authentication.secret")
    expect(invalid({ type: "jwt", secret: new Uint8Array(64), algorithm: "HS512" })).toBeUndefined()
  })
})

describe("credential extraction (properties)", () => {
  // Header values: visible ASCII with inner spaces (Node and fetch trim the ends and refuse CR, LF, NUL).
  const headerSafe = fc.stringMatching(/^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/)
  // Query values: anything (percent-encoded), including the empty string and non-ASCII.
  const anyToken = fc.string({ unit: "grapheme", maxLength: 40 })
  // Subprotocol entries: RFC 7230 token characters (what a handshake can carry).
  const protocolSafe = fc.stringMatching(/^[!#$%&'*+\-.0-9A-Z^_`|a-z~]{0,30}$/)

  const request = (places: { header?: string; query?: string; authorization?: string }) => {
    const url = new URL("http://127.0.0.1/ws")
    if (places.query !== undefined) url.searchParams.set("token", places.query)
    const headers = new Headers()
    if (places.header !== undefined) headers.set("x-api-key", places.header)
    if (places.authorization !== undefined) headers.set("authorization", places.authorization)
    return new Request(url, { headers })
  }

  it("the credential found is the one sent in the highest-precedence place: header, query, subprotocol", () => {
    fc.assert(
      fc.property(
        fc.option(headerSafe, { nil: undefined }),
        fc.option(anyToken, { nil: undefined }),
        fc.option(protocolSafe, { nil: undefined }),
        fc.array(protocolSafe.filter((p) => p.length > 0 && !p.startsWith("bearer.")), { maxLength: 3 }),
        (header, query, protocol, others) => {
          const offered = protocol === undefined ? others : [...others, `bearer.${protocol}`, "bearer.decoy"]
          const expected = header ?? query ?? protocol
          expect(Auth.findCredential(request({ header, query }), "x-api-key", offered)).toBe(expected)
        }
      ),
      { numRuns: 500 }
    )
  })

  it("Authorization: the Bearer scheme is stripped case-insensitively, once; other schemes are kept whole", () => {
    fc.assert(
      fc.property(
        fc.constantFrom("Bearer", "bearer", "BEARER", "bEaReR"),
        fc.constantFrom(" ", "  ", "\t"),
        headerSafe,
        (scheme, space, token) => {
          expect(Auth.findCredential(request({ authorization: `${scheme}${space}${token}` }), "authorization", []))
            .toBe(token)
        }
      ),
      { numRuns: 300 }
    )
    expect(Auth.findCredential(request({ authorization: "Basic Zm9v" }), "authorization", [])).toBe("Basic Zm9v")
    expect(Auth.findCredential(request({ authorization: "Basic Bearer x" }), "authorization", [])).toBe("Basic Bearer x")
    expect(Auth.findCredential(request({ authorization: "Bearertoken" }), "authorization", [])).toBe("Bearertoken")
    // The scheme is only stripped for Authorization, not for an api-key header.
    expect(Auth.findCredential(request({ header: "Bearer k" }), "x-api-key", [])).toBe("Bearer k")
    // Header names are case-insensitive, the configured one included.
    expect(Auth.findCredential(request({ authorization: "Bearer k" }), "Authorization", [])).toBe("k")
  })

  it("a token that is URL-unsafe survives the query string, percent-encoded", () => {
    fc.assert(
      fc.property(anyToken, (token) => {
        const url = `http://127.0.0.1/ws?a=1&token=${encodeURIComponent(token)}&token=second`
        expect(Auth.findCredential(new Request(url), "authorization", [])).toBe(token)
      }),
      { numRuns: 300 }
    )
  })

  it("a bearer. entry is never the negotiated subprotocol, even when configured or insisted on", () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(protocolSafe.map((p) => `bearer.${p}`), protocolSafe.filter((p) => p.length > 0)), {
          maxLength: 6
        }),
        fc.array(fc.oneof(protocolSafe.map((p) => `bearer.${p}`), protocolSafe.filter((p) => p.length > 0)), {
          maxLength: 4
        }),
        (offered, supported) => {
          const negotiated = Handshake.negotiateProtocol(offered, [...supported, ...offered], undefined)
          if (negotiated._tag === "Right") expect(Auth.isCredential(negotiated.right)).toBe(false)
          const insisted = offered.find(Auth.isCredential)
          if (insisted !== undefined) {
            expect(Handshake.negotiateProtocol(offered, supported, insisted)._tag).toBe("Left")
          }
        }
      ),
      { numRuns: 500 }
    )
  })

  it("through real upgrades: random tokens in random places reach the validator from the right place", async () => {
    const seen: Array<string> = []
    const { url } = await start({
      type: "api-key",
      validator: (key: string) => {
        seen.push(key)
        return "user"
      }
    })
    const headerToken = fc.stringMatching(/^[\x21-\x7e]{1,20}$/)
    const protocolToken = fc.stringMatching(/^[!#$%&'*+\-.0-9A-Z^_`|a-z~]{1,20}$/)
    const cases = fc.sample(
      fc.record({
        header: fc.option(headerToken, { nil: undefined }),
        query: fc.option(fc.string({ unit: "grapheme", minLength: 1, maxLength: 20 }), { nil: undefined }),
        protocol: fc.option(protocolToken, { nil: undefined })
      }).filter((places) => places.header !== undefined || places.query !== undefined || places.protocol !== undefined),
      { numRuns: 25, seed: 8 }
    )
    for (const { header, protocol, query } of cases) {
      const target = query === undefined ? url : `${url}/?token=${encodeURIComponent(query)}`
      const ws = await connect(
        target,
        protocol === undefined ? undefined : [`bearer.${protocol}`],
        header === undefined ? undefined : { headers: { "x-api-key": header } }
      )
      expect(ws.protocol).toBe(protocol === undefined ? "" : `bearer.${protocol}`)
      ws.terminate()
      expect(seen.at(-1)).toBe(header ?? query ?? protocol)
    }
  })
})
