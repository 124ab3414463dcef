"""Workloads 7-10: durable steps, resume after a hard crash, node cache hits and listeners.

kaygraph (SQLiteStore, MemoryCache, SQLiteCache, listeners) side by side with LangGraph
(SqliteSaver, CachePolicy with InMemoryCache) on the same loop and the same node. The
user code is the step workloads' counter (see workloads.Counter); LangGraph runs the same
two-node loop as a StateGraph.

Overheads are differences: a durable run minus a plain run of the same framework, round by
round (the rounds are interleaved, so each difference pairs two runs made back to back).

Also the child process of the crash workload: `python durable.py child ...` (see _child).
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from harness import KAYGRAPH, LANGGRAPH, Contender, Row, interleave
from workloads import Counter, Env, _absent, _rows, _target

MIB = 2**20
HERE = Path(__file__).resolve().parent
BIG = 2**20  # characters of the large str value no step changes (1 MiB)
CRASH_CODE = 17  # the child's exit status when it crashed where it was told to


def _big_value() -> str:
    # Letters at random: a value no store can shrink by compressing it.
    return "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz", k=BIG))


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


class _Files:
    """A scratch folder per run under `root`: `new()` makes a fresh one (deleting the last
    one made by this object, so a workload never holds more than one per contender)."""

    def __init__(self, root: str, name: str) -> None:
        self.root, self.name = root, name
        self.last: str | None = None

    def new(self) -> str:
        self.drop()
        self.last = tempfile.mkdtemp(dir=self.root)
        return self.last

    def drop(self) -> None:
        if self.last is not None:
            shutil.rmtree(self.last, ignore_errors=True)
            self.last = None


# ---------------------------------------------------------------- the graphs


def _kg_loop(kg: Any, node_cls: type | None = None) -> Any:
    """kaygraph's two-node loop (ids "a" and "b", as a durable run needs unique ids)."""
    cls = node_cls or type("Counter", (Counter, kg.Node), {})
    a, b = cls(node_id="a"), cls(node_id="b")
    a - "next" >> b
    b - "next" >> a
    return kg.Graph(a, max_steps=None)


class LoopState(TypedDict):
    """LangGraph state of the durable loop."""

    n: int
    limit: int


class BigLoopState(TypedDict):
    """The same with the large str value that no step changes."""

    n: int
    limit: int
    blob: str


def _lg_loop(lgg: Any, state: type, step: Callable[[Any], Any] | None = None) -> Any:
    """LangGraph's two-node loop as a StateGraph (not compiled)."""

    def add_one(s: Any) -> dict[str, int]:
        return {"n": s["n"] + 1}

    def route(s: Any) -> str:
        return "next" if s["n"] < s["limit"] else "done"

    g = lgg.StateGraph(state)
    g.add_node("a", step or add_one)
    g.add_node("b", step or add_one)
    g.add_edge(lgg.START, "a")
    g.add_conditional_edges("a", route, {"next": "b", "done": lgg.END})
    g.add_conditional_edges("b", route, {"next": "a", "done": lgg.END})
    return g


def _lg_config(thread: str, steps: int) -> dict[str, Any]:
    # recursion_limit counts supersteps; one step is one superstep here.
    return {"configurable": {"thread_id": thread}, "recursion_limit": steps + 10}


# ---------------------------------------------------------------- 7: durable steps


def _kg_durable_maker(env: Env, steps: int, big: str | None, files: _Files | None,
                      sizes: dict[str, int] | None = None) -> Callable[[], Any]:
    """make() for kaygraph's loop of `steps` steps: plain (files None) or durable on a
    fresh SQLiteStore file (opened outside the timed run). With `sizes`, the job records
    the database's bytes after the run (store closed, so the WAL is folded in)."""
    from kaygraph.stores import SQLiteStore  # from the --core directory, like kaygraph

    graph = _kg_loop(env.kg)

    def make() -> Callable[[], int]:
        shared: dict[str, Any] = {"n": 0, "limit": steps}
        if big is not None:
            shared["blob"] = big
        if files is None:
            def plain() -> int:
                graph.run(shared)
                return shared["n"]
            return plain
        folder = files.new()
        store = SQLiteStore(os.path.join(folder, "runs.sqlite3"))
        store.list_runs()  # opens the file and makes the tables: not part of a step

        def durable() -> int:
            graph.run(shared, run_id="bench", store=store)
            if sizes is not None:
                store.close()
                sizes[files.name] = _folder_bytes(folder)
            return shared["n"]
        return durable

    return make


