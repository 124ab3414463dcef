"""The six workloads of issue 4. Each runs the floor, kaygraph and the peers on the same job.

The user code (prep/exec/post) of a job is written once, as a mixin, and combined with each
framework's node class, so every framework runs exactly the same user code. The floor is the
same user code driven by a hand-written loop on plain objects: the cost of the work itself,
with no framework at all.
"""

import asyncio
import operator
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

from harness import (
    FLOOR,
    KAYGRAPH,
    LANGGRAPH,
    POCKETFLOW,
    Contender,
    Peer,
    Row,
    interleave,
    peak_memory,
    ratios,
)

ASYNC_DELAY = 0.020  # seconds each async item awaits (issue 4: 20 ms)
THREAD_DELAY = 0.010  # seconds each thread item sleeps (issue 4: 10 ms)
WINDOW_ALLOWANCE = 4 * 2**20  # bytes a bounded submission window may add over the plain loop
MIB = 2**20


@dataclass(frozen=True)
class Settings:
    """Sizes and rounds of every workload; FULL is the issue's, QUICK a smoke run for CI."""

    rounds: int
    warmup: int
    cpu_warmup: int  # warm-up rounds of the CPU-bound workloads (see _measure)
    steps: int
    langgraph_steps: int
    batch_items: int
    async_items: int
    async_limit: int
    thread_items: int
    thread_workers: int
    stream_items: int
    stream_workers: int
    chain_sizes: tuple[int, ...]
    store_sizes: tuple[int, ...]
    scale_steps: int
    durable_steps: int  # the durable loop, both frameworks; the crash comes after half
    langgraph_big_steps: int  # LangGraph's durable loop with the 1 MiB value (~14 ms a step)
    crash_rounds: int
    cache_calls: int
    langgraph_cache_calls: int
    listener_steps: int


FULL = Settings(
    rounds=9, warmup=1, cpu_warmup=8, steps=100_000, langgraph_steps=2_000, batch_items=200_000,
    async_items=2_000, async_limit=200, thread_items=200, thread_workers=20,
    stream_items=1_000_000, stream_workers=4, chain_sizes=(10, 100, 1_000),
    store_sizes=(10, 100, 1_000, 10_000, 100_000), scale_steps=100_000,
    durable_steps=1_000, langgraph_big_steps=100, crash_rounds=3, cache_calls=20_000,
    langgraph_cache_calls=1_000, listener_steps=20_000,
)
QUICK = Settings(
    rounds=2, warmup=1, cpu_warmup=8, steps=10_000, langgraph_steps=100, batch_items=20_000,
    async_items=500, async_limit=50, thread_items=100, thread_workers=20,
    stream_items=50_000, stream_workers=4, chain_sizes=(10, 1_000),
    store_sizes=(10, 100_000), scale_steps=10_000,
    durable_steps=100, langgraph_big_steps=10, crash_rounds=1, cache_calls=2_000,
    langgraph_cache_calls=100, listener_steps=2_000,
)


@dataclass
class Env:
    """What the workloads run against: the kaygraph module, the peers, the settings."""

    kg: Any
    pocketflow: Peer
    langgraph: Peer
    settings: Settings
    cpu_clock: bool = False  # time the single-threaded CPU-bound workloads by process_time
    peers: dict[str, Peer] = field(default_factory=dict)  # other optional packages, by name
    core: Path = Path(__file__).resolve().parent.parent  # the directory kaygraph came from


def _absent(role: str, label: str, peer: Peer | None = None, why: str = "") -> Contender:
    if peer is not None and peer.module is None:
        return Contender(role, label, status="missing", note=f"{peer.name} {peer.why}")
    return Contender(role, label, status="n/a", note=why)


def _pf(env: Env, label: str, make: Callable[[], Any], expect: Any, per: int = 1) -> Contender:
    if env.pocketflow.module is None:
        return _absent(POCKETFLOW, label, env.pocketflow)
    return Contender(POCKETFLOW, label, make, expect, per=per)


def _lg(env: Env, label: str, make: Callable[[], Any], expect: Any, per: int = 1) -> Contender:
    if env.langgraph.module is None:
        return _absent(LANGGRAPH, label, env.langgraph)
    return Contender(LANGGRAPH, label, make, expect, per=per)


