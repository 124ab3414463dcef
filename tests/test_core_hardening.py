"""Defects found by trying to break the core (issue 9): each test failed before its fix."""

import asyncio
import math
import threading
import tracemalloc

import pytest

from kaygraph import (
    AsyncBatchGraph,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BatchGraph,
    Graph,
    MetricsNode,
    Node,
    ParallelBatchNode,
)


class Boom(Exception):
    pass


class Mark(Node):
    """Appends (its id, the params' "k") to shared["seen"]."""

    def __init__(self, name):
        super().__init__(node_id=name)

    def prep(self, shared):
        shared.setdefault("seen", []).append((self.node_id, self.params.get("k")))


class AMark(AsyncNode):
    def __init__(self, name):
        super().__init__(node_id=name)

    async def prep_async(self, shared):
        await asyncio.sleep(0)
        shared.setdefault("seen", []).append((self.node_id, self.params.get("k")))


def batch_of(cls, node_cls, n=3, **kw):
    class Batch(cls):
        def prep(self, shared):
            return [{"k": i} for i in range(n)]

    a, b = node_cls("a"), node_cls("b")
    a >> b
    return Batch(a, **kw)


# --- 1. stream runs what run runs -----------------------------------------------------------


def test_stream_of_a_batch_graph_runs_every_params_dict_like_run():
    ran, streamed = {}, {}
    batch_of(BatchGraph, Mark).run(ran)
    steps = list(batch_of(BatchGraph, Mark).stream(streamed))
    assert streamed["seen"] == ran["seen"] == [(n, k) for k in range(3) for n in "ab"]
    assert [(s.node.node_id, s.node.params["k"]) for s in steps] == streamed["seen"]


@pytest.mark.parametrize("cls", [AsyncBatchGraph, AsyncParallelBatchGraph])
def test_stream_async_of_async_batch_graphs_runs_every_params_dict(cls):
    async def main():
        ran, streamed = {}, {}
        await batch_of(cls, AMark).run_async(ran)
        steps = [s async for s in batch_of(cls, AMark).stream_async(streamed)]
        return ran, streamed, steps

    ran, streamed, steps = asyncio.run(main())
    expected = {(n, k) for k in range(3) for n in "ab"}
    assert set(ran["seen"]) == set(streamed["seen"]) == expected and len(steps) == 6
    assert {(s.node.node_id, s.node.params["k"]) for s in steps} == expected
    if cls is AsyncBatchGraph:  # one run after another
        assert streamed["seen"] == [(n, k) for k in range(3) for n in "ab"]


def test_stream_async_of_a_parallel_batch_graph_raises_a_run_error_and_stops():
    class Fail(AsyncNode):
        async def exec_async(self, prep_res):
            if self.params["k"] == 1:
                raise Boom("run 1")

    class Batch(AsyncParallelBatchGraph):
        def prep(self, shared):
            return [{"k": i} for i in range(3)]

    async def main():
        with pytest.raises(Boom, match="run 1"):
            async for _ in Batch(Fail()).stream_async({}):
                pass
        return len(asyncio.all_tasks())

    assert asyncio.run(main()) == 1  # only main: nothing left running


# --- 2. only kaygraph's own timer says "timed out" ------------------------------------------


def test_a_timeout_error_raised_by_exec_async_keeps_its_own_message():
    class Client(AsyncNode):
        async def exec_async(self, prep_res):
            raise TimeoutError("read timeout from the client")

    with pytest.raises(TimeoutError) as info:
        asyncio.run(Client(timeout=30).run_async({}))
    assert str(info.value) == "read timeout from the client"


def test_kaygraph_timeout_still_names_the_node_and_the_attempt():
    class Slow(AsyncNode):
        async def exec_async(self, prep_res):
            await asyncio.sleep(30)

    with pytest.raises(TimeoutError, match=r"node 'Slow' attempt 2 timed out after 0.05 s"):
        asyncio.run(Slow(max_retries=2, timeout=0.05).run_async({}))


def test_a_cancellation_from_outside_is_not_turned_into_a_timeout():
    class Slow(AsyncNode):
        async def exec_async(self, prep_res):
            self.started.set()
            await asyncio.sleep(30)

    async def main():
        node = Slow(timeout=10)
        node.started = asyncio.Event()
        task = asyncio.ensure_future(node.run_async({}))
        await node.started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


# --- 3. fail-fast stops pulling input, whatever an item does with its cancellation ----------


