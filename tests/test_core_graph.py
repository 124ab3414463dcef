"""Routing, nesting, params, per-step copies, warnings, max_steps, aliases and logging."""

import asyncio
import logging
import threading
import warnings

import pytest
from test_core_helpers import Rec

import kaygraph
from kaygraph import (
    AsyncBatchFlow,
    AsyncBatchGraph,
    AsyncFlow,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchFlow,
    AsyncParallelBatchGraph,
    BatchFlow,
    BatchGraph,
    Flow,
    Graph,
    Node,
)


def run_quietly(graph, shared):
    """Run a graph, returning (action, list of warnings raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action = graph.run(shared)
    return action, caught


# --- wiring -------------------------------------------------------------------------------


def test_rshift_returns_right_node_and_chains():
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    assert (a >> b) is b
    b >> c
    assert a.successors == {"default": b}
    assert b.successors == {"default": c}
    shared = {}
    Graph(start=a).run(shared)
    assert shared["trace"] == ["a", "b", "c"]


def test_chain_of_three_in_one_expression():
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    assert (a >> b >> c) is c
    shared = {}
    Graph(a).run(shared)
    assert shared["trace"] == ["a", "b", "c"]


def test_labelled_transition_routes_on_action():
    a = Rec("a", action="right")
    left, right = Rec("left"), Rec("right")
    assert (a - "left" >> left) is left
    a - "right" >> right
    assert a.successors == {"left": left, "right": right}
    shared = {}
    action, caught = run_quietly(Graph(a), shared)
    assert shared["trace"] == ["a", "right"]
    assert caught == []


def test_next_method_registers_and_returns_node():
    a, b = Rec("a", action="go"), Rec("b")
    assert a.next(b, "go") is b
    assert a.next(Rec("c")) is not None
    assert a.successors["go"] is b
    assert "default" in a.successors


def test_reregistering_an_action_warns_and_replaces():
    a, b, c = Rec("a", action="x"), Rec("b"), Rec("c")
    a - "x" >> b
    with pytest.warns(UserWarning, match="x"):
        a - "x" >> c
    assert a.successors["x"] is c
    shared = {}
    Graph(a).run(shared)
    assert shared["trace"] == ["a", "c"]


def test_reregistering_default_warns():
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    a >> b
    with pytest.warns(UserWarning):
        a >> c
    assert a.successors["default"] is c


def test_start_method_and_get_next_node():
    a, b = Rec("a", action="x"), Rec("b")
    a - "x" >> b
    g = Graph()
    g.start(a)
    assert g.start_node is a
    assert g.get_next_node(a, "x") is b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert g.get_next_node(a, "y") is None
    assert g.get_next_node(b, None) is None
    shared = {}
    g.run(shared)
    assert shared["trace"] == ["a", "b"]


def test_none_action_routes_as_default_and_stays_none():
    a, b = Rec("a", action=None), Rec("b", action=None)
    a >> b
    shared = {}
    action, caught = run_quietly(Graph(a), shared)
    assert shared["trace"] == ["a", "b"]
    assert action is None
    assert caught == []


def test_default_string_action_is_returned_as_is():
    a = Rec("a", action="default")
    b = Rec("b", action="default")
    a >> b
    shared = {}
    assert Graph(a).run(shared) == "default"
    assert shared["trace"] == ["a", "b"]


def test_run_returns_last_action():
    a, b = Rec("a", action="next"), Rec("b", action="finished")
    a - "next" >> b
    assert Graph(a).run({}) == "finished"


# --- ending and warnings -------------------------------------------------------------------


def test_missing_action_warning_text_is_the_only_warning():
    a = Rec("a", action="c")
    a - "a" >> Rec("x")
    a - "b" >> Rec("y")
    shared = {}
    action, caught = run_quietly(Graph(a), shared)
    assert action == "c"
    assert shared["trace"] == ["a"]
    assert [str(w.message) for w in caught] == ["Graph ends: 'c' not found in ['a', 'b']"]
    assert caught[0].category is UserWarning


def test_missing_none_action_warning_names_none():
    a = Rec("a", action=None)
    a - "a" >> Rec("x")
    a - "b" >> Rec("y")
    action, caught = run_quietly(Graph(a), {})
    assert action is None
    assert len(caught) == 1
    assert str(caught[0].message) == ("Graph ends: 'None' not found in ['a', 'b'] (node 'a' "
                                      "returned no action: its post returned None)")


def test_node_without_successors_ends_silently():
    action, caught = run_quietly(Graph(Rec("a", action="anything")), {})
    assert action == "anything"
    assert caught == []


def test_node_run_with_successors_warns_and_runs_only_itself():
    a, b = Rec("a", action="done"), Rec("b")
    a >> b
    shared = {}
    with pytest.warns(UserWarning):
        assert a.run(shared) == "done"
    assert shared["trace"] == ["a"]


def test_node_run_without_successors_does_not_warn():
    shared = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Rec("a", action="ok").run(shared) == "ok"


def test_phases_pass_results_along():
    seen = {}

    class Phases(Node):
        def prep(self, shared):
            return shared["x"] + 1

        def exec(self, prep_res):
            seen["exec"] = prep_res
            return prep_res * 10

        def post(self, shared, prep_res, exec_res):
            shared["y"] = (prep_res, exec_res)
            return "done"

    shared = {"x": 1}
    assert Phases().run(shared) == "done"
    assert seen["exec"] == 2
    assert shared["y"] == (2, 20)


def test_default_phases_return_none():
    n = Node()
    assert n.prep({}) is None
    assert n.exec(None) is None
    assert n.post({}, None, None) is None
    assert n.run({}) is None


# --- nesting -------------------------------------------------------------------------------


def test_outer_graph_routes_on_inner_graphs_last_action():
    i1, i2 = Rec("i1"), Rec("i2", action="inner_done")
    i1 >> i2
    inner = Graph(i1)
    after, other = Rec("after"), Rec("other")
    inner - "inner_done" >> after
    inner - "something_else" >> other
    before = Rec("before")
    before >> inner
    shared = {}
    action, caught = run_quietly(Graph(before), shared)
    assert shared["trace"] == ["before", "i1", "i2", "after"]
    assert action is None
    assert caught == []


def test_graph_post_returns_last_action_by_default():
    g = Graph(Rec("a", action="z"))
    shared = {}
    assert g.run(shared) == "z"
    assert g.post(shared, None, "z") == "z"


def test_three_levels_of_nesting():
    leaf = Rec("leaf", action="up")
    mid = Graph(leaf)
    top_inner = Graph(mid)
    final = Rec("final")
    top_inner - "up" >> final
    shared = {}
    assert Graph(top_inner).run(shared) is None
    assert shared["trace"] == ["leaf", "final"]


def test_graph_can_be_reused_and_rerun():
    a, b = Rec("a"), Rec("b")
    a >> b
    g = Graph(a)
    s1, s2 = {}, {}
    g.run(s1)
    g.run(s2)
    assert s1["trace"] == s2["trace"] == ["a", "b"]


# --- params and per-step copies ------------------------------------------------------------


class ParamsProbe(Node):
    def prep(self, shared):
        shared.setdefault("params", []).append(dict(self.params))
        self.params["mutated"] = True  # must not reach the graph, the original or later runs
        self.note = "set on the copy"


def test_graph_hands_params_to_every_node_on_a_copy():
    a = ParamsProbe()
    g = Graph(a)
    g.set_params({"run_id": 7})
    first, second = {}, {}
    g.run(first)
    g.run(second)
    assert first["params"] == second["params"] == [{"run_id": 7}]
    assert a.params == {}
    assert not hasattr(a, "note")
    assert g.params == {"run_id": 7}


def test_set_params_replaces_params():
    n = Node()
    n.set_params({"k": 1})
    assert n.params == {"k": 1}
    n.set_params({})
    assert n.params == {}


def test_nested_graph_params_reach_inner_nodes():
    inner_node = ParamsProbe()
    inner = Graph(inner_node)
    outer = Graph(inner)
    outer.set_params({"file": "x.txt"})
    shared = {}
    outer.run(shared)
    assert shared["params"] == [{"file": "x.txt"}]
    assert inner.params == {} and inner_node.params == {}
    assert outer.params == {"file": "x.txt"}


def test_each_step_runs_a_fresh_copy_in_a_loop():
    class Counter(Node):
        def prep(self, shared):
            shared["ids"].append(id(self))
            self.visits = getattr(self, "visits", 0) + 1  # lands on this step's copy
            shared["visits"].append(self.visits)

        def post(self, shared, prep_res, exec_res):
            shared["n"] += 1
            return "again" if shared["n"] < 3 else "stop"

    c = Counter(node_id="c")
    c - "again" >> c
    shared = {"ids": [], "visits": [], "n": 0}
    with pytest.warns(UserWarning, match="'stop' not found"):
        Graph(c).run(shared)
    assert shared["visits"] == [1, 1, 1]
    assert id(c) not in shared["ids"]
    assert not hasattr(c, "visits")


class TwoPhaseProbe(Node):
    """Records params and cur_retry at the start and end of a run, after a sync point."""

    def __init__(self, sync, **kw):
        super().__init__(max_retries=3, **kw)
        self.sync = sync

    def prep(self, shared):
        return self.params["id"]

    def exec(self, run_id):
        start = (self.params["id"], self.cur_retry)
        self.sync(run_id, self.cur_retry)
        end = (self.params["id"], self.cur_retry)
        if run_id == 0 and self.cur_retry < 2:
            raise ValueError("retry me")
        return start, end

    def post(self, shared, prep_res, exec_res):
        shared["result"] = exec_res
        shared["post_id"] = self.params["id"]


def _wrapped(inner, run_id):
    outer = Graph(inner)
    outer.set_params({"id": run_id})
    return outer


def test_concurrent_runs_in_threads_keep_params_and_cur_retry_apart():
    n = 4
    barrier = threading.Barrier(n, timeout=10)
    late = threading.Event()

    def sync(run_id, attempt):
        # All runs meet inside exec; run 0 then retries while the others run exec again.
        if attempt == 0:
            barrier.wait()
        if run_id == 0 and attempt == 1:
            late.wait(10)

    probe = TwoPhaseProbe(sync, node_id="probe")
    inner = Graph(probe)
    shareds = [{} for _ in range(n)]
    errors = []

    def work(i):
        try:
            _wrapped(inner, i).run(shareds[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            if i != 0:
                late.set()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    for i in range(n):
        attempt = 2 if i == 0 else 0
        assert shareds[i]["result"] == ((i, attempt), (i, attempt))
        assert shareds[i]["post_id"] == i
    assert probe.params == {} and inner.params == {}


def test_concurrent_runs_in_tasks_keep_params_and_cur_retry_apart():
    n = 4

    async def main():
        arrived = []
        all_in, late = asyncio.Event(), asyncio.Event()

        class AsyncProbe(AsyncNode):
            async def exec_async(self, prep_res):
                run_id = self.params["id"]
                start = (self.params["id"], self.cur_retry)
                if self.cur_retry == 0:
                    arrived.append(run_id)
                    if len(arrived) == n:
                        all_in.set()
                    await asyncio.wait_for(all_in.wait(), 10)
                if run_id == 0 and self.cur_retry == 1:
                    await asyncio.wait_for(late.wait(), 10)
                end = (self.params["id"], self.cur_retry)
                if run_id == 0 and self.cur_retry < 2:
                    raise ValueError("retry me")
                return start, end

            async def post_async(self, shared, prep_res, exec_res):
                shared["result"] = exec_res
                shared["post_id"] = self.params["id"]

        probe = AsyncProbe(max_retries=3, node_id="probe")
        inner = AsyncGraph(probe)
        shareds = [{} for _ in range(n)]

        async def one(i):
            outer = AsyncGraph(inner)
            outer.set_params({"id": i})
            try:
                await outer.run_async(shareds[i])
            finally:
                if i != 0:
                    late.set()

        await asyncio.gather(*(one(i) for i in range(n)))
        return probe, shareds

    probe, shareds = asyncio.run(main())
    for i in range(n):
        attempt = 2 if i == 0 else 0
        assert shareds[i]["result"] == ((i, attempt), (i, attempt))
        assert shareds[i]["post_id"] == i
    assert probe.params == {}


# --- max_steps -----------------------------------------------------------------------------


def _ping_pong():
    class Step(Node):
        def post(self, shared, prep_res, exec_res):
            shared.setdefault("trace", []).append(self.node_id)
            return "go"

    ping, pong = Step(node_id="ping"), Step(node_id="pong")
    ping - "go" >> pong
    pong - "go" >> ping
    return ping


def test_max_steps_raises_naming_limit_and_node_and_keeps_writes():
    g = Graph(_ping_pong(), max_steps=5)
    shared = {}
    with pytest.raises(RuntimeError) as info:
        g.run(shared)
    msg = str(info.value)
    assert "5" in msg
    assert "pong" in msg  # step 6 would run pong
    assert shared["trace"] == ["ping", "pong", "ping", "pong", "ping"]


def test_max_steps_allows_exactly_n_steps():
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    a >> b >> c
    shared = {}
    Graph(a, max_steps=3).run(shared)
    assert shared["trace"] == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="2"):
        Graph(a, max_steps=2).run({})


def test_max_steps_counts_a_nested_graph_as_one_step():
    a, b, c = Rec("a"), Rec("b"), Rec("c")
    a >> b >> c
    inner = Graph(a)
    after = Rec("after")
    inner >> after
    shared = {}
    Graph(inner, max_steps=2).run(shared)
    assert shared["trace"] == ["a", "b", "c", "after"]


def test_inner_max_steps_applies_to_inner_run():
    inner = Graph(_ping_pong(), max_steps=3)
    shared = {}
    with pytest.raises(RuntimeError, match="3"):
        Graph(inner, max_steps=100).run(shared)
    assert shared["trace"] == ["ping", "pong", "ping"]


@pytest.mark.parametrize(
    "cls", [Graph, BatchGraph, AsyncGraph, AsyncBatchGraph, AsyncParallelBatchGraph]
)
def test_every_graph_class_takes_max_steps(cls):
    g = cls(_ping_pong(), max_steps=4)
    assert g.max_steps == 4


def test_async_graph_max_steps():
    shared = {}
    with pytest.raises(RuntimeError) as info:
        asyncio.run(AsyncGraph(_ping_pong(), max_steps=3).run_async(shared))
    assert "3" in str(info.value) and "pong" in str(info.value)
    assert shared["trace"] == ["ping", "pong", "ping"]


# --- async nodes under sync runs -----------------------------------------------------------


class AsyncThing(AsyncNode):
    async def exec_async(self, prep_res):
        return "never"


def test_async_node_in_sync_graph_raises_naming_node():
    shared = {}
    first = Rec("first")
    first >> AsyncThing(node_id="the_async_one")
    with pytest.raises(RuntimeError) as info:
        Graph(first).run(shared)
    msg = str(info.value)
    assert "the_async_one" in msg
    assert "AsyncGraph" in msg and "run_async" in msg
    assert shared["trace"] == ["first"]


def test_async_node_run_raises_naming_node():
    with pytest.raises(RuntimeError) as info:
        AsyncThing(node_id="lonely").run({})
    msg = str(info.value)
    assert "lonely" in msg and "AsyncGraph" in msg and "run_async" in msg


def test_async_graph_sync_run_raises():
    with pytest.raises(RuntimeError, match="run_async"):
        AsyncGraph(Rec("a")).run({})


# --- no start node ------------------------------------------------------------------------


def test_graph_without_start_raises_value_error_when_run():
    g = Graph()
    with pytest.raises(ValueError):
        g.run({})
    with pytest.raises(ValueError):
        asyncio.run(AsyncGraph().run_async({}))


# --- names, aliases, logging ----------------------------------------------------------------

PUBLIC = [
    "BaseNode", "Node", "BatchNode", "ParallelBatchNode", "AsyncNode", "AsyncBatchNode",
    "AsyncParallelBatchNode", "MetricsNode", "ValidatedNode", "Config", "Graph", "BatchGraph",
    "AsyncGraph", "AsyncBatchGraph", "AsyncParallelBatchGraph", "Flow", "AsyncFlow",
    "BatchFlow", "AsyncBatchFlow", "AsyncParallelBatchFlow", "Step",
]  # fmt: skip


def test_all_public_names_exported():
    for name in PUBLIC:
        assert name in kaygraph.__all__, name
        assert getattr(kaygraph, name) is not None


def test_aliases_are_the_same_classes():
    assert Flow is Graph
    assert AsyncFlow is AsyncGraph
    assert BatchFlow is BatchGraph
    assert AsyncBatchFlow is AsyncBatchGraph
    assert AsyncParallelBatchFlow is AsyncParallelBatchGraph


def test_class_hierarchy():
    assert issubclass(Graph, kaygraph.BaseNode)
    assert issubclass(AsyncGraph, Graph) and issubclass(AsyncGraph, AsyncNode)
    assert issubclass(BatchGraph, Graph)
    assert issubclass(kaygraph.ParallelBatchNode, kaygraph.BatchNode)
    assert issubclass(AsyncNode, Node)


def test_kaygraph_logger_has_null_handler_and_is_not_configured():
    logger = logging.getLogger("kaygraph")
    assert any(isinstance(h, logging.NullHandler) for h in logger.handlers)
    assert logger.level == logging.NOTSET


def test_retry_logging_is_lazy_and_names_the_node():
    class Costly(Exception):
        reprs = 0

        def __repr__(self):
            Costly.reprs += 1
            return "Costly()"

    class Flaky(Node):
        def exec(self, prep_res):
            if self.cur_retry == 0:
                raise Costly()

    logger = logging.getLogger("kaygraph")
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    try:
        logger.setLevel(logging.WARNING)
        Flaky(max_retries=2, node_id="flaky").run({})
        assert Costly.reprs == 0  # nothing formatted while INFO is off
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        Flaky(max_retries=2, node_id="flaky").run({})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert Costly.reprs > 0
    assert any("flaky" in r.getMessage() for r in records)


def test_node_loggers_live_under_kaygraph():
    assert Node().logger.name.startswith("kaygraph")
    assert Graph().logger.name.startswith("kaygraph")


def test_a_plain_base_node_runs_once_in_a_graph():
    calls = []

    class Bare(kaygraph.BaseNode):
        def prep(self, shared):
            return shared["x"]

        def exec(self, prep_res):
            calls.append(prep_res)
            raise ValueError("BaseNode has no retries")

    with pytest.raises(ValueError):
        Graph(Bare()).run({"x": 1})
    assert calls == [1]

    class Fine(kaygraph.BaseNode):
        def exec(self, prep_res):
            return "r"

        def post(self, shared, prep_res, exec_res):
            return exec_res

    assert Graph(Fine()).run({}) == "r"


def test_positional_signatures_match_kaygraph():
    n = Node(3, 0.5, "fetch", {"model": "m"})
    assert (n.max_retries, n.wait, n.node_id, n.config.get("model")) == (3, 0.5, "fetch", "m")
    p = kaygraph.ParallelBatchNode(4, 2, 1.0, "par")
    assert (p.max_workers, p.max_retries, p.wait, p.node_id) == (4, 2, 1.0, "par")
    m = kaygraph.MetricsNode(False, 5)
    assert (m.collect_metrics, m.max_retries) == (False, 5)
    a = Rec("a")
    g = Graph(a, {"k": 1})
    assert g.start_node is a and g.config.get("k") == 1
    assert Node().node_id == "Node"  # the default id is the class name


def test_graph_start_returns_the_node_so_wiring_chains():
    g = Graph()
    a, b = Rec("a"), Rec("b")
    assert g.start(a) >> b is b
    shared = {}
    g.run(shared)
    assert shared["trace"] == ["a", "b"]


def test_successor_none_is_an_explicit_end_without_a_warning():
    # PocketFlow's `node - "end" >> None`: the walk ends there, silently.
    a = Rec("a", action="end")
    a - "end" >> None
    a - "more" >> Rec("b")
    action, caught = run_quietly(Graph(a), {})
    assert action == "end" and caught == []
    assert Graph(a).to_mermaid().count("-->") == 1  # the end draws no arrow


def test_default_successor_none_ends_and_other_actions_still_warn():
    a = Rec("a", action="other")
    assert (a >> None) is None
    a - "x" >> Rec("x")
    action, caught = run_quietly(Graph(a), {})
    assert action == "other"
    assert [str(w.message) for w in caught] == ["Graph ends: 'other' not found in "
                                                "['default', 'x']"]