def _rows(
    workload: str, case: str, unit: str, scale: float,
    contenders: list[Contender], samples: dict[str, list[float]], errors: dict[str, str],
) -> list[Row]:
    """Turn seconds per run into rows of `unit` per unit of work (seconds * scale / per)."""
    rows = []
    for c in contenders:
        row = Row(workload, case, c.role, c.label, unit, status=c.status, note=c.note)
        if c.status == "ok" and c.label in errors:
            row.status, row.note = "error", errors[c.label]
        elif c.status == "ok":
            row.samples = [s * scale / c.per for s in samples[c.label]]
            row.value = statistics.median(row.samples)
        rows.append(row)
    return rows


def _measure(
    workload: str, case: str, unit: str, scale: float, contenders: list[Contender],
    env: Env, loop: asyncio.AbstractEventLoop | None = None, cpu_bound: bool = False,
) -> list[Row]:
    s = env.settings
    clock = time.process_time if cpu_bound and env.cpu_clock else time.perf_counter
    # CPython 3.11 specialises a function's bytecode only after ~8 calls: a loop function
    # called once per run (the floor's) runs ~30% slower for its first 7 runs.
    warmup = s.cpu_warmup if cpu_bound else s.warmup
    samples, errors = interleave(contenders, s.rounds, warmup, loop, clock)
    return _rows(workload, case, unit, scale, contenders, samples, errors)


def _find(rows: list[Row], case: str, role: str) -> Row | None:
    for row in rows:
        if row.case == case and row.role == role and row.status == "ok":
            return row
    return None


def _target(name: str, value: float | None, limit: float, op: str, detail: str) -> dict[str, Any]:
    """A target line: met is None when a number it needs is missing (peer not installed)."""
    met = None if value is None else (value <= limit if op == "<=" else value >= limit)
    return {"name": name, "value": value, "limit": limit, "op": op, "met": met, "detail": detail}


def _ratio_target(
    name: str, rows: list[Row], case: str, ref_role: str, limit: float
) -> dict[str, Any]:
    kg, ref = _find(rows, case, KAYGRAPH), _find(rows, case, ref_role)
    if kg is None or ref is None:
        missing = "kaygraph" if kg is None else ref_role
        return _target(name, None, limit, "<=", f"{missing} has no result")
    detail = f"kaygraph {kg.value:.3g} vs {ref.label} {ref.value:.3g} {kg.unit}"
    return _target(name, kg.value / ref.value, limit, "<=", detail)  # type: ignore[operator]


# ---------------------------------------------------------------- 1 and 6: steps in a loop


class Counter:
    """User code of the step workloads: prep reads the counter, exec adds one, post writes it
    and returns the action ("next" until the limit, then "done", which has no successor)."""

    def prep(self, shared: dict[str, Any]) -> int:
        return shared["n"]

    def exec(self, prep_res: int) -> int:
        return prep_res + 1

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str:
        shared["n"] = exec_res
        return "next" if exec_res < shared["limit"] else "done"


class PlainCounter(Counter):
    """The floor's node: a plain object with a successors dict."""

    def __init__(self) -> None:
        self.successors: dict[str, Any] = {}


def floor_walk(start: Any, shared: dict[str, Any]) -> Any:
    """The hand-written loop: the three phases, then follow the action. No copies, no checks."""
    node, action = start, None
    while node is not None:
        p = node.prep(shared)
        e = node.exec(p)
        action = node.post(shared, p, e)
        node = node.successors.get(action or "default")
    return action


def _store(steps: int, keys: int) -> dict[str, Any]:
    """A shared store of `keys` keys in all: the counter, its limit and filler."""
    shared: dict[str, Any] = {f"key{i}": i for i in range(max(keys - 2, 0))}
    shared.update(n=0, limit=steps)
    return shared


