"""The operator's work queue: one reconcile per key, bursts collapsed, retries backed off."""

from __future__ import annotations

import asyncio

import pytest

from recsys_operator.workqueue import Backoff, TerminalError, WorkQueue, run_workers


class FakeClock:
    """A hand-moved clock so delays are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_burst_of_adds_is_processed_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for _ in range(5):
        queue.add("ns/a")
    queue.add("ns/b")
    assert len(queue) == 2
    assert await queue.get() == "ns/a"
    assert await queue.get() == "ns/b"
    assert len(queue) == 0


async def test_a_key_added_while_processing_comes_back_after_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("k")
    key = await queue.get()
    queue.add("k")  # an event arrives mid-reconcile
    assert len(queue) == 0, "never handed to a second worker while the first holds it"
    queue.done(key)
    assert await asyncio.wait_for(queue.get(), 1) == "k"


async def test_add_after_keeps_the_earliest_time() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(clock=clock)
    queue.add_after("k", 60)
    queue.add_after("k", 10)
    queue.add_after("k", 30)
    clock.now += 10
    assert await asyncio.wait_for(queue.get(), 1) == "k"
    queue.done("k")
    clock.now += 100  # the superseded 30 s and 60 s entries must not fire again
    assert queue._promote_due() is None
    assert len(queue) == 0


def test_backoff_doubles_and_caps() -> None:
    backoff = Backoff(base=1, cap=10)
    assert [backoff.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


async def test_failures_back_off_and_success_forgets() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(backoff=Backoff(base=2, cap=100), clock=clock)
    assert queue.failed("k") == 2
    assert queue.failed("k") == 4
    assert queue.failures("k") == 2
    queue.forget("k")
    assert queue.failures("k") == 0
    assert queue.failed("k") == 2


async def test_workers_retry_a_failing_reconcile() -> None:
    queue: WorkQueue[str] = WorkQueue(backoff=Backoff(base=0.01, cap=0.05))
    attempts: list[str] = []
    done = asyncio.Event()

    async def reconcile(key: str) -> float | None:
        attempts.append(key)
        if len(attempts) < 3:
            raise RuntimeError("apiserver said 500")
        done.set()
        return None

    queue.add("k")
    task = asyncio.create_task(run_workers(queue, reconcile, workers=2))
    try:
        await asyncio.wait_for(done.wait(), 5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert attempts == ["k", "k", "k"]
    assert queue.failures("k") == 0


async def test_a_terminal_error_is_not_retried() -> None:
    queue: WorkQueue[str] = WorkQueue(backoff=Backoff(base=0.01, cap=0.05))
    attempts: list[str] = []

    async def reconcile(key: str) -> float | None:
        attempts.append(key)
        raise TerminalError("the object does not parse")

    queue.add("k")
    task = asyncio.create_task(run_workers(queue, reconcile, workers=1))
    try:
        await asyncio.sleep(0.3)  # many backoff periods
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert attempts == ["k"]
    assert queue.failures("k") == 0
    assert len(queue) == 0


async def test_shutdown_drains_the_reconciles_in_flight_and_starts_no_new_one() -> None:
    queue: WorkQueue[str] = WorkQueue()
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def reconcile(key: str) -> float | None:
        started.set()
        await release.wait()
        finished.append(key)
        return None

    queue.add("in-flight")
    task = asyncio.create_task(run_workers(queue, reconcile, workers=2))
    await asyncio.wait_for(started.wait(), 1)
    queue.add("waiting")
    queue.shut_down()
    await asyncio.sleep(0.05)
    assert not task.done(), "a reconcile in flight is waited for"
    release.set()
    await asyncio.wait_for(task, 1)
    assert finished == ["in-flight"], "no key is started after shutdown"
