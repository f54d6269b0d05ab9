"""Fixed-size summaries of an endless stream: their memory never grows with what they see."""

from __future__ import annotations

import bisect
import math

_MASK64 = (1 << 64) - 1


class HyperLogLog:
    """Approximate count of distinct strings in 2**precision bytes (precision 12: 4 KiB, about 1.6 % error).

    Python's own str hash is used: it is seeded per process, which is fine for counts that live and
    die with the process, and it is cached on each str, so adding costs well under a microsecond.
    """

    def __init__(self, precision: int = 12) -> None:
        self._p = precision
        self._m = 1 << precision
        self._rest_bits = 64 - precision
        self._registers = bytearray(self._m)
        self._alpha = 0.7213 / (1 + 1.079 / self._m)

    def add(self, item: str) -> None:
        x = hash(item) & _MASK64
        index = x >> self._rest_bits
        rank = self._rest_bits - (x & ((1 << self._rest_bits) - 1)).bit_length() + 1
        if rank > self._registers[index]:
            self._registers[index] = rank

    def count(self) -> int:
        m = self._m
        estimate = self._alpha * m * m / sum(2.0 ** -r for r in self._registers)
        zeros = self._registers.count(0)
        if estimate <= 2.5 * m and zeros:
            estimate = m * math.log(m / zeros)  # linear counting is more exact for small sets
        return round(estimate)


class SpaceSaving:
    """Top-k heavy hitters in at most `capacity` counters (Metwally et al.).

    Every item whose true count exceeds total/capacity is kept; a kept count overestimates the true
    one by at most the count of the item it evicted.
    """

    def __init__(self, capacity: int = 32) -> None:
        self._capacity = capacity
        self._counts: dict[str, int] = {}
        self.total = 0

    def add(self, item: str) -> None:
        self.total += 1
        counts = self._counts
        if item in counts:
            counts[item] += 1
        elif len(counts) < self._capacity:
            counts[item] = 1
        else:
            victim = min(counts, key=counts.__getitem__)
            counts[item] = counts.pop(victim) + 1

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self._counts.items(), key=lambda pair: (-pair[1], pair[0]))[:n]


class LogHistogram:
    """Quantiles of non-negative values from fixed, logarithmically spaced buckets (about 5 % wide)."""

    def __init__(self, smallest: float = 0.001, largest: float = 7 * 86400.0, growth: float = 1.05) -> None:
        steps = math.ceil(math.log(largest / smallest) / math.log(growth))
        self._bounds = [smallest * growth**i for i in range(steps + 1)]
        self._counts = [0] * (len(self._bounds) + 1)
        self.total = 0

    def add(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self.total += 1

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile; None before any value."""
        if not self.total:
            return None
        rank = q * self.total
        seen = 0
        for index, count in enumerate(self._counts):
            seen += count
            if seen >= rank and count:
                return self._bounds[min(index, len(self._bounds) - 1)]
        return self._bounds[-1]


class MinuteCounts:
    """Logins per minute of event time for the `minutes` minutes up to the newest one seen.

    Late events older than that window are counted in `dropped`, so memory stays at `minutes` counters.
    """

    def __init__(self, minutes: int = 10) -> None:
        self._minutes = minutes
        self._counts: dict[int, int] = {}
        self._newest: int | None = None
        self.dropped = 0

    def add(self, epoch_seconds: int) -> None:
        minute = epoch_seconds // 60
        if self._newest is None or minute > self._newest:
            self._newest = minute
            oldest = minute - self._minutes + 1
            self._counts = {m: c for m, c in self._counts.items() if m >= oldest}
        elif minute <= self._newest - self._minutes:
            self.dropped += 1
            return
        self._counts[minute] = self._counts.get(minute, 0) + 1

    def newest(self, n: int) -> list[tuple[int, int]]:
        """(minute start in epoch seconds, count) for the n minutes up to the newest, oldest first."""
        if self._newest is None:
            return []
        return [(m * 60, self._counts.get(m, 0)) for m in range(self._newest - n + 1, self._newest + 1)]