def _lg_durable_maker(env: Env, steps: int, big: str | None, files: _Files | None,
                      sizes: dict[str, int] | None = None) -> Callable[[], Any]:
    """make() for LangGraph's loop: no checkpointer (files None) or SqliteSaver on a fresh
    file with durability="sync"."""
    lgg = env.langgraph.module
    graph = _lg_loop(lgg, LoopState if big is None else BigLoopState)
    plain_app = graph.compile()

    def make() -> Callable[[], int]:
        state: dict[str, Any] = {"n": 0, "limit": steps}
        if big is not None:
            state["blob"] = big
        config = _lg_config("bench", steps)
        if files is None:
            return lambda: plain_app.invoke(state, config)["n"]  # type: ignore[no-any-return]
        from langgraph.checkpoint.sqlite import SqliteSaver

        folder = files.new()
        conn = sqlite3.connect(os.path.join(folder, "lg.sqlite3"), check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()  # makes the tables: not part of a step
        app = graph.compile(checkpointer=saver)

        def durable() -> int:
            n = app.invoke(state, config, durability="sync")["n"]
            if sizes is not None:
                conn.close()
                sizes[files.name] = _folder_bytes(folder)
            return n  # type: ignore[no-any-return]
        return durable

    return make


def _lg_sqlite(env: Env, label: str, make: Callable[[], Callable[[], Any]] | None,
               expect: Any, per: int) -> Contender:
    """A LangGraph contender that needs SqliteSaver (the langgraph-checkpoint-sqlite peer)."""
    if env.langgraph.module is None:
        return _absent(LANGGRAPH, label, env.langgraph)
    saver = env.peers["langgraph-checkpoint-sqlite"]
    if saver.module is None:
        return _absent(LANGGRAPH, label, saver)
    return Contender(LANGGRAPH, label, make, expect, per=per)


def _lg_plain(env: Env, label: str, make: Callable[[], Callable[[], Any]] | None,
              expect: Any, per: int) -> Contender:
    if env.langgraph.module is None:
        return _absent(LANGGRAPH, label, env.langgraph)
    return Contender(LANGGRAPH, label, make, expect, per=per)


def _overhead(rows: list[Row], case: str, base: str, with_: str, label: str,
              role: str) -> Row:
    """A row of `with_` minus `base` (labels of measured rows in `rows`), paired round by
    round; its value is the median of the differences."""
    found = {r.label: r for r in rows}
    a, b = found[with_], found[base]
    row = Row(rows[0].workload, case, role, label, rows[0].unit)
    if a.status != "ok" or b.status != "ok":
        bad = a if a.status != "ok" else b
        row.status = "error" if bad.status == "error" else "missing"
        row.note = f"needs {bad.label} ({bad.status})"
        return row
    row.samples = [x - y for x, y in zip(a.samples, b.samples, strict=True)]
    row.value = statistics.median(row.samples)
    return row


def _value(rows: list[Row], label: str) -> float | None:
    for r in rows:
        if r.label == label and r.status == "ok":
            return r.value
    return None


def _ratio(name: str, rows: list[Row], num: str, den: str, limit: float,
           unit: str) -> dict[str, Any]:
    """A target: the value of row `num` over row `den` (by label) at most `limit`."""
    a, b = _value(rows, num), _value(rows, den)
    if a is None or b is None:
        return _target(name, None, limit, "<=", f"{num if a is None else den} has no result")
    return _target(name, a / b, limit, "<=", f"{num} {a:.3g} vs {den} {b:.3g} {unit}")


def _below(name: str, rows: list[Row], label: str, limit: float, unit: str) -> dict[str, Any]:
    value = _value(rows, label)
    return _target(name, value, limit, "<=",
                   f"{label} ({unit})" if value is not None else f"{label} has no result")


def _set_langgraph_ratio(row: Row | None, ref: Row | None) -> None:
    if row is not None and ref is not None and row.value is not None and ref.value:
        row.vs_langgraph = row.value / ref.value


def durable_steps(env: Env) -> dict[str, Any]:
    """Workload 7: per-step overhead of a durable run (SQLiteStore, durability="sync")
    against LangGraph's SqliteSaver, with a small store and with an unchanged 1 MiB str;
    then the database size after one more run of each."""
    s = env.settings
    n, m_big = s.durable_steps, s.langgraph_big_steps
    rows: list[Row] = []
    sizes: dict[str, int] = {}
    size_errors: dict[str, str] = {}
    root = tempfile.mkdtemp(prefix="kaygraph-bench-")
    big = _big_value()
    try:
        for value, label in ((None, "small store"), (big, "1 MiB str unchanged")):
            case = f"{n:,} steps, {label}"
            lg_n = n if value is None else m_big
            kg_files = _Files(root, f"kaygraph {label}")
            lg_files = _Files(root, f"LangGraph {label}")
            lg_steps = f" ({lg_n:,} steps)" if lg_n != n else ""
            contenders = [
                Contender(KAYGRAPH, "kaygraph Graph, plain",
                          _kg_durable_maker(env, n, value, None), n, per=n),
                Contender(KAYGRAPH, "kaygraph SQLiteStore, sync",
                          _kg_durable_maker(env, n, value, kg_files), n, per=n),
                _lg_plain(env, f"LangGraph, no checkpointer{lg_steps}",
                          _lg_durable_maker(env, lg_n, value, None), lg_n, per=lg_n),
                _lg_sqlite(env, f"LangGraph SqliteSaver, sync{lg_steps}",
                           _lg_durable_maker(env, lg_n, value, lg_files), lg_n, per=lg_n),
            ]
            samples, errors = interleave(contenders, s.rounds, s.warmup)
            measured = _rows("durable", case, "µs/step", 1e6, contenders, samples, errors)
            kg_over = _overhead(measured, case, contenders[0].label, contenders[1].label,
                                "kaygraph overhead (durable - plain)", KAYGRAPH)
            lg_over = _overhead(measured, case, contenders[2].label, contenders[3].label,
                                "LangGraph overhead (durable - plain)", LANGGRAPH)
            _set_langgraph_ratio(kg_over, lg_over)
            rows += [*measured, kg_over, lg_over]
            # One more run of each at the full step count, for the database size.
            for files, maker in ((kg_files, _kg_durable_maker), (lg_files, _lg_durable_maker)):
                if files is lg_files and contenders[3].status != "ok":
                    continue
                try:
                    maker(env, n, value, files, sizes)()()
                except Exception as exc:  # reported as an error row below
                    size_errors[files.name] = f"{exc.__class__.__name__}: {exc}"
                files.drop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    size_case = f"database after {n:,} steps"
    for name in ("kaygraph small store", "kaygraph 1 MiB str unchanged",
                 "LangGraph small store", "LangGraph 1 MiB str unchanged"):
        role = KAYGRAPH if name.startswith("kaygraph") else LANGGRAPH
        label = name.replace("kaygraph", "kaygraph SQLiteStore").replace(
            "LangGraph", "LangGraph SqliteSaver")
        row = Row("durable", size_case, role, label, "MiB")
        got = sizes.get(name)
        if name in size_errors:
            row.status, row.note = "error", size_errors[name]
        elif got is None:
            row.status, row.note = "missing", "LangGraph or langgraph-checkpoint-sqlite missing"
        else:
            row.value, row.samples = got / MIB, [got / MIB]
        rows.append(row)
    for name in ("small store", "1 MiB str unchanged"):
        _set_langgraph_ratio(
            next((r for r in rows if r.label == f"kaygraph SQLiteStore {name}"), None),
            next((r for r in rows if r.label == f"LangGraph SqliteSaver {name}"), None))
    small, large = f"{n:,} steps, small store", f"{n:,} steps, 1 MiB str unchanged"
    over = "kaygraph overhead (durable - plain)"
    lg_over_label = "LangGraph overhead (durable - plain)"
    small_rows = [r for r in rows if r.case == small]
    small_over, large_over = (_value([r for r in rows if r.case == c], over)
                              for c in (small, large))
    targets = [
        _ratio("durable step overhead vs LangGraph SqliteSaver", small_rows, over,
               lg_over_label, 0.1, "µs/step"),
        _below("durable step overhead under 100 µs", small_rows, over, 100.0, "µs/step"),
        _target("1 MiB unchanged: overhead within 2x of the small store",
                large_over / small_over if large_over is not None and small_over else None,
                2.0, "<=", "kaygraph overhead, 1 MiB str / small store"),
        _target(f"1 MiB unchanged: database under 2 MiB after {n:,} steps",
                _value(rows, "kaygraph SQLiteStore 1 MiB str unchanged"), 2.0, "<=",
                "kaygraph SQLiteStore file (MiB), WAL folded in"),
    ]
    return {
        "key": "durable", "title": "7. Durable step (SQLiteStore vs SqliteSaver)",
        "measures": f"µs per step of the two-node loop with a checkpoint after every step "
        f"(kaygraph SQLiteStore, durability=\"sync\"; LangGraph SqliteSaver, durability="
        f"\"sync\"), the same loop without a store, and the overhead (the difference, round "
        f"by round); a small shared store (the counter and its limit), then with a 1 MiB str "
        f"that no step changes (LangGraph: in the state; it runs {m_big:,} steps there). Then "
        f"the database files after one more {n:,}-step run of each (connection closed, so "
        f"the WAL is folded in).",
        "rows": rows, "targets": targets,
    }


# ---------------------------------------------------------------- 8: resume after a crash


def _child(argv: list[str]) -> None:
    """Run a loop of `steps` steps and os._exit(CRASH_CODE) inside step `after + 1`.

    argv: framework ("kaygraph" | "langgraph"), database path, steps, after, durability.
    """
    framework, path, steps, after, mode = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]

    def crash_at(n: int) -> None:
        if n == after:  # the input of step after + 1: `after` steps are complete
            sys.stdout.flush()
            os._exit(CRASH_CODE)

    if framework == "kaygraph":
        import kaygraph as kg
        from kaygraph.stores import SQLiteStore

        class Crashing(Counter, kg.Node):  # type: ignore[misc]
            def exec(self, prep_res: int) -> int:
                crash_at(prep_res)
                return prep_res + 1

        _kg_loop(kg, Crashing).run({"n": 0, "limit": steps}, run_id="crash",
                                   store=SQLiteStore(path), durability=mode)
    else:
        import langgraph.graph as lgg
        from langgraph.checkpoint.sqlite import SqliteSaver

        def step(s: Any) -> dict[str, int]:
            crash_at(s["n"])
            return {"n": s["n"] + 1}

        saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
        app = _lg_loop(lgg, LoopState, step).compile(checkpointer=saver)
        app.invoke({"n": 0, "limit": steps}, _lg_config("crash", steps), durability=mode)
    os._exit(0)  # not crashed: the parent reports it as an error


