"""Sets the pool keeps up to date as records arrive, so a placement never scans the pool.

`IndexedSet` adds, removes and draws a uniformly random member in O(1). `PricedSet` groups
members by price coefficient, so "a random worker at or below this price" costs O(number of
distinct coefficients), which the registry keeps small, not O(workers). `ModelIndex` holds, for
one model, the workers that could take its requests (`members`) and those of them with a free
slot (`free`). `Deadlines` tells which keys' times have come (a lease's first-chunk deadline, a
worker's heartbeat or verdict running out, a waiting request's next look) without walking them.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass, field


class IndexedSet:
    """Worker ids in a list (random draws) with their positions (O(1) removal by swap)."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._positions: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: str) -> bool:
        return item in self._positions

    def __iter__(self) -> Iterator[str]:
        # Backwards, without a copy: discarding the current item moves an already visited one
        # into its place, so callers may discard as they go and nothing is skipped.
        position = len(self._items)
        while position > 0:
            position = min(position, len(self._items)) - 1
            if position >= 0:
                yield self._items[position]

    def add(self, item: str) -> None:
        if item not in self._positions:
            self._positions[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        position = self._positions.pop(item, None)
        if position is None:
            return
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._positions[last] = position

    def at(self, position: int) -> str:
        return self._items[position]


class PricedSet:
    """Worker ids by price coefficient, lowest coefficient first."""

    def __init__(self) -> None:
        self._by_price: dict[int, IndexedSet] = {}
        self._prices: list[int] = []  # sorted keys of _by_price
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, item: str, price: int) -> None:
        bucket = self._by_price.get(price)
        if bucket is None:
            bucket = self._by_price[price] = IndexedSet()
            bisect.insort(self._prices, price)
        if item not in bucket:
            bucket.add(item)
            self._size += 1

    def discard(self, item: str, price: int) -> None:
        bucket = self._by_price.get(price)
        if bucket is None or item not in bucket:
            return
        bucket.discard(item)
        self._size -= 1
        if not bucket:
            del self._by_price[price]
            self._prices.pop(bisect.bisect_left(self._prices, price))

    def count_upto(self, max_price: int) -> int:
        return sum(len(self._by_price[p]) for p in self._prices_upto(max_price))

    def draw_upto(self, max_price: int, total: int, rng: random.Random) -> str:
        """A uniformly random member priced at most `max_price` (`total`: count_upto's answer)."""
        position = rng.randrange(total)
        for price in self._prices_upto(max_price):
            bucket = self._by_price[price]
            if position < len(bucket):
                return bucket.at(position)
            position -= len(bucket)
        raise IndexError("total is larger than the members at or below max_price")

    def upto(self, max_price: int) -> Iterator[tuple[int, str]]:
        """(price, member) at or below `max_price`, cheapest first."""
        for price in self._prices_upto(max_price):
            for item in self._by_price[price]:
                yield price, item

    def ascending(self) -> Iterator[tuple[int, str]]:
        """(price, member) for every member, cheapest first."""
        for price in list(self._prices):
            for item in self._by_price.get(price, ()):
                yield price, item

    def _prices_upto(self, max_price: int) -> list[int]:
        return self._prices[: bisect.bisect_right(self._prices, max_price)]


@dataclass
class ModelIndex:
    """Workers that could serve one model: advertised, attested for it, enabled, not draining.

    Time is not part of membership (a verdict expires and a heartbeat goes stale without any
    record saying so): placement checks both on the few workers it looks at and sets aside
    those that lapsed, until their next heartbeat or verdict.
    """

    members: PricedSet = field(default_factory=PricedSet)
    free: PricedSet = field(default_factory=PricedSet)  # members with running < capacity


@dataclass
class MeanOfAverages:
    """Running mean of the workers' own average durations for one model (no scan needed)."""

    total: float = 0.0
    count: int = 0

    def replace(self, old: float | None, new: float | None) -> None:
        if old is not None:
            self.total -= old
            self.count -= 1
        if new is not None:
            self.total += new
            self.count += 1
        if self.count == 0:
            self.total = 0.0  # no float residue once nobody contributes

    def value(self) -> float | None:
        return self.total / self.count if self.count else None


class Deadlines:
    """At most one pending time per key, in a heap: `due` pops the keys whose time has come.

    Re-arming a key for a later time pushes nothing (the earlier entry stays); whoever handles
    a due key checks the key's real deadline and arms it again if it moved. So each key costs
    one heap entry however often its deadline moves (a worker heartbeating every 2 s), and
    finding what is due costs O(log n) per due key, not a pass over every key.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._armed: dict[str, float] = {}  # key -> the time of its entry in the heap

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, key: str, at: float) -> None:
        armed = self._armed.get(key)
        if armed is None or at < armed:
            self._armed[key] = at
            heapq.heappush(self._heap, (at, key))

    def due(self, now: float) -> list[str]:
        """Keys armed for `now` or earlier, earliest first; they are disarmed."""
        keys: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if self._armed.get(key) == at:  # else superseded by an earlier arm of the same key
                del self._armed[key]
                keys.append(key)
        return keys
