"""Run events on every run path: sync, async, nested, batch graphs, batch items on threads,
tasks and processes, retries, errors, interrupts, durable runs, every way to pass a listener,
listener errors, to_mermaid(visited=...), and a plain run that makes none of it."""

import asyncio
import contextvars
import logging
import multiprocessing
import re
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import kaygraph
from kaygraph import (
    AsyncBatchGraph,
    AsyncBatchNode,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BatchGraph,
    BatchNode,
    Event,
    Graph,
    Interrupt,
    Node,
    ParallelBatchNode,
)
from kaygraph.stores import MemoryStore


class Recorder:
    """A listener that keeps every Event with the thread and asyncio task it came from."""

    def __init__(self):
        self.events, self.threads, self.tasks = [], [], []

    def __call__(self, event):
        self.events.append(event)
        self.threads.append(threading.current_thread())
        try:
            self.tasks.append(asyncio.current_task())
        except RuntimeError:  # no event loop in this thread
            self.tasks.append(None)

    def brief(self, *kinds):
        """One line per event (of `kinds`, default all): kind, path, [item], -> action, !error."""
        return [brief(e) for e in self.events if not kinds or e.kind in kinds]


def brief(e):
    text = f"{e.kind} {'/'.join(e.path)}"
    if e.item_index is not None:
        text += f"#{e.item_index}"
    if e.action is not None:
        text += f" -> {e.action}"
    if e.error is not None:
        text += f" !{type(e.error).__name__}"
    return text


class Act(Node):
    """Writes shared[node_id] = True and returns its `action`."""

    def __init__(self, action=None, **kw):
        super().__init__(**kw)
        self.action = action

    def post(self, shared, prep_res, exec_res):
        shared[self.node_id] = True
        return self.action


class AAct(AsyncNode):
    def __init__(self, action=None, **kw):
        super().__init__(**kw)
        self.action = action

    async def post_async(self, shared, prep_res, exec_res):
        shared[self.node_id] = True
        return self.action


def nested(node=Act, graph=Graph):
    """top: a -go-> inner (x >> y) >> b, the steps every run-path test expects."""
    x = node(node_id="x")
    x >> node(action="done", node_id="y")
    inner = graph(x, node_id="inner")
    a = node(action="go", node_id="a")
    a - "go" >> inner
    inner - "done" >> node(action="end", node_id="b")
    return graph(a, node_id="top")


NESTED = [
    "run_start top",
    "step_start top/a", "step_end top/a -> go",
    "step_start top/inner",
    "step_start top/inner/x", "step_end top/inner/x",
    "step_start top/inner/y", "step_end top/inner/y -> done",
    "step_end top/inner -> done",
    "step_start top/b", "step_end top/b -> end",
    "run_end top -> end",
]


def test_a_sync_run_reports_its_steps_and_nested_paths_in_order():
    rec, shared = Recorder(), {}
    assert nested().run(shared, listeners=[rec]) == "end"
    assert rec.brief() == NESTED
    assert shared == {"a": True, "x": True, "y": True, "b": True}
    for e in rec.events:
        assert isinstance(e, Event) and e.run_id is None and e.node_id == e.path[-1]
        if e.kind.endswith("_end"):
            assert isinstance(e.seconds, float) and e.seconds >= 0
        else:
            assert e.seconds is None
    # a nested graph's step lasts at least as long as its inner steps together
    seconds = {brief(e): e.seconds for e in rec.events}
    assert seconds["step_end top/inner -> done"] >= (seconds["step_end top/inner/x"]
                                                      + seconds["step_end top/inner/y -> done"])
    assert {t.ident for t in rec.threads} == {threading.get_ident()}


def test_an_async_run_reports_the_same_events_from_its_task():
    rec, shared = Recorder(), {}

    async def main():
        action = await nested(AAct, AsyncGraph).run_async(shared, listeners=[rec])
        return action, asyncio.current_task()

    action, task = asyncio.run(main())
    assert action == "end" and rec.brief() == NESTED
    assert set(rec.tasks) == {task}
    assert shared == {"a": True, "x": True, "y": True, "b": True}


