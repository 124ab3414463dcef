"""Every batch type: inputs (list, generator, None), per-item exec, input order, batch graphs."""

import asyncio
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from kaygraph import (
    AsyncBatchGraph,
    AsyncBatchNode,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BatchGraph,
    BatchNode,
    Graph,
    Node,
    ParallelBatchNode,
)


def make_items(kind, values):
    if kind == "list":
        return list(values)
    if kind == "tuple":
        return tuple(values)
    return (v for v in values)


class SquarePhases:
    """prep -> shared['items'] (as given), exec -> item**2, post stores results."""

    def prep(self, shared):
        return shared["items"]

    def exec(self, item):
        return item * item

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res
        return "done"


class AsyncSquarePhases:
    async def prep_async(self, shared):
        return shared["items"]

    async def exec_async(self, item):
        await asyncio.sleep(0)
        return item * item

    async def post_async(self, shared, prep_res, exec_res):
        shared["out"] = exec_res
        return "done"


class Squares(SquarePhases, BatchNode):
    pass


class ParallelSquares(SquarePhases, ParallelBatchNode):
    pass


class AsyncSquares(AsyncSquarePhases, AsyncBatchNode):
    pass


class AsyncParallelSquares(AsyncSquarePhases, AsyncParallelBatchNode):
    pass


SYNC_BATCH = [Squares, ParallelSquares]
ASYNC_BATCH = [AsyncSquares, AsyncParallelSquares]


@pytest.mark.parametrize("cls", SYNC_BATCH)
@pytest.mark.parametrize("kind", ["list", "tuple", "generator"])
def test_sync_batch_inputs_give_results_in_order(cls, kind):
    shared = {"items": make_items(kind, range(25))}
    assert cls().run(shared) == "done"
    assert shared["out"] == [i * i for i in range(25)]


@pytest.mark.parametrize("cls", ASYNC_BATCH)
@pytest.mark.parametrize("kind", ["list", "tuple", "generator"])
def test_async_batch_inputs_give_results_in_order(cls, kind):
    shared = {"items": make_items(kind, range(25))}
    assert asyncio.run(cls().run_async(shared)) == "done"
    assert shared["out"] == [i * i for i in range(25)]


@pytest.mark.parametrize("cls", SYNC_BATCH)
def test_sync_batch_none_and_empty_are_empty(cls):
    for items in (None, [], iter(())):
        shared = {"items": items}
        cls().run(shared)
        assert shared["out"] == []


@pytest.mark.parametrize("cls", ASYNC_BATCH)
def test_async_batch_none_and_empty_are_empty(cls):
    for items in (None, [], iter(())):
        shared = {"items": items}
        asyncio.run(cls().run_async(shared))
        assert shared["out"] == []


def test_batch_node_runs_items_one_after_another_in_order():
    seen = []

    class Seq(Squares):
        def exec(self, item):
            seen.append((item, threading.get_ident()))
            return item

    shared = {"items": ["b", "a", "c"]}
    Seq().run(shared)
    assert [s[0] for s in seen] == ["b", "a", "c"]
    assert {s[1] for s in seen} == {threading.get_ident()}
    assert shared["out"] == ["b", "a", "c"]


def test_batch_item_fallback_fills_its_own_slot():
    class Partial(Squares):
        def exec(self, item):
            if item == 2:
                raise ValueError("bad item")
            return item

        def exec_fallback(self, item, exc):
            return f"fallback({item}: {exc})"

    shared = {"items": [1, 2, 3]}
    Partial(max_retries=2).run(shared)
    assert shared["out"] == [1, "fallback(2: bad item)", 3]


def test_batch_in_a_graph_then_routes_on_its_action():
    after = []

    class After(Node):
        def prep(self, shared):
            after.append(list(shared["out"]))

    b = Squares()
    b - "done" >> After()
    Graph(b).run({"items": [3, 4]})
    assert after == [[9, 16]]


