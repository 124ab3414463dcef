"""Bad input gets a clear error naming the argument and the value; nothing already written is lost.

Also: exception notes (3.11+) that say where an error came from, with its type unchanged.
"""

import asyncio
import sys
import threading
from concurrent.futures import ProcessPoolExecutor

import pytest

from kaygraph import (
    AsyncBatchGraph,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BatchGraph,
    Config,
    Graph,
    MetricsNode,
    Node,
    ParallelBatchNode,
)


def assert_names(exc_info, *needles):
    msg = str(exc_info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


BAD_CONSTRUCTION = [
    (Node, {"max_retries": 0}, "max_retries", "0"),
    (Node, {"max_retries": -3}, "max_retries", "-3"),
    (Node, {"max_retries": 2.5}, "max_retries", "2.5"),
    (Node, {"max_retries": "3"}, "max_retries", "'3'"),
    (Node, {"wait": -1}, "wait", "-1"),
    (Node, {"wait": "1s"}, "wait", "'1s'"),
    (Node, {"max_wait": -0.5}, "max_wait", "-0.5"),
    (Node, {"jitter": -1.0}, "jitter", "-1.0"),
    (Node, {"backoff": 0}, "backoff", "0"),
    (Node, {"retry_on": 42}, "retry_on", "42"),
    (Node, {"node_id": 7}, "node_id", "7"),
    (AsyncNode, {"timeout": 0}, "timeout", "0"),
    (AsyncNode, {"timeout": -2}, "timeout", "-2"),
    (ParallelBatchNode, {"max_workers": 0}, "max_workers", "0"),
    (ParallelBatchNode, {"executor": "pool"}, "executor", "'pool'"),
    (AsyncParallelBatchNode, {"max_concurrency": 0}, "max_concurrency", "0"),
    (AsyncParallelBatchGraph, {"max_concurrency": -1}, "max_concurrency", "-1"),
    (Graph, {"max_steps": 0}, "max_steps", "0"),
    (Graph, {"start": "a"}, "start", "'a'"),
    (Config, {"data": 5}, "data", "5"),
]


@pytest.mark.parametrize(("cls", "kwargs", "arg", "value"), BAD_CONSTRUCTION)
def test_bad_construction_argument_names_argument_and_value(cls, kwargs, arg, value):
    with pytest.raises((TypeError, ValueError)) as info:
        cls(**kwargs)
    assert_names(info, arg, value)


def test_bool_is_not_an_int_for_max_retries():
    with pytest.raises(TypeError, match="max_retries"):
        Node(max_retries=True)


def test_set_params_non_dict():
    for bad in (["a"], None, "id=1"):
        with pytest.raises(TypeError) as info:
            Node().set_params(bad)
        assert_names(info, "params", repr(bad))


def test_next_and_rshift_with_non_node():
    a = Node()
    with pytest.raises(TypeError) as info:
        a >> 5
    assert_names(info, "node", "5")
    with pytest.raises(TypeError) as info:
        a.next("b")
    assert_names(info, "node", "'b'")
    with pytest.raises(TypeError) as info:
        a - "x" >> print
    assert_names(info, "node", "print")
    assert a.successors == {}


def test_transition_with_non_string_action():
    a, b = Node(), Node()
    for bad in (5, None, ("x",)):
        with pytest.raises(TypeError) as info:
            a - bad >> b
        assert_names(info, "action", repr(bad))
    with pytest.raises(TypeError) as info:
        a.next(b, 3)
    assert_names(info, "action", "3")
    assert a.successors == {}


def test_graph_start_method_with_non_node():
    with pytest.raises(TypeError) as info:
        Graph().start(None)
    assert_names(info, "node", "None")


class Writes(Node):
    def __init__(self, key, action=None, **kw):
        super().__init__(node_id=key, **kw)
        self.key, self.action = key, action

    def prep(self, shared):
        shared[self.key] = "prep"

    def post(self, shared, prep_res, exec_res):
        shared[self.key] = "post"
        return self.action


@pytest.mark.parametrize("bad", [42, ["a"], b"bytes"])
def test_non_string_action_names_node_and_value_and_keeps_writes(bad):
    first = Writes("first")
    first >> Writes("bad_node", action=bad)
    shared = {}
    with pytest.raises(TypeError) as info:
        Graph(first).run(shared)
    assert_names(info, "bad_node", repr(bad))
    assert shared == {"first": "post", "bad_node": "post"}


def test_non_string_action_in_async_graph():
    shared = {}
    with pytest.raises(TypeError) as info:
        asyncio.run(AsyncGraph(Writes("w", action=1.5)).run_async(shared))
    assert_names(info, "'w'", "1.5")
    assert shared == {"w": "post"}


def test_error_mid_graph_keeps_earlier_writes():
    class Explodes(Node):
        def prep(self, shared):
            shared["explodes_prep"] = True
            return 1

        def exec(self, prep_res):
            raise ArithmeticError("mid-graph")

    a, b = Writes("a"), Writes("b")
    a >> b >> Explodes()
    shared = {"given": 0}
    with pytest.raises(ArithmeticError):
        Graph(a).run(shared)
    assert shared == {"given": 0, "a": "post", "b": "post", "explodes_prep": True}


def test_graph_without_start_names_the_problem():
    with pytest.raises(ValueError, match="start"):
        Graph().run({})
    with pytest.raises(ValueError, match="start"):
        list(Graph().stream({}))


def test_unpicklable_node_for_a_process_pool_is_a_clear_type_error():
    class Local(ParallelBatchNode):  # a local class cannot be pickled
        def prep(self, shared):
            return [1]

    with ProcessPoolExecutor(max_workers=1) as pool:  # no process starts before a submit
        with pytest.raises(TypeError) as info:
            Local(node_id="local_node", executor=pool).run({})
    assert_names(info, "local_node")


# --- exception notes --------------------------------------------------------------------------

needs_notes = pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note is 3.11+")


class Fails(Node):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.raised = []

    def exec(self, prep_res):
        exc = LookupError(f"failed attempt {self.cur_retry}")
        self.raised.append(exc)
        raise exc


def kaygraph_notes(exc):
    return [n for n in getattr(exc, "__notes__", []) if "kaygraph" in n]


@needs_notes
def test_note_names_node_and_attempt_and_type_is_unchanged():
    node = Fails(node_id="fetcher", max_retries=3)
    with pytest.raises(LookupError) as info:
        Graph(node).run({})
    exc = info.value
    assert type(exc) is LookupError
    assert exc is node.raised[-1]  # the very exception exec raised
    assert str(exc) == "failed attempt 2"  # message unchanged
    (note,) = kaygraph_notes(exc)
    assert "fetcher" in note
    assert "attempt 3" in note


@needs_notes
def test_note_from_a_nested_graph_names_the_inner_node_once():
    inner = Graph(Fails(node_id="deep"), node_id="inner_graph")
    with pytest.raises(LookupError) as info:
        Graph(Graph(inner)).run({})
    (note,) = kaygraph_notes(info.value)
    assert "deep" in note


@needs_notes
def test_note_for_an_error_outside_exec_names_the_node():
    class BadPrep(Node):
        def prep(self, shared):
            raise KeyError("missing")

    first = Writes("first")
    first >> BadPrep(node_id="reader")
    with pytest.raises(KeyError) as info:
        Graph(first).run({})
    (note,) = kaygraph_notes(info.value)
    assert "reader" in note


@needs_notes
def test_note_in_async_graph():
    class AFails(AsyncNode):
        async def exec_async(self, prep_res):
            raise OSError("down")

    with pytest.raises(OSError) as info:
        asyncio.run(AsyncGraph(AFails(node_id="caller", max_retries=2)).run_async({}))
    assert type(info.value) is OSError
    (note,) = kaygraph_notes(info.value)
    assert "caller" in note and "attempt 2" in note


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="3.10 only")
def test_on_310_message_and_type_are_unchanged():
    node = Fails(node_id="fetcher", max_retries=2)
    with pytest.raises(LookupError) as info:
        Graph(node).run({})
    assert type(info.value) is LookupError
    assert str(info.value) == "failed attempt 1"
    assert info.value is node.raised[-1]