class Stamp(Node):
    def post(self, shared, prep_res, exec_res):
        shared.setdefault("seen", []).append((self.node_id, self.params["i"]))


class Runs(BatchGraph):
    def prep(self, shared):
        return [{"i": 0}, {"i": 1}]


class ARuns(AsyncBatchGraph):
    async def prep_async(self, shared):
        return [{"i": 0}, {"i": 1}]


BATCH = ["run_start top", "step_start top/runs",
         "step_start top/runs/p", "step_end top/runs/p", "step_start top/runs/q",
         "step_end top/runs/q",
         "step_start top/runs/p", "step_end top/runs/p", "step_start top/runs/q",
         "step_end top/runs/q",
         "step_end top/runs", "run_end top"]


@pytest.mark.parametrize("kind", ["BatchGraph", "AsyncBatchGraph"])
def test_a_batch_graph_reports_the_steps_of_each_run_one_run_after_another(kind):
    rec, shared = Recorder(), {}
    p = Stamp(node_id="p")
    p >> Stamp(node_id="q")
    if kind == "BatchGraph":
        Graph(Runs(p, node_id="runs"), node_id="top").run(shared, listeners=[rec])
    else:
        asyncio.run(AsyncGraph(ARuns(p, node_id="runs"), node_id="top").run_async(
            shared, listeners=[rec]))
    assert rec.brief() == BATCH
    assert shared["seen"] == [("p", 0), ("q", 0), ("p", 1), ("q", 1)]


def test_a_parallel_batch_graph_reports_each_runs_steps_from_the_task_running_it():
    gate, rec, shared = {}, Recorder(), {}

    class Meet(AsyncNode):
        async def exec_async(self, prep_res):
            event = gate.setdefault("both", asyncio.Event())
            if self.params["i"] == 0:
                await event.wait()  # run 0 cannot end before run 1 has started
            else:
                event.set()

        async def post_async(self, shared, prep_res, exec_res):
            shared.setdefault("seen", []).append((self.node_id, self.params["i"]))

    class PRuns(AsyncParallelBatchGraph):
        async def prep_async(self, shared):
            return [{"i": 0}, {"i": 1}]

    p = Meet(node_id="p")
    p >> Meet(node_id="q")

    async def main():
        await AsyncGraph(PRuns(p, node_id="runs"), node_id="top").run_async(
            shared, listeners=[rec])
        return asyncio.current_task()

    top_task = asyncio.run(main())
    lines = rec.brief()
    assert lines[:2] == ["run_start top", "step_start top/runs"]
    assert lines[-2:] == ["step_end top/runs", "run_end top"]
    assert sorted(lines[2:-2]) == sorted(BATCH[2:-2])
    inner = [(e, task) for e, task in zip(rec.events, rec.tasks, strict=True) if len(e.path) == 3]
    assert {task for _, task in inner}.isdisjoint({top_task})
    # each run's four events come from one task of its own, start and end of a step alike
    by_task = {}
    for e, task in inner:
        by_task.setdefault(task, []).append(brief(e))
    assert sorted(by_task.values()) == [BATCH[2:6], BATCH[2:6]]
    # and they overlapped: both p steps were running at one time
    spans = {}
    for i, (e, task) in enumerate(inner):
        if e.node_id == "p":
            spans.setdefault(task, []).append(i)
    (s0, e0), (s1, e1) = spans.values()
    assert max(s0, s1) < min(e0, e1)
    assert sorted(shared["seen"]) == [("p", 0), ("p", 1), ("q", 0), ("q", 1)]


class Items(BatchNode):
    def prep(self, shared):
        return [10, 20, 30]

    def exec(self, item):
        return item + 1

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


