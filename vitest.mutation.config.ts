import { defineConfig, mergeConfig } from "vitest/config"
import base from "./vitest.config.js"

// Mutation testing runs the suite once per mutant: only the tests that exercise src/ directly.
// The built-package, example and browser tests run dist/ or child processes, which Stryker's
// mutants never reach.
export default mergeConfig(base, defineConfig({
  test: {
    exclude: ["test/package.test.ts", "test/examples.test.ts", "test/examples.chat.test.ts", "node_modules/**"],
    reporters: ["default"],
    maxWorkers: 1,
    minWorkers: 1
  }
}))