def test_parallel_batch_results_in_input_order_when_finishing_reversed():
    n = 4
    done = [threading.Event() for _ in range(n)]

    class Reverse(SquarePhases, ParallelBatchNode):
        def exec(self, item):
            # Each item waits until the item after it has finished, so they finish last-first.
            if item + 1 < n:
                assert done[item + 1].wait(10)
            done[item].set()
            return item

    shared = {"items": range(n)}
    Reverse(max_workers=n).run(shared)
    assert shared["out"] == list(range(n))


def test_parallel_batch_uses_several_threads():
    n = 3
    barrier = threading.Barrier(n, timeout=10)

    class Meet(SquarePhases, ParallelBatchNode):
        def exec(self, item):
            barrier.wait()  # deadlocks (BrokenBarrierError) unless all n run at once
            return threading.get_ident()

    shared = {"items": range(n)}
    Meet(max_workers=n).run(shared)
    assert len(set(shared["out"])) == n


def test_parallel_batch_given_executor_is_used_and_not_shut_down():
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="mine") as pool:

        class Names(SquarePhases, ParallelBatchNode):
            def exec(self, item):
                return threading.current_thread().name

        shared = {"items": range(6)}
        Names(executor=pool).run(shared)
        assert all(name.startswith("mine") for name in shared["out"])
        assert pool.submit(lambda: 42).result(timeout=10) == 42  # still usable


class Unpicklable(Node):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


class PidSquares(BatchNode):
    """Module-level so a process pool can pickle it."""

    def prep(self, shared):
        return shared["items"]

    def exec(self, item):
        return item * item, os.getpid()

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


class ProcessSquares(PidSquares, ParallelBatchNode):
    pass


def test_parallel_batch_on_a_process_pool_ships_node_without_successors():
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        node = ProcessSquares(executor=pool)
        node >> Unpicklable()  # the rest of the graph must not be pickled
        shared = {"items": [1, 2, 3, 4]}
        Graph(node).run(shared)
        assert [r for r, _ in shared["out"]] == [1, 4, 9, 16]
        assert os.getpid() not in {pid for _, pid in shared["out"]}
        assert pool.submit(abs, -3).result(timeout=30) == 3


def test_async_batch_node_runs_items_one_at_a_time():
    state = {"in_flight": 0, "max": 0, "order": []}

    class Seq(AsyncSquares):
        async def exec_async(self, item):
            state["in_flight"] += 1
            state["max"] = max(state["max"], state["in_flight"])
            state["order"].append(item)
            for _ in range(3):
                await asyncio.sleep(0)
            state["in_flight"] -= 1
            return item

    shared = {"items": [5, 1, 3]}
    asyncio.run(Seq().run_async(shared))
    assert state["max"] == 1
    assert state["order"] == [5, 1, 3]
    assert shared["out"] == [5, 1, 3]


def test_async_parallel_batch_runs_items_concurrently_in_order():
    n = 5

    async def main():
        arrived = []
        all_in = asyncio.Event()

        class Meet(AsyncSquarePhases, AsyncParallelBatchNode):
            async def exec_async(self, item):
                arrived.append(item)
                if len(arrived) == n:
                    all_in.set()
                await asyncio.wait_for(all_in.wait(), 10)  # only passes if all run at once
                for _ in range(n - item):  # later items finish first
                    await asyncio.sleep(0)
                return item

        shared = {"items": range(n)}
        await Meet().run_async(shared)
        return shared["out"]

    assert asyncio.run(main()) == list(range(n))


def test_async_batch_nodes_accept_sync_phases():
    class SyncPhases(AsyncBatchNode):
        def prep(self, shared):
            return [1, 2]

        async def exec_async(self, item):
            return -item

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    asyncio.run(SyncPhases().run_async(shared))
    assert shared["out"] == [-1, -2]


# --- batch graphs ----------------------------------------------------------------------------


class RecordParams(Node):
    def prep(self, shared):
        shared.setdefault("runs", []).append(dict(self.params))


class AsyncRecordParams(AsyncNode):
    async def prep_async(self, shared):
        await asyncio.sleep(0)
        shared.setdefault("runs", []).append(dict(self.params))