def test_batch_node_items_report_start_and_end_in_order_between_the_step_events():
    rec, shared = Recorder(), {}
    Graph(Items(node_id="items"), node_id="top").run(shared, listeners=[rec])
    assert rec.brief() == [
        "run_start top", "step_start top/items",
        "item_start top/items#0", "item_end top/items#0",
        "item_start top/items#1", "item_end top/items#1",
        "item_start top/items#2", "item_end top/items#2",
        "step_end top/items", "run_end top"]
    assert shared["out"] == [11, 21, 31]
    ends = [e for e in rec.events if e.kind == "item_end"]
    assert all(isinstance(e.seconds, float) and e.seconds >= 0 for e in ends)


def test_parallel_batch_node_items_report_from_the_worker_thread_in_the_steps_context():
    here = contextvars.ContextVar("here", default=None)
    barrier = threading.Barrier(2, timeout=30)
    rec, seen = Recorder(), []
    tokens = []

    def mark(event):  # what a tracer does: the step's span is current while it runs
        if event.kind == "step_start":
            tokens.append(here.set(event.path))
        elif event.kind == "step_end":
            here.reset(tokens.pop())
        elif event.kind in ("item_start", "item_end"):
            seen.append((event.kind, event.item_index, here.get()))

    class Par(ParallelBatchNode):
        def prep(self, shared):
            return [0, 1, 2, 3]

        def exec(self, item):
            if item < 2:
                barrier.wait()  # items 0 and 1 run at the same time, on two threads
            return item * 2

        def post(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}
    Graph(Par(max_workers=2, node_id="par"), node_id="top").run(shared, listeners=[rec, mark])
    assert shared["out"] == [0, 2, 4, 6]
    lines = rec.brief()
    assert lines[:2] == ["run_start top", "step_start top/par"]
    assert lines[-2:] == ["step_end top/par", "run_end top"]
    assert sorted(lines[2:-2]) == sorted(
        f"item_{k} top/par#{i}" for i in range(4) for k in ("start", "end"))
    threads = {}
    for e, thread in zip(rec.events, rec.threads, strict=True):
        if e.kind.startswith("item"):
            assert thread is not threading.current_thread()
            assert thread.name.startswith("kaygraph")
            threads.setdefault(e.item_index, set()).add(thread)
        else:
            assert thread is threading.current_thread()
    assert all(len(t) == 1 for t in threads.values())  # an item starts and ends on one thread
    assert threads[0] != threads[1]
    assert sorted(seen) == sorted((k, i, ("top", "par")) for i in range(4)
                                  for k in ("item_start", "item_end"))
    assert here.get() is None


class Double(ParallelBatchNode):
    """Module level, so a spawned process can unpickle it."""

    def prep(self, shared):
        return [1, 2, 3]

    def exec(self, item):
        return item * 2

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


