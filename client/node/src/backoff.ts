// Exponential backoff with jitter, for the worker's reconnects.

export interface BackoffOptions {
  /** The first delay's upper bound, in milliseconds (default 100). */
  initialDelayMs?: number;
  /** No delay exceeds this (default 5000). */
  maxDelayMs?: number;
  /** Growth per failed attempt (default 2). */
  multiplier?: number;
}

/**
 * Delays that double (by `multiplier`) from `initialDelayMs` up to `maxDelayMs`, each drawn
 * uniformly from the upper half of its bound ("equal jitter"): workers that lost the same
 * replica do not all come back at the same instant, and none waits less than half the
 * bound. `reset()` after a success starts again from the first delay.
 */
export class Backoff {
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
  readonly multiplier: number;
  private attempt = 0;

  /** `random` returns a number in [0, 1); tests pass their own. */
  constructor(options: BackoffOptions = {}, private readonly random: () => number = Math.random) {
    this.initialDelayMs = options.initialDelayMs ?? 100;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    this.multiplier = options.multiplier ?? 2;
    if (!Number.isFinite(this.initialDelayMs) || this.initialDelayMs <= 0) {
      throw new RangeError(`initialDelayMs: expected a positive number, got ${this.initialDelayMs}`);
    }
    if (!Number.isFinite(this.maxDelayMs) || this.maxDelayMs < this.initialDelayMs) {
      throw new RangeError(`maxDelayMs: expected a number ≥ initialDelayMs, got ${this.maxDelayMs}`);
    }
    if (!Number.isFinite(this.multiplier) || this.multiplier < 1) {
      throw new RangeError(`multiplier: expected a number ≥ 1, got ${this.multiplier}`);
    }
  }

  /** The delay before the next attempt, in milliseconds. */
  next(): number {
    const bound = Math.min(this.maxDelayMs, this.initialDelayMs * this.multiplier ** this.attempt);
    if (bound < this.maxDelayMs) {
      this.attempt += 1; // stop counting once at the cap: no overflow to Infinity
    }
    return bound / 2 + this.random() * (bound / 2);
  }

  reset(): void {
    this.attempt = 0;
  }
}
