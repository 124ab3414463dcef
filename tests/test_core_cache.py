"""What CachePolicy promises, on every cache backend (fixture `cache`, real servers).

A hit skips exec and its retries; a miss runs exec and stores its result; a fallback result
is never stored; ttl expires entries; version invalidates; key= replaces the input part of
the key; the key is canonical JSON; MetricsNode stats gain cache_hits / cache_misses.
Single flight across threads and tasks, every node type, durable runs, process and Dask
executors (the cache stays in the calling process), and bad input.

`Watched` wraps the backend under test: it counts the calls that reach it (so a test can
wait until N callers have looked a key up, instead of sleeping) and refuses to be pickled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
from conftest import free_port, server

from kaygraph import (
    AsyncBatchNode,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchNode,
    BatchNode,
    Cache,
    CachePolicy,
    Graph,
    Interrupt,
    MetricsNode,
    Node,
    ParallelBatchNode,
    ValidatedNode,
)
from kaygraph.stores import MemoryCache, SQLiteStore

WAIT = 30.0  # seconds: a bound that only a broken implementation reaches


class Watched:
    """A Cache forwarding to `inner` that counts gets and records sets (key, value, ttl).

    `wait_gets(n)` blocks until `n` gets have returned (True) or WAIT passes (False);
    `on_get(count)` is called after each get. Pickling it is an error: a cache stays in
    the process that made it.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gets = 0
        self.sets: list[tuple[str, Any, float | None]] = []
        self.on_get: Any = None
        self._cond = threading.Condition()

    @property
    def hits(self) -> int:
        return int(self.inner.hits)

    @property
    def misses(self) -> int:
        return int(self.inner.misses)

    def get(self, key: str) -> Any:
        try:
            return self.inner.get(key)
        finally:
            with self._cond:
                self.gets += 1
                count = self.gets
                self._cond.notify_all()
            if self.on_get is not None:
                self.on_get(count)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        self.inner.set(key, value, ttl)
        with self._cond:
            self.sets.append((key, value, ttl))

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def clear(self) -> None:
        self.inner.clear()

    def wait_gets(self, n: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.gets >= n, WAIT)

    def __reduce__(self) -> Any:
        raise TypeError("a cache was pickled: it must stay in the calling process")


@pytest.fixture
def watched(cache: Any) -> Watched:
    return Watched(cache)


def stored(cache: Any, key: str) -> list[Any]:
    """[value] when the backend holds `key`, [] when it does not."""
    try:
        return [cache.get(key)]
    except KeyError:
        return []


