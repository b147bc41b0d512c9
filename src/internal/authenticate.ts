/**
 * Authentication of an upgrade request, before the handshake completes.
 *
 * Browsers cannot set headers on a WebSocket, so a credential is looked for in the header first,
 * then in the `token` query parameter, then in a `Sec-WebSocket-Protocol` entry `bearer.<token>`
 * (which is never picked as the negotiated subprotocol).
 */
import { Duration, Effect } from "effect"
import * as Jose from "jose"
import { AuthenticationFailed } from "../errors.js"
import type { AuthenticationConfig } from "../options.js"

interface Identity {
  readonly userId: string | undefined
  readonly user: unknown
}

const TOKEN_PROTOCOL_PREFIX = "bearer."

/** A `Sec-WebSocket-Protocol` entry that carries a credential rather than naming a protocol. */
export const isCredential = (protocol: string) => protocol.startsWith(TOKEN_PROTOCOL_PREFIX)

const anonymous: Identity = { userId: undefined, user: undefined }

const tokenFromRequest = (request: Request, header: string | undefined, offeredProtocols: ReadonlyArray<string>) => {
  const fromHeader = header === undefined ? null : request.headers.get(header)
  if (fromHeader) return header === "authorization" ? fromHeader.replace(/^Bearer\s+/i, "") : fromHeader
  const fromQuery = new URL(request.url).searchParams.get("token")
  if (fromQuery) return fromQuery
  const fromProtocol = offeredProtocols.find(isCredential)
  return fromProtocol?.slice(TOKEN_PROTOCOL_PREFIX.length)
}

/** A validator's answer: a user object (with `id`, `userId` or `sub`), a user id, or falsy to refuse. */
const toIdentity = (result: unknown): Identity | undefined => {
  if (!result) return undefined
  if (typeof result === "string" || typeof result === "number") {
    return { userId: String(result), user: { id: String(result) } }
  }
  if (typeof result === "object") {
    const record = result as Record<string, unknown>
    const id = record.userId ?? record.id ?? record.sub
    return { userId: id === undefined || id === null ? undefined : String(id), user: result }
  }
  return anonymous
}

const invalid = (detail: string, cause?: unknown) =>
  new AuthenticationFailed({ reason: "InvalidCredentials", detail, cause })

const callValidator = (validate: () => unknown) =>
  Effect.tryPromise({
    try: async () => toIdentity(await validate()),
    catch: (cause) => invalid(cause instanceof Error ? cause.message : "validator threw", cause)
  }).pipe(Effect.filterOrFail((identity) => identity !== undefined, () => invalid("the validator refused")))

const verifyJwt = (config: AuthenticationConfig, token: string) =>
  Effect.tryPromise({
    try: async () => {
      const key = typeof config.secret === "string" && !config.algorithm.startsWith("HS")
        ? await Jose.importSPKI(config.secret, config.algorithm)
        : typeof config.secret === "string"
        ? new TextEncoder().encode(config.secret)
        : config.secret!
      const { payload } = await Jose.jwtVerify(token, key, {
        algorithms: [config.algorithm],
        issuer: config.issuer as string | Array<string> | undefined,
        audience: config.audience as string | Array<string> | undefined
      })
      return toIdentity(payload)
    },
    catch: (cause) => invalid(cause instanceof Error ? cause.message : "invalid token", cause)
  })

/** Resolves to the identity, `anonymous` when authentication is off or optional and absent. */
export const authenticate = (
  config: AuthenticationConfig | undefined,
  request: Request,
  offeredProtocols: ReadonlyArray<string>
): Effect.Effect<Identity, AuthenticationFailed> => {
  if (config === undefined) return Effect.succeed(anonymous)
  // `undefined`: no credentials presented, which `required: false` lets through as anonymous.
  const identify: Effect.Effect<Identity | undefined, AuthenticationFailed> = (() => {
    switch (config.type) {
      case "custom":
        return config.required
          ? callValidator(() => config.validator!(request))
          : Effect.orElseSucceed(callValidator(() => config.validator!(request)), () => undefined)
      case "api-key": {
        const key = tokenFromRequest(request, config.header.toLowerCase(), offeredProtocols)
        return key === undefined ? Effect.succeed(undefined) : callValidator(() => config.validator!(key, request))
      }
      case "jwt": {
        const token = tokenFromRequest(request, "authorization", offeredProtocols)
        return token === undefined ? Effect.succeed(undefined) : verifyJwt(config, token)
      }
    }
  })()
  return identify.pipe(
    Effect.timeoutFail({
      duration: Duration.millis(config.timeout),
      onTimeout: () =>
        new AuthenticationFailed({ reason: "Timeout", detail: `no answer within ${config.timeout} ms` })
    }),
    Effect.flatMap((identity) => {
      if (identity !== undefined) return Effect.succeed(identity)
      return config.required
        ? Effect.fail(new AuthenticationFailed({ reason: "MissingCredentials", detail: "no credentials were presented" }))
        : Effect.succeed(anonymous)
    })
  )
}
