/**
 * The soak's load: a steady population of `ws` clients that join, chat and leave at random, and
 * among them slow consumers, clients that never answer pings and clients that close mid-send.
 * Every well-behaved client checks what it received against the protocol of protocol.ts and
 * reports what it was owed and did not get. Driven over IPC by run.ts.
 */
import WebSocket from "ws"
import {
  between,
  BULK,
  BULK_STRICT,
  chatChannels,
  exponential,
  frame,
  HEARTBEAT_INTERVAL,
  HEARTBEAT_TIMEOUT,
  pick,
  type ServerMessage,
  sleep,
  Tally
} from "./protocol.js"
import { clientAddress } from "../lib.js"

export interface LoadConfig {
  readonly port: number
  readonly chatChannels: number
  readonly wellBehaved: number
  readonly bulkReaders: number
  readonly slow: number
  readonly pingIgnorers: number
  readonly midSend: number
  readonly durationMillis: number
  readonly rampMillis: number
  /** A well-behaved client lives this long (ms, uniform), then leaves its channels and closes. */
  readonly life: readonly [number, number]
  readonly slowLife: readonly [number, number]
  /** Mean time between a client's actions (join, leave or say). */
  readonly actionMeanMillis: number
}

const config: LoadConfig = JSON.parse(process.argv[2]!)
const chats = chatChannels(config.chatChannels)
const send = (message: object) => process.send!(message)

/** The clients' own view: what was owed, what came, and every way it went wrong. */
const newResults = () => ({
  wellBehaved: {
    started: 0,
    completed: 0,
    sent: 0,
    received: 0,
    windows: 0,
    owed: 0,
    lost: 0,
    /** A seq at or below the last one received on that channel. */
    outOfOrder: 0,
    /** A message on a channel outside any subscription (before `joined` or after `left`). */
    outsideWindow: 0,
    /** Own `say` messages that did not come back before `left`. */
    ownMissing: 0,
    leaveTimeouts: 0,
    connectFailed: new Tally(),
    unexpectedClose: new Tally(),
    serverErrors: new Tally(),
    protocol: new Tally()
  },
  slow: { started: 0, joinFailed: 0, resumedAndClosed: 0, terminated: 0, cutWhilePaused: 0, closeCodes: new Tally() },
  pingIgnorers: { started: 0, cutByHeartbeat: 0, late: 0, survived: 0, maxMillis: 0, closeCodes: new Tally() },
  midSend: { started: 0, fin: 0, reset: 0 },
  peakConnections: 0,
  connectionsOpened: 0,
  /** Milliseconds from `new WebSocket` to 'open', every well-behaved connection. */
  handshakeMillis: [] as Array<number>
})
type Results = ReturnType<typeof newResults>

let results = newResults()
let stopping = false
const enders = new Set<() => void>()
let open = 0
let clientIndex = 0

const track = (ws: WebSocket) => {
  ws.once("open", () => {
    open++
    results.connectionsOpened++
    results.peakConnections = Math.max(results.peakConnections, open)
    ws.once("close", () => open--)
  })
}

const connect = (id: string, options: WebSocket.ClientOptions = {}) => {
  const ws = new WebSocket(`ws://127.0.0.1:${config.port}/chat?id=${id}`, {
    localAddress: clientAddress(clientIndex++),
    perMessageDeflate: false,
    ...options
  })
  track(ws)
  return ws
}

/** Resolves with true when the socket opens, false when it fails first. */
const opened = (ws: WebSocket, onError: (error: Error) => void) =>
  new Promise<boolean>((resolve) => {
    let wasOpen = false
    ws.once("open", () => {
      wasOpen = true
      resolve(true)
    })
    // Kept for the socket's life: an error after the handshake (a reset) is the close's business.
    ws.on("error", (error) => {
      if (!wasOpen) {
        onError(error)
        resolve(false)
      }
    })
    ws.once("close", () => resolve(false))
  })

