"""Small handle tables: the integers a guest holds for host objects of its own run.

Like wasmtime's wasi-nn `Table`: each host ABI keeps its objects in tables of its own per-run
context, so a handle can only ever name an object of the run that made it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class HandleTable(Generic[T]):
    """Handles from `first` upwards. With `reuse`, the lowest freed handle is given out first;
    without it, handles are never reused. Tables given one `counter` share its numbers."""

    def __init__(self, first: int = 0, *, reuse: bool = False, counter: Iterator[int] | None = None) -> None:
        self._items: dict[int, T] = {}
        self._first = first
        self._reuse = reuse
        self._counter = counter if counter is not None else itertools.count(first)

    def insert(self, item: T) -> int:
        if self._reuse:
            handle = next(h for h in itertools.count(self._first) if h not in self._items)
        else:
            handle = next(self._counter)
        self._items[handle] = item
        return handle

    def get(self, handle: int) -> T | None:
        return self._items.get(handle)

    def remove(self, handle: int) -> T | None:
        return self._items.pop(handle, None)

    def items(self) -> Iterator[tuple[int, T]]:
        return iter(list(self._items.items()))

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def clear(self) -> list[T]:
        """Empty the table; returns what it held."""
        held = list(self._items.values())
        self._items.clear()
        return held
