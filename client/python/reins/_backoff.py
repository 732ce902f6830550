"""Reconnect delays: exponential, capped, with jitter."""

from __future__ import annotations

import random


class Backoff:
    """Delays before successive reconnects: ``initial · multiplier^n`` capped at
    ``maximum``, each drawn uniformly from its upper half ("equal jitter"), so workers
    that lost the same replica do not come back in lockstep, and none waits 0.

    :meth:`reset` after a connection that worked starts again from ``initial``.
    """

    def __init__(
        self,
        initial: float = 0.1,
        maximum: float = 10.0,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial ({initial}) <= maximum ({maximum})")
        if multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, not {multiplier}")
        self.initial, self.maximum, self.multiplier = initial, maximum, multiplier
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds."""
        ceiling = min(self.maximum, self.initial * self.multiplier**self._attempt)
        if ceiling < self.maximum:
            self._attempt += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._attempt = 0
