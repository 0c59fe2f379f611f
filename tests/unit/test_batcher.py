"""The dynamic batcher: merges what is queued, keeps shapes apart, splits answers back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from services.common.errors import DeadlineExceeded
from services.worker.batcher import Batcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = inputs["x"]
        self.batches.append(x.shape[0])
        self.started.set()
        await self.gate.wait()
        return [x * 2, x.sum(axis=tuple(range(1, x.ndim)))]


async def test_concurrent_requests_merge_up_to_the_maximum_and_split_back() -> None:
    rec = Recorder()
    observed: list[tuple[int, float, float]] = []
    batcher = Batcher(rec.run, max_batch_size=4, observe=lambda *a: observed.append(a))
    xs = [np.full((1, 3), i, np.float32) for i in range(9)]
    tasks = [asyncio.create_task(batcher.submit({"x": x})) for x in xs]
    await rec.started.wait()
    rec.gate.set()
    results = await asyncio.gather(*tasks)
    assert max(rec.batches) == 4 and sum(rec.batches) == 9 and len(rec.batches) == 3
    for x, (outputs, timing) in zip(xs, results, strict=True):
        np.testing.assert_array_equal(outputs[0], x * 2)
        np.testing.assert_array_equal(outputs[1], x.sum(axis=1))
        assert timing.queued <= timing.batch_start <= timing.run_start <= timing.run_end
    assert [rows for rows, _, _ in observed] == rec.batches
    await batcher.close()


async def test_different_shapes_are_not_merged_and_big_requests_run_alone() -> None:
    rec = Recorder()
    rec.gate.set()
    batcher = Batcher(rec.run, max_batch_size=4)
    blocker = asyncio.Event()

    async def slow(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        await blocker.wait()
        return await rec.run(inputs)

    batcher._run = slow  # hold the first batch so the rest queue up behind it
    first = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}))
    await asyncio.sleep(0)  # yield to the loop once (noqa: sleep-ok)
    queued: list[asyncio.Task[Any]] = [
        asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)})),
        asyncio.create_task(batcher.submit({"x": np.ones((1, 5), np.float32)})),
        asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)})),
    ]
    big = asyncio.create_task(batcher.submit({"x": np.ones((6, 3), np.float32)}))
    await asyncio.sleep(0)  # yield to the loop once (noqa: sleep-ok)
    blocker.set()
    await asyncio.gather(first, big, *queued)
    assert 6 in rec.batches  # larger than the maximum: alone
    assert rec.batches.count(1) >= 2  # the [1, 5] request never merged with [1, 3] ones
    await batcher.close()


async def test_a_failing_batch_fails_each_of_its_requests() -> None:
    async def broken(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("kernel exploded")

    batcher = Batcher(broken, max_batch_size=8)
    results = await asyncio.gather(
        *(batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) and "kernel exploded" in str(r) for r in results)
    await batcher.close()


@pytest.mark.parametrize("delay", [0.0, 0.05])
async def test_requests_arriving_one_at_a_time_are_gathered_within_the_delay(
    delay: float,
) -> None:
    """Unary calls reach the batcher one at a time: with a delay, it learns to wait."""
    rec = Recorder()
    rec.gate.set()
    batcher = Batcher(rec.run, max_batch_size=8, max_queue_delay=delay)
    tasks = []
    for i in range(100):
        tasks.append(asyncio.create_task(batcher.submit({"x": np.full((1, 2), i, np.float32)})))
        for _ in range(1000):  # until the batcher has taken it (into a run or a batch)
            await asyncio.sleep(0)  # yield to the loop once (noqa: sleep-ok)
            if batcher._queue.empty():
                break
    results = await asyncio.gather(*tasks)
    assert sum(rec.batches) == 100
    if delay:
        # Alone until the first probe (16 runs), then batches of 8: about 27 runs.
        assert len(rec.batches) <= 40 and max(rec.batches) == 8, rec.batches
    else:
        assert rec.batches == [1] * 100
    for i, (outputs, _) in enumerate(results):
        np.testing.assert_array_equal(outputs[0], np.full((1, 2), 2 * i, np.float32))
    await batcher.close()


async def test_a_request_whose_caller_left_while_queued_is_not_run() -> None:
    rec = Recorder()
    batcher = Batcher(rec.run, max_batch_size=4)
    first = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}))
    await rec.started.wait()  # the first runs alone and holds the batcher
    gone = asyncio.create_task(
        batcher.submit({"x": np.full((1, 3), 2, np.float32)}, expires=time.monotonic() - 1)
    )
    waiting = asyncio.create_task(batcher.submit({"x": np.full((1, 3), 3, np.float32)}))
    for _ in range(1000):  # until both are queued behind the first
        if batcher._queue.qsize() == 2:
            break
        await asyncio.sleep(0)  # one loop turn (noqa: sleep-ok)
    assert batcher._queue.qsize() == 2
    rec.gate.set()
    await first
    with pytest.raises(DeadlineExceeded, match="deadline passed while the request waited"):
        await gone
    outputs, _ = await waiting
    np.testing.assert_array_equal(outputs[0], np.full((1, 3), 6, np.float32))
    assert rec.batches == [1, 1]  # the expired request never reached the model
    await batcher.close()
