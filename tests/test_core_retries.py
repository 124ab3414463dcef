"""Retries and waits (recorded, never slept): backoff, max_wait, jitter, retry_on, timeouts."""

import asyncio
import time

import pytest

from kaygraph import AsyncNode, BatchNode, Graph, Node, ParallelBatchNode


@pytest.fixture
def sleeps(monkeypatch):
    """Record every time.sleep the core makes instead of sleeping."""
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits


@pytest.fixture
def async_sleeps(monkeypatch):
    """Record every asyncio.sleep the core makes; yield to the loop instead of sleeping."""
    waits = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, result=None):
        waits.append(delay)
        await real_sleep(0)
        return result

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return waits


class Flaky(Node):
    """Fails its first `fails` attempts with `error`, records cur_retry, falls back to 'fb'."""

    def __init__(self, fails=10**9, error=ValueError, fallback=True, **kw):
        super().__init__(**kw)
        self.fails, self.error, self.fallback = fails, error, fallback
        self.attempts = []
        self.fallback_got = []

    def exec(self, prep_res):
        self.attempts.append(self.cur_retry)
        if len(self.attempts) <= self.fails:
            raise self.error(f"attempt {self.cur_retry}")
        return "ok"

    def exec_fallback(self, prep_res, exc):
        self.fallback_got.append(exc)
        if not self.fallback:
            return super().exec_fallback(prep_res, exc)
        return "fb"

    def post(self, shared, prep_res, exec_res):
        shared["res"] = exec_res
        return exec_res


def test_success_first_time_no_wait(sleeps):
    n = Flaky(fails=0, max_retries=3, wait=1)
    assert n.run({}) == "ok"
    assert n.attempts == [0]
    assert sleeps == []


def test_retries_until_success_with_cur_retry_zero_based(sleeps):
    n = Flaky(fails=2, max_retries=5, wait=0.25)
    shared = {}
    assert n.run(shared) == "ok"
    assert n.attempts == [0, 1, 2]
    assert sleeps == [0.25, 0.25]
    assert n.fallback_got == []
    assert shared["res"] == "ok"


def test_all_attempts_fail_then_fallback_with_last_exception(sleeps):
    n = Flaky(max_retries=3, wait=0.5)
    assert n.run({}) == "fb"
    assert n.attempts == [0, 1, 2]
    assert sleeps == [0.5, 0.5]  # no wait after the last attempt
    assert len(n.fallback_got) == 1
    assert str(n.fallback_got[0]) == "attempt 2"


def test_default_fallback_reraises_the_same_exception(sleeps):
    n = Flaky(max_retries=2, fallback=False)
    shared = {"before": 1}
    with pytest.raises(ValueError, match="attempt 1") as info:
        n.run(shared)
    assert info.value is n.fallback_got[0]
    assert shared == {"before": 1}


def test_base_exec_fallback_reraises():
    exc = KeyError("k")
    with pytest.raises(KeyError) as info:
        Node().exec_fallback(None, exc)
    assert info.value is exc


def test_max_retries_one_means_one_attempt(sleeps):
    n = Flaky(max_retries=1, wait=3)
    assert n.run({}) == "fb"
    assert n.attempts == [0]
    assert sleeps == []


def test_zero_wait_never_sleeps_a_positive_time(sleeps):
    n = Flaky(max_retries=4)
    n.run({})
    assert n.attempts == [0, 1, 2, 3]
    assert all(w == 0 for w in sleeps)


def test_backoff_multiplies_the_wait(sleeps):
    n = Flaky(max_retries=5, wait=1.0, backoff=2.0)
    n.run({})
    assert sleeps == [1.0, 2.0, 4.0, 8.0]


def test_max_wait_caps_each_wait(sleeps):
    n = Flaky(max_retries=6, wait=1.0, backoff=3.0, max_wait=5.0)
    n.run({})
    assert sleeps == [1.0, 3.0, 5.0, 5.0, 5.0]


def test_max_wait_below_wait_caps_the_first_wait(sleeps):
    n = Flaky(max_retries=3, wait=2.0, max_wait=0.5)
    n.run({})
    assert sleeps == [0.5, 0.5]