def test_errors_from_metrics_nodes_keep_their_type():
    class M(MetricsNode):
        def exec(self, prep_res):
            raise PermissionError("no")

    with pytest.raises(PermissionError):
        Graph(M()).run({})


def test_failing_parallel_item_error_type_unchanged():
    class P(ParallelBatchNode):
        def prep(self, shared):
            return range(4)

        def exec(self, item):
            if item == 2:
                raise UnicodeError("item 2")
            return item

    before = set(threading.enumerate())
    with pytest.raises(UnicodeError, match="item 2"):
        Graph(P(max_workers=2)).run({})
    assert set(threading.enumerate()) <= before


def test_unbounded_async_fan_out_cancels_started_items_when_the_source_raises():
    started, finished = [], []
    release = None

    class Fan(AsyncParallelBatchNode):
        def prep(self, shared):
            shared["before"] = "kept"

            def source():
                yield 1
                yield 2
                raise KeyError("source broke")

            return source()

        async def exec_async(self, item):
            started.append(item)
            await release.wait()  # never set: only cancellation ends these items
            finished.append(item)

    async def main():
        nonlocal release
        release = asyncio.Event()
        shared = {}
        with pytest.raises(KeyError, match="source broke"):
            await Fan().run_async(shared)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return shared, others

    shared, others = asyncio.run(main())
    assert others == [] and finished == []
    assert shared == {"before": "kept"}


@pytest.mark.parametrize("graph_cls", [BatchGraph, AsyncBatchGraph, AsyncParallelBatchGraph])
def test_batch_graph_params_that_are_not_dicts_name_the_graph_and_value(graph_cls):
    class Params(graph_cls):
        def prep(self, shared):
            shared["before"] = "kept"
            return [{"i": 1}, "oops"]

    g = Params(Node(), node_id="per_file")
    shared = {}
    with pytest.raises(TypeError, match=r"'per_file'.*'oops' \(str\)"):
        if g._is_async:
            asyncio.run(g.run_async(shared))
        else:
            g.run(shared)
    assert shared == {"before": "kept"}
