"""AsyncNode and AsyncGraph: phases, sync phases in async nodes, mixing, nesting, routing."""

import asyncio
import warnings

import pytest
from test_core_helpers import ARec
from test_core_helpers import Rec as SRec

from kaygraph import AsyncGraph, AsyncNode, Graph


def run(coro_fn, *args):
    return asyncio.run(coro_fn(*args))


def test_async_node_phases_pass_results_along():
    class Phases(AsyncNode):
        async def prep_async(self, shared):
            return shared["x"] + 1

        async def exec_async(self, prep_res):
            return prep_res * 10

        async def post_async(self, shared, prep_res, exec_res):
            shared["y"] = (prep_res, exec_res)
            return "done"

    shared = {"x": 1}
    assert run(Phases().run_async, shared) == "done"
    assert shared["y"] == (2, 20)


def test_async_node_only_needs_exec_async_default_phases_call_sync_ones():
    calls = []

    class OnlyExec(AsyncNode):
        def prep(self, shared):
            calls.append("prep")
            return shared["v"]

        async def exec_async(self, prep_res):
            calls.append("exec_async")
            return prep_res + 1

        def post(self, shared, prep_res, exec_res):
            calls.append("post")
            shared["v"] = exec_res
            return "next"

    shared = {"v": 1}
    assert run(OnlyExec().run_async, shared) == "next"
    assert shared["v"] == 2
    assert calls == ["prep", "exec_async", "post"]


def test_async_node_defaults_return_none():
    assert run(AsyncNode().run_async, {}) is None


def test_async_fallback_gets_last_exception():
    class Fails(AsyncNode):
        async def exec_async(self, prep_res):
            raise ValueError(f"attempt {self.cur_retry}")

        async def exec_fallback_async(self, prep_res, exc):
            return str(exc)

        async def post_async(self, shared, prep_res, exec_res):
            shared["r"] = exec_res

    shared = {}
    run(Fails(max_retries=3).run_async, shared)
    assert shared["r"] == "attempt 2"


def test_async_graph_runs_async_and_sync_nodes_in_order():
    a, b, c = ARec("a", "x"), SRec("b", "y"), ARec("c", "end")
    a - "x" >> b
    b - "y" >> c
    shared = {}
    assert run(AsyncGraph(a).run_async, shared) == "end"
    assert shared["trace"] == ["a", "b", "c"]


def test_async_graph_none_action_stays_none():
    a, b = ARec("a"), ARec("b")
    a >> b
    shared = {}
    assert run(AsyncGraph(a).run_async, shared) is None
    assert shared["trace"] == ["a", "b"]


def test_async_graph_routes_on_nested_graph_last_action():
    inner_a, inner_b = ARec("ia"), SRec("ib", "inner_end")
    inner_a >> inner_b
    inner = AsyncGraph(inner_a)
    sync_inner = Graph(SRec("sync_inner", "sync_end"))
    done = ARec("done", "all")
    inner - "inner_end" >> sync_inner
    sync_inner - "sync_end" >> done
    shared = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(AsyncGraph(inner).run_async, shared) == "all"
    assert shared["trace"] == ["ia", "ib", "sync_inner", "done"]


def test_async_graph_missing_action_warns_with_kaygraph_text():
    a = ARec("a", "nope")
    a - "yes" >> ARec("b")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(AsyncGraph(a).run_async, {}) == "nope"
    assert [str(w.message) for w in caught] == ["Graph ends: 'nope' not found in ['yes']"]


def test_async_graph_params_reach_nodes_on_copies():
    class P(AsyncNode):
        async def prep_async(self, shared):
            shared["p"] = dict(self.params)

    node = P()
    g = AsyncGraph(node)
    g.set_params({"k": "v"})
    shared = {}
    run(g.run_async, shared)
    assert shared["p"] == {"k": "v"}
    assert node.params == {}


def test_async_graph_as_node_in_async_graph_keeps_store_on_error():
    class Bad(AsyncNode):
        async def exec_async(self, prep_res):
            raise KeyError("k")

    first = ARec("first")
    first >> AsyncGraph(Bad())
    shared = {}
    with pytest.raises(KeyError):
        run(AsyncGraph(first).run_async, shared)
    assert shared["trace"] == ["first"]


def test_two_async_graph_runs_interleave_on_one_loop():
    async def main():
        gate = asyncio.Event()
        order = []

        class Wait(AsyncNode):
            async def exec_async(self, prep_res):
                order.append(("start", self.params["r"]))
                if self.params["r"] == 0:
                    await asyncio.wait_for(gate.wait(), 10)
                else:
                    gate.set()
                order.append(("end", self.params["r"]))

        inner = AsyncGraph(Wait())

        async def one(r):
            g = AsyncGraph(inner)
            g.set_params({"r": r})
            await g.run_async({})

        await asyncio.gather(one(0), one(1))
        return order

    order = asyncio.run(main())
    assert order[:2] == [("start", 0), ("start", 1)]
    assert order.index(("end", 1)) < order.index(("end", 0))


def test_run_async_with_successors_warns_and_runs_only_itself():
    a = ARec("a", "go")
    a - "go" >> ARec("b")
    shared = {}
    with pytest.warns(UserWarning, match="successors"):
        assert run(a.run_async, shared) == "go"
    assert shared["trace"] == ["a"]


def test_async_batch_items_run_on_the_node_one_at_a_time_like_batch_node():
    # Sequential items share the step's node, as in BatchNode (and PocketFlow): state an
    # exec sets reaches the next item and post.
    from kaygraph import AsyncBatchNode, BatchNode

    class CountSync(BatchNode):
        def prep(self, shared):
            self.n = 0
            return [10, 20, 30]

        def exec(self, item):
            self.n += 1
            return self.n

        def post(self, shared, prep_res, exec_res):
            shared["out"], shared["n"] = exec_res, self.n

    class CountAsync(AsyncBatchNode, CountSync):
        async def exec_async(self, item):
            return self.exec(item)

    sync_shared, async_shared = {}, {}
    CountSync().run(sync_shared)
    asyncio.run(CountAsync().run_async(async_shared))
    assert sync_shared == async_shared == {"out": [1, 2, 3], "n": 3}