def test_items_on_a_process_pool_report_only_item_end_from_the_calling_thread():
    rec, shared = Recorder(), {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        Graph(Double(executor=pool, node_id="d"), node_id="top").run(shared, listeners=[rec])
    assert shared["out"] == [2, 4, 6]
    lines = rec.brief()
    assert lines[:2] == ["run_start top", "step_start top/d"]
    assert lines[-2:] == ["step_end top/d", "run_end top"]
    assert sorted(lines[2:-2]) == ["item_end top/d#0", "item_end top/d#1", "item_end top/d#2"]
    items = [e for e in rec.events if e.kind == "item_end"]
    assert all(e.seconds is None for e in items)
    assert set(rec.threads) == {threading.current_thread()}


def test_async_parallel_batch_node_items_report_from_their_own_tasks():
    rec, box = Recorder(), {}

    class Fan(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return ["a", "b", "c"]

        async def exec_async(self, item):
            box.setdefault("in", []).append(item)
            event = box.setdefault("all", asyncio.Event())
            if len(box["in"]) == 3:
                event.set()
            await event.wait()  # no item ends before all three have started
            return item.upper()

        async def post_async(self, shared, prep_res, exec_res):
            shared["out"] = exec_res

    shared = {}

    async def main():
        await AsyncGraph(Fan(node_id="fan"), node_id="top").run_async(shared, listeners=[rec])
        return asyncio.current_task()

    top = asyncio.run(main())
    assert shared["out"] == ["A", "B", "C"]
    lines = rec.brief()
    assert sorted(lines[2:5]) == ["item_start top/fan#0", "item_start top/fan#1",
                                  "item_start top/fan#2"]
    assert sorted(lines[5:8]) == ["item_end top/fan#0", "item_end top/fan#1",
                                  "item_end top/fan#2"]
    tasks = {}
    for e, task in zip(rec.events, rec.tasks, strict=True):
        if e.kind.startswith("item"):
            tasks.setdefault(e.item_index, set()).add(task)
        else:
            assert task is top
    assert all(len(t) == 1 for t in tasks.values())
    assert len(set().union(*tasks.values()) - {top}) == 3


def test_async_batch_node_items_report_one_after_another():
    rec = Recorder()

    class Seq(AsyncBatchNode):
        async def prep_async(self, shared):
            return [1, 2]

        async def exec_async(self, item):
            return item

    asyncio.run(AsyncGraph(Seq(node_id="s"), node_id="top").run_async({}, listeners=[rec]))
    assert rec.brief("item_start", "item_end") == [
        "item_start top/s#0", "item_end top/s#0", "item_start top/s#1", "item_end top/s#1"]


# -- retries

@pytest.fixture
def sleeps(monkeypatch):
    """Record the waits between attempts of sync nodes instead of sleeping them."""
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    return waits


class Flaky(Node):
    """Fails its first `fails` attempts (all, by default); the fallback returns 'fb'."""

    def __init__(self, fails=10**9, **kw):
        super().__init__(**kw)
        self.fails, self.raised = fails, []

    def exec(self, prep_res):
        if len(self.raised) < self.fails:
            self.raised.append(ValueError(f"attempt {self.cur_retry + 1}"))
            raise self.raised[-1]
        return "ok"

    def exec_fallback(self, prep_res, exc):
        return "fb"

    def post(self, shared, prep_res, exec_res):
        shared["res"] = exec_res


def failed_attempts(rec):
    return [(e.attempt, e.delay, e.error, e.item_index)
            for e in rec.events if e.kind == "attempt_failed"]


def test_each_failed_attempt_is_reported_with_its_delay_and_giving_up_with_none(sleeps):
    rec, shared = Recorder(), {}
    node = Flaky(max_retries=3, wait=0.5, backoff=2, node_id="f")
    Graph(node, node_id="top").run(shared, listeners=[rec])
    first, second, third = node.raised
    assert failed_attempts(rec) == [(1, 0.5, first, None), (2, 1.0, second, None),
                                    (3, None, third, None)]
    assert sleeps == [0.5, 1.0] and shared["res"] == "fb"
    assert rec.brief()[:5] == ["run_start top", "step_start top/f",
                               "attempt_failed top/f !ValueError",
                               "attempt_failed top/f !ValueError",
                               "attempt_failed top/f !ValueError"]
    assert rec.brief()[5] == "step_end top/f"  # the fallback's result ended the step


def test_a_success_after_a_retry_and_an_error_retry_on_refuses(sleeps):
    rec = Recorder()
    ok = Flaky(fails=1, max_retries=3, wait=0.25, node_id="ok")
    ok >> Flaky(max_retries=5, wait=1, retry_on=KeyError, node_id="no")
    Graph(ok, node_id="top").run({}, listeners=[rec])
    assert [(e.path, e.attempt, e.delay) for e in rec.events if e.kind == "attempt_failed"] == [
        (("top", "ok"), 1, 0.25), (("top", "no"), 1, None)]
    assert sleeps == [0.25]


def test_an_async_node_reports_its_attempts_like_a_sync_one():
    rec = Recorder()
    raised = []

    class AFlaky(AsyncNode):
        async def exec_async(self, prep_res):
            if not raised:
                raised.append(TimeoutError("slow"))
                raise raised[0]
            return "ok"

    asyncio.run(AsyncGraph(AFlaky(max_retries=3, backoff=3, node_id="af"), node_id="top")
                .run_async({}, listeners=[rec]))
    assert failed_attempts(rec) == [(1, 0.0, raised[0], None)]


@pytest.mark.parametrize("kind", ["BatchNode", "ParallelBatchNode", "AsyncParallelBatchNode"])
def test_an_items_failed_attempt_names_the_item(kind, sleeps):
    rec, errors = Recorder(), []

    def work(node, item):
        if item == "b" and node.cur_retry == 0:
            errors.append(ValueError(item))
            raise errors[0]
        return item

    if kind == "AsyncParallelBatchNode":
        class Node_(AsyncParallelBatchNode):
            async def prep_async(self, shared):
                return ["a", "b", "c"]

            async def exec_async(self, item):
                return work(self, item)

        asyncio.run(AsyncGraph(Node_(max_retries=2, node_id="n"), node_id="top")
                    .run_async({}, listeners=[rec]))
    else:
        base = BatchNode if kind == "BatchNode" else ParallelBatchNode

        class Node_(base):
            def prep(self, shared):
                return ["a", "b", "c"]

            def exec(self, item):
                return work(self, item)

        Graph(Node_(max_retries=2, node_id="n"), node_id="top").run({}, listeners=[rec])
    assert failed_attempts(rec) == [(1, 0.0, errors[0], 1)]
    (fail,) = [i for i, e in enumerate(rec.events) if e.kind == "attempt_failed"]
    starts = [i for i, e in enumerate(rec.events)
              if e.kind == "item_start" and e.item_index == 1]
    ends = [i for i, e in enumerate(rec.events) if e.kind == "item_end" and e.item_index == 1]
    assert starts[0] < fail < ends[0]
    assert rec.threads[fail] is rec.threads[starts[0]]
    assert rec.tasks[fail] is rec.tasks[starts[0]]


# -- errors, interrupts and durable runs

class Boom(Node):
    def exec(self, prep_res):
        raise KeyError("boom")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failing_step_ends_with_its_error_at_every_level_then_error_and_run_end(mode):
    rec, shared = Recorder(), {}
    x = Act(node_id="x")
    x >> Boom(node_id="boom")
    if mode == "sync":
        top = Graph(Graph(x, node_id="inner"), node_id="top")
        with pytest.raises(KeyError) as caught:
            top.run(shared, listeners=[rec])
    else:
        top = AsyncGraph(AsyncGraph(x, node_id="inner"), node_id="top")
        with pytest.raises(KeyError) as caught:
            asyncio.run(top.run_async(shared, listeners=[rec]))
    assert rec.brief() == [
        "run_start top", "step_start top/inner",
        "step_start top/inner/x", "step_end top/inner/x",
        "step_start top/inner/boom", "attempt_failed top/inner/boom !KeyError",
        "step_end top/inner/boom !KeyError", "step_end top/inner !KeyError",
        "error top/inner/boom !KeyError", "run_end top !KeyError"]
    assert all(e.error is caught.value for e in rec.events if e.error is not None)
    assert shared == {"x": True}


def test_a_failing_item_ends_with_its_error_and_so_does_its_step():
    rec = Recorder()

    class Bad(BatchNode):
        def prep(self, shared):
            return [1, 2]

        def exec(self, item):
            if item == 2:
                raise ValueError("item 2")

    with pytest.raises(ValueError):
        Graph(Bad(node_id="bad"), node_id="top").run({}, listeners=[rec])
    assert rec.brief() == [
        "run_start top", "step_start top/bad", "item_start top/bad#0", "item_end top/bad#0",
        "item_start top/bad#1", "attempt_failed top/bad#1 !ValueError",
        "item_end top/bad#1 !ValueError", "step_end top/bad !ValueError",
        "error top/bad !ValueError", "run_end top !ValueError"]


class Ask(Node):
    def exec(self, prep_res):
        return self.interrupt({"question": "ship it?"})

    def post(self, shared, prep_res, exec_res):
        shared["answer"] = exec_res
        return "answered"


def ask_graph():
    first = Act(node_id="first")
    first >> Ask(node_id="ask")
    first.successors["default"] - "answered" >> Act(action="shipped", node_id="last")
    return Graph(first, node_id="top")


def test_a_durable_runs_interrupt_and_resume_report_the_run_id_and_only_the_steps_run():
    store, rec = MemoryStore(), Recorder()
    with pytest.raises(Interrupt) as caught:
        ask_graph().run({}, run_id="order-1", store=store, listeners=[rec])
    assert rec.brief() == [
        "run_start top", "step_start top/first", "step_end top/first",
        "step_start top/ask", "step_end top/ask !Interrupt", "interrupt top/ask",
        "run_end top !Interrupt"]
    assert {e.run_id for e in rec.events} == {"order-1"}
    (asked,) = [e for e in rec.events if e.kind == "interrupt"]
    assert asked.payload == {"question": "ship it?"} and asked.node_id == "ask"
    assert rec.events[-1].error is caught.value

    again, shared = Recorder(), {}
    action = ask_graph().resume(shared, run_id="order-1", store=store, value="yes",
                                listeners=[again])
    assert action == "shipped" and shared == {"first": True, "answer": "yes", "last": True}
    assert again.brief() == [  # the completed step 'first' is not run, nor reported, again
        "run_start top", "step_start top/ask", "step_end top/ask -> answered",
        "step_start top/last", "step_end top/last -> shipped", "run_end top -> shipped"]
    assert {e.run_id for e in again.events} == {"order-1"}

    done = Recorder()  # a done run runs nothing: it starts and ends with the saved action
    assert ask_graph().resume({}, run_id="order-1", store=store, listeners=[done]) == "shipped"
    assert done.brief() == ["run_start top", "run_end top -> shipped"]


def test_a_durable_runs_error_is_reported_and_the_resume_reports_the_re_run():
    store, rec, fails = MemoryStore(), Recorder(), [True]

    class Once(Node):
        def exec(self, prep_res):
            if fails.pop() if fails else False:
                raise ConnectionError("down")

    def graph():
        first = Act(node_id="first")
        first >> Once(node_id="once")
        return Graph(first, node_id="top")

    with pytest.raises(ConnectionError):
        graph().run({}, run_id="r", store=store, listeners=[rec])
    (error,) = [e for e in rec.events if e.kind == "error"]
    assert error.path == ("top", "once") and error.run_id == "r"
    assert isinstance(error.error, ConnectionError)
    again = Recorder()
    graph().resume({}, run_id="r", store=store, listeners=[again])
    assert again.brief() == ["run_start top", "step_start top/once", "step_end top/once",
                             "run_end top"]


# -- every way to pass listeners

def plain(node=Act, graph=Graph):
    a = node(node_id="a")
    a >> node(action="end", node_id="b")
    return graph(a, node_id="g")


class MaybeAsk(Node):
    """Asks a person in a durable run; the answer is the action."""

    def exec(self, prep_res):
        return self.interrupt("go?")

    def post(self, shared, prep_res, exec_res):
        shared["a"] = exec_res


def interrupted(graph=Graph):
    """A durable run stopped at its first step 'a', and the graph to resume it with."""
    store = MemoryStore()
    a = MaybeAsk(node_id="a")
    a >> Act(action="end", node_id="b")
    g = graph(a, node_id="g")
    with pytest.raises(Interrupt):
        if graph is Graph:
            g.run({}, run_id="r", store=store)
        else:
            asyncio.run(g.run_async({}, run_id="r", store=store))
    return g, store


async def drain_async(steps):
    return [step async for step in steps]


def _run(listeners):
    return plain().run({}, listeners=listeners)


def _stream(listeners):
    return list(plain().stream({}, listeners=listeners))


def _run_async(listeners):
    return asyncio.run(plain(AAct, AsyncGraph).run_async({}, listeners=listeners))


def _stream_async(listeners):
    return asyncio.run(drain_async(plain(AAct, AsyncGraph).stream_async({},
                                                                          listeners=listeners)))


def _resume(listeners):
    g, store = interrupted()
    return g.resume({}, run_id="r", store=store, value="yes", listeners=listeners)


def _stream_resume(listeners):
    g, store = interrupted()
    return list(g.stream_resume({}, run_id="r", store=store, value="yes", listeners=listeners))


def _resume_async(listeners):
    g, store = interrupted(AsyncGraph)
    return asyncio.run(g.resume_async({}, run_id="r", store=store, value="yes",
                                      listeners=listeners))


def _stream_resume_async(listeners):
    g, store = interrupted(AsyncGraph)
    return asyncio.run(drain_async(g.stream_resume_async({}, run_id="r", store=store,
                                                         value="yes", listeners=listeners)))


def _graph_attribute(listeners):
    g = plain()
    g.listeners = tuple(listeners)
    return g.run({})


def _class_attribute(listeners):
    class Watched(Graph):
        pass

    Watched.listeners = tuple(listeners)
    a = Act(node_id="a")
    a >> Act(action="end", node_id="b")
    return Watched(a, node_id="g").run({})


ENTRY_POINTS = [_run, _stream, _run_async, _stream_async, _resume, _stream_resume,
                _resume_async, _stream_resume_async, _graph_attribute, _class_attribute]
PLAIN = ["run_start g", "step_start g/a", "step_end g/a", "step_start g/b",
         "step_end g/b -> end", "run_end g -> end"]


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=lambda f: f.__name__.strip("_"))
def test_listeners_see_the_same_run_from_every_entry_point(entry):
    rec = Recorder()
    entry([rec])
    run_ids = {e.run_id for e in rec.events}
    assert run_ids == ({"r"} if "resume" in entry.__name__ else {None})
    assert rec.brief() == PLAIN


def test_the_graphs_listeners_come_first_then_the_ones_passed_to_the_run():
    order = []
    g = plain()
    g.listeners = (lambda e: order.append(("graph", e.kind)),)
    g.run({}, listeners=[lambda e: order.append(("run", e.kind))])
    assert order[:4] == [("graph", "run_start"), ("run", "run_start"),
                         ("graph", "step_start"), ("run", "step_start")]
    assert len(order) == 2 * len(PLAIN)
    assert Graph.listeners == ()  # setting them on one graph changed no other


def test_a_listener_that_is_not_callable_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="listener must be callable.*'not a function'"):
        plain().run({}, listeners=["not a function"])


