/**
 * Authentication of an upgrade request, before the handshake completes.
 *
 * Browsers cannot set headers on a WebSocket, so a credential is looked for in the header first,
 * then in the `token` query parameter, then in a `Sec-WebSocket-Protocol` entry `bearer.<token>`
 * (which is never picked as the negotiated subprotocol).
 *
 * Only a request that presents no credential at all may pass anonymously (`required: false`):
 * a refused, empty, throwing or slow credential is a 401 whatever `required` says, so a client
 * with a bad or expired token learns it instead of silently becoming anonymous.
 */
import { Cause, Duration, Effect } from "effect"
import * as Jose from "jose"
import { AuthenticationFailed } from "../errors.js"
import type { AuthenticationConfig } from "../options.js"

export interface Identity {
  readonly userId: string | undefined
  readonly user: unknown
}

const TOKEN_PROTOCOL_PREFIX = "bearer."

/** A `Sec-WebSocket-Protocol` entry that carries a credential rather than naming a protocol. */
export const isCredential = (protocol: string) => protocol.startsWith(TOKEN_PROTOCOL_PREFIX)

const BEARER_SCHEME = /^Bearer\s+/i

export const anonymous: Identity = { userId: undefined, user: undefined }

/**
 * The credential of the highest-precedence place that is present (header, `token` query
 * parameter, `bearer.` entry), even when it is empty or a lower place holds another one: a
 * conflict is settled by precedence, never by trying each until one passes. `undefined` when no
 * place is present.
 */
export const findCredential = (
  request: Request,
  header: string,
  offeredProtocols: ReadonlyArray<string>
): string | undefined => {
  const fromHeader = request.headers.get(header)
  if (fromHeader !== null) {
    return header.toLowerCase() === "authorization" ? fromHeader.replace(BEARER_SCHEME, "") : fromHeader
  }
  const fromQuery = new URL(request.url).searchParams.get("token")
  if (fromQuery !== null) return fromQuery
  return offeredProtocols.find(isCredential)?.slice(TOKEN_PROTOCOL_PREFIX.length)
}

/** A validator's answer: a user object (with `userId`, `id` or `sub`), a user id, or falsy to refuse. */
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

const failed = (reason: AuthenticationFailed["reason"], detail: string, cause?: unknown) =>
  new AuthenticationFailed({ reason, detail, cause })

const describeCause = (cause: unknown) => {
  if (cause instanceof Error) return cause.message
  try {
    return `non-Error value: ${String(cause)}`
  } catch {
    // An object without a string form (`Object.create(null)`) must not turn a refusal into a defect.
    return "a value without a string form"
  }
}

/** The validator's identity, or `undefined` when it refuses; a throw or rejection is its failure, not a refusal. */
const callValidator = (validate: () => unknown) =>
  Effect.tryPromise({
    try: async () => toIdentity(await validate()),
    catch: (cause) => failed("ValidatorFailed", `the validator threw: ${describeCause(cause)}`, cause)
  })

const refused = () => failed("InvalidCredentials", "the validator refused the credential")

const orRefuse = (validation: Effect.Effect<Identity | undefined, AuthenticationFailed>) =>
  Effect.flatMap(validation, (identity) => identity === undefined ? Effect.fail(refused()) : Effect.succeed(identity))

// One key per configuration: a PEM is parsed once, not on every upgrade.
const keys = new WeakMap<AuthenticationConfig, Promise<Jose.CryptoKey | Uint8Array>>()

const keyOf = (config: AuthenticationConfig) => {
  let key = keys.get(config)
  if (key === undefined) {
    key = typeof config.secret !== "string"
      ? Promise.resolve(config.secret!)
      : config.algorithm.startsWith("HS")
      ? Promise.resolve(new TextEncoder().encode(config.secret))
      : Jose.importSPKI(config.secret, config.algorithm)
    keys.set(config, key)
  }
  return key
}

/** The user id from the configured claim: a string, or a number as a string; absent is no id. */
const claimedId = (payload: Jose.JWTPayload, claim: string) => {
  const id = payload[claim]
  if (id === undefined || typeof id === "string") return Effect.succeed(id)
  if (Number.isFinite(id)) return Effect.succeed(String(id))
  return Effect.fail(failed("InvalidCredentials", `the "${claim}" claim is not a string`))
}

const verifyJwt = (config: AuthenticationConfig, token: string) =>
  Effect.tryPromise({
    try: async () =>
      (await Jose.jwtVerify(token, await keyOf(config), {
        // The configured algorithm only: `none`, and an HMAC over a public key (key confusion), are refused.
        algorithms: [config.algorithm],
        issuer: config.issuer as string | Array<string> | undefined,
        audience: config.audience as string | Array<string> | undefined
      })).payload,
    // jose's errors describe the token; anything else (a key that cannot be imported) is the server's.
    catch: (cause) =>
      cause instanceof Jose.errors.JOSEError
        ? failed("InvalidCredentials", cause.message, cause)
        : failed("ValidatorFailed", describeCause(cause), cause)
  }).pipe(
    Effect.flatMap((payload) =>
      Effect.map(claimedId(payload, config.userIdClaim), (userId): Identity => ({ userId, user: payload }))
    )
  )

/**
 * The identity a credential proves, `undefined` when none was presented. An empty credential is
 * presented and refused without asking the validator.
 */
const identify = (
  config: AuthenticationConfig,
  request: Request,
  offeredProtocols: ReadonlyArray<string>
): Effect.Effect<Identity | undefined, AuthenticationFailed> => {
  // The validator sees the whole request (a cookie, any header), so only it knows whether a
  // credential was there: its falsy answer is a refusal, whatever `required` says. It lets a request
  // in anonymously by answering a user without an id.
  if (config.type === "custom") return orRefuse(callValidator(() => config.validator!(request)))
  const credential = findCredential(
    request,
    config.type === "jwt" ? "authorization" : config.header,
    offeredProtocols
  )
  if (credential === undefined) return Effect.succeed(undefined)
  if (credential === "") return Effect.fail(failed("InvalidCredentials", "the credential is empty"))
  return config.type === "jwt"
    ? verifyJwt(config, credential)
    : orRefuse(callValidator(() => config.validator!(credential, request)))
}

// A refusal is the client's doing and is routine (debug); a validator that throws or hangs is the server's (warning).
const logRefusal = (error: AuthenticationFailed) =>
  Effect.annotateLogs(
    error.reason === "ValidatorFailed" || error.reason === "Timeout"
      ? Effect.logWarning(error.message, error.cause === undefined ? Cause.empty : Cause.die(error.cause))
      : Effect.logDebug(error.message),
    "reason",
    error.reason
  )

/** Resolves to the identity, `anonymous` when authentication is off or optional and absent. */
export const authenticate = (
  config: AuthenticationConfig | undefined,
  request: Request,
  offeredProtocols: ReadonlyArray<string>
): Effect.Effect<Identity, AuthenticationFailed> => {
  if (config === undefined) return Effect.succeed(anonymous)
  return identify(config, request, offeredProtocols).pipe(
    Effect.timeoutFail({
      duration: Duration.millis(config.timeout),
      onTimeout: () => failed("Timeout", `no answer within ${config.timeout} ms`)
    }),
    Effect.flatMap((identity) => {
      if (identity !== undefined) return Effect.succeed(identity)
      return config.required
        ? Effect.fail(failed("MissingCredentials", "no credentials were presented"))
        : Effect.succeed(anonymous)
    }),
    Effect.tapError(logRefusal)
  )
}