def _crash(env: Env, framework: str, path: str, steps: int, after: int, mode: str) -> None:
    pythonpath = os.pathsep.join([str(env.core.resolve()), str(HERE)])
    proc = subprocess.run(
        [sys.executable, str(HERE / "durable.py"), "child", framework, path, str(steps),
         str(after), mode], env=dict(os.environ, PYTHONPATH=pythonpath),
        capture_output=True, text=True, timeout=600)
    if proc.returncode != CRASH_CODE:
        raise RuntimeError(f"the {framework} child exited with {proc.returncode}, not the "
                           f"crash: {proc.stderr.strip()[-500:]}")


def _resume_kaygraph(env: Env, path: str, steps: int) -> tuple[float, list[int]]:
    """Resume (or, with no checkpoint, rerun) the crashed run in this process: returns
    (seconds from the call to the first step's prep, the counter each prep read)."""
    from kaygraph.stores import SQLiteStore

    seen: list[int] = []
    first: list[float] = []

    class Recording(Counter, env.kg.Node):  # type: ignore[misc,name-defined]
        def prep(self, shared: dict[str, Any]) -> int:
            if not first:
                first.append(time.perf_counter())
            seen.append(shared["n"])
            return shared["n"]  # type: ignore[no-any-return]

    graph = _kg_loop(env.kg, Recording)
    store = SQLiteStore(path)
    shared: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        graph.resume(shared, run_id="crash", store=store)
    except KeyError:  # nothing was saved: the run starts again
        shared.update(n=0, limit=steps)
        graph.run(shared, run_id="crash", store=store)
    store.close()
    if shared.get("n") != steps:
        raise AssertionError(f"kaygraph resumed to n={shared.get('n')}, expected {steps}")
    return first[0] - start, seen


