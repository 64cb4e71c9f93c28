"""Capped exponential backoff with full jitter, as an immutable value. Pure."""
from __future__ import annotations

import dataclasses
import random
from typing import Callable

BASE_S = 0.05
CAP_S = 5.0


@dataclasses.dataclass(frozen=True)
class Backoff:
    """The wait before the next try after `failures` consecutive failures.

    ``delay()`` draws uniformly from ``[0, min(cap, base * 2**failures)]`` (full jitter), so many
    consumers hitting one outage do not reconnect in lockstep; ``failed()`` returns the next value.
    """

    failures: int = 0
    base_s: float = BASE_S
    cap_s: float = CAP_S

    def failed(self) -> "Backoff":
        return dataclasses.replace(self, failures=self.failures + 1)

    def reset(self) -> "Backoff":
        return dataclasses.replace(self, failures=0)

    def ceiling(self) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(self.failures, 32))

    def delay(self, rand: Callable[[], float] = random.random) -> float:
        # A floor of a tenth of the ceiling keeps a failing loop from spinning on a zero draw.
        ceiling = self.ceiling()
        return ceiling * (0.1 + 0.9 * float(rand()))
