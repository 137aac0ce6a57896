"""Graphs built from model bytes a guest passed to wasi-nn `load`, cached by digest."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from .model import Graph


class GraphCache:
    """A small LRU of graphs keyed by the sha256 of their bytes, shared by all requests."""

    def __init__(self, capacity: int = 8, num_threads: int = 1) -> None:
        self.capacity = capacity
        self.num_threads = num_threads
        self._graphs: OrderedDict[str, Graph] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_load(self, model: bytes) -> Graph:
        """The graph for these bytes; raises ValueError if they are not a TFLite model."""
        digest = hashlib.sha256(model).hexdigest()
        with self._lock:
            graph = self._graphs.get(digest)
            if graph is not None:
                self._graphs.move_to_end(digest)
                return graph
        graph = Graph(model, self.num_threads)  # built outside the lock: ~6 ms or more
        with self._lock:
            graph = self._graphs.setdefault(digest, graph)
            self._graphs.move_to_end(digest)
            while len(self._graphs) > self.capacity:
                self._graphs.popitem(last=False)
        return graph
