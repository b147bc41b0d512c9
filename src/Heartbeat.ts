/**
 * The heartbeat of a connection, defined by a `Schedule`.
 *
 * One step alternates between two jobs: send a ping, then `timeout` later check that the peer
 * answered (a pong, or any message: inbound traffic proves liveness). The schedule alternates
 * the matching delays, so a dead peer is found exactly `heartbeatTimeout` after the ping it ignored.
 *
 * @since 0.1.0
 */
import { Chunk, Duration, Effect, Schedule } from "effect"
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

/**
 * A manager's heartbeat: for each connection, an Effect that runs until the peer misses a pong
 * and then fails with `HeartbeatTimeout`. The first ping goes out `interval - timeout` after the
 * connection opens (the rest of an interval, as after a passed check), not during the handshake burst.
 *
 * The delays are the schedule's: one cycle of it (after a ping, after a check) is read once per
 * manager, and every connection alternates them on one plain timer of its own, stepped outside
 * its fiber, which only awaits the end. Repeating the schedule inside each fiber (`Effect.repeat`'s
 * driver with its Refs, a `Clock.sleep` per step, and the per-fiber scheduler runner every resume
 * brings) kept about 6 KB alive per idle connection, measured with heap snapshots; a timer is ~150 bytes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  intervalMillis: number,
  timeoutMillis: number
): Effect.Effect<(connection: ConnectionImpl) => Effect.Effect<never, HeartbeatTimeout>> =>
  Effect.map(
    Schedule.run(Schedule.delays(schedule(intervalMillis, timeoutMillis)), 0, [undefined, undefined]),
    (cycle) => {
      const [beforeCheck, beforePing] = Chunk.toReadonlyArray(cycle).map(Duration.toMillis)
      // Shared by every connection of the manager; the timer hands it the connection.
      const step = (connection: ConnectionImpl) => {
        if (connection.pingSentAt === 0) {
          if (connection.isOpen) {
            connection.pingSentAt = Date.now()
            connection.socket.ping()
          }
          connection.heartbeatTimer = setTimeout(step, beforeCheck, connection)
          return
        }
        // A socket paused for backpressure cannot read its pong; its peer is not the one lagging.
        const answered = connection.socket.isPaused || connection.socket.lastSeen >= connection.pingSentAt
        connection.pingSentAt = 0
        if (answered) connection.heartbeatTimer = setTimeout(step, beforePing, connection)
        else connection.heartbeatMissed!(Effect.fail(new HeartbeatTimeout({ connectionId: connection.id, timeoutMillis })))
      }
      return (connection) =>
        Effect.async<never, HeartbeatTimeout>((resume) => {
          connection.heartbeatMissed = resume
          connection.heartbeatTimer = setTimeout(step, beforePing, connection)
        })
    }
  )
