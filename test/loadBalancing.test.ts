import fc from "fast-check"
import { describe, expect, it } from "vitest"
import type { Strategy } from "../src/internal/loadBalancing.js"
import { makePicker } from "../src/internal/loadBalancing.js"

interface Backend {
  readonly id: number
  readonly open: number
  readonly weight: number
}

const backends = (min = 1) =>
  fc.array(fc.record({ open: fc.nat(20), weight: fc.integer({ min: 1, max: 20 }) }), { minLength: min, maxLength: 8 })
    .map((list) => list.map((b, id): Backend => ({ id, ...b })))

const picks = (strategy: Strategy, list: ReadonlyArray<Backend>, count: number) => {
  const pick = makePicker<Backend>(strategy)
  return Array.from({ length: count }, () => pick(list).id)
}

const total = (list: ReadonlyArray<Backend>) => list.reduce((sum, b) => sum + b.weight, 0)

describe("load-balancing strategies (properties)", () => {
  it("round-robin visits every available backend once per cycle, wherever the cycle starts", () => {
    fc.assert(fc.property(backends(), fc.nat(30), (list, before) => {
      const cycle = picks("round-robin", list, before + list.length).slice(before)
      expect([...cycle].sort((a, b) => a - b)).toEqual(list.map((b) => b.id))
    }))
  })

  it("least-connections always returns a backend with the fewest open connections", () => {
    fc.assert(fc.property(backends(), (list) => {
      const pick = makePicker<Backend>("least-connections")
      expect(pick(list).open).toBe(Math.min(...list.map((b) => b.open)))
    }))
  })

  it("least-connections follows the counts as they change", () => {
    fc.assert(fc.property(backends(2), fc.nat(40), (initial, steps) => {
      const list = initial.map((b) => ({ ...b }))
      const pick = makePicker<{ id: number; open: number; weight: number }>("least-connections")
      for (let i = 0; i < steps; i++) {
        const chosen = pick(list)
        expect(chosen.open).toBe(Math.min(...list.map((b) => b.open)))
        chosen.open++
      }
    }))
  })

  it("weighted-round-robin gives each backend exactly its weight in any window of sum(weights) picks", () => {
    fc.assert(fc.property(backends(), fc.nat(60), (list, offset) => {
      const window = picks("weighted-round-robin", list, offset + total(list)).slice(offset)
      for (const backend of list) expect(window.filter((id) => id === backend.id)).toHaveLength(backend.weight)
    }))
  })

  it("weighted-round-robin is smooth: in any k picks a backend gets fewer than its share k·w/W plus 2", () => {
    // Plain weighted round robin (each backend's turns in a row) breaks this, e.g. with weights 3
    // and 6; the smooth one bounds how long a heavy backend keeps every pick: fewer than
    // 2W/(W−w) in a row.
    fc.assert(fc.property(backends(2), (list) => {
      const W = total(list)
      const sequence = picks("weighted-round-robin", list, 2 * W)
      const excesses: Array<string> = []
      for (const backend of list) {
        for (let start = 0; start < W; start++) {
          let count = 0
          for (let k = 1; k <= W; k++) {
            if (sequence[start + k - 1] === backend.id) count++
            if (count >= (k * backend.weight) / W + 2) excesses.push(`${backend.id}: ${count} of ${k} from ${start}`)
          }
        }
      }
      expect(excesses).toEqual([])
    }))
  })

  it("weighted-round-robin with equal weights is round robin", () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 8 }), fc.integer({ min: 1, max: 5 }), (n, weight) => {
      const list = Array.from({ length: n }, (_, id): Backend => ({ id, open: 0, weight }))
      expect(picks("weighted-round-robin", list, 2 * n)).toEqual([...list, ...list].map((b) => b.id))
    }))
  })

  it("random always returns a member of the list, and every member in time", () => {
    fc.assert(fc.property(backends(), (list) => {
      const seen = new Set(picks("random", list, 400))
      for (const id of seen) expect(list.some((b) => b.id === id)).toBe(true)
      expect(seen.size).toBe(list.length)
    }))
  })

  it("random is not a cycle: some backend comes twice in a row", () => {
    // 400 picks among at most 8 with no repeat has a probability below 1e-20.
    fc.assert(fc.property(backends(2), (list) => {
      const sequence = picks("random", list.map((b) => ({ ...b, weight: 1 })), 400)
      expect(sequence.some((id, i) => i > 0 && id === sequence[i - 1])).toBe(true)
    }))
  })
})