def _resume_langgraph(env: Env, path: str, steps: int, mode: str) -> tuple[float, list[int]]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    seen: list[int] = []
    first: list[float] = []

    def step(s: Any) -> dict[str, int]:
        if not first:
            first.append(time.perf_counter())
        seen.append(s["n"])
        return {"n": s["n"] + 1}

    conn = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(conn)
    app = _lg_loop(env.langgraph.module, LoopState, step).compile(checkpointer=saver)
    config = _lg_config("crash", steps)
    start = time.perf_counter()
    if saver.get_tuple(config) is not None:  # a checkpoint of the thread: go on from it
        out = app.invoke(None, config, durability=mode)
    else:  # nothing was saved: the run starts again
        out = app.invoke({"n": 0, "limit": steps}, config, durability=mode)
    conn.close()
    if out["n"] != steps:
        raise AssertionError(f"LangGraph ({mode}) resumed to n={out['n']}, expected {steps}")
    return first[0] - start, seen


def crash_resume(env: Env) -> dict[str, Any]:
    """Workload 8: a child process runs the loop and dies by os._exit inside the step after
    `after` completed ones; this process resumes it. Measures how many completed steps run
    again and how long the resume takes to start its first step."""
    s = env.settings
    steps, after = s.durable_steps, s.durable_steps // 2
    plans: list[tuple[str, str, str]] = [(KAYGRAPH, "kaygraph SQLiteStore, sync", "sync")]
    plans += [(LANGGRAPH, f"LangGraph SqliteSaver, {mode}", mode)
              for mode in ("sync", "async", "exit")]
    reran: dict[str, list[float]] = {label: [] for _, label, _ in plans}
    latency: dict[str, list[float]] = {label: [] for _, label, _ in plans}
    errors: dict[str, str] = {}
    missing: dict[str, str] = {}
    if env.langgraph.module is None:
        missing.update({p[1]: f"langgraph {env.langgraph.why}" for p in plans[1:]})
    elif env.peers["langgraph-checkpoint-sqlite"].module is None:
        peer = env.peers["langgraph-checkpoint-sqlite"]
        missing.update({p[1]: f"{peer.name} {peer.why}" for p in plans[1:]})
    root = tempfile.mkdtemp(prefix="kaygraph-bench-")
    order = random.Random(5)
    try:
        for r in range(s.crash_rounds):
            todo = [p for p in plans if p[1] not in missing]
            order.shuffle(todo)
            for role, label, mode in todo:
                if label in errors:
                    continue
                path = os.path.join(root, f"crash-{r}-{role}-{mode}.sqlite3")
                try:
                    _crash(env, role, path, steps, after, mode)
                    if role == KAYGRAPH:
                        took, seen = _resume_kaygraph(env, path, steps)
                    else:
                        took, seen = _resume_langgraph(env, path, steps, mode)
                except Exception as exc:  # reported in the table; run.py exits non-zero
                    errors[label] = f"{exc.__class__.__name__}: {exc}"
                    continue
                # prep read n: the step that makes n + 1. Steps 1..after were complete.
                reran[label].append(float(sum(1 for n in seen if n < after)))
                latency[label].append(took * 1e3)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    again_case = f"completed steps run again (of {after:,}; crash in step {after + 1:,})"
    start_case = "resume: call to first step"
    rows: list[Row] = []
    for case, unit, data in ((again_case, "steps", reran), (start_case, "ms", latency)):
        for role, label, _ in plans:
            row = Row("resume", case, role, label, unit)
            if label in missing:
                row.status, row.note = "missing", missing[label]
            elif label in errors:
                row.status, row.note = "error", errors[label]
            else:
                row.samples = data[label]
                row.value = statistics.median(row.samples)
            rows.append(row)
    kg_label = plans[0][1]
    kg_again = next(r.value for r in rows if r.case == again_case and r.label == kg_label)
    targets = [
        _target("resume after a crash: completed steps run again (sync)", kg_again, 0, "<=",
                f"of {after:,} completed, over {s.crash_rounds} crash(es)"),
        _below("resume after a crash: starts within 10 ms",
               [r for r in rows if r.case == start_case], kg_label, 10.0, "ms"),
    ]
    return {
        "key": "resume", "title": "8. Resume after a hard crash",
        "measures": f"A child process runs the {steps:,}-step loop on a fresh SQLite file and "
        f"calls os._exit inside step {after + 1:,} (after {after:,} completed steps); this "
        f"process then resumes the run (LangGraph: invoke(None) on the thread when it has a "
        f"checkpoint, else the run starts again) and counts the completed steps "
        f"that run again, and the time from the call to the first step. Median of "
        f"{s.crash_rounds} crash(es) per row.",
        "rows": rows, "targets": targets,
    }


