"""Exponential backoff with jitter, for everything that retries (camera, broker)."""

import random
from typing import Optional, Tuple


class Backoff:
    """Delays ``initial``, 2x, 4x ... capped at ``maximum``, each multiplied by a random
    factor in ``jitter`` (so that a fleet that lost its broker at once does not come
    back at once). ``reset()`` after a success starts again at ``initial``.

    The exponent is capped, so that a retry loop that runs for months (a camera that
    never comes back) never overflows: ``2.0 ** 1024`` would.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        rng: Optional[random.Random] = None,
        jitter: Tuple[float, float] = (0.5, 1.0),
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
        self._rng = rng or random.Random()
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.maximum, self.initial * (2.0 ** min(self.attempt, 60)))
        self.attempt += 1
        return base * self._rng.uniform(*self.jitter)

    def reset(self) -> None:
        self.attempt = 0