# -- listener errors

@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_listener_that_raises_is_logged_once_and_the_run_goes_on(mode, caplog):
    calls, rec = [], Recorder()

    def broken(event):
        calls.append(event.kind)
        raise RuntimeError("listener bug")

    shared = {}
    with caplog.at_level(logging.ERROR, logger="kaygraph"):
        if mode == "sync":
            action = nested().run(shared, listeners=[broken, rec])
        else:
            action = asyncio.run(nested(AAct, AsyncGraph).run_async(shared,
                                                                     listeners=[broken, rec]))
    assert action == "end"
    assert shared == {"a": True, "x": True, "y": True, "b": True}
    assert rec.brief() == NESTED  # the listener after it missed nothing
    assert len(calls) == len(NESTED)  # it was called for every event, and raised each time
    logged = [r for r in caplog.records if r.name == "kaygraph"]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR and logged[0].exc_info[0] is RuntimeError
    assert "broken" in logged[0].getMessage() and "run_start" in logged[0].getMessage()


def test_a_strict_listeners_error_propagates():
    class Strict:
        strict = True

        def __call__(self, event):
            if event.kind == "step_end" and event.node_id == "x":
                raise AssertionError("x must not end")

    rec, shared = Recorder(), {}
    with pytest.raises(AssertionError, match="x must not end"):
        nested().run(shared, listeners=[Strict(), rec])
    assert shared == {"a": True, "x": True}  # x ran; nothing after it
    assert rec.brief()[-1] == "run_end top !AssertionError"
    assert "step_start top/inner/y" not in rec.brief()


