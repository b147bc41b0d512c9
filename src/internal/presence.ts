import { Duration } from "effect"

/** Presence kept in this process, with each entry's expiry. */
export class PresenceTable {
  private readonly groups = new Map<string, Map<string, { state: string; expiresAt: number }>>()

  set(group: string, member: string, state: string, ttl: Duration.DurationInput): void {
    const members = this.groups.get(group) ?? new Map()
    this.groups.set(group, members.set(member, { state, expiresAt: Date.now() + Duration.toMillis(ttl) }))
  }

  read(group: string): ReadonlyMap<string, string> {
    const now = Date.now()
    const states = new Map<string, string>()
    for (const [member, entry] of this.groups.get(group) ?? []) {
      if (entry.expiresAt > now) states.set(member, entry.state)
      else this.groups.get(group)!.delete(member)
    }
    return states
  }
}
