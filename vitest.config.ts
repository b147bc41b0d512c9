import { fileURLToPath } from "node:url"
import { defineConfig } from "vitest/config"

export default defineConfig({
  resolve: {
    alias: {
      "effect-websocket-manager/promise": fileURLToPath(new URL("./src/promise/index.ts", import.meta.url)),
      "effect-websocket-manager": fileURLToPath(new URL("./src/index.ts", import.meta.url))
    }
  },
  test: {
    include: ["test/**/*.test.ts"],
    // The JSON report lets .ci/run print a plain "N passed, N failed" line.
    reporters: ["default", "json"],
    outputFile: { json: "test-results/vitest.json" },
    testTimeout: 20_000,
    hookTimeout: 20_000,
    // Test files open real sockets and servers; two cores run two files at a time without starving timers.
    maxWorkers: 2,
    minWorkers: 1
  }
})
