import { afterEach, describe, expect, it } from "vitest"
import type WebSocket from "ws"
import { registries } from "../src/internal/registry.js"
import type { Harness } from "./utils/index.js"
import { closeOf, eventually, openClient, refusedStatus, sleep, startManager } from "./utils/index.js"

const harnesses: Array<Harness> = []
const clients: Array<WebSocket> = []

afterEach(async () => {
  for (const ws of clients.splice(0)) ws.terminate()
  for (const harness of harnesses.splice(0)) await harness.close()
})

// Every limit is filled exactly by one wave: 3 addresses × 20, 6 users × 10, 60 in all.
const IPS = 3
const USERS = 6
const WAVE = 60
const WAVES = 5

const start = async () => {
  const serverSockets: Array<WebSocket> = []
  const harness = await startManager(
    {
      maxConnections: WAVE,
      maxConnectionsPerIP: WAVE / IPS,
      maxConnectionsPerUser: WAVE / USERS,
      // Short enough to cut the silent clients within the test; healthy ones answer well within 500 ms.
      heartbeatInterval: 1_000,
      heartbeatTimeout: 500,
      authentication: {
        validator: async (request: Request) => {
          const user = new URL(request.url).searchParams.get("user")
          // A slow validator keeps its upgrade pending for a while; "bad" is refused once it answers.
          if (user?.startsWith("slow")) await sleep(50)
          return user === "bad" ? null : user
        }
      }
    },
    ({ socket }) => serverSockets.push(socket)
  )
  harnesses.push(harness)
  return { ...harness, serverSockets }
}

const urlOf = (base: string, user: string) => `${base}/?user=${user}`
const from = (index: number) => ({ localAddress: `127.0.0.${1 + (index % IPS)}` })

/** A full wave: one connection for every slot, each address and each user at its limit. */
const openWave = (base: string) =>
  Promise.all(Array.from({ length: WAVE }, (_, i) => openClient(urlOf(base, `u${i % USERS}`), undefined, from(i))))

describe("churn", () => {
  it("gives every slot, count and fiber back after hundreds of connections come and go in waves", async () => {
    const { errors, manager, serverSockets, url } = await start()
    // Each connection's heartbeat is a timer: none may outlive its connection.
    const timers = () => process.getActiveResourcesInfo().filter((resource) => resource === "Timeout").length
    const timersBefore = timers()
    for (let wave = 0; wave < WAVES; wave++) {
      // Refused by the validator, and one still pending while others open: each holds a slot until it is done.
      const refused = Array.from({ length: 6 }, (_, i) => refusedStatus(urlOf(url, "bad"), undefined, from(i)))
      const slow = openClient(urlOf(url, "slow"), undefined, from(wave))
      expect(await Promise.all(refused)).toEqual(Array(6).fill(401))
      ;(await slow).close()
      await eventually(() => manager.getStats().connections === 0, 5_000, "the slow client to leave")

      serverSockets.length = 0
      const wave_ = await openWave(url)
      clients.push(...wave_)
      expect(manager.getStats()).toEqual({ connections: WAVE, pending: 0, fibers: WAVE })
      // Full: by total, and every address and user too.
      expect(await refusedStatus(urlOf(url, "extra"), undefined, from(0))).toBe(503)

      // Every way a connection ends: the client closes or vanishes, the server closes or cuts.
      const ends = wave_.map((ws, i) => closeOf(ws, 10_000).then(() => i))
      wave_.forEach((ws, i) => {
        if (i % 4 === 0) ws.close()
        if (i % 4 === 1) ws.terminate()
      })
      serverSockets.forEach((socket, i) => {
        if (i % 4 === 2) socket.close(1000, "bye")
        if (i % 4 === 3) socket.terminate()
      })
      await Promise.all(ends)
      await eventually(() => manager.getStats().fibers === 0, 5_000, `wave ${wave} to end`)
      expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
      expect(registries.get(manager.service)!.sizes).toEqual({ connections: 0, byUser: 0, perUser: 0, perIp: 0, reserved: 0 })
    }

    // A client that never answers a ping is cut by the heartbeat, and its slot comes back too.
    const silent = await openClient(urlOf(url, "u0"), undefined, { autoPong: false, ...from(0) })
    clients.push(silent)
    expect((await closeOf(silent, 5_000)).code).toBe(1006)
    await eventually(() => manager.getStats().fibers === 0, 5_000, "the silent client to be cut")

    expect(manager.getStats()).toEqual({ connections: 0, pending: 0, fibers: 0 })
    expect(registries.get(manager.service)!.sizes).toEqual({ connections: 0, byUser: 0, perUser: 0, perIp: 0, reserved: 0 })
    expect(timers()).toBeLessThanOrEqual(timersBefore)
    for (let user = 0; user < USERS; user++) expect(manager.getUserSockets(`u${user}`)).toEqual([])

    // Every slot is free again, and no more than that: an address's and a user's limits fit
    // exactly, one more is refused on that limit alone, and so for the total.
    const refusedScope = async (user: string, index: number) => {
      expect(await refusedStatus(urlOf(url, user), undefined, from(index))).toBe(503)
      return (errors.at(-1) as { scope?: string }).scope
    }
    const oneAddress = await Promise.all(
      Array.from({ length: WAVE / IPS }, (_, i) => openClient(urlOf(url, `u${i % USERS}`), undefined, from(0)))
    )
    expect(await refusedScope("u5", 0)).toBe("ip")
    oneAddress.forEach((ws) => ws.terminate())
    await eventually(() => manager.getStats().fibers === 0, 5_000, "one address's connections to end")
    const oneUser = await Promise.all(
      Array.from({ length: WAVE / USERS }, (_, i) => openClient(urlOf(url, "u0"), undefined, from(i)))
    )
    expect(await refusedScope("u0", 2)).toBe("user")
    oneUser.forEach((ws) => ws.terminate())
    await eventually(() => manager.getStats().fibers === 0, 5_000, "one user's connections to end")
    const last = await openWave(url)
    clients.push(...last)
    expect(manager.getActiveConnections()).toBe(WAVE)
    expect(manager.getUserSockets("u0").length).toBe(WAVE / USERS)
    expect(await refusedScope("u0", 0)).toBe("total")
    expect(manager.getStats()).toEqual({ connections: WAVE, pending: 0, fibers: WAVE })
  }, 60_000)
})