const closed = (ws: WebSocket) =>
  new Promise<number>((resolve) => {
    if (ws.readyState === WebSocket.CLOSED) return resolve(1006)
    ws.once("close", (code) => resolve(code))
  })

const withTimeout = <A>(promise: Promise<A>, millis: number) =>
  Promise.race([promise, sleep(millis).then(() => "timeout" as const)])

interface Subscription {
  state: "joining" | "in" | "leaving"
  from: number
  /** Every seq received on this channel since `joined`, in arrival order. */
  readonly seqs: Array<number>
  /** Own `n` sent here and not yet back. */
  readonly own: Set<number>
  settled?: () => void
}

/**
 * A well-behaved member: it reads everything, answers pings, joins before it speaks, and at the
 * end of its life leaves every channel and closes.
 */
const member = async (id: string, fixed: ReadonlyArray<string>, lifeMillis: number) => {
  const stats = results.wellBehaved
  stats.started++
  const ws = connect(id)
  const connectingAt = Date.now()
  if (!(await opened(ws, (error) => stats.connectFailed.add((error as any).code ?? error.message)))) {
    ws.terminate()
    await sleep(200)
    return
  }
  results.handshakeMillis.push(Date.now() - connectingAt)
  const subs = new Map<string, Subscription>()
  let n = 0
  let ending = false
  let closedByUs = false

  const leave = (ch: string, sub: Subscription) => {
    sub.state = "leaving"
    ws.send(JSON.stringify({ t: "leave", ch }))
  }
  const join = (ch: string) =>
    new Promise<void>((resolve) => {
      subs.set(ch, { state: "joining", from: -1, seqs: [], own: new Set(), settled: resolve })
      ws.send(JSON.stringify({ t: "join", ch }))
    })

  /** The window is over: everything in [from, upTo] must have come, as one ascending run. */
  const closeWindow = (sub: Subscription, upTo: number) => {
    stats.windows++
    const owed = Math.max(0, upTo - sub.from + 1)
    let got = 0
    for (const seq of sub.seqs) if (seq >= sub.from && seq <= upTo) got++
    stats.owed += owed
    stats.lost += owed - got
    stats.ownMissing += sub.own.size
  }

  ws.on("message", (data) => {
    const message = JSON.parse(String(data)) as ServerMessage
    switch (message.t) {
      case "joined": {
        const sub = subs.get(message.ch)
        if (sub?.state !== "joining") return stats.protocol.add("joined without join")
        sub.state = "in"
        sub.from = message.from
        // A member at its end leaves at once; its pending leave waits for `left`.
        if (ending) leave(message.ch, sub)
        else sub.settled?.()
        return
      }
      case "left": {
        const sub = subs.get(message.ch)
        if (sub?.state !== "leaving") return stats.protocol.add("left without leave")
        closeWindow(sub, message.upTo)
        subs.delete(message.ch)
        return sub.settled?.()
      }
      case "m": {
        stats.received++
        const sub = subs.get(message.ch)
        if (sub === undefined || sub.state === "joining") {
          stats.outsideWindow++
          return
        }
        const last = sub.seqs.at(-1)
        if (last !== undefined && message.seq <= last) stats.outOfOrder++
        sub.seqs.push(message.seq)
        if (message.from === id && !sub.own.delete(message.n)) stats.protocol.add("own message twice or unknown")
        return
      }
      case "error":
        return stats.serverErrors.add(message.reason)
    }
  })
  const endedAt = closed(ws).then((code) => {
    if (!closedByUs) stats.unexpectedClose.add(String(code))
    // Nothing more will come: whatever is still waiting is settled as it stands.
    for (const sub of subs.values()) sub.settled?.()
  })

  await Promise.all(fixed.map(join))
  await join(pick(chats.filter((ch) => !subs.has(ch))))

  let actionTimer: NodeJS.Timeout | undefined
  const act = () => {
    if (ending || ws.readyState !== WebSocket.OPEN) return
    const joined = [...subs].filter(([ch, sub]) => sub.state === "in" && chats.includes(ch))
    const r = Math.random()
    if (r < 0.12 && joined.length < 3) {
      void join(pick(chats.filter((ch) => !subs.has(ch))))
    } else if (r < 0.22 && joined.length > 1) {
      const [ch, sub] = pick(joined)
      leave(ch, sub)
    } else if (joined.length > 0) {
      const [ch, sub] = pick(joined)
      sub.own.add(++n)
      stats.sent++
      ws.send(JSON.stringify({ t: "say", ch, n, text: "hello ".repeat(1 + Math.floor(Math.random() * 30)) }))
    }
    actionTimer = setTimeout(act, exponential(config.actionMeanMillis))
  }
  actionTimer = setTimeout(act, exponential(config.actionMeanMillis))

  // Its life ends when its time is up or the soak stops, whichever comes first.
  await new Promise<void>((resolve) => {
    const end = () => {
      enders.delete(end)
      clearTimeout(lifeTimer)
      resolve()
    }
    const lifeTimer = setTimeout(end, lifeMillis)
    enders.add(end)
    if (stopping) end()
    void endedAt.then(end)
  })
  clearTimeout(actionTimer)
  ending = true
  if (ws.readyState === WebSocket.OPEN) {
    const pending = [...subs].map(([ch, sub]) =>
      new Promise<void>((resolve) => {
        sub.settled = resolve
        if (sub.state === "in") leave(ch, sub)
      })
    )
    if ((await withTimeout(Promise.all(pending), 30_000)) === "timeout") stats.leaveTimeouts++
    closedByUs = true
    ws.close(1000, "bye")
    if ((await withTimeout(endedAt, 10_000)) === "timeout") ws.terminate()
  }
  await endedAt
  if (closedByUs && subs.size === 0) stats.completed++
}

