/**
 * Picks the backend for each new connection among those available.
 */
export type Strategy = "round-robin" | "least-connections" | "weighted-round-robin" | "random"

/** What a strategy looks at: a backend's connections (open or opening) and its weight. */
export interface Balanced {
  readonly open: number
  readonly weight: number
}

export type Picker<B extends Balanced> = (available: ReadonlyArray<B>) => B

export const makePicker = <B extends Balanced>(strategy: Strategy): Picker<B> => {
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
      const current = new Map<B, number>()
      return (available) => {
        let total = 0
        let best: B | undefined
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
