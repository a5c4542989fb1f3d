"""The background prefetcher used by the shard reader and the training loops."""

import threading

from vidllm.data.prefetch import Prefetcher


def test_prefetcher_keeps_order_reraises_errors_and_stops():
    assert list(Prefetcher(iter(range(20)), depth=3)) == list(range(20))

    def failing():
        yield 1
        raise ValueError("bad shard")

    stream = Prefetcher(failing())
    assert next(stream) == 1
    try:
        next(stream)
        raise AssertionError("the producer's error was swallowed")
    except ValueError as exc:
        assert "bad shard" in str(exc)

    def endless():
        n = 0
        while True:
            yield n
            n += 1

    stream = Prefetcher(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    assert not any(t.name == "vidllm-prefetch" and t.is_alive() for t in threading.enumerate() if t is stream._thread)