/** Stops reading (its TCP socket is paused) but keeps talking, so the heartbeat cannot cut it. */
const slowConsumer = async (id: string) => {
  const stats = results.slow
  stats.started++
  const ws = connect(id)
  if (!(await opened(ws, () => {}))) return void (await sleep(200))
  const bulk = pick([BULK, BULK_STRICT])
  const chat = pick(chats)
  let joined = 0
  const ready = new Promise<void>((resolve) =>
    ws.on("message", (data) => {
      if (JSON.parse(String(data)).t === "joined" && ++joined === 2) resolve()
    })
  )
  ws.send(JSON.stringify({ t: "join", ch: bulk }))
  ws.send(JSON.stringify({ t: "join", ch: chat }))
  if ((await withTimeout(ready, 10_000)) === "timeout") stats.joinFailed++
  ws.pause()
  let n = 0
  const talk = setInterval(() => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ t: "say", ch: chat, n: ++n, text: "still here" }))
  }, 1_000)
  const cut = closed(ws)
  const outcome = await Promise.race([
    cut.then((code) => `cut ${code}`),
    sleep(between(...config.slowLife)).then(() => "life"),
    new Promise<string>((resolve) => {
      const end = () => {
        enders.delete(end)
        resolve("stop")
      }
      enders.add(end)
      if (stopping) end()
    })
  ])
  clearInterval(talk)
  if (outcome.startsWith("cut")) {
    stats.cutWhilePaused++
    stats.closeCodes.add(outcome.slice(4))
  } else if (Math.random() < 0.5) {
    // Reads its backlog at last, then says goodbye properly.
    ws.resume()
    ws.close(1000)
    const code = await withTimeout(cut, 10_000)
    if (code === "timeout") ws.terminate()
    // 1008 when the 'close' policy closed it while it was not reading.
    stats.closeCodes.add(String(code))
    stats.resumedAndClosed++
  } else {
    ws.terminate()
    stats.terminated++
  }
  await cut
}

