/**
 * One backend of a pool: its health (from health checks, with thresholds) and its circuit
 * breaker (from connection attempts), and the pool's connections to it.
 */
import type { WebSocketPoolConfig } from "../options.js"

export type CircuitState = "closed" | "open" | "half-open"

export type HealthChange = "backend-healthy" | "backend-unhealthy"

export class PoolBackend {
  healthy = true
  latency: number | undefined = undefined
  lastCheck: Date | undefined = undefined
  /** Consecutive failed health checks. */
  consecutiveFailures = 0
  private consecutiveSuccesses = 0
  /** Consecutive failed connection attempts, for the circuit breaker. */
  private connectFailures = 0
  private openedAt = 0
  private circuitState: CircuitState = "closed"
  /** Whether the one trial connection a half-open circuit lets through is under way. */
  private trial = false
  /** Connections to this backend, open or opening (what least-connections compares). */
  open = 0

  constructor(
    readonly id: string,
    readonly url: string,
    readonly weight: number,
    private readonly config: WebSocketPoolConfig
  ) {}

  get circuit(): CircuitState {
    if (this.circuitState === "open" && Date.now() - this.openedAt >= this.config.circuitBreaker.recoveryTimeout) {
      this.circuitState = "half-open"
    }
    return this.circuitState
  }

  /** Whether a new connection may be opened to it (a half-open circuit lets one trial through). */
  get available(): boolean {
    const circuit = this.circuit
    return this.healthy && (circuit === "closed" || (circuit === "half-open" && !this.trial))
  }

  /** A connection to it is being opened. */
  connecting(): void {
    this.open++
    if (this.circuit === "half-open") this.trial = true
  }

  connectSucceeded(): void {
    this.trial = false
    this.connectFailures = 0
    this.circuitState = "closed"
  }

  /** Opening was given up before it finished (the pool closed): not the backend's fault. */
  connectAborted(): void {
    this.open--
    this.trial = false
  }

  connectFailed(): void {
    this.open--
    this.trial = false
    const breaker = this.config.circuitBreaker
    if (!breaker.enabled) return
    this.connectFailures++
    // Only a success resets the count: a failed half-open trial is over the threshold and reopens.
    if (this.connectFailures >= breaker.failureThreshold) {
      this.circuitState = "open"
      this.openedAt = Date.now()
    }
  }

  /** Records a health check; returns the change of health it caused, if any. */
  checked(ok: boolean, latency: number): HealthChange | undefined {
    const { healthyThreshold, unhealthyThreshold } = this.config.healthCheck
    this.lastCheck = new Date()
    if (ok) {
      this.latency = latency
      this.consecutiveFailures = 0
      this.consecutiveSuccesses++
      if (!this.healthy && this.consecutiveSuccesses >= healthyThreshold) {
        this.healthy = true
        // A backend that answers health checks again gets its circuit closed with it.
        this.connectSucceeded()
        return "backend-healthy"
      }
      return undefined
    }
    this.consecutiveSuccesses = 0
    this.consecutiveFailures++
    if (this.healthy && this.consecutiveFailures >= unhealthyThreshold) {
      this.healthy = false
      return "backend-unhealthy"
    }
    return undefined
  }
}
