/**
 * The Effect API: services, Layers, tagged errors and Streams.
 *
 * @since 0.1.0
 */
export * as Broadcaster from "./Broadcaster.js"
export * as ClusterBus from "./ClusterBus.js"
export * as Connection from "./Connection.js"
export * from "./errors.js"
export * as Heartbeat from "./Heartbeat.js"
export * as NodeServer from "./node/NodeServer.js"
export * as Options from "./options.js"
export * as RedisBus from "./RedisBus.js"
export * as WebSocketManager from "./WebSocketManager.js"
export * as WebSocketPool from "./WebSocketPool.js"
