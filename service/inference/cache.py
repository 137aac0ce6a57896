"""Graphs built from model bytes a guest passed to wasi-nn `load`, cached by encoding and digest."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

from .backend import Backend, Graph


class GraphCache:
    """A small LRU of graphs keyed by (encoding, sha256 of their bytes), shared by all requests."""

    def __init__(self, capacity: int = 8, num_threads: int = 1) -> None:
        self.capacity = capacity
        self.num_threads = num_threads
        self._graphs: OrderedDict[tuple[str, str], Graph] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, backend: Backend, builders: Sequence[bytes]) -> Graph:
        """The graph for these builders; raises ValueError if the backend cannot use them."""
        digest = hashlib.sha256()
        for builder in builders:
            digest.update(hashlib.sha256(builder).digest())
        key = (backend.encoding.value, digest.hexdigest())
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                return graph
        graph = backend.load(builders, self.num_threads)  # built outside the lock: ~6 ms or more
        with self._lock:
            graph = self._graphs.setdefault(key, graph)
            self._graphs.move_to_end(key)
            while len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
        return graph
