/**
 * The heartbeat of a connection, as a `Schedule` its fiber repeats on.
 *
 * One step alternates between two jobs: send a ping, then `timeout` later check that the peer
 * answered (a pong, or any message: inbound traffic proves liveness). The schedule alternates
 * the matching delays, so a connection costs one fiber asleep on one schedule and no timers of
 * its own, and a dead peer is found exactly `heartbeatTimeout` after the ping it ignored.
 *
 * @since 0.1.0
 */
import { Duration, Effect, Schedule } from "effect"
import { HeartbeatTimeout } from "./errors.js"
import type { ConnectionImpl } from "./internal/connection.js"

/**
 * Delays after each heartbeat step, starting with a ping: `timeout` before the check, then
 * `interval - timeout` before the next ping.
 *
 * @since 0.1.0
 * @category schedules
 */
export const schedule = (intervalMillis: number, timeoutMillis: number): Schedule.Schedule<number> => {
  const beforePing = Duration.millis(intervalMillis - timeoutMillis)
  const beforeCheck = Duration.millis(timeoutMillis)
  return Schedule.spaced(beforeCheck).pipe(
    Schedule.modifyDelay((recurrence) => recurrence % 2 === 0 ? beforeCheck : beforePing)
  )
}

const step = (connection: ConnectionImpl, timeoutMillis: number): Effect.Effect<void, HeartbeatTimeout> =>
  Effect.suspend(() => {
    if (connection.pingSentAt === 0) {
      if (connection.isOpen) {
        connection.pingSentAt = Date.now()
        connection.socket.ping()
      }
      return Effect.void
    }
    // A socket paused for backpressure cannot read its pong; its peer is not the one lagging.
    const answered = connection.socket.isPaused || connection.socket.lastSeen >= connection.pingSentAt
    connection.pingSentAt = 0
    return answered
      ? Effect.void
      : Effect.fail(new HeartbeatTimeout({ connectionId: connection.id, timeoutMillis }))
  })

/**
 * A connection's heartbeat, which runs until the peer misses a pong. The schedule and the first
 * wait are built once and shared by every connection; the first ping goes out
 * `interval - timeout` after the connection opens, not during the handshake burst.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  intervalMillis: number,
  timeoutMillis: number
): (connection: ConnectionImpl) => Effect.Effect<never, HeartbeatTimeout> => {
  const firstWait = Effect.sleep(Duration.millis(intervalMillis - timeoutMillis))
  const steps = schedule(intervalMillis, timeoutMillis)
  return (connection) =>
    firstWait.pipe(
      Effect.zipRight(Effect.repeat(step(connection, timeoutMillis), steps)),
      Effect.zipRight(Effect.never)
    )
}