def test_bounded_fan_out_stops_pulling_when_an_item_absorbs_its_cancellation():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    class Stubborn(AsyncParallelBatchNode):
        def prep(self, shared):
            return items()

        async def exec_async(self, item):
            if item == 0:
                await asyncio.sleep(0)  # let item 1 start first
                raise Boom("item 0")
            if item == 1:
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    return "absorbed the cancellation"
            return item

    with pytest.raises(Boom):
        asyncio.run(Stubborn(max_concurrency=2).run_async({}))
    assert len(pulled) <= 3, pulled


# --- 4. a node run alone runs on its own copy -----------------------------------------------


def test_concurrent_runs_of_one_node_do_not_share_cur_retry():
    a_second, b_started = threading.Event(), threading.Event()
    seen = {}

    class Flaky(Node):
        def prep(self, shared):
            return shared["who"]

        def exec(self, who):
            if who == "A":
                if self.cur_retry == 0:
                    raise Boom("A fails once")
                a_second.set()
                assert b_started.wait(10)
            else:
                assert a_second.wait(10)
                b_started.set()
            seen[who] = self.cur_retry

    node = Flaky(max_retries=2)
    threads = [threading.Thread(target=node.run, args=({"who": w},)) for w in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert seen == {"A": 1, "B": 0}
    assert node.cur_retry == 0  # the node itself was never run


def test_run_async_of_a_node_runs_on_a_copy():
    class Once(AsyncNode):
        async def exec_async(self, prep_res):
            self.touched = True
            return self.cur_retry

    node = Once()
    asyncio.run(node.run_async({}))
    assert not hasattr(node, "touched")


# --- 5. __slots__ would be lost in every copy: refused at class creation --------------------


def test_a_node_class_with_slots_is_refused_when_defined():
    with pytest.raises(TypeError, match=r"WithSlots.*__slots__.*\('model',\).*drop __slots__"):
        class WithSlots(Node):
            __slots__ = ("model",)


def test_empty_slots_of_a_mixin_are_fine():
    class Mixin:
        __slots__ = ()

    class Fine(Mixin, Node):
        def exec(self, prep_res):
            return "ok"

    assert Graph(Fine()).run({}) is None


# --- 6. capped backoff never overflows; non-finite numbers are refused ----------------------


def test_capped_exponential_backoff_runs_two_thousand_attempts():
    class Never(Node):
        def exec(self, prep_res):
            raise Boom("always")

        def exec_fallback(self, prep_res, exc):
            return self.cur_retry + 1

    node = Never(max_retries=2000, wait=0.001, backoff=2, max_wait=0)
    assert node.run({}) is None
    assert Never(max_retries=2000, wait=1e-9, backoff=2.0, max_wait=0.0)._retry(None) == 2000


@pytest.mark.parametrize("name", ["wait", "max_wait", "jitter", "backoff"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_retry_numbers_are_refused_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be a finite number, got {value!r}"):
        Node(**{name: value})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_timeout_is_refused(value):
    with pytest.raises(ValueError, match=r"timeout must be a finite number"):
        AsyncNode(timeout=value)


# --- 7. retry_on is checked; a predicate's own error propagates, chained --------------------


@pytest.mark.parametrize("bad", [(ValueError, "oops"), (ValueError, int), ()])
def test_retry_on_tuple_must_hold_exception_classes(bad):
    with pytest.raises(TypeError, match=r"retry_on must be an exception class"):
        Node(retry_on=bad)


def test_retry_on_class_that_is_not_an_exception_is_refused():
    with pytest.raises(TypeError, match=r"retry_on .*int"):
        Node(retry_on=int)


def test_an_error_in_the_retry_on_predicate_propagates_chained_to_the_real_error():
    fallbacks = []

    class Call(Node):
        def exec(self, prep_res):
            raise ConnectionError("the real error")

        def exec_fallback(self, prep_res, exc):
            fallbacks.append(exc)
            return "fallback"

    def judge(exc):
        return exc.status_code >= 500  # a bug: ConnectionError has no status_code

    with pytest.raises(AttributeError) as info:
        Call(max_retries=3, retry_on=judge).run({})
    assert isinstance(info.value.__cause__, ConnectionError)
    assert str(info.value.__cause__) == "the real error"
    assert fallbacks == []


# --- 8. a class-level max_concurrency holds; a later value is checked where it is used ------


async def in_flight(peak):
    """Count this item in flight for a few turns of the event loop (no sleeping)."""
    peak["now"] += 1
    peak["max"] = max(peak["max"], peak["now"])
    for _ in range(3):
        await asyncio.sleep(0)
    peak["now"] -= 1


def test_class_level_max_concurrency_of_a_parallel_batch_node_is_kept():
    peak = {"now": 0, "max": 0}

    class Two(AsyncParallelBatchNode):
        max_concurrency = 2

        def prep(self, shared):
            return range(6)

        async def exec_async(self, item):
            await in_flight(peak)
            return item

    node = Two()
    assert node.max_concurrency == 2
    asyncio.run(node.run_async({}))
    assert peak["max"] == 2


def test_class_level_max_concurrency_of_a_parallel_batch_graph_is_kept():
    peak = {"now": 0, "max": 0}

    class Work(AsyncNode):
        async def exec_async(self, prep_res):
            await in_flight(peak)

    class Three(AsyncParallelBatchGraph):
        max_concurrency = 3

        def prep(self, shared):
            return [{"k": i} for i in range(9)]

    graph = Three(Work())
    assert graph.max_concurrency == 3
    asyncio.run(graph.run_async({}))
    assert peak["max"] == 3


@pytest.mark.parametrize("value", [0, -1])
def test_max_concurrency_set_after_construction_is_checked_when_used(value):
    class Items(AsyncParallelBatchNode):
        def prep(self, shared):
            return [1, 2, 3]

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    node = Items()
    node.max_concurrency = value
    shared = {}
    with pytest.raises(ValueError, match=rf"max_concurrency must be >= 1, got {value}"):
        asyncio.run(node.run_async(shared))
    assert "out" not in shared


def test_max_concurrency_set_on_a_parallel_batch_graph_later_is_checked():
    graph = AsyncParallelBatchGraph(AsyncNode())
    graph.max_concurrency = 0
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        asyncio.run(graph.run_async({}))


# --- 9. items cancelled by fail-fast are not executions -------------------------------------


def test_metrics_do_not_count_items_cancelled_by_fail_fast():
    class Measured(MetricsNode, AsyncParallelBatchNode):
        def prep(self, shared):
            return range(5)

        async def exec_async(self, item):
            if item == 0:
                await asyncio.sleep(0)
                raise Boom("first")
            await asyncio.Event().wait()  # until cancelled

    node = Measured()
    with pytest.raises(Boom):
        asyncio.run(node.run_async({}))
    stats = node.get_stats()
    assert stats["total_executions"] == 1 and stats["success_rate"] == 0


def test_metrics_of_the_thread_twin_agree():
    release = threading.Event()

    class Measured(MetricsNode, ParallelBatchNode):
        def prep(self, shared):
            return range(5)

        def exec(self, item):
            if item == 0:
                raise Boom("first")
            release.wait(10)

    node = Measured(max_workers=1)
    with pytest.raises(Boom):
        node.run({})
    release.set()
    assert node.get_stats()["total_executions"] == 1


# --- 10. bounded async fan-out keeps results as compactly as the thread map -----------------


def test_bounded_async_fan_out_result_memory_matches_a_plain_list():
    n = 100_000

    class Echo(AsyncParallelBatchNode):
        async def exec_async(self, item):
            return item

    node = Echo(max_concurrency=8)
    asyncio.run(node._exec_async(range(100)))  # warm up the event loop machinery
    tracemalloc.start()
    try:
        asyncio.run(node._exec_async(range(n)))
        tracemalloc.reset_peak()
        results = asyncio.run(node._exec_async(range(n)))
        fan_out = tracemalloc.get_traced_memory()[1]
        del results
        tracemalloc.reset_peak()
        plain = [i for i in range(n)]  # noqa: C416 - the results of a plain loop
        floor = tracemalloc.get_traced_memory()[1]
        del plain
    finally:
        tracemalloc.stop()
    assert fan_out < 1.5 * floor, (fan_out, floor)


# --- max_steps: every graph has a generous default loop guard ------------------------------


def test_an_endless_loop_stops_at_the_default_max_steps():
    class Loop(Node):
        def post(self, shared, prep_res, exec_res):
            shared["n"] = shared.get("n", 0) + 1
            if shared["n"] > 20_000:  # without a default guard: fail, do not hang
                raise AssertionError("no default max_steps")

    loop = Loop()
    loop >> loop
    shared = {}
    with pytest.raises(RuntimeError, match="max_steps=10000; step 10001"):
        Graph(loop).run(shared)
    assert shared["n"] == 10_000


def test_max_steps_none_lifts_the_default_guard():
    class Count(Node):
        def post(self, shared, prep_res, exec_res):
            shared["n"] = shared.get("n", 0) + 1
            return "again" if shared["n"] < 10_500 else "done"

    count = Count()
    count - "again" >> count
    count - "done" >> Node()
    shared = {}
    Graph(count, max_steps=None).run(shared)
    assert shared["n"] == 10_500


@pytest.mark.parametrize("cls", [Graph, BatchGraph, AsyncGraph, AsyncBatchGraph,
                                 AsyncParallelBatchGraph])
def test_every_graph_class_has_the_default_guard(cls):
    assert cls(Node()).max_steps == 10_000