/** Never answers a ping and sends nothing after joining: the heartbeat must cut it. */
const pingIgnorer = async (id: string) => {
  const stats = results.pingIgnorers
  stats.started++
  const ws = connect(id, { autoPong: false })
  if (!(await opened(ws, () => {}))) return void (await sleep(200))
  const openedAt = Date.now()
  ws.on("message", () => {})
  ws.send(JSON.stringify({ t: "join", ch: pick(chats) }))
  // Cut at the first check after its first ping; the slack is for a machine shared with other work.
  const limit = HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT + 7_500
  const code = await withTimeout(closed(ws), 4 * HEARTBEAT_INTERVAL)
  if (code === "timeout") {
    stats.survived++
    ws.terminate()
    return
  }
  const millis = Date.now() - openedAt
  stats.closeCodes.add(String(code))
  stats.maxMillis = Math.max(stats.maxMillis, millis)
  if (millis > limit) stats.late++
  else stats.cutByHeartbeat++
}

/** Joins, says a few things, then dies halfway through a frame (FIN or RST). */
const midSend = async (id: string) => {
  const stats = results.midSend
  stats.started++
  const ws = connect(id)
  if (!(await opened(ws, () => {}))) return void (await sleep(200))
  const ch = pick(chats)
  const joined = new Promise<void>((resolve) => ws.on("message", () => resolve()))
  ws.send(JSON.stringify({ t: "join", ch }))
  await withTimeout(joined, 10_000)
  await sleep(between(1_000, 5_000))
  for (let n = 1; n <= 1 + Math.floor(Math.random() * 3); n++) {
    ws.send(JSON.stringify({ t: "say", ch, n, text: "about to vanish" }))
  }
  const raw = (ws as unknown as { _socket: import("node:net").Socket })._socket
  raw.write(frame({ opcode: 0x1, payload: Buffer.alloc(4_000, 0x61), announced: 30_000 }))
  if (Math.random() < 0.5) {
    raw.destroy()
    stats.fin++
  } else {
    raw.resetAndDestroy()
    stats.reset++
  }
  await closed(ws)
}

/** Keeps `count` clients of one kind alive, each replaced when it ends, until the soak stops. */
const slots = (count: number, kind: string, client: (id: string) => Promise<void>) =>
  Array.from({ length: count }, async (_, slot) => {
    await sleep(Math.random() * config.rampMillis)
    for (let generation = 0; !stopping; generation++) {
      await client(`${kind}-${slot}-${generation}`)
    }
  })

const life = () => between(...config.life)

const runPopulation = async (population: {
  wellBehaved: number
  bulkReaders: number
  slow: number
  pingIgnorers: number
  midSend: number
}, millis: number) => {
  stopping = false
  const all = [
    ...slots(population.wellBehaved, "w", (id) => member(id, [], life())),
    ...slots(population.bulkReaders, "r", (id) => member(id, [pick([BULK, BULK_STRICT])], life())),
    ...slots(population.slow, "s", slowConsumer),
    ...slots(population.pingIgnorers, "p", pingIgnorer),
    ...slots(population.midSend, "x", midSend)
  ]
  await sleep(millis)
  stopping = true
  for (const end of [...enders]) end()
  await Promise.all(all)
}

const plain = (r: Results) =>
  JSON.parse(JSON.stringify(r, (_key, value) => (value instanceof Tally ? value.counts : value)))

process.on("message", async (command: any) => {
  switch (command.type) {
    case "warmup": {
      results = newResults()
      await runPopulation(command.population, command.millis)
      return send({ type: "warmed", results: plain(results) })
    }
    case "run": {
      results = newResults()
      const startedAt = Date.now()
      await runPopulation(config, config.durationMillis)
      return send({ type: "done", results: plain(results), millis: Date.now() - startedAt })
    }
    case "probe": {
      // A fresh client after the storm: the server still answers, and delivers.
      results = newResults()
      stopping = false
      await member("probe", [], 1_500)
      return send({ type: "probed", results: plain(results) })
    }
  }
})
send({ type: "ready" })
