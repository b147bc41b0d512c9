/**
 * The queue in front of effect's `Pool`: at most `capacity` acquisitions are inside it at once,
 * and the others wait here in arrival order, each until its deadline.
 *
 * Why not let them wait inside `Pool.get`: effect's `Semaphore` (which `Pool.get` waits on) wakes
 * every waiter on each release, and all but one go back to sleep, so each checkout costs a fiber
 * wake-up per queued caller; with 100 callers on 10 connections the pool's throughput fell to a
 * tenth. Here a leaving acquisition hands its slot to the next waiter: one wake-up.
 */
import { Effect } from "effect"
import { PoolAcquireTimeout, PoolClosed } from "../errors.js"

interface Waiter {
  readonly admit: () => void
  readonly refuse: (error: PoolAcquireTimeout | PoolClosed) => void
}

export class Admission {
  private inside = 0
  /** A Set keeps arrival order, and a waiter that gives up leaves it in O(1). */
  private readonly queue = new Set<Waiter>()

  constructor(private readonly capacity: number) {}

  get waiting(): number {
    return this.queue.size
  }

  /** A slot if one is free; nobody waits then, since a leaving acquisition hands its slot on. */
  tryEnter(): boolean {
    if (this.inside >= this.capacity) return false
    this.inside++
    return true
  }

  /**
   * A slot, at once when one is free; otherwise in arrival order, or `PoolAcquireTimeout` at
   * `deadline` (epoch ms). Interrupted while waiting, the caller leaves the queue; once it has
   * the slot, giving it back with `leave` is the caller's.
   */
  enter(deadline: number, timeoutMillis: number): Effect.Effect<void, PoolAcquireTimeout | PoolClosed> {
    return Effect.suspend(() => {
      if (this.tryEnter()) return Effect.void
      return Effect.async<void, PoolAcquireTimeout | PoolClosed>((resume) => {
        let admitted = false
        const settle = () => {
          clearTimeout(timer)
          return this.queue.delete(waiter)
        }
        const waiter: Waiter = {
          admit: () => {
            settle()
            admitted = true
            resume(Effect.void)
          },
          refuse: (error) => {
            if (settle()) resume(Effect.fail(error))
          }
        }
        const timer = setTimeout(() => waiter.refuse(new PoolAcquireTimeout({ timeoutMillis })), deadline - Date.now())
        this.queue.add(waiter)
        // An interruption that overtakes its admission would lose the slot: it goes to the next waiter.
        return Effect.sync(() => {
          if (!settle() && admitted) this.leave()
        })
      })
    })
  }

  /** Gives a slot back: to the longest waiter, if there is one. */
  leave(): void {
    const next = this.queue.values().next()
    if (next.done) this.inside--
    else next.value.admit()
  }

  /** Every waiter fails with `PoolClosed`. */
  close(): void {
    for (const waiter of Array.from(this.queue)) waiter.refuse(new PoolClosed())
  }
}