# ---------------------------------------------------------------- 9: cache hits


class Lookup:
    """User code of the cache workload: exec adds one to the input; every call after the
    first has the same input, so a cached node hits."""

    def prep(self, shared: dict[str, Any]) -> int:
        return shared["x"]  # type: ignore[no-any-return]

    def exec(self, x: int) -> int:
        return x + 1

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> None:
        shared["y"] = exec_res


class LookupState(TypedDict):
    """LangGraph state of the cache workload."""

    x: int
    y: int


class BigLookupState(TypedDict):
    """The same with the large str value (the node's input holds it)."""

    x: int
    y: int
    blob: str


def _kg_cache_maker(env: Env, calls: int, cache: str | None, root: str,
                    big: str | None) -> Callable[[], Any]:
    """make() for `calls` runs of a one-node kaygraph Graph; `cache` None, "memory" or
    "sqlite" (a fresh file); the cache is filled by one untimed call first."""
    kg = env.kg
    from kaygraph.stores import MemoryCache, SQLiteCache

    files = _Files(root, f"cache-{cache}")
    opened: list[Any] = []

    def make() -> Callable[[], Any]:
        while opened:
            opened.pop().close()
        policy = None
        if cache == "memory":
            policy = kg.CachePolicy(MemoryCache())
        elif cache == "sqlite":
            opened.append(SQLiteCache(os.path.join(files.new(), "cache.sqlite3")))
            policy = kg.CachePolicy(opened[-1])
        node = type("Lookup", (Lookup, kg.Node), {})(cache_policy=policy)
        graph = kg.Graph(node)
        shared: dict[str, Any] = {"x": 1} if big is None else {"x": 1, "blob": big}
        graph.run(shared)  # a miss: fills the cache

        def job() -> tuple[int, int]:
            for _ in range(calls):
                graph.run(shared)
            return shared["y"], policy.cache.hits if policy is not None else calls
        return job

    return make