def canonical_key(node: Any, part: Any, version: str = "") -> str:
    """The key CachePolicy promises, computed here independently."""
    text = json.dumps([type(node).__qualname__, version, part], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def test_watched_is_a_cache_and_refuses_pickling() -> None:
    import pickle

    assert isinstance(Watched(MemoryCache()), Cache)
    with pytest.raises(TypeError, match="a cache was pickled"):
        pickle.dumps(Watched(MemoryCache()))


# ---------------------------------------------------------------- hit, miss, fallback

class Flaky(MetricsNode, Node):
    """Fails the first `fails` attempts of each run of exec; records every attempt."""

    def __init__(self, fails: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fails, self.attempts = fails, []

    def prep(self, shared: dict) -> Any:
        return shared["input"]

    def exec(self, prep_res: Any) -> Any:
        self.attempts.append(prep_res)
        if self.cur_retry < self.fails:
            raise ConnectionError(f"attempt {self.cur_retry + 1} fails")
        return {"answer": prep_res, "attempts": self.cur_retry + 1}

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def test_a_miss_runs_exec_with_its_retries_and_stores_the_result(watched) -> None:
    node = Flaky(2, max_retries=3, cache_policy=CachePolicy(watched))
    shared = {"input": {"q": "weather", "n": 3}}
    node.run(shared)
    assert shared["out"] == {"answer": {"q": "weather", "n": 3}, "attempts": 3}
    assert len(node.attempts) == 3
    key = canonical_key(node, {"q": "weather", "n": 3})
    assert watched.sets == [(key, shared["out"], None)]
    assert stored(watched.inner, key) == [shared["out"]]


def test_a_hit_skips_exec_and_its_retries(watched) -> None:
    policy = CachePolicy(watched)
    events: list[str] = []
    Graph(Flaky(2, max_retries=3, cache_policy=policy)).run({"input": 7})
    node = Flaky(2, max_retries=3, cache_policy=policy)  # a new node, the same cache
    shared = {"input": 7}
    Graph(node).run(shared, listeners=[lambda e: events.append(e.kind)])
    assert node.attempts == []  # no attempt at all: no retry, no wait
    assert "attempt_failed" not in events and "step_end" in events
    assert shared["out"] == {"answer": 7, "attempts": 3}
    assert node.get_stats() == {"status": "no_executions", "cache_hits": 1, "cache_misses": 0}
    assert len(watched.sets) == 1


class Falls(Node):
    """exec always fails; the fallback gives a result that must not be cached."""

    calls = 0

    def prep(self, shared: dict) -> Any:
        return shared["input"]

    def exec(self, prep_res: Any) -> Any:
        type(self).calls += 1
        raise TimeoutError("the service is slow today")

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
        return {"fallback": str(exc)}

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def test_a_fallback_result_is_never_stored(watched) -> None:
    policy, Falls.calls = CachePolicy(watched), 0
    for run in (1, 2):
        shared = {"input": "q"}
        Falls(max_retries=2, cache_policy=policy).run(shared)
        assert shared["out"] == {"fallback": "the service is slow today"}
        assert Falls.calls == 2 * run  # both runs ran every attempt: nothing was served
    assert watched.sets == []
    assert stored(watched.inner, canonical_key(Falls(), "q")) == []


def test_ttl_reaches_the_backend_and_expires_the_entry(watched) -> None:
    policy = CachePolicy(watched, ttl=0.5)
    node = Flaky(0, cache_policy=policy)
    node.run({"input": "x"})
    node.run({"input": "x"})  # at once: well inside 0.5 s
    assert len(node.attempts) == 1
    assert [ttl for _, _, ttl in watched.sets] == [0.5]
    start = time.monotonic()
    while len(node.attempts) == 1:  # the entry expires: the next run computes again
        assert time.monotonic() - start < WAIT, "the entry never expired"
        time.sleep(0.02)  # polling a clock, not waiting for a thread
        node.run({"input": "x"})
    assert len(watched.sets) == 2


def test_a_new_version_misses_every_old_entry(watched) -> None:
    def run(version: str) -> int:
        node = Flaky(0, cache_policy=CachePolicy(watched, version=version))
        node.run({"input": "same"})
        return len(node.attempts)

    assert [run("v1"), run("v1"), run("v2"), run("v2"), run("v1"), run("")] == [1, 0, 1, 0, 0, 1]
    keys = [key for key, _, _ in watched.sets]
    assert keys == [canonical_key(Flaky(0), "same", v) for v in ("v1", "v2", "")]


def test_key_replaces_the_input_part_of_the_key(watched) -> None:
    class Fetch(Node):
        calls: list[Any] = []

        def prep(self, shared: dict) -> Any:
            return shared["request"]

        def exec(self, request: Any) -> Any:
            self.calls.append(request["url"])
            return request["url"].upper()

        def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    policy = CachePolicy(watched, key=lambda request: request["url"], version="v3")
    # prep_res holds what JSON cannot (a session object): key= makes that fine, and only
    # the url counts, so another session with the same url is a hit.
    for session in (object(), object()):
        shared = {"request": {"url": "https://x.test/a", "session": session}}
        Fetch(cache_policy=policy).run(shared)
        assert shared["out"] == "HTTPS://X.TEST/A"
    Fetch(cache_policy=policy).run({"request": {"url": "https://x.test/b", "session": None}})
    assert Fetch.calls == ["https://x.test/a", "https://x.test/b"]
    key = canonical_key(Fetch(), "https://x.test/a", "v3")
    assert policy.key_for(Fetch(), {"url": "https://x.test/a"}) == key
    assert stored(watched.inner, key) == ["HTTPS://X.TEST/A"]


def test_the_key_is_canonical_json_of_class_version_and_prep_res(watched) -> None:
    class Other(Flaky):
        pass

    policy = CachePolicy(watched)
    a = {"b": [1, {"y": 2, "x": 1}], "a": "é", "n": None}
    b = {"n": None, "a": "é", "b": [1, {"x": 1, "y": 2}]}  # same content, other order
    assert list(a) != list(b)
    node = Flaky(0, cache_policy=policy)
    assert policy.key_for(node, a) == policy.key_for(node, b) == canonical_key(node, a)
    assert len(policy.key_for(node, a)) == 64
    node.run({"input": a})
    node.run({"input": b})
    assert node.attempts == [a]  # the second order was a hit
    other = Other(0, cache_policy=policy)  # same prep_res, another class: its own entry
    other.run({"input": a})
    assert len(other.attempts) == 1
    assert policy.key_for(other, a) != policy.key_for(node, a)
    assert [k for k, _, _ in watched.sets] == [canonical_key(node, a), canonical_key(other, a)]


def test_metrics_node_stats_gain_cache_hits_and_misses(watched) -> None:
    policy = CachePolicy(watched)
    node = Flaky(1, max_retries=2, cache_policy=policy)
    for value in (1, 1, 2, 1, 2):
        node.run({"input": value})
    stats = node.get_stats()
    assert (stats["cache_hits"], stats["cache_misses"]) == (3, 2)
    assert stats["total_executions"] == 2 and stats["total_retries"] == 2

    class Items(MetricsNode, BatchNode):
        def prep(self, shared: dict) -> Any:
            return shared["items"]

        def exec(self, item: Any) -> Any:
            return item * 10

    batch = Items(cache_policy=CachePolicy(watched, version="batch"))
    batch.run({"items": [1, 2, 1, 3, 2]})
    stats = batch.get_stats()
    assert (stats["cache_hits"], stats["cache_misses"], stats["total_executions"]) == (2, 3, 3)
    plain = Flaky(0)  # no policy: no cache keys in the stats
    plain.run({"input": 1})
    assert "cache_hits" not in plain.get_stats()


# ---------------------------------------------------------------- single flight

N = 50


class Slow(Node):
    """exec counts its calls and returns only once N callers have looked the key up."""

    def __init__(self, watched: Watched, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watched, self.calls, self.lock = watched, [], threading.Lock()

    def prep(self, shared: dict) -> Any:
        return shared.get("input", "one key")

    def exec(self, item: Any) -> Any:
        with self.lock:
            self.calls.append(item)
        # With single flight every other caller waits on this call; without it, each of
        # them would be here too, so the count below would be N.
        if not self.watched.wait_gets(N):
            raise AssertionError(f"only {self.watched.gets} of {N} callers looked the key up")
        return {"value": f"computed {item}"}

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def test_single_flight_threads_running_one_node(watched) -> None:
    node = Slow(watched, cache_policy=CachePolicy(watched))
    outs: list[Any] = []

    def one() -> None:
        shared: dict = {}
        node.run(shared)  # each run is on a copy of the node, as a graph's steps are
        outs.append(shared["out"])

    threads = [threading.Thread(target=one) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert node.calls == ["one key"]
    assert outs == [{"value": "computed one key"}] * N
    assert len(watched.sets) == 1


class SlowItems(ParallelBatchNode):
    def __init__(self, watched: Watched, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slow = Slow(watched)

    def prep(self, shared: dict) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        return self.slow.exec(item)

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def test_single_flight_parallel_batch_items(watched) -> None:
    node = SlowItems(watched, max_workers=N, cache_policy=CachePolicy(watched))
    shared = {"items": ["same"] * N}
    node.run(shared)
    assert node.slow.calls == ["same"]
    assert shared["out"] == [{"value": "computed same"}] * N


def test_single_flight_shares_the_error_and_stores_nothing(watched) -> None:
    class Broken(Slow):
        def exec(self, item: Any) -> Any:
            super().exec(item)
            raise ValueError("the model is down")

    node = Broken(watched, cache_policy=CachePolicy(watched))
    errors: list[BaseException] = []

    def one() -> None:
        try:
            node.run({})
        except ValueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == N and all(str(e) == "the model is down" for e in errors)
    # The callers in flight got the one call's own error object. A caller that looked up
    # just as the call failed finds no entry and no flight, so it runs its own call: an
    # error is shared, never stored.
    assert len({id(e) for e in errors}) == len(node.calls) < N // 2
    assert watched.sets == []


class SlowAsync(AsyncNode):
    """The async Slow: exec_async awaits an event set when N callers have looked up."""

    def __init__(self, watched: Watched, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watched, self.calls = watched, []

    async def prep_async(self, shared: dict) -> Any:
        return shared.get("input", "one key")

    async def exec_async(self, item: Any) -> Any:
        self.calls.append(item)
        looked_up = asyncio.Event()
        if self.watched.gets >= N:
            looked_up.set()
        self.watched.on_get = lambda count: count >= N and looked_up.set()
        await asyncio.wait_for(looked_up.wait(), WAIT)
        return {"value": f"computed {item}"}

    async def post_async(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


def test_single_flight_asyncio_tasks(watched) -> None:
    node = SlowAsync(watched, cache_policy=CachePolicy(watched))
    shareds: list[dict] = [{} for _ in range(N)]

    async def main() -> None:
        await asyncio.gather(*(node.run_async(s) for s in shareds))

    asyncio.run(main())
    assert node.calls == ["one key"]
    assert [s["out"] for s in shareds] == [{"value": "computed one key"}] * N


def test_single_flight_async_parallel_batch_items(watched) -> None:
    class Items(AsyncParallelBatchNode):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.slow = SlowAsync(watched)

        async def prep_async(self, shared: dict) -> Any:
            return shared["items"]

        async def exec_async(self, item: Any) -> Any:
            return await self.slow.exec_async(item)

        async def post_async(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    node = Items(cache_policy=CachePolicy(watched))
    shared = {"items": ["same"] * N}
    asyncio.run(node.run_async(shared))
    assert node.slow.calls == ["same"]
    assert shared["out"] == [{"value": "computed same"}] * N


def test_a_call_that_lands_between_a_look_up_and_its_take_off_is_still_a_hit(watched) -> None:
    # B looks up first and misses; before B takes off, A runs exec and stores the result.
    # B must find it (the policy looks again once it holds the flight), not run exec.
    node = Flaky(0, cache_policy=CachePolicy(watched))
    landed, outs = threading.Event(), {}
    inner_set = watched.set

    def set_and_signal(key: str, value: Any, ttl: float | None = None) -> None:
        inner_set(key, value, ttl)
        landed.set()

    watched.set = set_and_signal  # type: ignore[method-assign]
    watched.on_get = lambda count: (threading.current_thread().name == "B" and count == 1
                                    and landed.wait(WAIT))

    def run(name: str) -> None:
        shared = {"input": "k"}
        node.run(shared)
        outs[name] = shared["out"]

    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    assert watched.wait_gets(1)  # B has missed and waits in on_get
    run("A")
    b.join()
    assert node.attempts == ["k"]  # A's exec only
    assert outs == {"A": {"answer": "k", "attempts": 1}, "B": {"answer": "k", "attempts": 1}}
    assert len(watched.sets) == 1


def test_a_waiter_runs_its_own_call_when_the_call_in_flight_is_abandoned(watched) -> None:
    in_exec, b_started, gets = threading.Event(), threading.Event(), {}

    class Owner(Node):
        calls: list[str] = []

        def exec(self, prep_res: Any) -> Any:
            self.calls.append(threading.current_thread().name)
            if len(self.calls) == 1:  # the first call: wait until B looked up, then stop hard
                in_exec.set()
                assert b_started.wait(WAIT) and watched.wait_gets(gets["before_b"] + 1)
                raise KeyboardInterrupt  # a BaseException: no result, no error to share
            return "computed by the second call"

    node = Owner(cache_policy=CachePolicy(watched))
    outs: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            node.run({})
            outs[name] = "ran"
        except KeyboardInterrupt:
            outs[name] = "interrupted"

    a = threading.Thread(target=run, args=("A",), name="A")
    a.start()
    assert in_exec.wait(WAIT)  # A holds the flight
    gets["before_b"] = watched.gets
    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    b_started.set()
    a.join()
    b.join()
    assert outs == {"A": "interrupted", "B": "ran"} and Owner.calls == ["A", "B"]
    assert [v for _, v, _ in watched.sets] == ["computed by the second call"]


def test_async_a_waiter_runs_its_own_call_when_the_task_in_flight_is_cancelled(watched) -> None:
    calls: list[str] = []

    in_exec: list[asyncio.Event] = []

    class Owner(AsyncNode):
        async def exec_async(self, prep_res: Any) -> Any:
            calls.append(prep_res)
            if len(calls) == 1:
                in_exec[0].set()
                await asyncio.Event().wait()  # until cancelled
            return f"computed by call {len(calls)}"

        async def post_async(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    node = Owner(cache_policy=CachePolicy(watched))

    async def main() -> dict:
        waiting = asyncio.Event()
        in_exec.append(asyncio.Event())
        owner = asyncio.ensure_future(node.run_async({}))
        await asyncio.wait_for(in_exec[0].wait(), WAIT)  # the owner holds the flight
        before = watched.gets
        watched.on_get = lambda count: count > before and waiting.set()
        shared: dict = {}
        waiter = asyncio.ensure_future(node.run_async(shared))
        await asyncio.wait_for(waiting.wait(), WAIT)  # both looked up: the waiter waits
        owner.cancel()
        await asyncio.wait_for(waiter, WAIT)
        with pytest.raises(asyncio.CancelledError):
            await owner
        return shared

    assert asyncio.run(main()) == {"out": "computed by call 2"}
    assert len(calls) == 2 and len(watched.sets) == 1


def test_async_an_error_is_not_stored_and_the_next_call_runs_again(watched) -> None:
    calls: list[Any] = []

    class Fails(AsyncNode):
        async def exec_async(self, prep_res: Any) -> Any:
            calls.append(prep_res)
            raise RuntimeError("quota exceeded")

    policy = CachePolicy(watched, ttl=60, version="v9")
    assert repr(policy) == f"CachePolicy({watched!r}, ttl=60, version='v9')"
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match="quota exceeded"):
            asyncio.run(Fails(cache_policy=policy).run_async({}))
        assert len(calls) == attempt
    assert watched.sets == []


# ---------------------------------------------------------------- every node type

def work(calls: list, x: Any) -> Any:
    calls.append(x)
    if x == "bad":
        raise ValueError("bad input")
    return {"in": x}


def make(kind: str, calls: list, **kwargs: Any) -> Any:
    """A node of `kind` that runs work() on shared["input"] (or on each of its items)."""
    batch = "Batch" in kind
    base = {"Node": Node, "BatchNode": BatchNode, "ParallelBatchNode": ParallelBatchNode,
            "AsyncNode": AsyncNode, "AsyncBatchNode": AsyncBatchNode,
            "AsyncParallelBatchNode": AsyncParallelBatchNode,
            "ValidatedNode": ValidatedNode}[kind]

    class Made(base):  # type: ignore[misc, valid-type]
        def prep(self, shared: dict) -> Any:
            return shared["input"]

        def exec(self, x: Any) -> Any:
            return work(calls, x)

        def exec_fallback(self, x: Any, exc: Exception) -> Any:
            return {"fallback": x}

        def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

        def validate_output(self, result: Any) -> Any:  # used by ValidatedNode only
            return {**result, "valid": True} if "in" in result else result

    Made.__qualname__ = f"Made{kind}"  # one class name per kind, for the keys
    if not batch:
        kwargs.pop("checkpoint_items", None)
    return Made(**kwargs)


KINDS = ["Node", "BatchNode", "ParallelBatchNode", "AsyncNode", "AsyncBatchNode",
         "AsyncParallelBatchNode", "ValidatedNode"]


def run_node(node: Any, shared: dict, store: Any = None) -> None:
    """Run `node` alone, or as the only node of a durable (A)sync graph when `store`."""
    durable = {} if store is None else {"run_id": uuid.uuid4().hex, "store": store}
    if node._is_async:
        if store is None:
            asyncio.run(node.run_async(shared))
        else:
            asyncio.run(AsyncGraph(node).run_async(shared, **durable))
    elif store is None:
        node.run(shared)
    else:
        Graph(node).run(shared, **durable)


@pytest.mark.parametrize("durable", [False, True], ids=["plain", "durable"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_node_type_hits_misses_and_stores(watched, kind, durable, tmp_path) -> None:
    store = SQLiteStore(tmp_path / "runs.sqlite3") if durable else None
    policy, calls = CachePolicy(watched, version=kind), []
    batch = "Batch" in kind
    valid = {"valid": True} if kind == "ValidatedNode" else {}

    def run(value: Any) -> Any:
        node = make(kind, calls, cache_policy=policy, checkpoint_items=True)
        shared = {"input": value}
        run_node(node, shared, store)
        return shared["out"]

    if batch:
        assert run([1, 2, 1, 3]) == [{"in": x} for x in (1, 2, 1, 3)]
        assert sorted(calls) == [1, 2, 3]  # the second 1 was a hit (or a single flight)
        assert run([3, 1, 2]) == [{"in": x} for x in (3, 1, 2)]
        assert sorted(calls) == [1, 2, 3]
    else:
        assert [run(1), run(2), run(1), run(2)] == [{"in": 1, **valid}, {"in": 2, **valid}] * 2
        assert calls == [1, 2]
    node = make(kind, calls)
    assert stored(watched.inner, canonical_key(node, 1, kind)) == [{"in": 1, **valid}]
    # A fallback result is never stored, whatever the node type.
    for _ in (1, 2):
        out = run(["bad", 1] if batch else "bad")
        assert out == ([{"fallback": "bad"}, {"in": 1}] if batch else {"fallback": "bad"})
    assert calls.count("bad") == 2
    assert stored(watched.inner, canonical_key(node, "bad", kind)) == []


def test_validated_node_hit_skips_validation_and_invalid_output_is_not_stored(watched) -> None:
    seen: list[Any] = []

    class Checked(ValidatedNode):
        def prep(self, shared: dict) -> Any:
            return shared["input"]

        def validate_input(self, x: Any) -> Any:
            seen.append(("in", x))
            return x

        def exec(self, x: Any) -> Any:
            return -x if x == 13 else x * 2

        def validate_output(self, result: Any) -> Any:
            seen.append(("out", result))
            if result < 0:
                raise ValueError(f"negative result {result}")
            return result

        def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    policy = CachePolicy(watched)
    for _ in (1, 2):
        shared = {"input": 4}
        Checked(cache_policy=policy).run(shared)
        assert shared["out"] == 8
    assert seen == [("in", 4), ("out", 8)]  # the hit returned the validated value as is
    for _ in (1, 2):
        with pytest.raises(ValueError, match="negative result -13"):
            Checked(cache_policy=policy).run({"input": 13})
    assert [k for k, _, _ in watched.sets] == [canonical_key(Checked(), 4)]


# ---------------------------------------------------------------- durable runs

class Ask(Node):
    """Asks a person in exec (a durable run's interrupt), through the cache."""

    calls = 0

    def prep(self, shared: dict) -> Any:
        return shared["order"]

    def exec(self, order: Any) -> Any:
        type(self).calls += 1
        return {"order": order, "approved": self.interrupt({"ship": order})}

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["decision"] = exec_res


class Record(Node):
    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["before"] = "kept"


def test_durable_run_an_interrupt_stores_nothing_and_the_answer_is_cached(watched,
                                                                            tmp_path) -> None:
    store = SQLiteStore(tmp_path / "runs.sqlite3")
    policy, Ask.calls = CachePolicy(watched), 0
    first, ask = Record(node_id="first"), Ask(node_id="ask", cache_policy=policy)
    first >> ask
    graph = Graph(first)
    shared = {"order": 42}
    with pytest.raises(Interrupt) as pause:
        graph.run(shared, run_id="r1", store=store)
    assert pause.value.payload == {"ship": 42}
    assert watched.sets == []  # an interrupted exec leaves nothing in the cache
    graph.resume(shared, run_id="r1", store=store, value="yes")
    assert shared["decision"] == {"order": 42, "approved": "yes"} and Ask.calls == 2
    assert stored(watched.inner, canonical_key(ask, 42)) == [shared["decision"]]
    # Another run of the same order: a hit, so exec (and its question) never runs.
    again = {"order": 42}
    graph.run(again, run_id="r2", store=store)
    assert again == {"order": 42, "before": "kept", "decision": shared["decision"]}
    assert Ask.calls == 2
    assert store.load("r2")["status"] == "done"


def test_durable_batch_items_recorded_by_the_store_are_not_looked_up_again(watched,
                                                                            tmp_path) -> None:
    store = SQLiteStore(tmp_path / "runs.sqlite3")
    calls: list[Any] = []

    class Items(ParallelBatchNode):
        def prep(self, shared: dict) -> Any:
            return shared["input"]

        def exec(self, x: Any) -> Any:
            return work(calls, x)

        def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
            if shared.pop("fail", False):
                raise RuntimeError("crash after the batch")
            shared["out"] = exec_res

    items = Items(node_id="items", checkpoint_items=True, cache_policy=CachePolicy(watched))
    shared = {"input": [1, 2, 3], "fail": True}
    with pytest.raises(RuntimeError, match="crash after the batch"):
        Graph(items).run(shared, run_id="r", store=store)
    gets = watched.gets
    Graph(items).resume(shared, run_id="r", store=store)
    assert shared["out"] == [{"in": 1}, {"in": 2}, {"in": 3}] and sorted(calls) == [1, 2, 3]
    # The re-run of the failed step took its item results from the store (no look-up).
    assert watched.gets == gets


# ---------------------------------------------------------------- process executors

class Tagged(ParallelBatchNode):
    """Returns (item, worker pid, a fresh tag) per item; "bad" falls back.

    Two results share a tag only if the second came from the cache.
    """

    def prep(self, shared: dict) -> Any:
        return shared["items"]

    def exec(self, item: Any) -> Any:
        if item == "bad":
            raise ValueError("bad item")
        return {"item": item, "pid": os.getpid(), "tag": uuid.uuid4().hex}

    def exec_fallback(self, item: Any, exc: Exception) -> Any:
        return {"fallback": item, "pid": os.getpid()}

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


class TaggedStats(MetricsNode, Tagged):
    pass


def check_remote(watched: Watched, executor: Any) -> None:
    """Two runs of Tagged on `executor`: the first in its workers, the second from the
    cache, which only this process touched (Watched cannot be pickled)."""
    node = TaggedStats(executor=executor, cache_policy=CachePolicy(watched))
    first = {"items": [1, 2, "bad", 3]}
    node.run(first)
    here = os.getpid()
    assert [r.get("item", r.get("fallback")) for r in first["out"]] == [1, 2, "bad", 3]
    assert here not in {r["pid"] for r in first["out"]}  # exec ran in the workers
    assert len({r["tag"] for r in first["out"] if "tag" in r}) == 3
    assert watched.gets == 4  # every item was looked up here
    assert sorted(v["item"] for _, v, _ in watched.sets) == [1, 2, 3]  # not the fallback
    second = {"items": [3, 1, "bad", 2]}
    node.run(second)
    by_item = {r["item"]: r for r in first["out"] if "item" in r}
    assert [second["out"][i] for i in (0, 1, 3)] == [by_item[3], by_item[1], by_item[2]]
    assert second["out"][2]["fallback"] == "bad"  # computed again, in a worker
    assert len(watched.sets) == 3
    stats = node.get_stats()
    assert (stats["cache_hits"], stats["cache_misses"]) == (3, 5)


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


def test_process_pool_consults_the_cache_in_the_calling_process(watched, pool) -> None:
    check_remote(watched, pool)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip(
        "distributed",
        reason='needs Dask, the `examples` (or `scale`) extra: pip install -e ".[examples]"')
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 host="127.0.0.1", dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_dask_executor_consults_the_cache_in_the_calling_process(watched, dask_client) -> None:
    check_remote(watched, dask_client.get_executor(pure=False))


# ---------------------------------------------------------------- bad input

def test_a_policy_that_is_not_a_cache_policy_is_a_type_error_naming_it(cache) -> None:
    with pytest.raises(TypeError, match=r"cache_policy must be a CachePolicy, got .*MemoryCache"):
        Node(cache_policy=MemoryCache())
    with pytest.raises(TypeError, match=r"cache_policy must be a CachePolicy, got 'v2' \(str\)"):
        AsyncParallelBatchNode(cache_policy="v2")
    with pytest.raises(TypeError, match=r"Wrong\.cache_policy must be a CachePolicy, got"):
        class Wrong(Node):
            cache_policy = cache  # the cache itself, not a policy around it
    with pytest.raises(TypeError, match=r"cache must be a Cache .*got \{\} \(dict\)"):
        CachePolicy({})
    with pytest.raises(TypeError, match="key must be a callable prep_res -> str, got 'url'"):
        CachePolicy(cache, key="url")
    with pytest.raises(TypeError, match="version must be a str, got 2"):
        CachePolicy(cache, version=2)
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'miss', got 'ignore'"):
        CachePolicy(cache, on_error="ignore")


@pytest.mark.parametrize(("ttl", "error", "message"), [
    (0, ValueError, "ttl must be > 0, got 0"),
    (-1, ValueError, "ttl must be > 0, got -1"),
    (-0.5, ValueError, "ttl must be > 0, got -0.5"),
    (math.nan, ValueError, "ttl must be a finite number, got nan"),
    (math.inf, ValueError, "ttl must be a finite number, got inf"),
    (-math.inf, ValueError, "ttl must be a finite number, got -inf"),
    ("60", TypeError, "ttl must be a number, got '60' (str)"),
    (True, TypeError, "ttl must be a number, got True (bool)"),
])
def test_bad_ttl_is_an_error_naming_it(cache, ttl, error, message) -> None:
    with pytest.raises(error) as info:
        CachePolicy(cache, ttl=ttl)
    assert str(info.value) == message


class Write(Node):
    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["written"] = ["by", "an", "earlier", "node"]


def run_after_a_write(node: Any, shared: dict) -> BaseException:
    """Run Write >> node on `shared`; return the error raised."""
    write = Write(node_id="write")
    write >> node
    with pytest.raises(Exception) as info:
        Graph(write).run(shared)
    return info.value


class Generic(Node):
    """Returns prep_res["result"] (or "ok"); counts its calls on the class."""

    calls = 0

    def prep(self, shared: dict) -> Any:
        return shared.get("prep_res", "default")

    def exec(self, prep_res: Any) -> Any:
        Generic.calls += 1
        return prep_res["result"] if isinstance(prep_res, dict) else "ok"

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> None:
        shared["out"] = exec_res


@pytest.mark.parametrize(("prep_res", "what"), [
    ({1, 2}, "set"), (b"bytes", "bytes"), ({"when": object()}, "dict"), (Write(), "Write")])
def test_a_prep_res_json_cannot_hold_without_key_is_a_type_error_naming_the_node(
        watched, prep_res, what) -> None:
    Generic.calls = 0
    shared = {"prep_res": prep_res}
    error = run_after_a_write(Generic(node_id="embed", cache_policy=CachePolicy(watched)),
                              shared)
    assert isinstance(error, TypeError)
    msg = str(error)
    assert msg.startswith("node 'embed': its cache key needs prep_res as JSON, which cannot "
                          f"hold {what}"), msg
    assert "pass CachePolicy(key=...)" in msg
    assert shared["written"] == ["by", "an", "earlier", "node"]  # earlier writes are kept
    assert Generic.calls == 0 and watched.gets == 0 and watched.sets == []


def test_a_key_function_returning_a_non_str_is_a_type_error_naming_the_node(watched) -> None:
    Generic.calls = 0
    shared = {"prep_res": "abc"}
    error = run_after_a_write(
        Generic(node_id="fetch", cache_policy=CachePolicy(watched, key=lambda p: len(p))), shared)
    assert isinstance(error, TypeError)
    assert str(error) == ("node 'fetch': the cache key function returned 3 (int); it must "
                          "return a str")
    assert shared["written"] == ["by", "an", "earlier", "node"] and "out" not in shared
    assert Generic.calls == 0 and watched.sets == []


def test_a_result_json_cannot_hold_is_a_type_error_naming_the_node_and_lands(watched) -> None:
    class Odd(Node):
        calls = 0

        def exec(self, prep_res: Any) -> Any:
            type(self).calls += 1
            return {"tags": {"a", "b"}}

    for attempt in (1, 2):  # the failed call left no flight behind: the second runs too
        with pytest.raises(TypeError, match=r"^node 'odd': its result cannot be cached: cache "
                                            r"value for key '[0-9a-f]{64}' cannot be serial"):
            Odd(node_id="odd", cache_policy=CachePolicy(watched)).run({})
        assert Odd.calls == attempt
    assert watched.sets == []


def down_cache(backend: str) -> tuple[Any, str]:
    """A RedisCache or PostgresCache on a port where nothing listens, and its name."""
    port = free_port()
    if backend == "redis":
        server("KAYGRAPH_TEST_REDIS_URL", "redis")
        from kaygraph.redis import RedisCache

        return RedisCache(f"redis://127.0.0.1:{port}/0"), f"Redis at redis://127.0.0.1:{port}/0"
    server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
    from kaygraph.postgres import PostgresCache

    return (PostgresCache(f"postgresql://kg@127.0.0.1:{port}/kg"),
            f"PostgreSQL at 127.0.0.1:{port}")


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_a_backend_that_is_down_is_a_connection_error_naming_it(backend, tmp_path) -> None:
    down, name = down_cache(backend)
    Generic.calls = 0
    shared: dict = {"prep_res": "x"}
    error = run_after_a_write(
        Generic(node_id="embed", max_retries=3, cache_policy=CachePolicy(down)), shared)
    assert isinstance(error, ConnectionError), error
    assert str(error).startswith(f"{name} cannot be reached"), error
    assert shared["written"] == ["by", "an", "earlier", "node"] and "out" not in shared
    assert Generic.calls == 0  # never retried: the cache, not exec, failed
    # In a durable run the failure is recorded, with the earlier write in the checkpoint.
    store = SQLiteStore(tmp_path / "runs.sqlite3")
    write = Write(node_id="write")
    write >> Generic(node_id="embed", cache_policy=CachePolicy(down))
    with pytest.raises(ConnectionError, match=name):
        Graph(write).run({"input": "given"}, run_id="r", store=store)
    checkpoint = store.load("r")
    assert checkpoint["status"] == "failed" and checkpoint["error"]["type"] == "ConnectionError"
    assert checkpoint["shared"]["written"] == ["by", "an", "earlier", "node"]
    down.close()


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_on_error_miss_runs_exec_and_logs_once(backend, caplog) -> None:
    down, name = down_cache(backend)
    Generic.calls = 0

    class Counted(MetricsNode, Generic):
        pass

    node = Counted(node_id="embed", cache_policy=CachePolicy(down, on_error="miss"))
    with caplog.at_level(logging.WARNING, logger="kaygraph"):
        for _ in range(3):
            shared = {"prep_res": {"result": "fresh"}}
            node.run(shared)
            assert shared["out"] == "fresh"
        asyncio.run(AsyncGraph(Counted(node_id="again", cache_policy=node.cache_policy))
                    .run_async({"prep_res": "x"}))
    assert Generic.calls == 4  # every run was a miss: computed, nothing served
    stats = node.get_stats()
    assert (stats["cache_hits"], stats["cache_misses"]) == (0, 3)
    records = [r for r in caplog.records if r.name == "kaygraph" and "on_error" in r.message]
    assert len(records) == 1, [r.message for r in records]
    message = records[0].getMessage()
    assert name in message and "logged once" in message, message
    down.close()