def params_batch(graph_cls, kind):
    class PB(graph_cls):
        def prep(self, shared):
            return make_items(kind, [{"i": 0}, {"i": 1, "base": "over"}, {"i": 2}])

    return PB


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_batch_graph_runs_subgraph_once_per_params_dict_merged(kind):
    first, second = RecordParams(), RecordParams()
    first >> second
    g = params_batch(BatchGraph, kind)(first)
    g.set_params({"base": 1})
    shared = {}
    g.run(shared)
    expected = [{"base": 1, "i": 0}, {"base": "over", "i": 1}, {"base": 1, "i": 2}]
    assert shared["runs"] == [p for p in expected for _ in range(2)]
    assert first.params == {} and g.params == {"base": 1}


def test_batch_graph_with_none_runs_nothing():
    class Empty(BatchGraph):
        def prep(self, shared):
            return None

    shared = {}
    Empty(RecordParams()).run(shared)
    assert "runs" not in shared


@pytest.mark.parametrize("cls", [AsyncBatchGraph, AsyncParallelBatchGraph])
@pytest.mark.parametrize("kind", ["list", "generator"])
def test_async_batch_graphs_run_once_per_params_dict(cls, kind):
    g = params_batch(cls, kind)(AsyncRecordParams())
    g.set_params({"base": 1})
    shared = {}
    asyncio.run(g.run_async(shared))
    expected = [{"base": 1, "i": 0}, {"base": "over", "i": 1}, {"base": 1, "i": 2}]
    assert sorted(shared["runs"], key=lambda p: p["i"]) == expected
    if cls is AsyncBatchGraph:
        assert shared["runs"] == expected  # sequential: in input order


def test_async_batch_graph_is_sequential():
    state = {"in_flight": 0, "max": 0}

    class Track(AsyncNode):
        async def exec_async(self, prep_res):
            state["in_flight"] += 1
            state["max"] = max(state["max"], state["in_flight"])
            for _ in range(3):
                await asyncio.sleep(0)
            state["in_flight"] -= 1

    class G(AsyncBatchGraph):
        async def prep_async(self, shared):
            return [{"i": i} for i in range(4)]

    asyncio.run(G(Track()).run_async({}))
    assert state["max"] == 1


def test_async_parallel_batch_graph_runs_subgraphs_concurrently():
    n = 4

    async def main():
        arrived = []
        all_in = asyncio.Event()

        class Meet(AsyncNode):
            async def exec_async(self, prep_res):
                arrived.append(self.params["i"])
                if len(arrived) == n:
                    all_in.set()
                await asyncio.wait_for(all_in.wait(), 10)

        class G(AsyncParallelBatchGraph):
            def prep(self, shared):
                return [{"i": i} for i in range(n)]

        await G(Meet()).run_async({})
        return sorted(arrived)

    assert asyncio.run(main()) == list(range(n))


def test_batch_graph_mixes_sync_nodes_into_async_batch_graph():
    class G(AsyncBatchGraph):
        def prep(self, shared):
            return [{"i": 0}, {"i": 1}]

    a, b = RecordParams(), AsyncRecordParams()
    a >> b
    shared = {}
    asyncio.run(G(a).run_async(shared))
    assert shared["runs"] == [{"i": 0}, {"i": 0}, {"i": 1}, {"i": 1}]


def test_batch_graph_nested_in_graph_routes_on():
    class G(BatchGraph):
        def prep(self, shared):
            return [{"i": 0}]

        def post(self, shared, prep_res, exec_res):
            return "batched"

    after = RecordParams()
    g = G(RecordParams())
    g - "batched" >> after
    shared = {}
    Graph(g).run(shared)
    assert shared["runs"] == [{"i": 0}, {}]


def test_sync_batch_graph_rejects_async_nodes():
    class G(BatchGraph):
        def prep(self, shared):
            return [{"i": 0}]

    with pytest.raises(RuntimeError, match="run_async"):
        G(AsyncRecordParams()).run({})


def test_async_graph_runs_a_nested_sync_batch_graph():
    class G(BatchGraph):
        def prep(self, shared):
            return [{"i": 0}, {"i": 1}]

    shared = {}
    asyncio.run(AsyncGraph(G(RecordParams())).run_async(shared))
    assert shared["runs"] == [{"i": 0}, {"i": 1}]
