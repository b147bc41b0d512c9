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
  /** Open connections to this backend, and how many of them are checked out. */
  open = 0
  active = 0

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

  /** Whether a new connection may be opened to it (a half-open circuit lets trial connections through). */
  get available(): boolean {
    return this.healthy && this.circuit !== "open"
  }

  connectSucceeded(): void {
    this.connectFailures = 0
    this.circuitState = "closed"
  }

  connectFailed(): void {
    const breaker = this.config.circuitBreaker
    if (!breaker.enabled) return
    this.connectFailures++
    if (this.circuit === "half-open" || this.connectFailures >= breaker.failureThreshold) {
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