def _lg_cache_maker(env: Env, calls: int, cached: bool, big: str | None) -> Callable[[], Any]:
    lgg = env.langgraph.module

    def make() -> Callable[[], Any]:
        from langgraph.cache.memory import InMemoryCache
        from langgraph.types import CachePolicy

        count = [0]

        def lookup(s: Any) -> dict[str, int]:
            count[0] += 1
            return {"y": s["x"] + 1}

        g = lgg.StateGraph(LookupState if big is None else BigLookupState)
        g.add_node("lookup", lookup, cache_policy=CachePolicy() if cached else None)
        g.add_edge(lgg.START, "lookup")
        g.add_edge("lookup", lgg.END)
        app = g.compile(cache=InMemoryCache() if cached else None)
        state: dict[str, Any] = {"x": 1} if big is None else {"x": 1, "blob": big}
        app.invoke(state)  # a miss: fills the cache

        def job() -> tuple[int, int]:
            y, before = 0, count[0]
            for _ in range(calls):
                y = app.invoke(state)["y"]
            ran = count[0] - before  # a hit never calls the node; without a cache each call does
            return y, (calls - ran if cached else ran)
        return job

    return make


def cache_hits(env: Env) -> dict[str, Any]:
    """Workload 9: a call of a one-node graph whose node adds one to its input, with the
    same input every call: without a cache, and on a cache hit; with a small input and with
    a 1 MiB str beside it in the shared store (LangGraph: in the state, the node's input)."""
    s = env.settings
    rows: list[Row] = []
    root = tempfile.mkdtemp(prefix="kaygraph-bench-")
    clock = time.process_time if env.cpu_clock else time.perf_counter
    try:
        for big, what in ((None, "small store"), (_big_value(), "1 MiB str in the store")):
            n = s.cache_calls
            m = s.langgraph_cache_calls if big is None else max(s.langgraph_cache_calls // 10, 5)
            case = f"per call, {what}"
            contenders = [
                Contender(KAYGRAPH, "kaygraph, no cache",
                          _kg_cache_maker(env, n, None, root, big), (2, n), per=n),
                Contender(KAYGRAPH, "kaygraph MemoryCache hit",
                          _kg_cache_maker(env, n, "memory", root, big), (2, n), per=n),
                Contender(KAYGRAPH, "kaygraph SQLiteCache hit",
                          _kg_cache_maker(env, n, "sqlite", root, big), (2, n), per=n),
                _lg_plain(env, f"LangGraph, no cache ({m:,} calls)",
                          _lg_cache_maker(env, m, False, big), (2, m), m),
                _lg_plain(env, f"LangGraph InMemoryCache hit ({m:,} calls)",
                          _lg_cache_maker(env, m, True, big), (2, m), m),
            ]
            samples, errors = interleave(contenders, s.rounds, s.cpu_warmup, clock=clock)
            measured = _rows("cache", case, "µs/call", 1e6, contenders, samples, errors)
            labels = [c.label for c in contenders]
            for i in (1, 2):
                _set_langgraph_ratio(measured[i], measured[4])
            derived = [
                _overhead(measured, case, labels[0], labels[1], "MemoryCache hit - no cache",
                          KAYGRAPH),
                _overhead(measured, case, labels[0], labels[2], "SQLiteCache hit - no cache",
                          KAYGRAPH),
                _overhead(measured, case, labels[3], labels[4],
                          "LangGraph InMemoryCache hit - no cache", LANGGRAPH),
            ]
            rows += measured + derived
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small = [r for r in rows if r.case == "per call, small store"]
    targets = [
        _ratio("cache hit call (MemoryCache) vs LangGraph InMemoryCache hit", small,
               "kaygraph MemoryCache hit", f"LangGraph InMemoryCache hit "
               f"({s.langgraph_cache_calls:,} calls)", 0.5, "µs/call"),
        _below("cache hit (SQLiteCache) adds under 50 µs to a call", small,
               "SQLiteCache hit - no cache", 50.0, "µs/call"),
    ]
    return {
        "key": "cache", "title": "9. Node cache hit",
        "measures": "µs per call of a one-node graph (kaygraph Graph.run; LangGraph invoke) "
        "whose node adds one to its input, the same input every call: without a cache, and "
        "with a cache that holds the result (every timed call is a hit), and what the hit "
        "changes (hit minus no cache: negative when a hit costs less than running the "
        "node). With a small shared store, then with a 1 MiB str beside the input "
        "(LangGraph: in the state, which its default cache key pickles).",
        "rows": rows, "targets": targets,
    }


# ---------------------------------------------------------------- 10: listeners


def _otel_provider(env: Env) -> tuple[Any, list[int]]:
    """An SDK TracerProvider whose exporter drops the spans (counting them)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    count = [0]

    class Discard(SpanExporter):  # type: ignore[misc]
        def export(self, spans: Any) -> Any:
            count[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    return provider, count


def _listener_maker(env: Env, steps: int, kind: str, otel: Any = None) -> Callable[[], Any]:
    graph = _kg_loop(env.kg)

    def make() -> Callable[[], Any]:
        shared = {"n": 0, "limit": steps}
        listeners: list[Any] = []
        count = [0]
        if kind == "noop":
            listeners = [lambda event: None]
        elif kind == "otel":
            provider, count = _otel_provider(env)
            listeners = [otel.TracingListener(tracer_provider=provider)]

        def job() -> tuple[int, bool]:
            graph.run(shared, listeners=listeners)
            return shared["n"], kind != "otel" or count[0] >= steps  # a span per step
        return job

    return make


def listener_overhead(env: Env) -> dict[str, Any]:
    """Workload 10: what a listener adds to each step of the two-node loop."""
    n = env.settings.listener_steps
    case = f"{n:,} steps"
    otel_label = "kaygraph otel.TracingListener (SDK, no-op exporter)"
    try:
        otel = importlib.import_module("kaygraph.otel")
    except ImportError as exc:
        otel_c = Contender(KAYGRAPH, otel_label, status="missing",
                           note=f"kaygraph.otel not importable yet ({exc})")
    else:
        sdk = env.peers["opentelemetry-sdk"]
        otel_c = (Contender(KAYGRAPH, otel_label, _listener_maker(env, n, "otel", otel),
                            (n, True), per=n)
                  if sdk.module is not None else _absent(KAYGRAPH, otel_label, sdk))
    contenders = [
        Contender(KAYGRAPH, "kaygraph, no listener", _listener_maker(env, n, "none"),
                  (n, True), per=n),
        Contender(KAYGRAPH, "kaygraph, one no-op listener", _listener_maker(env, n, "noop"),
                  (n, True), per=n),
        otel_c,
    ]
    clock = time.process_time if env.cpu_clock else time.perf_counter
    samples, errors = interleave(contenders, env.settings.rounds, env.settings.cpu_warmup,
                                 clock=clock)
    rows = _rows("listeners", case, "µs/step", 1e6, contenders, samples, errors)
    labels = [c.label for c in contenders]
    rows += [_overhead(rows, case, labels[0], labels[1], "no-op listener overhead", KAYGRAPH),
             _overhead(rows, case, labels[0], labels[2], "TracingListener overhead", KAYGRAPH)]
    return {
        "key": "listeners", "title": "10. Listener overhead",
        "measures": "µs per step of the two-node loop with no listener, with one listener "
        "that does nothing, and with kaygraph.otel's TracingListener on an OpenTelemetry SDK "
        "TracerProvider whose exporter drops the spans (SimpleSpanProcessor: the span's whole "
        "cost is on the step), and the overhead of each (the difference, round by round).",
        "rows": rows, "targets": [],
    }


WORKLOADS: dict[str, Callable[[Env], dict[str, Any]]] = {
    "durable": durable_steps,
    "resume": crash_resume,
    "cache": cache_hits,
    "listeners": listener_overhead,
}


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _child(sys.argv[2:])