def _ring_maker(kind: str, env: Env, nodes: int, steps: int, keys: int) -> Callable[[], Any]:
    """make() for `nodes` distinct nodes in a ring (2 = the two-node loop), run for `steps`."""

    def make() -> Callable[[], int]:
        if kind == FLOOR:
            ring = [PlainCounter() for _ in range(nodes)]
            for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
                a.successors["next"] = b

            def go(shared: dict[str, Any]) -> Any:
                return floor_walk(ring[0], shared)
        else:
            mod = env.kg if kind == KAYGRAPH else env.pocketflow.module
            cls = type("Counter", (Counter, mod.Node), {})
            ring = [cls() for _ in range(nodes)]
            for a, b in zip(ring, ring[1:] + ring[:1], strict=True):
                a - "next" >> b
            if kind == KAYGRAPH:  # the loop runs far past the default loop guard
                go = mod.Graph(start=ring[0], max_steps=None).run
            else:
                go = mod.Flow(start=ring[0]).run
        shared = _store(steps, keys)

        def job() -> int:
            go(shared)
            return shared["n"]

        return job

    return make


class CounterState(TypedDict):
    """LangGraph state of the step workload."""

    n: int
    limit: int


def _langgraph_loop_maker(env: Env, steps: int) -> Callable[[], Any]:
    """make() for a LangGraph StateGraph doing the two-node loop with conditional edges."""
    lgg = env.langgraph.module

    def step(state: CounterState) -> dict[str, int]:
        return {"n": state["n"] + 1}

    def route(state: CounterState) -> str:
        return "next" if state["n"] < state["limit"] else "done"

    def make() -> Callable[[], int]:
        g = lgg.StateGraph(CounterState)
        g.add_node("a", step)
        g.add_node("b", step)
        g.add_edge(lgg.START, "a")
        g.add_conditional_edges("a", route, {"next": "b", "done": lgg.END})
        g.add_conditional_edges("b", route, {"next": "a", "done": lgg.END})
        app = g.compile()
        # recursion_limit counts supersteps; one step is one superstep here.
        config = {"recursion_limit": steps + 10}

        def job() -> int:
            return app.invoke({"n": 0, "limit": steps}, config)["n"]

        return job

    return make


def step_overhead(env: Env) -> dict[str, Any]:
    """Workload 1: µs per step of a two-node loop."""
    s = env.settings
    n, m = s.steps, s.langgraph_steps
    case = f"{n:,} steps"
    contenders = [
        Contender(FLOOR, "floor (hand-written loop)", _ring_maker(FLOOR, env, 2, n, 2), n, per=n),
        Contender(KAYGRAPH, "kaygraph Graph", _ring_maker(KAYGRAPH, env, 2, n, 2), n, per=n),
        _pf(env, "PocketFlow Flow", _ring_maker(POCKETFLOW, env, 2, n, 2), n, per=n),
        _lg(env, f"LangGraph StateGraph ({m:,} steps)", _langgraph_loop_maker(env, m), m, per=m),
    ]
    rows = _measure("step", case, "µs/step", 1e6, contenders, env, cpu_bound=True)
    ratios(rows)
    targets = [
        _ratio_target("step overhead vs PocketFlow", rows, case, POCKETFLOW, 0.5),
        _ratio_target("step overhead vs floor", rows, case, FLOOR, 5.0),
    ]
    return {
        "key": "step", "title": "1. Step overhead (two-node loop)",
        "measures": "µs per step: prep reads a counter, exec adds one, post writes it and "
        "returns the action; a graph of two nodes looping until the limit.",
        "rows": rows, "targets": targets,
    }


# ---------------------------------------------------------------- 2: batch items


class Incrementer:
    """User code of the batch workload: exec adds one to each item."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: int) -> int:
        return item + 1

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


class PlainIncrementer(Incrementer):
    """The floor's batch: the three phases with a list comprehension over the items."""

    def run(self, shared: dict[str, Any]) -> None:
        p = self.prep(shared)
        self.post(shared, p, [self.exec(i) for i in p])


def _batch_maker(kind: str, env: Env, items: int) -> Callable[[], Any]:
    def make() -> Callable[[], tuple[int, int]]:
        if kind == FLOOR:
            node: Any = PlainIncrementer()
        else:
            mod = env.kg if kind == KAYGRAPH else env.pocketflow.module
            node = type("Incrementer", (Incrementer, mod.BatchNode), {})()
        shared: dict[str, Any] = {"items": list(range(items))}

        def job() -> tuple[int, int]:
            node.run(shared)
            return len(shared["out"]), shared["out"][-1]

        return job

    return make


