/**
 * Picks the backend for each new connection among those available.
 */
import type { PoolBackend } from "./poolBackend.js"

export type Strategy = "round-robin" | "least-connections" | "weighted-round-robin" | "random"

type Picker = (available: ReadonlyArray<PoolBackend>) => PoolBackend

export const makePicker = (strategy: Strategy): Picker => {
  switch (strategy) {
    case "round-robin": {
      let next = 0
      return (available) => available[next++ % available.length]!
    }
    case "least-connections":
      return (available) => available.reduce((least, backend) => backend.open < least.open ? backend : least)
    case "random":
      return (available) => available[Math.floor(Math.random() * available.length)]!
    case "weighted-round-robin": {
      // Smooth weighted round robin (as nginx does it): spreads a heavy backend's turns out.
      const current = new Map<PoolBackend, number>()
      return (available) => {
        let total = 0
        let best: PoolBackend | undefined
        for (const backend of available) {
          const value = (current.get(backend) ?? 0) + backend.weight
          current.set(backend, value)
          total += backend.weight
          if (best === undefined || value > current.get(best)!) best = backend
        }
        current.set(best!, current.get(best!)! - total)
        return best!
      }
    }
  }
}
