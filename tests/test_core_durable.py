"""Durable runs (issue 10): one conformance suite, run on every store backend (fixture `store`).

What a checkpoint holds and when it is written, every status, resume positions at every
nesting level and inside batch graphs (sync and async), both durability modes,
compare-and-set between two writers, history and forks, unique node ids, values JSON cannot
hold, exec journaled before post, idempotency keys, item results of batch nodes, interrupts,
bad input and the graph fingerprint. A run is stopped in-process by raising `Crash` (a
BaseException, as a kill: under "sync" nothing more is written); tests/test_durable_crash.py
kills real processes.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from kaygraph import (
    JOURNAL_AFTER,
    AsyncBatchGraph,
    AsyncBatchNode,
    AsyncGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BatchGraph,
    BatchNode,
    Graph,
    Interrupt,
    Node,
    ParallelBatchNode,
)


class Crash(BaseException):
    """Stops a run short of a kill: not an Exception, so under "sync" no "failed" checkpoint
    is recorded (a held exec journal is, as for any stop); real kills: test_durable_crash."""


def new_run():
    return f"run-{uuid.uuid4().hex[:10]}"


def recorded(store, run_id, key):
    """The results the core recorded under ``key`` ({index: result}; stored with the step
    that wrote each, which a resume of a fork uses)."""
    return {i: result for i, (_step, result) in store.load_items(run_id, key).items()}


# ---------------------------------------------------------------- nodes that say what ran

class Logs:
    """Appends (node_id, phase, params["i"]) to `log` for each phase it runs and adds its id
    to shared["trail"]; raises the exception `faults[(node_id, phase)]` (or, in a batch run,
    `faults[(node_id, phase, i)]`) once: it is popped."""

    def __init__(self, node_id, log, faults=None, action=None, **kwargs):
        super().__init__(node_id=node_id, **kwargs)
        self.log, self.faults, self.action = log, {} if faults is None else faults, action

    def phase(self, name):
        i = self.params.get("i")
        self.log.append((self.node_id, name, i))
        fault = self.faults.pop((self.node_id, name), None) or self.faults.pop(
            (self.node_id, name, i), None)
        if fault is not None:
            raise fault

    def prep(self, shared):
        self.phase("prep")
        return list(shared.get("trail", []))

    def exec(self, trail):
        self.phase("exec")
        i = self.params.get("i")
        return [*trail, self.node_id if i is None else f"{self.node_id}{i}"]

    def post(self, shared, trail, new):
        self.phase("post")
        shared["trail"] = new
        return self.action


class Rec(Logs, Node):
    pass


class ARec(Logs, AsyncNode):
    """The async twin of Rec (awaits in each phase, so tasks interleave)."""

    async def prep_async(self, shared):
        await asyncio.sleep(0)
        return self.prep(shared)

    async def exec_async(self, trail):
        await asyncio.sleep(0)
        return self.exec(trail)

    async def post_async(self, shared, trail, new):
        await asyncio.sleep(0)
        return self.post(shared, trail, new)


def ran(log, phase="exec"):
    """The node ids (with the batch index, if any) that ran `phase`, in order."""
    return [n if i is None else f"{n}{i}" for n, p, i in log if p == phase]


LEAVES = ["s", "c", "x", "y", "d", "e"]  # the leaf steps of nested(), in run order


def nested(log, faults=None, kind=Rec, graph=Graph):
    """top: s >> inner >> e; inner: c >> inner2 >> d; inner2: x >> y (two deep)."""
    def leaf(node_id):
        return kind(node_id, log, faults)
    inner2 = graph(node_id="inner2")
    inner2.start(leaf("x")) >> leaf("y")
    inner = graph(node_id="inner")
    inner.start(leaf("c")) >> inner2 >> leaf("d")
    top = graph(node_id="top")
    top.start(leaf("s")) >> inner >> leaf("e")
    return top


# ---------------------------------------------------------------- what a checkpoint holds

def test_each_step_commits_a_running_checkpoint_before_the_next_step_starts(store_backend):
    store = store_backend.new()
    other = store_backend.reopen(store)  # what another process would see
    run_id, seen = new_run(), []

    class Look(Rec):
        def prep(self, shared):
            seen.append(other.load(run_id))
            return super().prep(shared)

    log = []
    g = Graph(node_id="top")
    g.start(Rec("a", log, action="go")) - "go" >> Look("b", log) >> Look("c", log, action="end")
    g.set_params({"city": "Lyon"})
    t0 = time.time()
    assert g.run({"trail": ["start"]}, run_id=run_id, store=store) == "end"
    first, second = seen
    assert set(first) == {"run_id", "step", "status", "node_id", "position", "shared", "params",
                          "action", "error", "interrupt", "fingerprint", "time"}
    assert first["run_id"] == run_id
    assert (first["step"], first["status"], first["node_id"]) == (1, "running", "a")
    assert first["position"] == [["top", None, 1, "b"]]
    assert first["shared"] == {"trail": ["start", "a"]}
    assert first["params"] == {"city": "Lyon"}
    assert first["action"] == "go"
    assert first["error"] is None and first["interrupt"] is None
    assert t0 - 1 <= first["time"] <= time.time() + 1
    assert (second["step"], second["node_id"], second["action"]) == (2, "b", None)
    assert second["position"] == [["top", None, 2, "c"]]
    assert second["shared"] == {"trail": ["start", "a", "b"]}
    assert second["fingerprint"] == first["fingerprint"]
    for node_id in ("a", "b", "c"):
        assert node_id in first["fingerprint"]
    assert "go" in first["fingerprint"]  # the edges, with their actions
    done = other.load(run_id)
    assert (done["step"], done["status"], done["node_id"], done["action"]) == (4, "done", "c",
                                                                               "end")
    assert done["position"] == [] and done["error"] is None and done["interrupt"] is None
    assert done["shared"] == {"trail": ["start", "a", "b", "c"]}
    assert [(h["step"], h["node_id"], h["status"]) for h in store.history(run_id)] == [
        (1, "a", "running"), (2, "b", "running"), (3, "c", "running"), (4, "c", "done")]
    times = [h["time"] for h in store.history(run_id)]
    assert times == sorted(times)


def test_a_failed_run_records_the_error_the_node_and_the_shared_store_at_the_error(store):
    run_id, log = new_run(), []

    class Half(Rec):
        def post(self, shared, trail, new):
            shared["half"] = "written"  # before the error: kept in the checkpoint
            raise ValueError("no stock for order 42")

    g = Graph(node_id="top")
    g.start(Rec("a", log)) >> Half("b", log) >> Rec("c", log)
    t0 = time.time()
    with pytest.raises(ValueError, match="no stock"):
        g.run({}, run_id=run_id, store=store)
    cp = store.load(run_id)
    assert (cp["step"], cp["status"], cp["node_id"]) == (2, "failed", "b")
    assert cp["error"] == {"type": "ValueError", "message": "no stock for order 42"}
    assert cp["interrupt"] is None and cp["action"] is None
    assert cp["position"] == [["top", None, 1, "b"]]  # at the failing step
    assert cp["shared"] == {"trail": ["a"], "half": "written"}
    assert t0 - 1 <= cp["time"] <= time.time() + 1
    assert [h["status"] for h in store.history(run_id)] == ["running", "failed"]
    assert {r["run_id"]: r["status"] for r in store.list_runs()} == {run_id: "failed"}


def test_an_interrupted_run_records_the_payload_the_node_and_its_position(store):
    run_id, log = new_run(), []

    class Ask(Rec):
        def exec(self, trail):
            super().exec(trail)
            return self.interrupt({"question": "ship it?", "order": [42, "blue"]})

    g = Graph(node_id="top")
    g.start(Rec("a", log)) >> Ask("ask", log) >> Rec("c", log)
    with pytest.raises(Interrupt) as caught:
        g.run({}, run_id=run_id, store=store)
    pause = caught.value
    assert (pause.run_id, pause.node_id) == (run_id, "ask")
    assert pause.payload == {"question": "ship it?", "order": [42, "blue"]}
    assert not isinstance(pause, Exception)
    cp = store.load(run_id)
    assert (cp["step"], cp["status"], cp["node_id"]) == (2, "interrupted", "ask")
    assert cp["interrupt"] == {"payload": {"question": "ship it?", "order": [42, "blue"]},
                               "place": "/", "answers": []}
    assert cp["error"] is None and cp["position"] == [["top", None, 1, "ask"]]
    assert cp["shared"] == {"trail": ["a"]}
    assert [r["status"] for r in store.list_runs(status="interrupted")] == ["interrupted"]


# ---------------------------------------------------------------- resume positions

@pytest.mark.parametrize("phase", ["prep", "exec", "post"])
@pytest.mark.parametrize("leaf", LEAVES)
def test_a_crash_at_any_step_two_deep_resumes_there_and_no_completed_step_runs_again(
        store, leaf, phase):
    nested([]).run(clean := {})  # a plain run, to the end
    run_id, log = new_run(), []
    with pytest.raises(Crash):
        nested(log, {(leaf, phase): Crash()}).run({}, run_id=run_id, store=store)
    at = LEAVES.index(leaf)
    assert ran(log, "post") == LEAVES[:at + (phase == "post")]  # the crashed post included
    log.clear()
    shared = {"stale": True}
    if leaf == "s":  # no step completed: nothing to resume; a fresh run may start
        with pytest.raises(KeyError, match=run_id):
            nested(log).resume(shared, run_id=run_id, store=store)
        assert shared == {"stale": True} and store.list_runs() == []
        nested(log).run(shared := {}, run_id=run_id, store=store)
    else:
        assert nested(log).resume(shared, run_id=run_id, store=store) is None  # a new graph
    assert shared == clean
    assert ran(log, "prep") == LEAVES[at:]  # from the crashed step's prep
    # exec's result was journaled before post: a crash in post does not run exec again
    assert ran(log) == LEAVES[at + (phase == "post" and leaf != "s"):]
    assert store.load(run_id)["status"] == "done"


def test_fork_at_every_step_and_resume_the_fork_replays_from_that_step(store):
    run_id, log = new_run(), []
    nested(log).run(shared := {}, run_id=run_id, store=store)
    history = store.history(run_id)
    assert [h["node_id"] for h in history] == ["s", "c", "x", "y", "inner2", "d", "inner", "e",
                                               "e"]
    for entry in history:
        fork = f"{run_id}-at-{entry['step']}"
        store.fork(run_id, entry["step"], fork)
        assert store.history(fork) == history[:entry["step"]]
        done = store.load(fork)["shared"].get("trail", [])
        log.clear()
        replayed = {}
        nested(log).resume(replayed, run_id=fork, store=store)
        assert replayed == shared
        assert ran(log) == LEAVES[len(done):]  # exactly the steps after the fork's step
        after = store.history(fork)  # the fork goes on from its step, to its own end
        assert after[:entry["step"]] == history[:entry["step"]]
        assert [h["step"] for h in after] == list(range(1, len(after) + 1))
        assert after[-1]["status"] == "done"
    assert store.history(run_id) == history  # the original is untouched


def test_a_loop_resumes_at_the_right_round(store):
    run_id, log, crash = new_run(), [], [Crash()]

    class Again(Rec):
        def exec(self, trail):
            if len(trail) == 2 and crash:
                raise crash.pop()
            return super().exec(trail)

        def post(self, shared, trail, new):
            super().post(shared, trail, new)
            return "again" if len(new) < 4 else None

    def make():
        again = Again("again", log)
        again - "again" >> again
        again >> None  # an explicit end
        return Graph(again, node_id="top")

    with pytest.raises(Crash):
        make().run({}, run_id=run_id, store=store)
    assert store.load(run_id)["position"] == [["top", None, 2, "again"]]
    log.clear()
    make().resume(shared := {}, run_id=run_id, store=store)
    assert shared == {"trail": ["again"] * 4}
    assert len(ran(log)) == 2  # rounds 3 and 4 only


class Orders(BatchGraph):
    """A batch graph over `source` (an attribute the test can change between runs)."""

    def prep(self, shared):
        return [{"i": i} for i in self.source]


class AOrders(AsyncBatchGraph):
    prep = Orders.prep


class POrders(AsyncParallelBatchGraph):
    prep = Orders.prep


def orders(log, faults=None, source=(0, 1, 2, 3), kind=Rec, cls=Orders, graph=Graph,
           alone=False):
    """orders (a batch graph over `source`): a >> sub >> b, sub: x >> y; inside
    top: s >> orders >> e unless `alone`."""
    def leaf(node_id):
        return kind(node_id, log, faults)
    sub = graph(node_id="sub")
    sub.start(leaf("x")) >> leaf("y")
    batch = cls(node_id="orders")
    batch.source = list(source)
    batch.start(leaf("a")) >> sub >> leaf("b")
    if alone:
        return batch
    top = graph(node_id="top")
    top.start(leaf("s")) >> batch >> leaf("e")
    return top


BATCH_RUN = ["s"] + [f"{n}{i}" for i in range(4) for n in "axyb"] + ["e"]


@pytest.mark.parametrize("durability", ["sync", "exit"])
@pytest.mark.parametrize("alone", [False, True], ids=["nested", "top"])
def test_a_batch_graph_resumes_at_the_params_index_with_the_saved_params_list(
        store, alone, durability):
    run_id, log = new_run(), []
    with pytest.raises(Crash):
        orders(log, {("y", "exec", 2): Crash()}, alone=alone).run(
            {}, run_id=run_id, store=store, durability=durability)
    at = [["orders", 2, 1, "sub"], ["sub", None, 1, "y"]]
    assert store.load(run_id)["position"] == ([] if alone else [["top", None, 1, "orders"]]) + at
    log.clear()
    graph = orders(log, source=[7, 8], alone=alone)  # prep would now give other params
    graph.resume(shared := {}, run_id=run_id, store=store, durability=durability)
    expected = BATCH_RUN[1:-1] if alone else BATCH_RUN
    assert shared == {"trail": expected}
    assert ran(log) == ["y2", "b2", "a3", "x3", "y3", "b3"] + ([] if alone else ["e"])


def test_an_async_graph_two_deep_resumes_where_it_crashed(store):
    def make(log, faults=None):
        return nested(log, faults, kind=ARec, graph=AsyncGraph)

    clean = {}
    asyncio.run(make([]).run_async(clean))
    for leaf in LEAVES[1:]:
        run_id, log = new_run(), []
        with pytest.raises(Crash):
            asyncio.run(make(log, {(leaf, "exec"): Crash()}).run_async(
                {}, run_id=run_id, store=store))
        log.clear()
        assert asyncio.run(make(log).resume_async(shared := {}, run_id=run_id,
                                                  store=store)) is None
        assert shared == clean
        assert ran(log) == LEAVES[LEAVES.index(leaf):]


def test_stream_async_and_stream_resume_async_yield_the_steps_and_resume(store):
    run_id, log = new_run(), []

    async def steps(stream):
        return [step.node.node_id async for step in stream]

    graph = nested(log, {("x", "exec"): Crash()}, kind=ARec, graph=AsyncGraph)
    with pytest.raises(Crash):
        asyncio.run(steps(graph.stream_async({}, run_id=run_id, store=store)))
    assert ran(log, "post") == ["s", "c"]
    log.clear()
    got = asyncio.run(steps(nested(log, kind=ARec, graph=AsyncGraph).stream_resume_async(
        shared := {}, run_id=run_id, store=store)))
    assert got == ["inner", "e"]  # top-level steps; the nested graph is one step
    assert ran(log) == ["x", "y", "d", "e"] and shared == {"trail": LEAVES}


@pytest.mark.parametrize("alone", [False, True], ids=["nested", "top"])
@pytest.mark.parametrize("cls", [AOrders, POrders])
def test_an_async_batch_graph_resumes_and_never_reruns_a_completed_run(store, cls, alone):
    # A parallel batch graph's runs go on concurrently; run 2 fails once the others ended.
    run_id, log = new_run(), []
    ended, box = [], {}

    class Gate(ARec):
        async def exec_async(self, trail):
            if self.params.get("i") == 2 and self.node_id == "y" and cls is POrders:
                await box.setdefault("others", asyncio.Event()).wait()
            return await super().exec_async(trail)

        async def post_async(self, shared, trail, new):
            action = await super().post_async(shared, trail, new)
            shared.setdefault("done", {})[new[-1]] = True  # the trail of concurrent runs races
            if self.node_id == "b":
                ended.append(self.params["i"])
                if len(ended) == 3:
                    box.setdefault("others", asyncio.Event()).set()
            return action

    def make(log, faults=None, source=(0, 1, 2, 3)):
        return orders(log, faults, source, kind=Gate, cls=cls, graph=AsyncGraph, alone=alone)

    with pytest.raises(Crash):
        asyncio.run(make(log, {("y", "exec", 2): Crash()}).run_async(
            {}, run_id=run_id, store=store))
    first = list(ended)
    log.clear()
    asyncio.run(make(log, source=[9]).resume_async(shared := {}, run_id=run_id, store=store))
    expected, end = (BATCH_RUN[1:-1], []) if alone else (BATCH_RUN, ["e"])
    if cls is AOrders:  # one run after another: resumes at run 2's step y
        assert ran(log) == ["y2", "b2", "a3", "x3", "y3", "b3", *end]
        assert shared == {"trail": expected, "done": dict.fromkeys(expected, True)}
    else:  # concurrent runs: run 2 again from its start, the completed ones never
        assert sorted(first) == [0, 1, 3]
        assert ran(log) == ["a2", "x2", "y2", "b2", *end]
        assert sorted(shared["done"]) == sorted(expected)


# ---------------------------------------------------------------- durability="exit"

def exit_graph(log, faults=None, probe=None):
    """a >> b >> c, where b and c look at the store while the run goes on."""
    class Probe(Rec):
        def prep(self, shared):
            probe()
            return super().prep(shared)

    g = Graph(node_id="top")
    g.start(Rec("a", log, faults)) >> Probe("b", log, faults) >> Probe("c", log, faults)
    return g


def test_exit_writes_nothing_before_the_end_and_one_checkpoint_at_the_end(store_backend):
    store = store_backend.new()
    other, run_id, looks = store_backend.reopen(store), new_run(), []
    graph = exit_graph([], probe=lambda: looks.append(other.load(run_id)))
    graph.run(shared := {}, run_id=run_id, store=store, durability="exit")
    assert looks == [None, None]
    assert [(h["node_id"], h["status"]) for h in other.history(run_id)] == [("c", "done")]
    cp = other.load(run_id)
    assert cp["shared"] == shared == {"trail": ["a", "b", "c"]} and cp["position"] == []


@pytest.mark.parametrize("fault, status", [
    (ValueError("boom"), "failed"), (Crash(), "running"), (KeyboardInterrupt(), "running")])
def test_exit_writes_on_a_failure_or_a_stop_and_the_run_resumes_there(store, fault, status):
    run_id, log, looks = new_run(), [], []
    graph = exit_graph(log, {("c", "exec"): fault}, lambda: looks.append(store.load(run_id)))
    with pytest.raises(type(fault)):
        graph.run({}, run_id=run_id, store=store, durability="exit")
    assert looks == [None, None]
    cp = store.load(run_id)
    assert [h["status"] for h in store.history(run_id)] == [status]
    assert cp["position"] == [["top", None, 2, "c"]]
    assert cp["error"] == ({"type": "ValueError", "message": "boom"} if status == "failed"
                           else None)
    assert cp["shared"] == {"trail": ["a", "b"]}
    log.clear()
    exit_graph(log, probe=lambda: None).resume(shared := {}, run_id=run_id, store=store,
                                               durability="exit")
    assert ran(log) == ["c"] and shared == {"trail": ["a", "b", "c"]}


def test_exit_records_the_exec_journal_with_a_failure_in_post(store):
    run_id, log = new_run(), []
    graph = exit_graph(log, {("b", "post"): ValueError("post failed")}, lambda: None)
    with pytest.raises(ValueError):
        graph.run({}, run_id=run_id, store=store, durability="exit")
    log.clear()
    exit_graph(log, probe=lambda: None).resume({}, run_id=run_id, store=store, durability="exit")
    assert ran(log, "prep") == ["b", "c"] and ran(log) == ["c"]  # b's exec: from the journal


def test_exit_writes_an_interrupt(store):
    run_id = new_run()

    class Ask(Rec):
        def exec(self, trail):
            return [*trail, self.interrupt("ok?")]

    g = Graph(node_id="top")
    g.start(Rec("a", [])) >> Ask("ask", []) >> Rec("c", [])
    with pytest.raises(Interrupt):
        g.run({}, run_id=run_id, store=store, durability="exit")
    assert [h["status"] for h in store.history(run_id)] == ["interrupted"]
    g.resume(shared := {}, run_id=run_id, store=store, value="yes", durability="exit")
    assert shared == {"trail": ["a", "yes", "c"]}


def test_a_stream_closed_early_stops_after_its_step_and_resumes_from_there(store):
    for durability in ("sync", "exit"):
        run_id, log = new_run(), []
        stream = nested(log).stream({}, run_id=run_id, store=store, durability=durability)
        assert next(stream).node.node_id == "s"
        stream.close()
        cp = store.load(run_id)
        assert cp["status"] == "running" and cp["shared"] == {"trail": ["s"]}
        log.clear()
        steps = nested(log).stream_resume(shared := {}, run_id=run_id, store=store)
        assert [step.node.node_id for step in steps] == ["inner", "e"]
        assert ran(log) == LEAVES[1:] and shared == {"trail": LEAVES}


# ---------------------------------------------------------------- two writers

def resume_in_threads(make, run_id, stores, value=None):
    """Resume `run_id` in one thread per store object, each with its own graph from
    `make(gate)`; `gate()` (called by the first node that runs) returns once every resume
    has loaded the checkpoint. Returns what each thread returned or raised."""
    barrier = threading.Barrier(len(stores), timeout=30)
    outcomes = [None] * len(stores)

    def one(k):
        kwargs = {} if value is None else {"value": value[k]}
        try:
            shared = {}
            make(barrier.wait).resume(shared, run_id=run_id, store=stores[k], **kwargs)
            outcomes[k] = shared
        except BaseException as exc:  # noqa: B036 - what the thread got is the result
            outcomes[k] = exc

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def gated(log, gate, faults=None):
    """a >> b >> c >> d, where b waits at `gate` before its prep."""
    class Gate(Rec):
        def prep(self, shared):
            gate()
            return super().prep(shared)

    g = Graph(node_id="top")
    g.start(Rec("a", log, faults)) >> Gate("b", log, faults) >> Rec("c", log) >> Rec("d", log)
    return g


def crashed_at_b(store):
    """A run of gated() that crashed in b: its checkpoint is a's step."""
    run_id = new_run()
    with pytest.raises(Crash):
        gated([], lambda: None, {("b", "exec"): Crash()}).run({}, run_id=run_id, store=store)
    assert [h["node_id"] for h in store.history(run_id)] == ["a"]
    return run_id


