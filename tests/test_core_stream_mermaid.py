"""Graph.stream / AsyncGraph.stream_async and Graph.to_mermaid."""

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
from test_core_helpers import ARec, Rec

from kaygraph import AsyncGraph, BatchNode, Graph, Node, Step


def chain():
    a, b, c = Rec("a", "to_b"), Rec("b"), Rec("c", "last")
    a - "to_b" >> b
    b >> c
    return a


# --- stream ---------------------------------------------------------------------------------


def test_step_is_a_named_tuple_node_action_seconds():
    assert Step._fields == ("node", "action", "seconds")
    s = Step(Node(), "x", 0.5)
    node, action, seconds = s
    assert (action, seconds) == ("x", 0.5)


def test_stream_yields_a_step_after_each_top_level_step():
    shared = {}
    steps = list(Graph(chain()).stream(shared))
    assert all(isinstance(s, Step) for s in steps)
    assert [s.node.node_id for s in steps] == ["a", "b", "c"]
    assert [s.action for s in steps] == ["to_b", None, "last"]
    assert all(isinstance(s.seconds, float) and s.seconds >= 0 for s in steps)
    assert shared["trace"] == ["a", "b", "c"]


def test_stream_is_lazy_one_step_per_next():
    shared = {}
    it = Graph(chain()).stream(shared)
    assert "trace" not in shared
    first = next(it)
    assert first.node.node_id == "a"
    assert shared["trace"] == ["a"]
    next(it)
    assert shared["trace"] == ["a", "b"]
    it.close()
    assert shared["trace"] == ["a", "b"]


def test_stream_node_is_the_copy_that_ran_with_params():
    g = Graph(Rec("a"))
    g.set_params({"k": 1})
    (step,) = list(g.stream({}))
    assert step.node.params == {"k": 1}
    assert isinstance(step.node, Rec)


def test_stream_counts_nested_graph_as_one_step():
    inner = Graph(chain())
    after = Rec("after", "fin")
    inner - "last" >> after
    shared = {}
    steps = list(Graph(inner).stream(shared))
    assert len(steps) == 2
    assert isinstance(steps[0].node, Graph)
    assert steps[0].action == "last"
    assert steps[1].node.node_id == "after"
    assert shared["trace"] == ["a", "b", "c", "after"]


def test_stream_and_run_agree():
    s1, s2 = {}, {}
    steps = list(Graph(chain()).stream(s1))
    assert Graph(chain()).run(s2) == steps[-1].action
    assert s1 == s2


def test_stream_measures_seconds_per_step():
    import time

    class Slow(Node):
        def exec(self, prep_res):
            time.sleep(0.05)

    (step,) = list(Graph(Slow()).stream({}))
    assert step.seconds >= 0.04


def test_stream_honours_max_steps_and_warnings():
    a = Rec("a", "loop")
    a - "loop" >> a
    shared = {}
    it = Graph(a, max_steps=3).stream(shared)
    assert [next(it).node.node_id for _ in range(3)] == ["a", "a", "a"]
    with pytest.raises(RuntimeError, match="3"):
        next(it)
    b = Rec("b", "other")
    b - "x" >> Rec("y")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps = list(Graph(b).stream({}))
    assert [s.action for s in steps] == ["other"]
    assert [str(w.message) for w in caught] == ["Graph ends: 'other' not found in ['x']"]


def test_stream_without_start_raises_value_error():
    with pytest.raises(ValueError):
        list(Graph().stream({}))


def test_stream_async_yields_steps_for_mixed_nodes():
    a, b = ARec("a", "go"), Rec("b", "end")
    a - "go" >> b

    async def main():
        shared = {}
        steps = [s async for s in AsyncGraph(a).stream_async(shared)]
        return shared, steps

    shared, steps = asyncio.run(main())
    assert [(s.node.node_id, s.action) for s in steps] == [("a", "go"), ("b", "end")]
    assert all(isinstance(s, Step) and s.seconds >= 0 for s in steps)
    assert shared["trace"] == ["a", "b"]


