"""The router's memory of where prefixes went: chain hashes of prompt blocks (as the engine's
prefix cache keys them) and session ids, each mapped to the replica that last served it.

Kept apart from Ray so that its rules can be read and tested alone: a request goes to the
replica that served its longest known prefix (its session first, when it names one), unless that
replica is saturated, down, in the wrong region or holds another model version.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence


class AffinityTable:
    """A bounded LRU map from affinity keys to replica ids."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._owner: OrderedDict[Hashable, Hashable] = OrderedDict()

    def __len__(self) -> int:
        return len(self._owner)

    def lookup(self, keys: Sequence[Hashable], usable: set) -> Hashable | None:
        """The replica in ``usable`` that owns the session key, else the longest known prefix
        when it covers more than half of the prompt's blocks (when most of a prompt is new its
        cache saves little, and load decides); ``keys`` come from ``routing_keys``."""
        blocks = [k for k in keys if k[0] == "b"]
        session = [k for k in keys if k[0] == "s"]
        for key in session:
            owner = self._owner.get(key)
            if owner is not None and owner in usable:
                self._owner.move_to_end(key)
                return owner
        for matched in range(len(blocks), len(blocks) // 2, -1):
            owner = self._owner.get(blocks[matched - 1])
            if owner is not None and owner in usable:
                self._owner.move_to_end(blocks[matched - 1])
                return owner
        return None

    def record(self, keys: Iterable[Hashable], replica: Hashable) -> None:
        """``replica`` now holds every prefix of ``keys`` (it was sent the request)."""
        for key in keys:
            self._owner[key] = replica
            self._owner.move_to_end(key)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)

    def forget(self, replica: Hashable) -> None:
        """Drops every key of a replica that died (its cache died with it)."""
        for key in [k for k, r in self._owner.items() if r == replica]:
            del self._owner[key]


def routing_keys(block_hashes: Sequence[int], session: str | None) -> list[Hashable]:
    """The affinity keys of a request, shortest prefix first and the session last."""
    keys: list[Hashable] = [("b", h) for h in block_hashes]
    if session:
        keys.append(("s", session))
    return keys
