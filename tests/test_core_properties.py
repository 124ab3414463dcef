"""Properties checked on many random cases with hypothesis."""

import asyncio
import time
import warnings
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from kaygraph import (
    AsyncGraph,
    AsyncParallelBatchNode,
    BatchNode,
    Graph,
    Node,
    ParallelBatchNode,
)

SETTINGS = settings(deadline=None, max_examples=60)
ACTIONS = [None, "default", "a", "b", "c"]
MAX_STEPS = 12


class Scripted(Node):
    """Returns, on its k-th visit of a run, the k-th action of its script (cycling)."""

    def __init__(self, index, script):
        super().__init__(node_id=f"n{index}")
        self.index, self.script = index, script

    def post(self, shared, prep_res, exec_res):
        visits = shared.setdefault("visits", {})
        k = visits.get(self.index, 0)
        visits[self.index] = k + 1
        shared.setdefault("walk", []).append(self.index)
        return self.script[k % len(self.script)]


@st.composite
def random_graphs(draw):
    n = draw(st.integers(1, 6))
    scripts = [draw(st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=4)) for _ in range(n)]
    edges = [
        draw(st.dictionaries(st.sampled_from(["default", "a", "b", "c"]), st.integers(0, n - 1)))
        for _ in range(n)
    ]
    return scripts, edges


def reference_walk(scripts, edges):
    """What the walk must be: (visited indices, last action, warning text or None, overran)."""
    visits = [0] * len(scripts)
    walk, curr, action = [], 0, None
    while True:
        if len(walk) == MAX_STEPS:
            return walk, action, None, True
        walk.append(curr)
        action = scripts[curr][visits[curr] % len(scripts[curr])]
        visits[curr] += 1
        key = "default" if action is None else action
        if key in edges[curr]:
            curr = edges[curr][key]
            continue
        warning = None
        if edges[curr]:
            warning = f"Graph ends: '{action}' not found in {list(edges[curr])}"
            if action is None:
                warning += f" (node 'n{curr}' returned no action: its post returned None)"
        return walk, action, warning, False


def build(scripts, edges):
    nodes = [Scripted(i, s) for i, s in enumerate(scripts)]
    for i, succ in enumerate(edges):
        for action, j in succ.items():
            nodes[i] - action >> nodes[j]
    return nodes[0]


@SETTINGS
@given(random_graphs())
def test_random_graph_is_walked_as_the_reference_predicts(graph):
    scripts, edges = graph
    walk, action, warning, overran = reference_walk(scripts, edges)
    shared = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = Graph(build(scripts, edges), max_steps=MAX_STEPS).run(shared)
        except RuntimeError as exc:
            assert overran, exc
            assert str(MAX_STEPS) in str(exc)
        else:
            assert not overran
            assert result == action  # exactly as returned: None stays None
    assert shared["walk"] == walk
    assert [str(w.message) for w in caught] == ([warning] if warning else [])


@SETTINGS
@given(random_graphs())
def test_stream_and_async_walks_match_the_reference(graph):
    scripts, edges = graph
    walk, action, _warning, overran = reference_walk(scripts, edges)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shared, steps = {}, []
        try:
            for step in Graph(build(scripts, edges), max_steps=MAX_STEPS).stream(shared):
                steps.append(step)
        except RuntimeError:
            assert overran
        assert [s.node.index for s in steps] == walk
        if not overran:
            assert steps[-1].action == action

        a_shared = {}
        try:
            result = asyncio.run(
                AsyncGraph(build(scripts, edges), max_steps=MAX_STEPS).run_async(a_shared)
            )
            assert not overran and result == action
        except RuntimeError:
            assert overran
        assert a_shared["walk"] == walk


class Square(BatchNode):
    def prep(self, shared):
        return iter(shared["items"])

    def exec(self, item):
        return item * item

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


class ParallelSquare(ParallelBatchNode):
    prep, exec, post = Square.prep, Square.exec, Square.post


class AsyncParallelSquare(AsyncParallelBatchNode):
    prep, post = Square.prep, Square.post

    async def exec_async(self, item):
        for _ in range(item % 3):
            await asyncio.sleep(0)
        return item * item


@SETTINGS
@given(
    items=st.lists(st.integers(-50, 50), max_size=40),
    workers=st.integers(1, 4),
    limit=st.one_of(st.none(), st.integers(1, 5)),
)
def test_batch_results_always_in_input_order(items, workers, limit):
    expected = [i * i for i in items]
    for node in (Square(), ParallelSquare(max_workers=workers)):
        shared = {"items": items}
        node.run(shared)
        assert shared["out"] == expected
    shared = {"items": items}
    asyncio.run(AsyncParallelSquare(max_concurrency=limit).run_async(shared))
    assert shared["out"] == expected


class AlwaysFails(Node):
    def exec(self, prep_res):
        raise ValueError("no")

    def exec_fallback(self, prep_res, exc):
        return "fallback"

    def post(self, shared, prep_res, exec_res):
        shared["res"] = exec_res


@SETTINGS
@given(
    max_retries=st.integers(1, 8),
    wait=st.floats(0.001, 10),
    backoff=st.floats(0.5, 4),
    max_wait=st.one_of(st.none(), st.floats(0.001, 20)),
)
def test_waits_follow_the_formula(max_retries, wait, backoff, max_wait):
    waits = []
    with mock.patch.object(time, "sleep", waits.append):
        node = AlwaysFails(max_retries, wait, backoff=backoff, max_wait=max_wait)
        shared = {}
        node.run(shared)
    assert shared["res"] == "fallback"
    expected = [wait * backoff**k for k in range(max_retries - 1)]
    if max_wait is not None:
        expected = [min(w, max_wait) for w in expected]
    assert waits == expected