def test_stream_async_is_lazy_and_nested_graph_is_one_step():
    inner = AsyncGraph(ARec("i1", "x"))
    inner.start_node - "x" >> ARec("i2", "inner_done")
    outer_next = ARec("after")
    inner - "inner_done" >> outer_next

    async def main():
        shared = {}
        agen = AsyncGraph(inner).stream_async(shared)
        first = await agen.__anext__()
        seen_after_first = list(shared["trace"])
        rest = [s async for s in agen]
        return first, seen_after_first, rest, shared

    first, seen, rest, shared = asyncio.run(main())
    assert first.action == "inner_done"
    assert seen == ["i1", "i2"]
    assert [s.node.node_id for s in rest] == ["after"]
    assert shared["trace"] == ["i1", "i2", "after"]


def test_stream_async_max_steps():
    a = ARec("a", "loop")
    a - "loop" >> a

    async def main():
        shared = {}
        with pytest.raises(RuntimeError, match="2"):
            async for _ in AsyncGraph(a, max_steps=2).stream_async(shared):
                pass
        return shared

    assert asyncio.run(main())["trace"] == ["a", "a"]


# --- to_mermaid -----------------------------------------------------------------------------


class Fetch(Node):
    pass


class Decide(Node):
    pass


class Answer(Node):
    pass


class Items(BatchNode):
    pass


def agent_graph():
    fetch, decide, answer = Fetch(node_id="fetch"), Decide(node_id="decide"), Answer()
    fetch >> decide
    decide - "search" >> fetch  # a loop
    decide - "answer" >> answer
    return Graph(fetch)


def labelled(action, lines):
    """How many of ``lines`` are arrows labelled with ``action`` (quoted or not)."""
    return sum(bool(re.search(rf'\|"?{action}"?\|', line)) for line in lines)


def arrows(text):
    return [line for line in text.splitlines() if "-->" in line or "-.->" in line]


def test_mermaid_has_one_box_per_node_with_id_and_class():
    text = agent_graph().to_mermaid()
    assert text.lstrip().startswith(("flowchart", "graph"))
    for needle in ("fetch", "Fetch", "decide", "Decide", "Answer"):
        assert needle in text


def test_mermaid_labels_actions_and_draws_loops_once():
    text = agent_graph().to_mermaid()
    lines = arrows(text)
    assert len(lines) == 3, text
    assert labelled("search", lines) == 1
    assert labelled("answer", lines) == 1
    assert sum("|" not in line for line in lines) == 1  # default is unlabelled


def test_mermaid_self_loop_is_drawn_once():
    a = Rec("a")
    a - "again" >> a
    text = Graph(a).to_mermaid()
    assert len(arrows(text)) == 1
    assert labelled("again", arrows(text)) == 1


def test_mermaid_nested_graph_is_a_subgraph():
    inner = agent_graph()
    first = Rec("first")
    last = Rec("last")
    first >> inner
    inner - "done" >> last
    text = Graph(first).to_mermaid()
    assert text.count("subgraph") == 1
    assert any(line.strip() == "end" for line in text.splitlines())
    for needle in ("first", "last", "fetch", "decide"):
        assert needle in text
    assert labelled("done", arrows(text)) == 1
    # arrows: first->inner, inner-done->last, and the three inside
    assert len(arrows(text)) == 5, text


def test_mermaid_same_nested_graph_object_reused_is_drawn_once():
    inner = Graph(Rec("x"))
    a = Rec("a")
    a - "one" >> inner
    inner - "back" >> a
    text = Graph(a).to_mermaid()
    assert text.count("subgraph") == 1
    assert len(arrows(text)) == 2


def test_mermaid_is_deterministic_in_process():
    assert agent_graph().to_mermaid() == agent_graph().to_mermaid()


MERMAID_SCRIPT = textwrap.dedent(
    """
    from kaygraph import Graph, Node

    class Fetch(Node): pass
    class Decide(Node): pass
    class Answer(Node): pass

    fetch, decide, answer = Fetch(), Decide(), Answer()
    fetch >> decide
    decide - "search" >> fetch
    decide - "answer" >> answer
    first = Node()
    first >> Graph(fetch)
    print(Graph(first).to_mermaid())
    """
)


def test_mermaid_is_the_same_in_fresh_processes_with_default_ids():
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run(
            [sys.executable, "-c", MERMAID_SCRIPT],
            capture_output=True, text=True, env=env, timeout=60, check=True,
        )  # fmt: skip
        outs.append(proc.stdout)
    assert outs[0] == outs[1]
    assert "Fetch" in outs[0] and "subgraph" in outs[0]
    assert "0x" not in outs[0]  # no memory addresses
