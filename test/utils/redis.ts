/**
 * Tests over a real `redis-server` (see `./redisServer.js`). Without `redis-server` on PATH they
 * skip, naming the Debian package; with `REQUIRE_REDIS=1` (as in CI) they fail instead, so a
 * missing server cannot pass silently.
 */
import { afterAll, describe, it } from "vitest"
import { missing, redisAvailable, redisRequired, running } from "./redisServer.js"

export { redisAvailable, redisRequired, type RedisServer, startRedis } from "./redisServer.js"

/**
 * A describe block for tests that need `redis-server`: skipped with a message naming the package
 * when it is missing, failed instead with `REQUIRE_REDIS=1`. Every server the block started is
 * killed after it.
 */
export const describeRedis = (name: string, body: () => void): void => {
  if (!redisAvailable) {
    if (redisRequired) {
      describe(name, () => {
        it("needs redis-server (REQUIRE_REDIS=1)", () => {
          throw new Error(missing)
        })
      })
    } else {
      console.warn(`Skipping "${name}": ${missing}`)
      describe.skip(name, body)
    }
    return
  }
  describe(name, () => {
    afterAll(async () => {
      await Promise.all(Array.from(running, (server) => server.kill()))
    })
    body()
  })
}
