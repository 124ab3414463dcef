"""Parallel types: bounded windows, max_concurrency, fail-fast, per-item retry state."""

import asyncio
import concurrent.futures as cf
import threading

import pytest
from test_core_helpers import InterleavedAB

from kaygraph import (
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    ParallelBatchNode,
)

HUGE = 10_000_000


class Boom(Exception):
    pass


def threads_now():
    return set(threading.enumerate())


# --- ParallelBatchNode: the window ---------------------------------------------------------


def test_parallel_batch_never_materialises_a_ten_million_item_generator():
    workers = 2
    lock = threading.Lock()
    state = {"pulled": 0, "finished": 0, "max_pending": 0}
    started, release, flowing = threading.Event(), threading.Event(), threading.Event()

    def items():
        for i in range(HUGE):
            with lock:
                state["pulled"] += 1
                pending = state["pulled"] - state["finished"]
                state["max_pending"] = max(state["max_pending"], pending)
            if state["pulled"] == 300:
                flowing.set()
            yield i

    class Blocked(ParallelBatchNode):
        def prep(self, shared):
            return items()

        def exec(self, item):
            try:
                if item == 0:  # the first item blocks while the others flow past it
                    started.set()
                    release.wait(10)
                    raise Boom("stop")
                return item
            finally:
                with lock:
                    state["finished"] += 1

    before = threads_now()
    outcome = {}

    def run():
        try:
            Blocked(max_workers=workers).run({})
        except Boom as exc:
            outcome["exc"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        assert started.wait(10)
        assert flowing.wait(10)  # items keep flowing while item 0 blocks
    finally:
        release.set()
        runner.join(30)
    assert isinstance(outcome.get("exc"), Boom)
    # Never more than the window (2 x workers) pulled and unfinished, plus the one being pulled.
    assert state["max_pending"] <= 2 * workers + 1, state
    assert state["pulled"] < HUGE // 100  # failing fast stopped the pulling
    assert threads_now() <= before


# --- ParallelBatchNode: fail fast -------------------------------------------------------------


class FailFast(ParallelBatchNode):
    """Item `bad` raises; counts items started before and after that failure."""

    def __init__(self, bad, **kw):
        super().__init__(**kw)
        self.bad = bad
        self.lock = threading.Lock()
        self.stats = {"started": 0, "after": 0, "in_flight": 0}
        self.failed = threading.Event()

    def prep(self, shared):
        return (i for i in range(HUGE))

    def exec(self, item):
        with self.lock:
            self.stats["started"] += 1
            self.stats["in_flight"] += 1
            if self.failed.is_set():
                self.stats["after"] += 1
        try:
            if item == self.bad:
                self.failed.set()
                raise Boom(f"item {item}")
            return item
        finally:
            with self.lock:
                self.stats["in_flight"] -= 1


def test_parallel_batch_fails_fast_and_leaves_no_thread():
    before = threads_now()
    node = FailFast(bad=5, max_workers=2)
    shared = {"before": 1}
    with pytest.raises(Boom, match="item 5"):
        node.run(shared)
    assert threads_now() <= before
    assert node.stats["in_flight"] == 0
    assert node.stats["started"] < 200
    assert node.stats["after"] <= 2 * 2 + 1  # at most the window that was already queued
    assert shared == {"before": 1}


class ManualExecutor(cf.Executor):
    """An executor that runs a submitted call only when the test says so."""

    def __init__(self):
        self.jobs, self.cond, self.shut_down = [], threading.Condition(), False

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        fut.add_done_callback(self._notify)  # also called when the future is cancelled
        with self.cond:
            self.jobs.append((fut, fn, args, kwargs))
            self.cond.notify_all()
        return fut

    def _notify(self, fut):
        with self.cond:
            self.cond.notify_all()

    def wait_until(self, predicate):
        with self.cond:
            assert self.cond.wait_for(predicate, 10), len(self.jobs)

    def wait_for_jobs(self, n):
        self.wait_until(lambda: len(self.jobs) >= n)

    def run(self, index):
        fut, fn, args, kwargs = self.jobs[index]
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - handed to the future
                fut.set_exception(exc)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.shut_down = True


def test_parallel_batch_fail_fast_on_a_given_executor_cancels_queued_items():
    pool = ManualExecutor()
    node = FailFast(bad=1, max_workers=3, executor=pool)  # a window of 2 x 3 items
    outcome = {}

    def run():
        try:
            node.run({})
        except Boom as exc:
            outcome["exc"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        pool.wait_for_jobs(6)
        pool.run(0)  # item 0 succeeds
        pool.wait_for_jobs(7)  # its slot is refilled
        pool.run(1)  # item 1 fails: the node cancels the queued ones
        pool.wait_until(lambda: all(fut.cancelled() for fut, *_ in pool.jobs[2:]))
        for index in range(2, len(pool.jobs)):
            pool.run(index)  # as a real executor would: a cancelled job is skipped
    finally:
        runner.join(10)
    assert isinstance(outcome.get("exc"), Boom)
    assert len(pool.jobs) == 7  # never more than the window submitted
    assert node.stats["started"] == 2
    assert not pool.shut_down


def test_parallel_batch_retried_item_that_recovers_does_not_fail():
    class Recovers(ParallelBatchNode):
        def prep(self, shared):
            return range(20)

        def exec(self, item):
            if item % 3 == 0 and self.cur_retry == 0:
                raise Boom(item)
            return item

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    Recovers(max_workers=3, max_retries=2).run(shared)
    assert shared["out"] == list(range(20))


# --- per-item cur_retry under threads and tasks (see InterleavedAB for the interleaving) ------


def test_parallel_batch_items_keep_their_own_cur_retry():
    ab = InterleavedAB()

    class Items(ParallelBatchNode):
        def prep(self, shared):
            return ab.items

        def exec(self, item):
            return ab.exec(self, item)

        def exec_fallback(self, item, exc):
            ab.fallbacks.append((item, self.cur_retry))
            return "fallback"

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    Items(max_workers=2, max_retries=3).run(shared)
    assert ab.fallbacks == []
    assert shared["out"] == ["A ok on 2", "B ok on 1"]
    assert ab.attempts("A") == [("A", 0, 0), ("A", 1, 1), ("A", 2, 2)]
    assert ab.attempts("B") == [("B", 0, 0), ("B", 1, 1)]


def test_async_parallel_batch_items_keep_their_own_cur_retry():
    log, fallbacks = [], []

    async def main():
        a_last, b_failed = asyncio.Event(), asyncio.Event()

        class Items(AsyncParallelBatchNode):
            async def prep_async(self, shared):
                return ["A", "B"]

            async def exec_async(self, item):
                start = self.cur_retry
                if item == "A" and start == 2:
                    a_last.set()
                    await asyncio.wait_for(b_failed.wait(), 10)
                if item == "B" and start == 0:
                    await asyncio.wait_for(a_last.wait(), 10)
                log.append((item, start, self.cur_retry))
                if item == "B" and start == 0:
                    b_failed.set()
                    raise Boom("B fails once")
                if item == "A" and start < 2:
                    await asyncio.sleep(0)
                    raise Boom("A fails twice")
                return f"{item} ok on {self.cur_retry}"

            async def exec_fallback_async(self, item, exc):
                fallbacks.append((item, self.cur_retry))
                return "fallback"

            async def post_async(self, shared, prep_res, exec_res):
                shared["out"] = exec_res

        shared = {}
        await Items(max_retries=3).run_async(shared)
        return shared["out"]

    assert asyncio.run(main()) == ["A ok on 2", "B ok on 1"]
    assert fallbacks == []
    assert [e for e in log if e[0] == "A"] == [("A", 0, 0), ("A", 1, 1), ("A", 2, 2)]
    assert [e for e in log if e[0] == "B"] == [("B", 0, 0), ("B", 1, 1)]


# --- AsyncParallelBatchNode: max_concurrency and fail fast -----------------------------------


class Tracker:
    """Counts items in flight (pulled from the input and not yet finished)."""

    def __init__(self):
        self.pulled = self.finished = self.in_exec = self.max_in_exec = 0
        self.max_pending = 0

    def source(self, n):
        for i in range(n):
            self.pulled += 1
            self.max_pending = max(self.max_pending, self.pulled - self.finished)
            yield i

    async def work(self, rounds=3):
        self.in_exec += 1
        self.max_in_exec = max(self.max_in_exec, self.in_exec)
        try:
            for _ in range(rounds):
                await asyncio.sleep(0)
        finally:
            self.in_exec -= 1
            self.finished += 1


def tracked_node(tracker, n, **kw):
    class Tracked(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return tracker.source(n)

        async def exec_async(self, item):
            await tracker.work()
            return item

        async def post_async(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    return Tracked(**kw)


@pytest.mark.parametrize("limit", [1, 3])
def test_async_parallel_batch_max_concurrency_is_never_exceeded(limit):
    tracker = Tracker()
    shared = {}
    asyncio.run(tracked_node(tracker, 30, max_concurrency=limit).run_async(shared))
    assert shared["out"] == list(range(30))
    assert tracker.max_in_exec == limit
    assert tracker.max_pending <= limit + 1  # items are not pulled far ahead of the slots


def test_async_parallel_batch_without_limit_runs_all_at_once():
    tracker = Tracker()
    asyncio.run(tracked_node(tracker, 12).run_async({}))
    assert tracker.max_in_exec == 12


def test_async_parallel_batch_huge_generator_is_pulled_lazily_and_fails_fast():
    tracker = Tracker()

    class Lazy(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return tracker.source(HUGE)

        async def exec_async(self, item):
            if item == 0:
                for _ in range(200):  # many loop turns while the other slot keeps going
                    await asyncio.sleep(0)
                raise Boom("stop")
            await tracker.work(rounds=1)
            return item

    async def main():
        with pytest.raises(Boom):
            await asyncio.wait_for(Lazy(max_concurrency=2).run_async({}), 10)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()
    assert tracker.max_pending <= 3
    assert tracker.pulled < 1000


def cancellable_items(n, bad, limit=None):
    state = {"started": 0, "after": 0, "cancelled": 0, "failed": False}

    class Hang(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return range(n)

        async def exec_async(self, item):
            state["started"] += 1
            if state["failed"]:
                state["after"] += 1
            if item == bad:
                await asyncio.sleep(0)
                state["failed"] = True
                raise Boom(f"item {item}")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise

    return Hang(max_concurrency=limit), state


def test_async_parallel_batch_fail_fast_cancels_the_rest():
    node, state = cancellable_items(10, bad=3)

    async def main():
        shared = {"kept": 1}
        with pytest.raises(Boom, match="item 3"):
            await asyncio.wait_for(node.run_async(shared), 10)
        assert shared == {"kept": 1}
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()
    assert state["started"] == 10
    assert state["cancelled"] == 9


def test_async_parallel_batch_fail_fast_with_limit_starts_nothing_new():
    node, state = cancellable_items(50, bad=1, limit=2)

    async def main():
        with pytest.raises(Boom, match="item 1"):
            await asyncio.wait_for(node.run_async({}), 10)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()
    assert state["after"] == 0
    assert state["started"] == 2
    assert state["cancelled"] == 1


# --- AsyncParallelBatchGraph ------------------------------------------------------------------


def test_async_parallel_batch_graph_max_concurrency_is_never_exceeded():
    tracker = Tracker()

    class Work(AsyncNode):
        async def exec_async(self, prep_res):
            await tracker.work()
            return self.params["i"]

        async def post_async(self, shared, prep_res, exec_res):
            shared.setdefault("done", []).append(exec_res)

    class G(AsyncParallelBatchGraph):
        async def prep_async(self, shared):
            return ({"i": i} for i in tracker.source(20))

    shared = {}
    asyncio.run(G(Work(), max_concurrency=3).run_async(shared))
    assert sorted(shared["done"]) == list(range(20))
    assert tracker.max_in_exec == 3
    assert tracker.max_pending <= 4


def test_async_parallel_batch_graph_fails_fast_and_cancels():
    state = {"cancelled": 0}

    class Work(AsyncNode):
        async def exec_async(self, prep_res):
            if self.params["i"] == 2:
                await asyncio.sleep(0)
                raise Boom("run 2")
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise

    class G(AsyncParallelBatchGraph):
        def prep(self, shared):
            return [{"i": i} for i in range(6)]

    async def main():
        with pytest.raises(Boom, match="run 2"):
            await asyncio.wait_for(G(Work()).run_async({}), 10)
        return asyncio.all_tasks() - {asyncio.current_task()}

    assert asyncio.run(main()) == set()
    assert state["cancelled"] == 5


@pytest.mark.parametrize("bad", [0, -1])
def test_max_concurrency_below_one_is_rejected(bad):
    for cls in (AsyncParallelBatchNode, AsyncParallelBatchGraph):
        with pytest.raises((ValueError, TypeError)) as info:
            cls(max_concurrency=bad)
        assert "max_concurrency" in str(info.value) and str(bad) in str(info.value)


def test_async_parallel_batch_each_item_has_its_own_timeout_and_retries():
    attempts = {}

    class Items(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return ["slow_once", "fast", "slow_always"]

        async def exec_async(self, item):
            attempts.setdefault(item, []).append(self.cur_retry)
            if item == "slow_always" or (item == "slow_once" and self.cur_retry == 0):
                await asyncio.Event().wait()  # hangs until the timeout cancels it
            return f"{item} on {self.cur_retry}"

        async def exec_fallback_async(self, item, exc):
            return type(exc).__name__

        async def post_async(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    asyncio.run(Items(max_retries=2, timeout=0.05, max_concurrency=3).run_async(shared))
    assert shared["out"] == ["slow_once on 1", "fast on 0", "TimeoutError"]
    assert attempts == {"slow_once": [0, 1], "fast": [0], "slow_always": [0, 1]}
