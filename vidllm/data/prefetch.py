"""A background-thread prefetcher: the next items of an iterator are produced while the current one is used."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any


class Prefetcher:
    """Produces the next `depth` items of `source` on a background thread while the current one is used
    (the next training batch during a step; the next sample's bytes while a clip decodes).

    Decoding (PIL) and reading (Arrow, S3) release the GIL, so this hides most of the data time.
    Order is preserved, errors are re-raised in the consumer, and `close()` stops the thread.
    """

    def __init__(self, source: Iterator[Any], depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = source
        self._thread = threading.Thread(target=self._run, name="vidllm-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # handed to the consumer
            self._put(("error", exc))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __del__(self) -> None:
        self._stop.set()
