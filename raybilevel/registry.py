"""Name -> implementation tables, so a new pruning method, unlearning loss or solver is one file."""
from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._reads: dict[str, frozenset[str]] = {}

    def register(self, name: str, reads: Iterable[str] = ()) -> Callable[[T], T]:
        """`reads`: the config keys (dotted) only this entry reads, e.g. a solver's solver.K; sweeps use
        them to refuse searching a key the chosen method ignores."""
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            self._reads[name] = frozenset(reads)
            return entry
        return add

    def readers(self, key: str) -> set[str]:
        """The entries that read config key `key` (empty: a key no entry declared)."""
        return {name for name, keys in self._reads.items() if key in keys}

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