def test_a_strict_listener_stops_an_async_run_too():
    class Strict:
        strict = True

        def __call__(self, event):
            if event.kind == "step_start" and event.node_id == "b":
                raise LookupError("no b")

    shared = {}
    with pytest.raises(LookupError):
        asyncio.run(nested(AAct, AsyncGraph).run_async(shared, listeners=[Strict()]))
    assert "b" not in shared and shared["y"] is True


# -- to_mermaid(visited=...)

def highlighted(text):
    """The labels of the nodes a Mermaid text marks as visited."""
    names = dict(re.findall(r'(n\d+)\["([^"]+)"\]', text))
    (marked,) = re.findall(r"^    class (\S+) visited$", text, re.M) or [""]
    return {names[n] for n in marked.split(",") if n}


def branching():
    load, route = Act(node_id="load"), Act(action="deep", node_id="route")
    x = Act(node_id="x")
    x >> Act(node_id="y")
    load >> route
    route - "deep" >> Graph(x, node_id="deep")
    route - "skip" >> Act(node_id="other")
    return Graph(load, node_id="top")


def test_to_mermaid_highlights_the_nodes_a_run_went_through_from_its_events():
    rec = Recorder()
    graph = branching()
    assert highlighted(graph.to_mermaid()) == set()
    graph.run({}, listeners=[rec])
    text = graph.to_mermaid(visited=rec.events)
    assert highlighted(text) == {"load (Act)", "route (Act)", "deep (Graph)", "x (Act)",
                                 "y (Act)"}
    assert "classDef visited" in text
    # only the step events matter as much as all: the same picture
    steps = [e for e in rec.events if e.kind == "step_end"]
    assert graph.to_mermaid(visited=steps) == text


