"""MetricsNode, ValidatedNode, Config, the hooks and the resource context managers."""

import asyncio
import time

import pytest
from test_core_helpers import InterleavedAB, ResourceLog

from kaygraph import (
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchNode,
    BatchNode,
    Config,
    Graph,
    MetricsNode,
    Node,
    ParallelBatchNode,
    ValidatedNode,
)

STATS_KEYS = {
    "total_executions", "success_rate", "avg_execution_time", "min_execution_time",
    "max_execution_time", "total_retries", "p50_execution_time", "p95_execution_time",
}  # fmt: skip


class FakeClock:
    """Stands in for time.perf_counter; exec advances it by the item's duration."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


# --- MetricsNode ----------------------------------------------------------------------------


def test_metrics_before_any_run_says_no_executions():
    assert MetricsNode().get_stats() == {"status": "no_executions"}


def test_metrics_disabled_collects_nothing():
    class Off(MetricsNode):
        def exec(self, prep_res):
            return 1

    node = Off(False)
    node.run({})
    assert node.collect_metrics is False
    assert node.get_stats() == {"status": "no_executions"}


def test_metrics_times_and_percentiles_per_item(clock):
    class Timed(MetricsNode, BatchNode):
        def prep(self, shared):
            return [5, 1, 20, 3] + [d for d in range(2, 21) if d not in (3, 5, 20)]

        def exec(self, duration):
            clock.now += duration
            return duration

    node = Timed()
    node.run({})
    stats = node.get_stats()
    assert set(stats) == STATS_KEYS
    assert stats["total_executions"] == 20
    assert stats["success_rate"] == 1.0
    assert stats["total_retries"] == 0
    assert stats["min_execution_time"] == 1.0
    assert stats["max_execution_time"] == 20.0
    assert stats["avg_execution_time"] == pytest.approx(10.5)
    assert stats["p50_execution_time"] == 10.0  # nearest rank of 1..20
    assert stats["p95_execution_time"] == 19.0


def test_metrics_survive_per_step_copies_in_a_graph():
    class Counted(MetricsNode):
        def exec(self, prep_res):
            return "x"

    node = Counted(node_id="counted")
    g = Graph(node)
    for _ in range(3):
        g.run({})
    assert node.get_stats()["total_executions"] == 3


def test_metrics_count_failures_and_retries():
    class Fails(MetricsNode):
        def exec(self, prep_res):
            raise ValueError("always")

    node = Fails(True, 3)
    with pytest.raises(ValueError):
        node.run({})
    stats = node.get_stats()
    assert stats["total_executions"] == 1
    assert stats["success_rate"] == 0.0
    assert stats["total_retries"] == 2


def test_metrics_retries_counted_per_item_under_threads():
    class Items(MetricsNode, ParallelBatchNode):
        def prep(self, shared):
            return range(30)

        def exec(self, item):
            if self.cur_retry < item % 3:
                raise ValueError(item)
            return item

    node = Items(True, max_retries=3, max_workers=4)
    node.run({})
    stats = node.get_stats()
    assert stats["total_executions"] == 30
    assert stats["total_retries"] == sum(i % 3 for i in range(30))
    assert stats["success_rate"] == 1.0


def test_metrics_retries_stay_per_item_when_items_interleave():
    ab = InterleavedAB()

    class Items(MetricsNode, ParallelBatchNode):
        def prep(self, shared):
            return ab.items

        def exec(self, item):
            return ab.exec(self, item)

    node = Items(max_retries=3, max_workers=2)
    node.run({})
    stats = node.get_stats()
    assert stats["total_executions"] == 2
    assert stats["total_retries"] == 3
    assert stats["success_rate"] == 1.0


def test_metrics_mixed_into_async_nodes():
    class ANode(MetricsNode, AsyncNode):
        async def exec_async(self, prep_res):
            if self.cur_retry == 0:
                raise ValueError("once")
            return 1

    node = ANode(max_retries=2)

    async def main():
        for _ in range(3):
            await node.run_async({})
        await AsyncGraph(node).run_async({})

    asyncio.run(main())
    stats = node.get_stats()
    assert stats["total_executions"] == 4
    assert stats["total_retries"] == 4


def test_metrics_mixed_into_async_parallel_batch():
    class Items(MetricsNode, AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return range(12)

        async def exec_async(self, item):
            await asyncio.sleep(0)
            if self.cur_retry < item % 2:
                raise ValueError(item)
            return item

        async def post_async(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    node = Items(max_retries=2, max_concurrency=4)
    shared = {}
    asyncio.run(node.run_async(shared))
    assert shared["out"] == list(range(12))
    stats = node.get_stats()
    assert stats["total_executions"] == 12
    assert stats["total_retries"] == 6


def test_metrics_async_disabled():
    class ANode(MetricsNode, AsyncNode):
        async def exec_async(self, prep_res):
            return 1

    node = ANode(False)
    asyncio.run(node.run_async({}))
    assert node.get_stats() == {"status": "no_executions"}


# --- ValidatedNode --------------------------------------------------------------------------


class Doubler(ValidatedNode):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def prep(self, shared):
        return shared["raw"]

    def validate_input(self, prep_res):
        if not str(prep_res).isdigit():
            raise ValueError(f"not a number: {prep_res!r}")
        return int(prep_res)

    def exec(self, n):
        self.calls.append(n)
        return n * 2

    def validate_output(self, exec_res):
        if exec_res > 100:
            raise ValueError(f"too big: {exec_res}")
        return {"value": exec_res}

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


def test_validated_node_converts_input_and_output():
    node = Doubler()
    shared = {"raw": "21"}
    node.run(shared)
    assert node.calls == [21]
    assert shared["out"] == {"value": 42}


def test_validation_errors_are_not_retried():
    node = Doubler(max_retries=5)
    with pytest.raises(ValueError, match="not a number"):
        node.run({"raw": "x"})
    assert node.calls == []
    with pytest.raises(ValueError, match="too big"):
        node.run({"raw": "99"})
    assert node.calls == [99]


def test_validated_node_defaults_pass_values_through():
    assert ValidatedNode().validate_input(3) == 3
    assert ValidatedNode().validate_output("x") == "x"


def test_validated_async_node():
    class AV(ValidatedNode, AsyncNode):
        def validate_input(self, prep_res):
            return prep_res + 1

        async def exec_async(self, prep_res):
            return prep_res * 10

        def validate_output(self, exec_res):
            return -exec_res

        async def prep_async(self, shared):
            return 1

        async def post_async(self, shared, prep_res, exec_res):
            return str(exec_res)

    assert asyncio.run(AV().run_async({})) == "-20"


# --- Config ---------------------------------------------------------------------------------


def test_config_get_set_update_merge_to_dict():
    c = Config({"a": 1}, b=2)
    assert c.get("a") == 1 and c.get("b") == 2
    assert c.get("missing") is None and c.get("missing", "d") == "d"
    c.set("a", 10)
    assert c.get("a") == 10
    c.update({"c": 3}, d=4)
    c.update(Config(e=5))
    assert c.to_dict() == {"a": 10, "b": 2, "c": 3, "d": 4, "e": 5}
    merged = c.merge({"a": "over", "z": 0})
    assert merged.get("a") == "over" and merged.get("z") == 0
    assert c.get("a") == 10 and "z" not in c  # merge leaves the original alone
    d = c.to_dict()
    d["a"] = "changed"
    assert c["a"] == 10  # to_dict is a copy


def test_config_copies_its_input_and_truthiness():
    src = {"k": 1}
    c = Config(src)
    src["k"] = 2
    assert c.get("k") == 1
    assert not Config() and not Config({})
    assert Config(x=0)
    assert Config(Config(a=1)) == Config(a=1)
    assert "Config" in repr(Config(a=1))


def test_config_rejects_non_mapping():
    with pytest.raises(TypeError) as info:
        Config(["a"])
    assert "['a']" in str(info.value)


def test_node_config_from_dict():
    n = Node(config={"model": "m"})
    assert isinstance(n.config, Config) and n.config.get("model") == "m"
    assert not Node().config


class ReadsConfig(Node):
    def exec(self, prep_res):
        return self.config.to_dict()

    def post(self, shared, prep_res, exec_res):
        shared.setdefault("seen", []).append(exec_res)


def test_graph_hands_its_config_to_nodes_whose_config_is_empty():
    plain, own = ReadsConfig(), ReadsConfig(config={"model": "own"})
    plain >> own
    g = Graph(plain, config=Config(model="graph", limit=3))
    shared = {}
    g.run(shared)
    assert shared["seen"] == [{"model": "graph", "limit": 3}, {"model": "own"}]
    assert not plain.config  # handed to the per-step copy only


def test_async_graph_hands_its_config_to_async_and_sync_nodes():
    class AsyncReadsConfig(AsyncNode):
        async def exec_async(self, prep_res):
            return self.config.to_dict()

        def post(self, shared, prep_res, exec_res):
            shared.setdefault("seen", []).append(exec_res)

    first, second, own = AsyncReadsConfig(), ReadsConfig(), ReadsConfig(config={"model": "own"})
    first >> second >> own
    shared = {}
    asyncio.run(AsyncGraph(first, config={"model": "graph"}).run_async(shared))
    assert shared["seen"] == [{"model": "graph"}, {"model": "graph"}, {"model": "own"}]
    assert not first.config and not second.config  # handed to the per-step copies only


def test_nested_graph_passes_outer_config_down():
    inner = Graph(ReadsConfig())
    shared = {}
    Graph(inner, config={"level": "outer"}).run(shared)
    assert shared["seen"] == [{"level": "outer"}]


def test_graph_without_config_leaves_node_config_empty():
    shared = {}
    Graph(ReadsConfig()).run(shared)
    assert shared["seen"] == [{}]


# --- hooks ----------------------------------------------------------------------------------


class Hooked(Node):
    def __init__(self, fail_in=None, suppress=False, **kw):
        super().__init__(**kw)
        self.fail_in, self.suppress = fail_in, suppress

    def _maybe_fail(self, phase, shared):
        shared.setdefault("log", []).append(phase)
        if self.fail_in == phase:
            raise KeyError(phase)

    def before_prep(self, shared):
        self._maybe_fail("before_prep", shared)

    def prep(self, shared):
        self._maybe_fail("prep", shared)
        return "p"

    def exec(self, prep_res):
        if self.fail_in == "exec":
            raise KeyError("exec")
        return "e"

    def after_exec(self, shared, prep_res, exec_res):
        shared["after_exec"] = (prep_res, exec_res)
        self._maybe_fail("after_exec", shared)

    def post(self, shared, prep_res, exec_res):
        self._maybe_fail("post", shared)
        return "posted"

    def on_error(self, shared, exc):
        shared.setdefault("errors", []).append(exc)
        return self.suppress


def test_hooks_run_in_order_around_the_phases():
    shared = {}
    assert Hooked().run(shared) == "posted"
    assert shared["log"] == ["before_prep", "prep", "after_exec", "post"]
    assert shared["after_exec"] == ("p", "e")
    assert "errors" not in shared


def test_after_exec_sees_the_result_after_retries():
    class Retried(Hooked):
        def exec(self, prep_res):
            if self.cur_retry < 2:
                raise ValueError("again")
            return f"ok on {self.cur_retry}"

    shared = {}
    Retried(max_retries=3).run(shared)
    assert shared["after_exec"] == ("p", "ok on 2")


@pytest.mark.parametrize("phase", ["before_prep", "prep", "exec", "after_exec", "post"])
def test_on_error_true_suppresses_and_action_is_none(phase):
    after = []

    class After(Node):
        def prep(self, shared):
            after.append(True)

    node = Hooked(fail_in=phase, suppress=True)
    shared = {"kept": 1}
    assert node.run(shared) is None
    assert [str(e) for e in shared["errors"]] == [repr(phase)]
    assert shared["kept"] == 1
    node - "posted" >> After()
    # In a graph a suppressed error routes on None, i.e. "default" (absent here: ends).
    g_shared = {}
    with pytest.warns(UserWarning, match="Graph ends: 'None'"):
        assert Graph(node).run(g_shared) is None
    assert after == []


def test_on_error_suppressed_routes_to_default_successor():
    node = Hooked(fail_in="exec", suppress=True)
    nxt = Hooked()
    node >> nxt
    shared = {}
    assert Graph(node).run(shared) == "posted"
    assert len(shared["errors"]) == 1


def test_on_error_false_reraises_and_store_keeps_writes():
    shared = {}
    with pytest.raises(KeyError):
        Hooked(fail_in="post").run(shared)
    assert shared["log"] == ["before_prep", "prep", "after_exec", "post"]
    assert isinstance(shared["errors"][0], KeyError)


def test_default_hooks_do_nothing():
    n = Node()
    assert n.before_prep({}) is None
    assert n.after_exec({}, None, None) is None
    assert n.on_error({}, ValueError()) is False


def test_async_node_hooks_and_on_error():
    class AHooked(AsyncNode):
        def before_prep(self, shared):
            shared["before"] = True

        async def exec_async(self, prep_res):
            raise KeyError("boom")

        def on_error(self, shared, exc):
            shared["error"] = exc
            return True

    shared = {}
    assert asyncio.run(AHooked().run_async(shared)) is None
    assert shared["before"] is True and isinstance(shared["error"], KeyError)


class Resourceful(ResourceLog, Node):
    pass


def test_context_manager_sets_up_and_cleans_up():
    node = Resourceful()
    with node as entered:
        assert entered is node
        assert node.events == ["setup"]
    assert node.events == ["setup", "cleanup"]


def test_context_manager_cleans_up_on_error_and_does_not_swallow():
    node = Resourceful()
    with pytest.raises(ZeroDivisionError):
        with node:
            1 / 0  # noqa: B018
    assert node.events == ["setup", "cleanup"]


def test_async_context_manager_calls_sync_resources_by_default():
    class AR(ResourceLog, AsyncNode):
        pass

    node = AR()

    async def main():
        async with node as entered:
            assert entered is node
            assert node.events == ["setup"]

    asyncio.run(main())
    assert node.events == ["setup", "cleanup"]


def test_async_node_before_prep_and_after_exec_hooks():
    class AHooks(AsyncNode):
        def before_prep(self, shared):
            shared["log"] = ["before_prep"]

        async def prep_async(self, shared):
            shared["log"].append("prep")
            return 2

        async def exec_async(self, prep_res):
            return prep_res * 3

        def after_exec(self, shared, prep_res, exec_res):
            shared["log"].append(("after_exec", prep_res, exec_res))

    shared = {}
    asyncio.run(AsyncGraph(AHooks()).run_async(shared))
    assert shared["log"] == ["before_prep", "prep", ("after_exec", 2, 6)]


def test_hooks_inherited_from_a_mixin_are_called():
    class LogMixin:
        def before_prep(self, shared):
            shared.setdefault("log", []).append("mixin before_prep")

    class Plain(Node):
        pass

    class Mixed(LogMixin, Plain):
        pass

    shared = {}
    Graph(Mixed()).run(shared)
    assert shared["log"] == ["mixin before_prep"]
