import * as Jose from "jose"
import { afterEach, describe, expect, it } from "vitest"
import type WebSocket from "ws"
import type { ConnectionContext } from "../src/promise/index.js"
import type { Harness } from "./utils/index.js"
import { openClient, refusedStatus, startManager } from "./utils/index.js"

const SECRET = "a-test-secret-of-at-least-32-bytes!!"
const harnesses: Array<Harness> = []
const clients: Array<WebSocket> = []

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate()
  for (const harness of harnesses.splice(0)) await harness.close()
})

/** Starts a manager and records the context of every accepted connection. */
const start = async (authentication: any) => {
  const contexts: Array<ConnectionContext> = []
  const harness = await startManager({ authentication }, ({ context }) => contexts.push(context))
  harnesses.push(harness)
  return { ...harness, contexts }
}

const connect = async (...args: Parameters<typeof openClient>) => {
  const ws = await openClient(...args)
  clients.push(ws)
  return ws
}

const sign = (claims: Jose.JWTPayload, options: { secret?: string; expiresIn?: string } = {}) =>
  new Jose.SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt()
    .setIssuer("tests")
    .setAudience("ws")
    .setExpirationTime(options.expiresIn ?? "1m")
    .sign(new TextEncoder().encode(options.secret ?? SECRET))

describe("custom validator", () => {
  it("makes the validator's result the context's user and indexes its id", async () => {
    const { contexts, manager, url } = await start({
      validator: async (request: Request) =>
        request.headers.get("x-user") === "ann" ? { id: "ann", role: "admin" } : null
    })
    await connect(url, undefined, { headers: { "x-user": "ann" } })
    expect(contexts[0]).toMatchObject({ userId: "ann", user: { id: "ann", role: "admin" } })
    expect(manager.getUserSockets("ann")).toHaveLength(1)
    expect(await refusedStatus(url, undefined, { headers: { "x-user": "eve" } })).toBe(401)
  })

  it("refuses with 401 when the validator throws", async () => {
    const { url } = await start({
      validator: () => {
        throw new Error("database down")
      }
    })
    expect(await refusedStatus(url)).toBe(401)
  })

  it("lets anonymous connections in when authentication is not required", async () => {
    const { contexts, url } = await start({ required: false, validator: () => null })
    await connect(url)
    expect(contexts[0]!.userId).toBeUndefined()
  })

  it("refuses with 401 when the validator outlasts authentication.timeout", async () => {
    const { url } = await start({ timeout: 50, validator: () => new Promise(() => {}) })
    expect(await refusedStatus(url)).toBe(401)
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

  it("reads the key from the token query parameter, for browsers", async () => {
    const { contexts, url } = await start(options)
    await connect(`${url}/?token=key-2`)
    expect(contexts[0]!.userId).toBe("bob")
  })

  it("refuses a missing or unknown key with 401", async () => {
    const { url } = await start(options)
    expect(await refusedStatus(url)).toBe(401)
    expect(await refusedStatus(url, undefined, { headers: { "x-api-key": "nope" } })).toBe(401)
  })
})

describe("jwt", () => {
  const options = { type: "jwt", secret: SECRET, algorithm: "HS256", issuer: "tests", audience: "ws" } as const

  it("verifies a bearer token and exposes its payload as the user", async () => {
    const { contexts, manager, url } = await start(options)
    const token = await sign({ sub: "ann", role: "admin" })
    await connect(url, undefined, { headers: { authorization: `Bearer ${token}` } })
    expect(contexts[0]!.userId).toBe("ann")
    expect(contexts[0]!.user).toMatchObject({ sub: "ann", role: "admin", iss: "tests" })
    expect(manager.getUserSockets("ann")).toHaveLength(1)
  })

  it("takes the token from the query string or a bearer.<token> subprotocol, never negotiating the latter", async () => {
    const contexts: Array<ConnectionContext> = []
    const harness = await startManager({ authentication: options, protocols: ["chat"] }, ({ context }) =>
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

  it("refuses a wrong signature, an expired token, a wrong issuer or audience, and no token with 401", async () => {
    const { url } = await start(options)
    const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } })
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