def test_to_mermaid_highlights_a_durable_runs_history():
    store = MemoryStore()
    graph = branching()
    graph.run({}, run_id="h", store=store)
    text = graph.to_mermaid(visited=store.history("h"))
    assert highlighted(text) == {"load (Act)", "route (Act)", "deep (Graph)", "x (Act)",
                                 "y (Act)"}


# -- a plain run makes no event machinery

def test_a_plain_run_makes_no_run_and_its_copies_have_no_frame(monkeypatch):
    dicts = []

    class NoRun:
        def __init__(self, *args, **kwargs):
            raise AssertionError("a plain run made a _Run")

    monkeypatch.setattr(kaygraph, "_Run", NoRun)

    class Look(Node):
        def exec(self, prep_res):
            dicts.append(dict(self.__dict__))

    class LookItems(ParallelBatchNode):
        def prep(self, shared):
            return [1, 2]

        def exec(self, item):
            dicts.append(dict(self.__dict__))

    class ALook(AsyncParallelBatchNode):
        async def prep_async(self, shared):
            return [1, 2]

        async def exec_async(self, item):
            dicts.append(dict(self.__dict__))

    def graph():
        look = Look(node_id="look")
        look >> LookItems(node_id="items")
        return Graph(look, node_id="g")

    graph().run({})
    steps = list(graph().stream({}))
    asyncio.run(AsyncGraph(ALook(node_id="al"), node_id="ag").run_async({}))
    asyncio.run(drain_async(AsyncGraph(ALook(node_id="al"), node_id="ag").stream_async({})))
    assert len(dicts) == 2 * 3 + 2 * 2
    assert all("_frame" not in d and "_index" not in d for d in dicts)
    assert Look._frame is None  # what a copy without its own reads
    assert all("_frame" not in step.node.__dict__ for step in steps)

    monkeypatch.undo()  # the control: with a listener, the copies do carry a frame
    dicts.clear()
    graph().run({}, listeners=[lambda e: None])
    assert all(d.get("_frame") is not None for d in dicts)