def batch_overhead(env: Env) -> dict[str, Any]:
    """Workload 2: µs per item of a BatchNode."""
    n = env.settings.batch_items
    case = f"{n:,} items"
    contenders = [
        Contender(FLOOR, "floor (list comprehension)", _batch_maker(FLOOR, env, n), (n, n), per=n),
        Contender(KAYGRAPH, "kaygraph BatchNode", _batch_maker(KAYGRAPH, env, n), (n, n), per=n),
        _pf(env, "PocketFlow BatchNode", _batch_maker(POCKETFLOW, env, n), (n, n), per=n),
        _absent(LANGGRAPH, "LangGraph", env.langgraph, "no batch node (a node looping over "
                "the items is the floor)"),
    ]
    rows = _measure("batch", case, "µs/item", 1e6, contenders, env, cpu_bound=True)
    ratios(rows)
    return {
        "key": "batch", "title": "2. Batch item overhead (BatchNode)",
        "measures": "µs per item: exec adds one to each of the items; post gets the list.",
        "rows": rows,
        "targets": [_ratio_target("batch item overhead vs PocketFlow", rows, case, POCKETFLOW,
                                  0.7)],
    }


# ---------------------------------------------------------------- 3: async fan-out


class Sleeper:
    """User code of the async workload: each item awaits ASYNC_DELAY seconds."""

    async def prep_async(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    async def exec_async(self, item: int) -> int:
        await asyncio.sleep(ASYNC_DELAY)
        return item

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["out"] = list(exec_res)


async def _sleep_item(item: int) -> int:
    await asyncio.sleep(ASYNC_DELAY)
    return item


def _gather_maker(items: int, limit: int | None) -> Callable[[], Any]:
    def make() -> Callable[[], Any]:
        data = list(range(items))

        async def unbounded() -> list[int]:
            return list(await asyncio.gather(*(_sleep_item(i) for i in data)))

        async def bounded() -> list[int]:
            sem = asyncio.Semaphore(limit or 1)

            async def one(i: int) -> int:
                async with sem:
                    return await _sleep_item(i)

            return list(await asyncio.gather(*(one(i) for i in data)))

        return unbounded if limit is None else bounded

    return make


def _async_node_maker(mod: Any, items: int, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Callable[[], Any]:
        node = type("Sleeper", (Sleeper, mod.AsyncParallelBatchNode), {})(**kwargs)
        shared: dict[str, Any] = {"items": list(range(items))}

        async def job() -> list[int]:
            await node.run_async(shared)
            return shared["out"]

        return job

    return make


class FanState(TypedDict):
    """LangGraph state of the fan-out workloads: items in, results gathered by a reducer."""

    items: list[int]
    results: Annotated[list[int], operator.add]


class ItemState(TypedDict):
    """What one Send hands to the worker node."""

    item: int


def _langgraph_fanout_maker(env: Env, items: int, limit: int | None, sync: bool) -> Callable:
    """make() for a LangGraph map step: one Send per item to a worker that sleeps."""
    lgg = env.langgraph.module

    def fan(state: FanState) -> list[Any]:
        from langgraph.types import Send

        return [Send("work", {"item": i}) for i in state["items"]]

    async def work_async(state: ItemState) -> dict[str, list[int]]:
        await asyncio.sleep(ASYNC_DELAY)
        return {"results": [state["item"]]}

    def work_sync(state: ItemState) -> dict[str, list[int]]:
        time.sleep(THREAD_DELAY)
        return {"results": [state["item"]]}

    def make() -> Callable[[], Any]:
        g = lgg.StateGraph(FanState)
        g.add_node("work", work_sync if sync else work_async)
        g.add_conditional_edges(lgg.START, fan, ["work"])
        g.add_edge("work", lgg.END)
        app = g.compile()
        config: dict[str, Any] = {"max_concurrency": limit} if limit else {}
        state = {"items": list(range(items)), "results": []}

        def job_sync() -> list[int]:
            return sorted(app.invoke(state, config)["results"])

        async def job_async() -> list[int]:
            return sorted((await app.ainvoke(state, config))["results"])

        return job_sync if sync else job_async

    return make


def async_fanout(env: Env) -> dict[str, Any]:
    """Workload 3: wall time of N items each awaiting 20 ms, unbounded and with a limit."""
    s = env.settings
    n, limit = s.async_items, s.async_limit
    expect = list(range(n))
    pf = env.pocketflow.module
    cases = {
        f"{n:,} x {ASYNC_DELAY * 1000:.0f} ms, unbounded": [
            Contender(FLOOR, "floor (asyncio.gather)", _gather_maker(n, None), expect),
            Contender(KAYGRAPH, "kaygraph AsyncParallelBatchNode",
                      _async_node_maker(env.kg, n), expect),
            _pf(env, "PocketFlow AsyncParallelBatchNode",
                _async_node_maker(pf, n) if pf else None, expect),
            _lg(env, "LangGraph Send fan-out", _langgraph_fanout_maker(env, n, None, False),
                expect),
        ],
        f"{n:,} x {ASYNC_DELAY * 1000:.0f} ms, limit {limit}": [
            Contender(FLOOR, "floor (gather + one Semaphore)", _gather_maker(n, limit), expect),
            Contender(KAYGRAPH, f"kaygraph max_concurrency={limit}",
                      _async_node_maker(env.kg, n, max_concurrency=limit), expect),
            _absent(POCKETFLOW, "PocketFlow", env.pocketflow, "no concurrency limit in 0.0.3"),
            _lg(env, f"LangGraph max_concurrency={limit}",
                _langgraph_fanout_maker(env, n, limit, False), expect),
        ],
    }
    rows: list[Row] = []
    loop = asyncio.new_event_loop()
    try:
        for case, contenders in cases.items():
            case_rows = _measure("async", case, "ms", 1e3, contenders, env, loop)
            for c, row in zip(contenders, case_rows, strict=True):
                if row.status == "ok":
                    row.extra["peak_mib"] = peak_memory(c, loop)[0] / MIB
            rows += case_rows
    finally:
        loop.close()
    ratios(rows)
    unbounded, bounded = list(cases)
    waves = -(-n // limit)
    return {
        "key": "async", "title": "3. Async fan-out (AsyncParallelBatchNode)",
        "measures": f"wall ms for {n:,} items each awaiting {ASYNC_DELAY * 1000:.0f} ms "
        f"(ideal: {ASYNC_DELAY * 1000:.0f} ms unbounded, {waves * ASYNC_DELAY * 1000:.0f} ms "
        f"with the limit); peak traced memory of one more run.",
        "rows": rows,
        "targets": [
            _ratio_target("async fan-out vs floor, unbounded", rows, unbounded, FLOOR, 1.15),
            _ratio_target("async fan-out vs floor, with the limit", rows, bounded, FLOOR, 1.15),
        ],
    }


# ---------------------------------------------------------------- 4: thread fan-out


class Napper:
    """User code of the thread workload: each item sleeps THREAD_DELAY seconds."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: int) -> int:
        time.sleep(THREAD_DELAY)
        return item

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["out"] = exec_res


def _nap(item: int) -> int:
    time.sleep(THREAD_DELAY)
    return item


def _pool_maker(items: int, workers: int) -> Callable[[], Any]:
    def make() -> Callable[[], list[int]]:
        data = list(range(items))

        def job() -> list[int]:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(_nap, data))

        return job

    return make


def _thread_node_maker(env: Env, items: int, workers: int) -> Callable[[], Any]:
    def make() -> Callable[[], list[int]]:
        node = type("Napper", (Napper, env.kg.ParallelBatchNode), {})(max_workers=workers)
        shared: dict[str, Any] = {"items": list(range(items))}

        def job() -> list[int]:
            node.run(shared)
            return shared["out"]

        return job

    return make


def thread_fanout(env: Env) -> dict[str, Any]:
    """Workload 4: efficiency of N items × 10 ms sleep on a pool of workers."""
    s = env.settings
    n, w = s.thread_items, s.thread_workers
    expect = list(range(n))
    case = f"{n} x {THREAD_DELAY * 1000:.0f} ms, {w} workers"
    contenders = [
        Contender(FLOOR, "floor (ThreadPoolExecutor.map)", _pool_maker(n, w), expect),
        Contender(KAYGRAPH, "kaygraph ParallelBatchNode", _thread_node_maker(env, n, w), expect),
        _absent(POCKETFLOW, "PocketFlow", env.pocketflow, "no thread-pool batch node in 0.0.3"),
        _lg(env, f"LangGraph Send, max_concurrency={w}",
            _langgraph_fanout_maker(env, n, w, True), expect),
    ]
    rows = _measure("thread", case, "ms", 1e3, contenders, env)
    ideal = -(-n // w) * THREAD_DELAY * 1e3
    for row in rows:
        if row.value:
            row.extra["efficiency"] = ideal / row.value
    ratios(rows)
    kg = _find(rows, case, KAYGRAPH)
    eff = kg.extra["efficiency"] if kg else None
    return {
        "key": "thread", "title": "4. Thread fan-out (ParallelBatchNode)",
        "measures": f"wall ms for {n} items each sleeping {THREAD_DELAY * 1000:.0f} ms on {w} "
        f"workers; efficiency = ideal {ideal:.0f} ms / wall.",
        "rows": rows,
        "targets": [_target("thread fan-out efficiency", eff, 0.8, ">=",
                            f"kaygraph {kg.value:.0f} ms vs ideal {ideal:.0f} ms" if kg
                            else "kaygraph has no result")],
    }


# ---------------------------------------------------------------- 5: streaming memory


ITEM_BYTES = 120


def stream_source(items: int) -> Iterator[bytes]:
    """The input: a generator of distinct byte strings, so holding them all would show."""
    return (b"%0*d" % (ITEM_BYTES, i) for i in range(items))


class Measurer:
    """User code of the streaming workload: exec returns the item's length."""

    def prep(self, shared: dict[str, Any]) -> Any:
        return shared["items"]

    def exec(self, item: bytes) -> int:
        return len(item)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["count"] = len(exec_res)


POOL = "pool"  # the materialising thread pool, a reference row of the streaming workload


def _stream_maker(kind: str, env: Env, items: int, parallel: bool = False) -> Callable[[], Any]:
    """make() for the streaming job; kind FLOOR runs one item at a time, POOL uses
    ThreadPoolExecutor.map (which submits every item before the first result)."""
    w = env.settings.stream_workers

    def make() -> Callable[[], int]:
        shared: dict[str, Any] = {"items": stream_source(items)}
        if kind in (FLOOR, POOL):
            plain = Measurer()

            def job() -> int:
                p = plain.prep(shared)
                if kind == POOL:
                    with ThreadPoolExecutor(w) as pool:
                        results = list(pool.map(plain.exec, p))
                else:
                    results = [plain.exec(i) for i in p]
                plain.post(shared, p, results)
                return shared["count"]

            return job
        mod = env.kg if kind == KAYGRAPH else env.pocketflow.module
        base = mod.ParallelBatchNode if parallel else mod.BatchNode
        node = type("Measurer", (Measurer, base), {})(**({"max_workers": w} if parallel else {}))

        def job() -> int:
            node.run(shared)
            return shared["count"]

        return job

    return make


def streaming_memory(env: Env) -> dict[str, Any]:
    """Workload 5: peak traced memory of a batch fed by a generator of N items."""
    n = env.settings.stream_items
    w = env.settings.stream_workers
    small = n // 10  # the materialising pool is slow and big: run it on a tenth, say so
    floor = Contender(FLOOR, "floor (one item at a time)", _stream_maker(FLOOR, env, n), n)
    no_batch = _absent(LANGGRAPH, "LangGraph", env.langgraph, "no batch node")
    cases = {
        f"BatchNode, {n:,} items": [
            floor,
            Contender(KAYGRAPH, "kaygraph BatchNode", _stream_maker(KAYGRAPH, env, n), n),
            _pf(env, "PocketFlow BatchNode", _stream_maker(POCKETFLOW, env, n), n),
            no_batch,
        ],
        f"ParallelBatchNode, {n:,} items, {w} workers": [
            floor,
            Contender(KAYGRAPH, "kaygraph ParallelBatchNode",
                      _stream_maker(KAYGRAPH, env, n, parallel=True), n),
            Contender(POOL, f"ThreadPoolExecutor.map, {small:,} items only",
                      _stream_maker(POOL, env, small), small,
                      note="submits every item first: grows with the item count"),
            _absent(POCKETFLOW, "PocketFlow", env.pocketflow,
                    "no thread-pool batch node in 0.0.3"),
            no_batch,
        ],
    }
    rows: list[Row] = []
    for case, contenders in cases.items():
        for c in contenders:
            row = Row("stream", case, c.role, c.label, "MiB peak", status=c.status, note=c.note)
            if c.status == "ok":
                try:
                    peak, seconds = peak_memory(c)
                except Exception as exc:  # reported in the table; run.py exits non-zero
                    row.status, row.note = "error", f"{exc.__class__.__name__}: {exc}"
                else:
                    row.value, row.samples = peak / MIB, [peak / MIB]
                    row.extra["seconds_traced"] = seconds
            rows.append(row)
    ratios(rows)
    # What holding every input item would cost, for scale: the items plus a list of them.
    held = n * sys.getsizeof(next(stream_source(1))) + sys.getsizeof([None] * n)
    par_case = list(cases)[1]
    seq, par = _find(rows, par_case, FLOOR), _find(rows, par_case, KAYGRAPH)
    bound = seq.value + WINDOW_ALLOWANCE / MIB if seq and seq.value is not None else 0.0
    return {
        "key": "stream", "title": "5. Streaming memory (generator input)",
        "measures": f"peak traced MiB while a batch consumes a generator of {n:,} byte strings "
        f"of {ITEM_BYTES} bytes (holding every item would take {held / MIB:.0f} MiB); one run "
        "each, under tracemalloc. The floor runs one item at a time: its peak is the list of "
        "results that post receives, which no batch can avoid.",
        "rows": rows,
        "info": {"held_items_mib": held / MIB},
        "targets": [_target(
            "streaming: ParallelBatchNode peak bounded by its window",
            par.value if par else None, bound, "<=",
            f"bar = the one-at-a-time floor's peak + {WINDOW_ALLOWANCE // MIB} MiB")],
    }


# ---------------------------------------------------------------- 6: scaling


def scaling(env: Env) -> dict[str, Any]:
    """Workload 6: µs per step with 10..1,000 distinct nodes and 10..100,000 shared keys."""
    s = env.settings
    n = s.scale_steps
    cases: dict[str, tuple[int, int]] = {}
    for k in s.chain_sizes:
        cases[f"chain of {k:,} nodes"] = (k, 2)
    for k in s.store_sizes:
        cases[f"store of {k:,} keys"] = (2, k)
    rows: list[Row] = []
    for case, (nodes, keys) in cases.items():
        contenders = [
            Contender(FLOOR, "floor", _ring_maker(FLOOR, env, nodes, n, keys), n, per=n),
            Contender(KAYGRAPH, "kaygraph", _ring_maker(KAYGRAPH, env, nodes, n, keys), n, per=n),
            _pf(env, "PocketFlow", _ring_maker(POCKETFLOW, env, nodes, n, keys), n, per=n),
        ]
        rows += _measure("scaling", case, "µs/step", 1e6, contenders, env, cpu_bound=True)
    ratios(rows)

    def growth(prefix: str, role: str) -> float | None:
        values = [r.value for r in rows if r.case.startswith(prefix) and r.role == role
                  and r.status == "ok"]
        return max(values) / min(values) if len(values) > 1 else None  # type: ignore[type-var]

    targets = []
    for prefix, what in (("chain", "nodes in a chain"), ("store", "keys in the shared store")):
        floor_growth = growth(prefix, FLOOR)
        targets.append(_target(
            f"scaling: per-step cost flat in {what} (max/min)", growth(prefix, KAYGRAPH), 1.3,
            "<=", f"floor's own max/min {floor_growth:.2f}" if floor_growth else ""))
    return {
        "key": "scaling", "title": "6. Scaling (chain length, shared store size)",
        "measures": f"µs per step over {n:,} steps around a ring of distinct nodes, and in the "
        "two-node loop with a shared store of that many keys; 'flat' allows 1.3x for noise.",
        "rows": rows, "targets": targets,
    }


WORKLOADS: dict[str, Callable[[Env], dict[str, Any]]] = {
    "step": step_overhead,
    "batch": batch_overhead,
    "async": async_fanout,
    "thread": thread_fanout,
    "stream": streaming_memory,
    "scaling": scaling,
}
