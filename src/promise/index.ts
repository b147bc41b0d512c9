/**
 * The Promise facade: the documented classes for plain JavaScript, over the Effect services.
 *
 * @since 0.1.0
 */
export * from "../errors.js"
export { type AcceptOptions, type AcceptResult, WebSocketManager, type WebSocketManagerOptions } from "./WebSocketManager.js"
export { Broadcaster, type BroadcasterOptions, type BroadcastOptions, type Channel } from "./Broadcaster.js"
export { WebSocketPool } from "./WebSocketPool.js"
export type { BackendHealth, HealthEvent } from "../WebSocketPool.js"
export { attach, type FetchHandler, serve, type Server, type ServerStats, type ServeOptions } from "./serve.js"
export type { SlowConsumerPolicy, WebSocketPoolOptions } from "../options.js"
export type { RedisBusOptions } from "../RedisBus.js"
export type { CloseInfo, ConnectionContext, ConnectionEnd } from "../Connection.js"