def test_jitter_adds_uniform_zero_to_jitter_seconds(sleeps):
    n = Flaky(max_retries=41, wait=1.0, backoff=2.0, max_wait=4.0, jitter=0.5)
    n.run({})
    bases = [min(1.0 * 2.0**k, 4.0) for k in range(40)]
    assert len(sleeps) == 40
    extras = [w - b for w, b in zip(sleeps, bases, strict=True)]
    assert all(0.0 <= e <= 0.5 for e in extras), extras
    assert len({round(e, 9) for e in extras}) > 1  # really random, not a constant


def test_jitter_alone_with_zero_wait(sleeps):
    n = Flaky(max_retries=21, jitter=0.1)
    n.run({})
    assert len(sleeps) == 20
    assert all(0.0 <= w <= 0.1 for w in sleeps)
    assert max(sleeps) > 0


def test_retry_on_class_skips_other_errors_to_fallback(sleeps):
    n = Flaky(max_retries=5, wait=1, error=KeyError, retry_on=ValueError)
    assert n.run({}) == "fb"
    assert n.attempts == [0]
    assert sleeps == []
    assert isinstance(n.fallback_got[0], KeyError)


def test_retry_on_class_retries_accepted_errors(sleeps):
    n = Flaky(fails=2, max_retries=5, error=ValueError, retry_on=ValueError)
    assert n.run({}) == "ok"
    assert n.attempts == [0, 1, 2]


def test_retry_on_accepts_subclasses(sleeps):
    n = Flaky(fails=1, max_retries=3, error=ConnectionResetError, retry_on=OSError)
    assert n.run({}) == "ok"
    assert n.attempts == [0, 1]


def test_retry_on_tuple(sleeps):
    for err, expected in [(KeyError, [0, 1, 2]), (ValueError, [0, 1, 2]), (TypeError, [0])]:
        n = Flaky(max_retries=3, error=err, retry_on=(ValueError, KeyError))
        assert n.run({}) == "fb"
        assert n.attempts == expected, err


def test_retry_on_predicate(sleeps):
    seen = []

    def transient(exc):
        seen.append(exc)
        return "transient" in str(exc)

    class Mixed(Flaky):
        def exec(self, prep_res):
            self.attempts.append(self.cur_retry)
            if self.cur_retry < 2:
                raise ValueError("transient glitch")
            raise ValueError("permanent failure")

    n = Mixed(max_retries=10, wait=0.1, retry_on=transient)
    assert n.run({}) == "fb"
    assert n.attempts == [0, 1, 2]
    assert str(n.fallback_got[0]) == "permanent failure"
    assert len(sleeps) == 2
    assert [str(e) for e in seen] == ["transient glitch", "transient glitch", "permanent failure"]


def test_unaccepted_error_on_later_attempt_stops_retrying(sleeps):
    class Turns(Flaky):
        def exec(self, prep_res):
            self.attempts.append(self.cur_retry)
            raise (ValueError if self.cur_retry == 0 else KeyError)("x")

    n = Turns(max_retries=5, retry_on=ValueError)
    assert n.run({}) == "fb"
    assert n.attempts == [0, 1]
    assert isinstance(n.fallback_got[0], KeyError)


def test_cur_retry_is_per_run_on_the_node(sleeps):
    n = Flaky(fails=1, max_retries=3)
    n.run({})
    n.attempts.clear()
    n.fails = 0
    n.run({})
    assert n.attempts == [0]


def test_retries_inside_a_graph_use_the_copy(sleeps):
    n = Flaky(fails=2, max_retries=3, wait=0.1, backoff=10)
    shared = {}
    Graph(n).run(shared)
    assert shared["res"] == "ok"
    assert n.attempts == [0, 1, 2]
    assert sleeps == [0.1, 1.0]


def test_batch_items_retry_and_wait_independently(sleeps):
    class FlakyItems(BatchNode):
        def prep(self, shared):
            return ["a", "b", "c"]

        def exec(self, item):
            calls.append((item, self.cur_retry))
            if item == "b" and self.cur_retry < 2:
                raise ValueError(item)
            return item.upper()

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    calls = []
    shared = {}
    FlakyItems(max_retries=3, wait=1.0, backoff=2.0).run(shared)
    assert shared["out"] == ["A", "B", "C"]
    assert calls == [("a", 0), ("b", 0), ("b", 1), ("b", 2), ("c", 0)]
    assert sleeps == [1.0, 2.0]  # the backoff restarts for each item


# --- async waits ----------------------------------------------------------------------------


