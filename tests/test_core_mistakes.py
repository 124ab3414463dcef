"""Mistakes a new user makes fail loudly, with the fix in the message (issue 13)."""

import asyncio
import inspect
import time
import warnings

import pytest

from kaygraph import (
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

# --- 1. async methods on a sync node, sync names on an async node ---------------------------


@pytest.mark.parametrize("phase", ["prep", "exec", "post"])
def test_async_def_phase_on_a_sync_node_is_refused_when_defined(phase):
    with pytest.raises(TypeError, match=rf"Fetch\.{phase} is 'async def'.*subclass AsyncNode "
                                        rf"and name it {phase}_async"):
        type("Fetch", (Node,), {phase: _async_method})


def test_async_def_exec_on_an_async_node_says_to_name_it_exec_async():
    with pytest.raises(TypeError, match=r"Fetch\.exec is 'async def'.*name it exec_async"):
        class Fetch(AsyncNode):
            async def exec(self, prep_res):
                return prep_res


@pytest.mark.parametrize("base", [Node, BatchNode, ParallelBatchNode])
def test_exec_async_on_a_sync_node_is_refused_when_defined(base):
    with pytest.raises(TypeError, match=r"Fetch defines exec_async, which a sync node never "
                                        r"calls: subclass AsyncNode"):
        class Fetch(base):
            async def exec_async(self, prep_res):
                return prep_res


async def _async_method(self, *args):
    return None


# --- 2. a sync exec that returns a coroutine ------------------------------------------------


async def fetch(url):
    return url


@pytest.mark.parametrize("base", [Node, BatchNode, ParallelBatchNode])
def test_sync_exec_returning_a_coroutine_is_a_type_error_naming_the_node(base):
    class Forgot(base):
        def prep(self, shared):
            return ["u1", "u2"] if base is not Node else "u1"

        def exec(self, url):
            return fetch(url)  # an async client called without await

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited" either
        with pytest.raises(TypeError, match=r"node 'Forgot': exec returned a coroutine.*"
                                            r"AsyncNode.*exec_async"):
            Graph(Forgot()).run(shared)
    assert "out" not in shared


# --- 3. an __init__ that forgets super().__init__() -----------------------------------------


def test_forgetting_super_init_is_one_clear_error_at_construction():
    class Summarise(Node):
        def __init__(self, model):
            self.model = model

    with pytest.raises(TypeError) as info:
        Summarise("small")
    assert "Summarise.__init__ did not call super().__init__" in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_a_correct_init_keeps_its_signature_for_help():
    class Summarise(Node):
        def __init__(self, model, *, temperature=0.0):
            super().__init__(node_id="summarise")
            self.model = model

    assert str(inspect.signature(Summarise)) == "(model, *, temperature=0.0)"
    assert Summarise("m").node_id == "summarise"


def test_a_subclass_of_a_correct_subclass_is_checked_too():
    class Base(Node):
        def __init__(self):
            super().__init__()

    class Child(Base):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match="Child.__init__ did not call super"):
        Child()


# --- 4. await Graph(...).run_async(...) -----------------------------------------------------


def test_run_async_on_a_sync_graph_says_to_use_async_graph():
    with pytest.raises(TypeError, match=r"Graph 'Graph' is sync and has no run_async.*"
                                        r"AsyncGraph"):
        Graph(Node()).run_async({})


def test_run_async_on_a_sync_node_says_to_use_async_node():
    with pytest.raises(TypeError, match=r"is sync and has no run_async.*AsyncNode"):
        Node().run_async({})


# --- 5. a batch prep that returns a str, bytes or dict --------------------------------------


@pytest.mark.parametrize("value", ["abc", b"abc", {"a": 1, "b": 2}])
@pytest.mark.parametrize("base", [BatchNode, ParallelBatchNode, AsyncBatchNode,
                                  AsyncParallelBatchNode])