def test_two_resumes_of_one_run_with_two_store_objects_one_wins(store_backend):
    first = store_backend.new()
    second = store_backend.reopen(first)
    run_id, log = crashed_at_b(first), []
    outcomes = resume_in_threads(lambda gate: gated(log, gate), run_id, [first, second])
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    won = [o for o in outcomes if isinstance(o, dict)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert isinstance(lost[0], RuntimeError)
    assert f"another writer saved run {run_id!r} first" in str(lost[0])
    assert won[0] == {"trail": ["a", "b", "c", "d"]}
    assert sorted(ran(log, "prep")) == ["b", "b", "c", "d"]  # the loser stopped at its first save
    for store in (first, second):  # both objects see one coherent run: the winner's
        history = store.history(run_id)
        assert [h["step"] for h in history] == [1, 2, 3, 4, 5]
        assert [h["node_id"] for h in history] == ["a", "b", "c", "d", "d"]
        assert [h["status"] for h in history] == ["running"] * 4 + ["done"]  # no "failed"
        cp = store.load(run_id)
        assert cp["status"] == "done" and cp["shared"] == won[0] and cp["error"] is None


# ---------------------------------------------------------------- node ids and values

@pytest.mark.parametrize("where", ["top", "nested"])
def test_two_nodes_with_one_id_are_a_value_error_naming_it_and_nothing_is_written(store, where):
    class Fetch(Node):
        pass

    dup = Graph(node_id="inner")
    dup.start(Fetch()) >> Fetch()  # both "Fetch": the class name
    g = Graph(node_id="top")
    if where == "top":
        g.start(Fetch()) >> Fetch(node_id="other") >> Fetch()
    else:
        g.start(Fetch()) >> dup
    shared = {"keep": 1}
    with pytest.raises(ValueError, match="'Fetch'") as caught:
        g.run(shared, run_id=(run_id := new_run()), store=store)
    assert "node_id=" in str(caught.value)  # says how to tell them apart
    assert f"graph {'top' if where == 'top' else 'inner'!r}" in str(caught.value)
    assert shared == {"keep": 1} and store.list_runs() == [] and store.load(run_id) is None
    g.run({})  # a plain run needs no unique ids


def test_one_node_reached_twice_is_not_a_duplicate(store):
    log = []
    a = Rec("a", log)
    b = Rec("b", log, action="back")
    a >> b
    b - "back" >> a  # a loop: a is reached again, the same object
    g = Graph(a, node_id="top", max_steps=3)
    with pytest.raises(RuntimeError, match="max_steps=3"):
        g.run({}, run_id=new_run(), store=store)
    assert ran(log) == ["a", "b", "a"]


def test_a_value_json_cannot_hold_names_key_and_node_and_keeps_the_last_good_checkpoint(store):
    run_id, log = new_run(), []

    class Bad(Rec):
        def post(self, shared, trail, new):
            super().post(shared, trail, new)
            shared["client"] = object()  # JSON cannot hold it

    g = Graph(node_id="top")
    g.start(Rec("a", log)) >> Bad("bad", log) >> Rec("c", log)
    shared = {}
    with pytest.raises(TypeError) as caught:
        g.run(shared, run_id=run_id, store=store)
    message = str(caught.value)
    assert "shared['client']" in message and "'bad'" in message and "json" in message
    assert ran(log, "post") == ["a", "bad"]  # the run stopped there
    assert shared["trail"] == ["a", "bad"] and "client" in shared  # the caller's dict keeps it
    cp = store.load(run_id)
    assert (cp["step"], cp["status"], cp["node_id"]) == (1, "running", "a")
    assert cp["shared"] == {"trail": ["a"]}
    assert [h["step"] for h in store.history(run_id)] == [1]


def test_a_params_value_json_cannot_hold_is_a_type_error_and_nothing_is_written(store):
    g = Graph(Rec("a", []), node_id="top")
    g.set_params({"when": object()})
    with pytest.raises(TypeError, match="params\\['when'\\]"):
        g.run({}, run_id=(run_id := new_run()), store=store)
    assert store.load(run_id) is None


# ---------------------------------------------------------------- exec journal, idempotency

def test_exec_is_journaled_before_post_so_a_failing_post_reruns_only_post(store):
    run_id, calls = new_run(), []

    class Charge(Node):
        def prep(self, shared):
            calls.append("prep")
            return shared["amount"]

        def exec(self, amount):
            calls.append("exec")
            return {"charged": amount, "receipt": f"r-{len(calls)}"}

        def post(self, shared, amount, result):
            calls.append("post")
            if calls.count("post") < 3:
                raise ConnectionError("the database went away")
            shared["result"] = result

    def make():
        return Graph(Charge(), node_id="top")

    with pytest.raises(ConnectionError):
        make().run({"amount": 5}, run_id=run_id, store=store)
    assert store.load(run_id)["status"] == "failed"
    with pytest.raises(ConnectionError):  # fails again on resume: only post ran again
        make().resume({}, run_id=run_id, store=store)
    make().resume(shared := {}, run_id=run_id, store=store)
    assert calls.count("exec") == 1 and calls.count("prep") == 3 and calls.count("post") == 3
    assert shared == {"amount": 5, "result": {"charged": 5, "receipt": "r-2"}}


@pytest.mark.parametrize("seconds, on_disk", [(5 * JOURNAL_AFTER, True), (0, False)])
def test_an_exec_worth_journaling_is_on_disk_before_post_runs(store, seconds, on_disk):
    # An exec of JOURNAL_AFTER or longer is written before post (a crash in post will not
    # run it again); a cheaper one is held in memory, cheaper to run again than to write.
    run_id, seen = new_run(), {}

    class Call(Node):
        def exec(self, _):
            time.sleep(seconds)  # the work itself (an API call), not a wait for a thread
            return {"answer": 42}

        def post(self, shared, _, result):
            seen["journal"] = recorded(store, run_id, "top[None]0/call#exec")
            shared["result"] = result

    Graph(Call(node_id="call"), node_id="top").run({}, run_id=run_id, store=store)
    assert seen["journal"] == ({0: {"answer": 42}} if on_disk else {})


def test_a_held_exec_result_is_written_when_post_fails_and_not_run_again(store):
    run_id, calls = new_run(), []

    class Quick(Node):
        def exec(self, _):
            calls.append("exec")
            return len(calls)

        def post(self, shared, _, result):
            calls.append("post")
            if calls.count("post") == 1:
                raise ConnectionError("post failed")
            shared["result"] = result

    def make():
        return Graph(Quick(node_id="quick"), node_id="top")

    with pytest.raises(ConnectionError):
        make().run({}, run_id=run_id, store=store)
    assert recorded(store, run_id, "top[None]0/quick#exec") == {0: 1}
    make().resume(shared := {}, run_id=run_id, store=store)
    assert calls == ["exec", "post", "post"] and shared == {"result": 1}


def test_an_error_in_exec_reruns_exec_on_resume(store):
    run_id, log = new_run(), []
    with pytest.raises(ValueError):
        nested(log, {("x", "exec"): ValueError("flaky")}).run({}, run_id=run_id, store=store)
    assert store.load(run_id)["status"] == "failed"
    log.clear()
    nested(log).resume(shared := {}, run_id=run_id, store=store)
    assert ran(log) == LEAVES[2:] and shared == {"trail": LEAVES}


def test_an_async_node_journals_exec_too(store):
    run_id, log = new_run(), []

    def make(faults=None):
        g = AsyncGraph(node_id="top")
        g.start(ARec("a", log)) >> ARec("b", log, faults) >> ARec("c", log)
        return g

    with pytest.raises(Crash):
        asyncio.run(make({("b", "post"): Crash()}).run_async({}, run_id=run_id, store=store))
    log.clear()
    asyncio.run(make().resume_async(shared := {}, run_id=run_id, store=store))
    assert ran(log, "prep") == ["b", "c"] and ran(log) == ["c"]
    assert shared == {"trail": ["a", "b", "c"]}


def test_idempotency_key_is_run_and_step_and_the_same_when_the_step_runs_again(store):
    # the step re-runs after a crash (nothing written), a failure (a "failed" checkpoint)
    # and an interrupt (an "interrupted" one): each time with the key it had
    run_id, keys = new_run(), []

    class Pay(Rec):
        def exec(self, trail):
            keys.append((self.node_id, self.idempotency_key))
            if self.node_id == "d":
                self.interrupt("confirm?")
            return super().exec(trail)

    def make(faults=None):
        g = Graph(node_id="top")
        g.start(Pay("a", [], faults)) >> Pay("b", [], faults) >> Pay("c", [], faults)
        g.start_node.successors["default"].successors["default"] >> Pay("d", [])
        return g

    with pytest.raises(Crash):
        make({("b", "exec"): Crash()}).run({}, run_id=run_id, store=store)
    with pytest.raises(ValueError):
        make({("c", "post"): ValueError("once")}).resume({}, run_id=run_id, store=store)
    with pytest.raises(ValueError):
        make({("c", "prep"): ValueError("twice")}).resume({}, run_id=run_id, store=store)
    with pytest.raises(Interrupt):
        make().resume({}, run_id=run_id, store=store)
    make().resume({}, run_id=run_id, store=store, value="yes")
    assert keys == [(n, f"{run_id}:{k}") for n, k in [
        ("a", 1), ("b", 2), ("b", 2), ("c", 3), ("d", 4), ("d", 4)]]
    with pytest.raises(RuntimeError, match="idempotency_key"):
        Pay("z", []).idempotency_key  # noqa: B018
    plain = []

    class Plain(Node):
        def exec(self, _):
            try:
                return self.idempotency_key
            except RuntimeError as exc:
                plain.append(str(exc))

    Graph(Plain()).run({})
    assert plain and "durable run" in plain[0]


# ---------------------------------------------------------------- item results of batch nodes

class SquaresLogic:
    """Squares shared["n"] items, noting each item it runs in `runs`; item `bad` fails once."""

    def __init__(self, runs, bad=None, **kwargs):
        super().__init__(node_id="squares", **kwargs)
        self.runs, self.bad = runs, bad

    def prep(self, shared):
        return range(shared["n"])

    def exec(self, item):
        self.runs.append(item)
        if item == self.bad:
            raise ValueError(f"item {item} failed")
        return item * item

    def post(self, shared, items, results):
        shared["squares"] = results


class AsyncSquaresLogic(SquaresLogic):
    async def exec_async(self, item):
        await asyncio.sleep(0)  # items in flight together interleave
        return self.exec(item)


class Squares(SquaresLogic, BatchNode):
    pass


class PSquares(SquaresLogic, ParallelBatchNode):
    pass


class ASquares(AsyncSquaresLogic, AsyncBatchNode):
    pass


class APSquares(AsyncSquaresLogic, AsyncParallelBatchNode):
    pass


ITEMS_KEY = "top[None]1/squares#items"  # where item results go: core_api.md's step key


def squares_graph(cls, runs, bad=None, **kwargs):
    if cls in (ASquares, APSquares):
        g = AsyncGraph(node_id="top")
        g.start(ARec("a", [])) >> cls(runs, bad, **kwargs) >> ARec("c", [])
    else:
        g = Graph(node_id="top")
        g.start(Rec("a", [])) >> cls(runs, bad, **kwargs) >> Rec("c", [])
    return g


def run_graph(graph, method, shared, **kwargs):
    if isinstance(graph, AsyncGraph):
        return asyncio.run(getattr(graph, f"{method}_async")(shared, **kwargs))
    return getattr(graph, method)(shared, **kwargs)


# the node class, its keywords, and how many items surely ended before item 6 failed: all
# six when one runs after another; for 2 workers with 4 items submitted ahead, 3; for 3
# tasks, the 6 pulled before minus the 2 other tasks' items in flight
BATCH_KINDS = {
    "BatchNode": (Squares, {}, 6),
    "ParallelBatchNode": (PSquares, {"max_workers": 2}, 3),
    "AsyncBatchNode": (ASquares, {}, 6),
    "AsyncParallelBatchNode": (APSquares, {"max_concurrency": 3}, 4),
}


@pytest.mark.parametrize("durability", ["sync", "exit"])
@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_checkpoint_items_records_results_and_a_resume_runs_only_the_others(
        store, kind, durability):
    cls, kwargs, surely = BATCH_KINDS[kind]
    run_id, runs = new_run(), []
    graph = squares_graph(cls, runs, bad=6, checkpoint_items=True, **kwargs)
    with pytest.raises(ValueError, match="item 6 failed"):
        run_graph(graph, "run", {"n": 10}, run_id=run_id, store=store, durability=durability)
    held = recorded(store, run_id, ITEMS_KEY)
    assert held == {i: i * i for i in held}  # each result under its index
    assert 6 not in held and set(held) <= set(runs)
    assert len(held) >= surely and set(held) <= set(range(10)) - {6}, held
    if surely == 6:
        assert set(held) == {0, 1, 2, 3, 4, 5}
    runs.clear()
    run_graph(squares_graph(cls, runs, checkpoint_items=True, **kwargs), "resume",
              shared := {}, run_id=run_id, store=store)
    assert sorted(runs) == sorted(set(range(10)) - set(held))  # exactly the others
    assert shared == {"n": 10, "trail": ["a", "c"], "squares": [i * i for i in range(10)]}


@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_without_checkpoint_items_a_resume_runs_every_item_again(store, kind):
    cls, kwargs, _ = BATCH_KINDS[kind]
    run_id, runs = new_run(), []
    with pytest.raises(ValueError):
        run_graph(squares_graph(cls, runs, bad=6, **kwargs), "run", {"n": 10}, run_id=run_id,
                  store=store)
    assert store.load_items(run_id, ITEMS_KEY) == {}
    runs.clear()
    run_graph(squares_graph(cls, runs, **kwargs), "resume", {}, run_id=run_id, store=store)
    assert sorted(runs) == list(range(10))


def test_checkpoint_items_as_a_class_attribute_and_grouped_writes(store):
    writes = []

    class Counting:
        """A real store, noting the size of each save_items call."""

        def __init__(self, inner):
            for name in ("save", "load", "history", "load_items", "fork", "delete",
                         "list_runs"):
                setattr(self, name, getattr(inner, name))
            self.inner = inner

        def save_items(self, run_id, position, items):
            writes.append((position, len(items)))
            return self.inner.save_items(run_id, position, items)

    class Kept(PSquares):
        checkpoint_items = True

    run_id, runs, t0 = new_run(), [], time.monotonic()
    with pytest.raises(ValueError):
        squares_graph(Kept, runs, bad=199, max_workers=4).run(
            {"n": 200}, run_id=run_id, store=Counting(store))
    seconds = time.monotonic() - t0
    item_writes = [n for position, n in writes if position == ITEMS_KEY]
    assert sum(item_writes) == len(store.load_items(run_id, ITEMS_KEY)) >= 150
    assert len(item_writes) <= seconds / 0.2 + 1  # one a 0.2 s and the last: not one an item


# ---------------------------------------------------------------- interrupts

class Approve(Node):
    """Asks `questions` in exec, one interrupt each; writes the answers. Counts its phases."""

    def __init__(self, calls, questions=("ship it?",), where="exec", **kwargs):
        super().__init__(node_id="approve", **kwargs)
        self.calls, self.questions, self.where = calls, questions, where

    def ask(self):
        return [self.interrupt({"question": q, "n": k}) for k, q in enumerate(self.questions)]

    def prep(self, shared):
        self.calls.append("prep")
        return shared["order"]

    def exec(self, order):
        self.calls.append("exec")
        return {"order": order, "answers": self.ask() if self.where == "exec" else []}

    def post(self, shared, order, result):
        self.calls.append("post")
        if self.where == "post":
            result["answers"] = self.ask()
        shared["approval"] = result


def approval_graph(calls, **kwargs):
    g = Graph(node_id="top")
    g.start(Rec("a", [])) >> Approve(calls, **kwargs) >> Rec("c", [])
    return g


def test_an_interrupt_round_trips_its_payload_and_the_answer_through_a_new_store_object(
        store_backend):
    store, calls, run_id = store_backend.new(), [], new_run()
    with pytest.raises(Interrupt) as caught:
        approval_graph(calls).run({"order": 42}, run_id=run_id, store=store)
    assert caught.value.payload == {"question": "ship it?", "n": 0}
    other = store_backend.reopen(store)
    assert other.load(run_id)["interrupt"]["payload"] == caught.value.payload
    shared = {"stale": 1}
    action = approval_graph(calls).resume(shared, run_id=run_id, store=other,
                                          value={"ok": True, "by": "ana"})
    assert action is None
    assert shared == {"order": 42, "trail": ["a", "c"],
                      "approval": {"order": 42, "answers": [{"ok": True, "by": "ana"}]}}
    assert calls == ["prep", "exec", "prep", "exec", "post"]  # again from prep
    assert store.load(run_id)["status"] == "done"
    assert [h["status"] for h in store.history(run_id)] == [
        "running", "interrupted", "running", "running", "done"]


def test_several_interrupts_in_one_step_are_answered_in_order(store):
    calls, run_id = [], new_run()
    with pytest.raises(Interrupt) as caught:
        approval_graph(calls, questions=("price?", "date?", "ship?")).run(
            {"order": 7}, run_id=run_id, store=store)
    payloads = [caught.value.payload["question"]]
    for answer in (10, "monday"):
        with pytest.raises(Interrupt) as caught:
            approval_graph(calls, questions=("price?", "date?", "ship?")).resume(
                {}, run_id=run_id, store=store, value=answer)
        payloads.append(caught.value.payload["question"])
        assert store.load(run_id)["interrupt"]["payload"]["question"] == payloads[-1]
    assert store.load(run_id)["interrupt"]["answers"] == [["/", [10, "monday"]]]
    approval_graph(calls, questions=("price?", "date?", "ship?")).resume(
        shared := {}, run_id=run_id, store=store, value=True)
    assert payloads == ["price?", "date?", "ship?"]
    assert shared["approval"] == {"order": 7, "answers": [10, "monday", True]}


def test_an_interrupt_in_post_does_not_compute_exec_again(store):
    calls, run_id = [], new_run()
    with pytest.raises(Interrupt):
        approval_graph(calls, where="post").run({"order": 1}, run_id=run_id, store=store)
    approval_graph(calls, where="post").resume(shared := {}, run_id=run_id, store=store,
                                               value="looks good")
    assert calls == ["prep", "exec", "post", "prep", "post"]
    assert shared["approval"] == {"order": 1, "answers": ["looks good"]}


class Everywhere(Node):
    """Asks a question in each phase; a resume answers the next one."""

    def prep(self, shared):
        return {"prep": self.interrupt("q-prep")}

    def exec(self, answers):
        return {**answers, "exec": self.interrupt("q-exec")}

    def post(self, shared, _, answers):
        shared["answers"] = {**answers, "post": self.interrupt("q-post")}


class AEverywhere(AsyncNode):
    prep, post = Everywhere.prep, Everywhere.post

    async def exec_async(self, answers):
        return Everywhere.exec(self, answers)


@pytest.mark.parametrize("graph, node", [(Graph, Everywhere), (AsyncGraph, AEverywhere)])
def test_interrupts_in_prep_exec_and_post_each_get_their_own_answer(store, graph, node):
    # exec's result is journaled, so a resume does not ask exec's question again: its
    # answer must not go to the question post asks next
    run_id, asked = new_run(), []
    for value in (None, "a-prep", "a-exec"):
        with pytest.raises(Interrupt) as caught:
            kwargs = {} if value is None else {"value": value}
            run_graph(graph(node(), node_id="top"), "run" if value is None else "resume", {},
                      run_id=run_id, store=store, **kwargs)
        asked.append(caught.value.payload)
    run_graph(graph(node(), node_id="top"), "resume", shared := {}, run_id=run_id,
              store=store, value="a-post")
    assert asked == ["q-prep", "q-exec", "q-post"]
    assert shared == {"answers": {"prep": "a-prep", "exec": "a-exec", "post": "a-post"}}


class AskLogic:
    def exec(self, trail):
        self.phase("exec")
        return [*trail, self.interrupt("which way?")]


class Ask(AskLogic, Rec):
    pass


class AAsk(AskLogic, ARec):
    pass


@pytest.mark.parametrize("graph", [Graph, AsyncGraph])
def test_an_interrupt_in_a_nested_graph_resumes_at_that_node(store, graph):
    log, run_id = [], new_run()

    def make():
        sync = graph is Graph
        inner = graph(node_id="inner")
        inner.start((Rec if sync else ARec)("x", log)) >> (Ask if sync else AAsk)("ask", log)
        return graph(inner, node_id="top")

    with pytest.raises(Interrupt):
        run_graph(make(), "run", {}, run_id=run_id, store=store)
    assert store.load(run_id)["position"] == [["top", None, 0, "inner"],
                                              ["inner", None, 1, "ask"]]
    log.clear()
    run_graph(make(), "resume", shared := {}, run_id=run_id, store=store, value="left")
    assert shared == {"trail": ["x", "left"]} and ran(log, "prep") == ["ask"]


class StubbornLogic:
    """Tries every way a node could swallow an error; none may swallow an Interrupt."""

    def __init__(self, calls, **kwargs):
        super().__init__(node_id="stubborn", max_retries=3, retry_on=lambda exc: True,
                         **kwargs)
        self.calls = calls

    def exec(self, _):
        self.calls.append("exec")
        try:
            return self.interrupt("stop?")
        except Exception:  # a user's catch-all
            self.calls.append("swallowed")
            return "swallowed"

    def exec_fallback(self, prep_res, exc):
        self.calls.append("fallback")
        return "fallback"

    def on_error(self, shared, exc):
        self.calls.append("on_error")
        return True


class Stubborn(StubbornLogic, Node):
    pass


class AStubborn(StubbornLogic, AsyncNode):
    async def exec_async(self, _):
        return self.exec(_)


class PStubborn(StubbornLogic, ParallelBatchNode):
    def prep(self, shared):
        return [1, 2, 3]


@pytest.mark.parametrize("cls", [Stubborn, AStubborn, PStubborn])
def test_retries_fallback_on_error_and_except_exception_never_swallow_an_interrupt(
        store, cls):
    calls, run_id = [], new_run()
    graph = (AsyncGraph if cls is AStubborn else Graph)(cls(calls), node_id="top")
    with pytest.raises(Interrupt):
        run_graph(graph, "run", {}, run_id=run_id, store=store)
    assert set(calls) == {"exec"} and len(calls) <= 3  # once (per item): no retry
    assert store.load(run_id)["status"] == "interrupted"


def test_interrupt_outside_a_durable_run_is_a_runtime_error(store):
    calls = []
    with pytest.raises(RuntimeError, match="run_id= and store="):
        approval_graph(calls).run({"order": 1})
    with pytest.raises(RuntimeError, match="run_id= and store="):
        approval_graph(calls).run({"order": 1}, listeners=[lambda e: None])


def test_resume_values_must_match_the_status_of_the_run(store):
    calls, run_id = [], new_run()
    with pytest.raises(Interrupt):
        approval_graph(calls).run({"order": 1}, run_id=run_id, store=store)
    shared = {"mine": 1}
    with pytest.raises(ValueError, match="value=") as caught:
        approval_graph(calls).resume(shared, run_id=run_id, store=store)
    assert run_id in str(caught.value) and "approve" in str(caught.value)
    assert shared == {"mine": 1} and store.load(run_id)["status"] == "interrupted"
    approval_graph(calls).resume({}, run_id=run_id, store=store, value="yes")
    calls.clear()
    for value in ("again", None):  # a done run has no question: None is a value too
        with pytest.raises(ValueError, match="done, not interrupted"):
            approval_graph(calls).resume(shared, run_id=run_id, store=store, value=value)
    assert shared == {"mine": 1} and calls == []
    approval_graph(calls).resume(shared, run_id=run_id, store=store)  # no value: fine
    assert calls == [] and shared["approval"]["answers"] == ["yes"]
    # a failed or a running run: no question either
    failing = new_run()
    with pytest.raises(ValueError):
        nested([], {("x", "exec"): ValueError("x")}).run({}, run_id=failing, store=store)
    with pytest.raises(ValueError, match="failed, not interrupted"):
        nested([]).resume({}, run_id=failing, store=store, value=1)
    running = crashed_at_b(store)
    with pytest.raises(ValueError, match="running, not interrupted"):
        gated([], lambda: None).resume({}, run_id=running, store=store, value=1)


def test_a_done_run_resumed_returns_its_last_action(store):
    log, run_id = [], new_run()
    g = Graph(node_id="top")
    g.start(Rec("a", log)) >> Rec("b", log, action="shipped")
    assert g.run({}, run_id=run_id, store=store) == "shipped"
    log.clear()
    assert g.resume(shared := {}, run_id=run_id, store=store) == "shipped"
    assert log == [] and shared == {"trail": ["a", "b"]}
    assert len(store.history(run_id)) == 3  # nothing written


def test_an_answered_interrupt_cannot_be_answered_again_from_another_store_object(
        store_backend):
    first = store_backend.new()
    second = store_backend.reopen(first)
    run_id = new_run()
    with pytest.raises(Interrupt):
        approval_graph([]).run({"order": 3}, run_id=run_id, store=first)

    def make(gate):
        class Gated(Approve):
            def prep(self, shared):
                gate()  # both resumes have loaded the interrupted checkpoint
                return super().prep(shared)

        g = Graph(node_id="top")
        g.start(Rec("a", [])) >> Gated([]) >> Rec("c", [])
        return g

    outcomes = resume_in_threads(make, run_id, [first, second], value=["yes", "no"])
    won = [o for o in outcomes if isinstance(o, dict)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert isinstance(lost[0], RuntimeError) and repr(run_id) in str(lost[0])
    answer = won[0]["approval"]["answers"]
    assert answer in (["yes"], ["no"])
    for store in (first, second):
        cp = store.load(run_id)
        assert cp["status"] == "done" and cp["shared"]["approval"]["answers"] == answer
        assert [h["status"] for h in store.history(run_id)] == [
            "running", "interrupted", "running", "running", "done"]
    with pytest.raises(ValueError, match="done, not interrupted"):  # and later: no question
        make(lambda: None).resume({}, run_id=run_id, store=second, value="maybe")


def test_a_payload_json_cannot_hold_keeps_the_last_good_checkpoint(store):
    run_id = new_run()

    class Odd(Node):
        def exec(self, _):
            return self.interrupt({"when": object()})

    g = Graph(node_id="top")
    g.start(Rec("a", [])) >> Odd()
    with pytest.raises(Interrupt) as caught:
        g.run({}, run_id=run_id, store=store)
    assert store.load(run_id)["status"] == "running" and store.load(run_id)["step"] == 1
    notes = " ".join(getattr(caught.value, "__notes__", ["could not record it payload"]))
    assert "could not record it" in notes and "payload" in notes


# ---------------------------------------------------------------- bad input

class NotAStore:
    def save(self, checkpoint, expected_step):
        pass  # no load, history, ...


RUNS = ["run", "stream", "run_async", "stream_async"]
RESUMES = ["resume", "stream_resume", "resume_async", "stream_resume_async"]


def start(name, graph, shared, **kwargs):
    """Call run method `name` (one of RUNS or RESUMES) to the end."""
    method = getattr(graph, name)
    result = method(shared, **kwargs)
    if name.endswith("_async"):
        async def go():
            if "stream" in name:
                return [step async for step in result]
            return await result
        return asyncio.run(go())
    return list(result) if "stream" in name else result


def simple(log, kind):
    graph = AsyncGraph if kind.endswith("_async") else Graph
    g = graph(node_id="top")
    g.start(Rec("a", log)) >> Rec("b", log)
    return g


@pytest.mark.parametrize("name", RUNS)
def test_bad_run_arguments_are_clear_errors_that_write_and_run_nothing(store, name):
    log, shared, run_id = [], {"keep": 1}, new_run()
    g = simple(log, name)
    with pytest.raises(TypeError, match="store must be a Store.*NotAStore"):
        start(name, g, shared, run_id=run_id, store=NotAStore())
    with pytest.raises(TypeError, match="both run_id and store.*store=None"):
        start(name, g, shared, run_id=run_id)
    with pytest.raises(TypeError, match="both run_id and store.*run_id=None"):
        start(name, g, shared, store=store)
    with pytest.raises(TypeError, match="run_id must be a non-empty str"):
        start(name, g, shared, run_id="", store=store)
    with pytest.raises(ValueError, match="durability must be 'sync' or 'exit', got 'syncc'"):
        start(name, g, shared, run_id=run_id, store=store, durability="syncc")
    assert log == [] and shared == {"keep": 1} and store.list_runs() == []
    start(name, g, {}, run_id=run_id, store=store)
    with pytest.raises(ValueError, match=f"{run_id!r} already has checkpoints.*resume it"):
        start(name, g, shared, run_id=run_id, store=store)
    assert shared == {"keep": 1} and len(store.history(run_id)) == 3


@pytest.mark.parametrize("name", RESUMES)
def test_bad_resume_arguments_are_clear_errors_that_lose_nothing(store, name):
    log, shared, run_id = [], {"keep": 1}, new_run()
    g = simple(log, name)
    with pytest.raises(KeyError, match=repr(run_id)):
        start(name, g, shared, run_id=run_id, store=store)
    with pytest.raises(KeyError, match=repr(run_id)):
        start(name, g, shared, run_id=run_id, store=store, value="answer")
    with pytest.raises(TypeError, match="store must be a Store"):
        start(name, g, shared, run_id=run_id, store=NotAStore())
    with pytest.raises(ValueError, match="durability"):
        start(name, g, shared, run_id=run_id, store=store, durability="later")
    assert log == [] and shared == {"keep": 1} and store.list_runs() == []


@pytest.mark.parametrize("change, needle", [
    ("rename", "top: a -default-> b"),  # the first difference, sorted
    ("action", "top: a -default-> b"),
    ("add", "top: b -other-> z"),
    ("nested", "inner2: node w"),
])
def test_resuming_with_a_changed_graph_is_a_value_error_naming_the_difference(
        store, change, needle):
    run_id, log = new_run(), []
    with pytest.raises(Crash):
        changed_graph(log, None, {("c", "exec"): Crash()}).run({}, run_id=run_id, store=store)
    saved = store.load(run_id)
    shared = {"keep": 1}
    with pytest.raises(ValueError, match=repr(run_id)) as caught:
        changed_graph(log, change).resume(shared, run_id=run_id, store=store)
    assert needle in str(caught.value)
    assert ("saved" if change in ("rename", "action") else "new") in str(caught.value)
    assert shared == {"keep": 1} and store.load(run_id) == saved
    log.clear()
    changed_graph(log).resume(shared, run_id=run_id, store=store)  # the same graph: fine
    assert ran(log) == ["c", "x"]


def changed_graph(log, change=None, faults=None):
    """top: a >> b >> inner(c >> inner2(x)); `change` alters one node id or edge."""
    inner2 = Graph(node_id="inner2")
    x = inner2.start(Rec("x", log))
    if change == "nested":
        x >> Rec("w", log)
    inner = Graph(node_id="inner")
    inner.start(Rec("c", log, faults)) >> inner2
    g = Graph(node_id="top")
    a = g.start(Rec("a", log))
    b = Rec("b2" if change == "rename" else "b", log)
    (a - "yes" >> b) if change == "action" else (a >> b)
    b >> inner
    if change == "add":
        b - "other" >> Rec("z", log)
    return g


def test_the_fingerprint_names_every_node_and_edge_and_is_the_same_for_a_rebuilt_graph(store):
    first, second = new_run(), new_run()
    changed_graph([]).run({}, run_id=first, store=store)
    changed_graph([]).run({}, run_id=second, store=store)
    fingerprint = store.load(first)["fingerprint"]
    assert fingerprint == store.load(second)["fingerprint"]
    for node_id in ("a", "b", "inner", "c", "inner2", "x"):
        assert node_id in fingerprint
    assert {h["node_id"] for h in store.history(first)} <= set(fingerprint.replace(
        "\n", " ").replace(":", " ").split())
    fork = new_run()
    store.fork(first, 2, fork)
    assert store.load(fork)["fingerprint"] == fingerprint


# ---------------------------------------------------------------- each asker its own answers

def test_interrupts_in_checkpointed_batch_items_each_get_their_own_answer(store):
    class Review(BatchNode):
        checkpoint_items = True

        def prep(self, shared):
            return [0, 1, 2, 3, 4, 5]

        def exec(self, item):
            return [item, self.interrupt(f"item {item}?") if item in (3, 5) else None]

        def post(self, shared, items, results):
            shared["reviews"] = results

    run_id, asked = new_run(), []
    for value in (None, "ok 3"):
        with pytest.raises(Interrupt) as caught:
            graph = Graph(Review(), node_id="top")
            if value is None:
                graph.run({}, run_id=run_id, store=store)
            else:
                graph.resume({}, run_id=run_id, store=store, value=value)
        asked.append(caught.value.payload)
    Graph(Review(), node_id="top").resume(shared := {}, run_id=run_id, store=store,
                                          value="ok 5")
    assert asked == ["item 3?", "item 5?"]
    assert shared["reviews"] == [[0, None], [1, None], [2, None], [3, "ok 3"], [4, None],
                                 [5, "ok 5"]]


def test_a_fork_inside_a_batch_graph_resumes_with_the_saved_params_list(store):
    run_id, log = new_run(), []
    orders(log, alone=True).run(shared := {}, run_id=run_id, store=store)
    history = store.history(run_id)
    step = next(h["step"] for h in history if h["node_id"] == "x" and h["step"] > 5)  # run 1
    store.fork(run_id, step, fork := new_run())
    assert store.load(fork)["position"][0][:2] == ["orders", 1]
    log.clear()
    orders(log, source=[7, 8], alone=True).resume(replayed := {}, run_id=fork, store=store)
    assert replayed == shared
    assert ran(log) == ["y1", "b1", "a2", "x2", "y2", "b2", "a3", "x3", "y3", "b3"]


def test_interrupts_in_two_concurrent_batch_runs_each_ask_their_own_question(store):
    class Ask(AsyncNode):
        async def exec_async(self, _):
            await asyncio.sleep(0)
            i = self.params["i"]
            return self.interrupt(f"run {i}?") if i in (1, 2) else None

        async def post_async(self, shared, _, answer):
            shared[str(self.params["i"])] = answer

    def make():
        batch = POrders(Ask(), node_id="orders")
        batch.source = [0, 1, 2, 3]
        return batch

    run_id, asked = new_run(), []
    for value in (None, "yes 1"):
        with pytest.raises(Interrupt) as caught:
            if value is None:
                asyncio.run(make().run_async({}, run_id=run_id, store=store))
            else:
                asyncio.run(make().resume_async({}, run_id=run_id, store=store, value=value))
        asked.append(caught.value.payload)
    asyncio.run(make().resume_async(shared := {}, run_id=run_id, store=store, value="yes 2"))
    assert asked == ["run 1?", "run 2?"]
    assert shared == {"0": None, "1": "yes 1", "2": "yes 2", "3": None}


def test_a_fork_of_a_concurrent_batch_graph_reruns_the_runs_that_completed_after_it(store):
    # The original run completed every run; a fork from the checkpoint made when the first
    # run completed must run the other three again (their "done" marks are newer).
    class Mark(Node):
        def prep(self, shared):
            shared.setdefault("seen", []).append(self.params["i"])

    class Each(POrders):
        def prep(self, shared):
            return [{"i": i} for i in range(4)]

    run_id = new_run()

    def make():  # concurrent: each run is marked done when it completes
        return Each(Mark(node_id="mark"), node_id="each", max_concurrency=2)

    asyncio.run(make().run_async({}, run_id=run_id, store=store))
    first = next(h["step"] for h in store.history(run_id) if h["node_id"] == "each")
    store.fork(run_id, first, fork := new_run())
    asyncio.run(make().resume_async(shared := {}, run_id=fork, store=store))
    assert len(shared["seen"]) == 4 and sorted(shared["seen"]) == [0, 1, 2, 3]


def test_an_edited_fork_runs_the_next_exec_again_instead_of_the_origins_journal(store):
    class Set(Node):
        def post(self, shared, _, __):
            shared["x"] = 1

    class Times(Node):
        def prep(self, shared):
            return shared["x"]

        def exec(self, x):
            time.sleep(5 * JOURNAL_AFTER)  # long enough to be journaled before post
            return x * 10

        def post(self, shared, _, result):
            shared["result"] = result

    def make():
        g = Graph(node_id="top")
        g.start(Set(node_id="set")) >> Times(node_id="times")
        return g

    run_id = new_run()
    make().run({}, run_id=run_id, store=store)
    store.fork(run_id, 1, fork := new_run())
    edited = store.load(fork)
    edited["shared"]["x"], edited["step"] = 2, 2
    store.save(edited, 1)
    make().resume(shared := {}, run_id=fork, store=store)
    assert shared == {"x": 2, "result": 20}
    store.fork(run_id, 1, plain := new_run())  # not edited: the origin's journal is its own
    make().resume(shared := {}, run_id=plain, store=store)
    assert shared == {"x": 1, "result": 10}