class AsyncFlaky(AsyncNode):
    def __init__(self, fails=10**9, error=ValueError, **kw):
        super().__init__(**kw)
        self.fails, self.error = fails, error
        self.attempts = []
        self.fallback_got = []

    async def exec_async(self, prep_res):
        self.attempts.append(self.cur_retry)
        if len(self.attempts) <= self.fails:
            raise self.error(f"attempt {self.cur_retry}")
        return "ok"

    async def exec_fallback_async(self, prep_res, exc):
        self.fallback_got.append(exc)
        return "fb"

    async def post_async(self, shared, prep_res, exec_res):
        return exec_res


def test_async_waits_use_asyncio_sleep(async_sleeps, sleeps):
    n = AsyncFlaky(max_retries=5, wait=1.0, backoff=2.0, max_wait=3.0)
    assert asyncio.run(n.run_async({})) == "fb"
    assert n.attempts == [0, 1, 2, 3, 4]
    assert async_sleeps == [1.0, 2.0, 3.0, 3.0]
    assert sleeps == []  # never blocks the event loop


def test_async_jitter_bounds(async_sleeps):
    n = AsyncFlaky(max_retries=21, wait=0.5, jitter=0.25)
    asyncio.run(n.run_async({}))
    assert len(async_sleeps) == 20
    assert all(0.5 <= w <= 0.75 for w in async_sleeps)
    assert len(set(async_sleeps)) > 1


def test_async_retry_on_and_fallback(async_sleeps):
    n = AsyncFlaky(max_retries=4, error=KeyError, retry_on=lambda e: isinstance(e, ValueError))
    assert asyncio.run(n.run_async({})) == "fb"
    assert n.attempts == [0]
    n2 = AsyncFlaky(fails=2, max_retries=4, retry_on=(ValueError,))
    assert asyncio.run(n2.run_async({})) == "ok"
    assert n2.attempts == [0, 1, 2]


def test_async_default_fallback_reraises(async_sleeps):
    class Plain(AsyncNode):
        async def exec_async(self, prep_res):
            raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        asyncio.run(Plain(max_retries=2).run_async({}))


# --- timeouts -------------------------------------------------------------------------------


class Hangs(AsyncNode):
    """Hangs on attempts listed in `hang_on`; records cancellations."""

    def __init__(self, hang_on, **kw):
        super().__init__(**kw)
        self.hang_on = hang_on
        self.attempts, self.cancelled, self.fallback_got = [], [], []

    async def exec_async(self, prep_res):
        self.attempts.append(self.cur_retry)
        if self.cur_retry in self.hang_on:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.append(self.cur_retry)
                raise
        return f"done on {self.cur_retry}"

    async def post_async(self, shared, prep_res, exec_res):
        return exec_res


def test_timeout_cancels_attempt_and_raises_builtin_timeout_error():
    n = Hangs(hang_on={0}, timeout=0.05)
    with pytest.raises(TimeoutError) as info:
        asyncio.run(n.run_async({}))
    assert isinstance(info.value, TimeoutError)  # the builtin, also on 3.10
    assert n.cancelled == [0]


def test_timeout_is_retried_when_retry_on_accepts_it():
    n = Hangs(hang_on={0, 1}, timeout=0.05, max_retries=4)
    assert asyncio.run(n.run_async({})) == "done on 2"
    assert n.attempts == [0, 1, 2]
    assert n.cancelled == [0, 1]


def test_timeout_retry_on_timeout_error_class():
    n = Hangs(hang_on={0}, timeout=0.05, max_retries=2, retry_on=TimeoutError)
    assert asyncio.run(n.run_async({})) == "done on 1"


def test_timeout_not_accepted_goes_to_fallback():
    class WithFallback(Hangs):
        async def exec_fallback_async(self, prep_res, exc):
            self.fallback_got.append(exc)
            return "fb"

    n = WithFallback(hang_on={0, 1, 2}, timeout=0.05, max_retries=3, retry_on=ValueError)
    assert asyncio.run(n.run_async({})) == "fb"
    assert n.attempts == [0]
    assert isinstance(n.fallback_got[0], TimeoutError)


def test_fast_attempt_is_not_timed_out():
    n = Hangs(hang_on=set(), timeout=30)
    assert asyncio.run(n.run_async({})) == "done on 0"
    assert n.cancelled == []


@pytest.mark.parametrize("cls", [Node, BatchNode, ParallelBatchNode])
def test_sync_node_with_timeout_is_type_error(cls):
    with pytest.raises(TypeError, match="timeout"):
        cls(timeout=1.0)