def test_batch_prep_returning_a_str_bytes_or_dict_is_refused(base, value):
    class Items(base):
        def prep(self, shared):
            shared["before"] = True
            return value

    node, shared = Items(), {}
    kind = type(value).__name__
    hint = r"list\(d.items\(\)\)" if kind == "dict" else r"\[value\]"
    with pytest.raises(TypeError, match=rf"batch node 'Items': prep returned a {kind}.*{hint}"):
        if node._is_async:
            asyncio.run(node.run_async(shared))
        else:
            node.run(shared)
    assert shared == {"before": True}


def test_batch_graph_prep_returning_one_dict_is_refused():
    class Batch(BatchGraph):
        def prep(self, shared):
            return {"k": 1}

    with pytest.raises(TypeError, match=r"'Batch': prep returned a dict.*\[d\] for one item"):
        Batch(Node()).run({})


# --- 6. the "Graph ends" warning points at the user's call ----------------------------------


def chooser(action):
    class Choose(Node):
        def post(self, shared, prep_res, exec_res):
            return action

    node = Choose()
    node - "yes" >> Node()
    return node


@pytest.mark.parametrize("how", ["run", "stream", "nested"])
def test_graph_ends_warning_is_reported_at_the_users_line(how):
    graph = Graph(chooser("maybe"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if how == "run":
            graph.run({})
        elif how == "stream":
            list(graph.stream({}))
        else:
            Graph(graph).run({})
    assert [str(w.message) for w in caught] == ["Graph ends: 'maybe' not found in ['yes']"]
    assert caught[0].filename == __file__


def test_graph_ends_warning_of_an_async_run_is_reported_at_the_users_line():
    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await AsyncGraph(chooser("maybe")).run_async({})
        return caught

    caught = asyncio.run(main())
    assert len(caught) == 1 and caught[0].filename == __file__


def test_graph_ends_warning_says_when_post_returned_no_action():
    with pytest.warns(UserWarning) as caught:
        Graph(chooser(None)).run({})
    assert str(caught[0].message) == ("Graph ends: 'None' not found in ['yes'] (node 'Choose' "
                                      "returned no action: its post returned None)")


# --- 7. a blocking exec_async cannot be timed out: warn once per node -----------------------


def test_blocking_exec_async_past_its_timeout_warns_once_per_node():
    class Blocking(AsyncNode):
        async def exec_async(self, prep_res):
            time.sleep(0.35)  # blocks the event loop: the timer cannot fire
            return "done"

    node = Blocking(timeout=0.05, node_id="blocking")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert asyncio.run(node.run_async({})) is None
    blocked = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(blocked) == 1, [str(w.message) for w in caught]
    text = str(blocked[0].message)
    assert "node 'blocking'" in text and "blocked the event loop" in text
    assert "asyncio.to_thread" in text and "ParallelBatchNode" in text
    assert blocked[0].filename == __file__


def test_an_exec_async_that_awaits_is_timed_out_without_a_blocking_warning():
    class Awaits(AsyncNode):
        async def exec_async(self, prep_res):
            await asyncio.sleep(10)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TimeoutError):
            asyncio.run(Awaits(timeout=0.05).run_async({}))
    assert caught == []


# --- 9. signatures that help() and editors show ---------------------------------------------


@pytest.mark.parametrize("cls, names", [
    (AsyncParallelBatchNode, ["max_retries", "wait", "node_id", "config", "backoff",
                              "max_wait", "jitter", "retry_on", "timeout", "max_concurrency"]),
    (AsyncParallelBatchGraph, ["start", "config", "max_steps", "node_id", "max_concurrency"]),
    (ParallelBatchNode, ["max_workers", "max_retries", "wait", "node_id", "config", "executor",
                         "backoff", "max_wait", "jitter", "retry_on"]),
])
def test_signatures_spell_out_the_real_parameters(cls, names):
    params = inspect.signature(cls).parameters
    assert [n for n in params if n in names] == names
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
