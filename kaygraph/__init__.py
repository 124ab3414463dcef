"""kaygraph: nodes, actions and graphs for LLM, agent and data workflows, in one file.

A node runs in three phases: ``prep(shared)`` reads the shared store (a plain ``dict``),
``exec(prep_res)`` does the work without touching the store, and
``post(shared, prep_res, exec_res)`` writes results back and returns an action (a ``str``, or
``None`` for ``"default"``). Wire nodes with ``a >> b`` and ``a - "action" >> b`` into a
:class:`Graph` and call ``graph.run(shared)``.

The public names and their behaviour follow the core of KayGraph 0.3.1, and the ``Flow``
aliases let PocketFlow code run by changing its import. This file uses the standard library
only (Python 3.10 to 3.13), so it can be copied into another project as it is. MIT licence.

Durable runs (checkpoints, resume, interrupts), the node result cache and run events are
seams here: a graph run with ``run_id=`` and ``store=`` (a :class:`Store`, e.g.
``kaygraph.stores.SQLiteStore``), a node with a :class:`CachePolicy`, ``listeners=``; the
backends live in the other modules of the package, which this file never imports.

Sections, in order: helpers; Config; store and cache protocols; runs: checkpoints and events;
the node result cache; BaseNode; Node and its retry loop; batch and parallel nodes; async
nodes; MetricsNode and ValidatedNode; Step and the graphs; aliases.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import pickle
import random
import sys
import threading
import time
import types
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from itertools import chain, islice
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

__version__ = "0.1.0"
__all__ = [
    "BaseNode", "Node", "BatchNode", "ParallelBatchNode",
    "AsyncNode", "AsyncBatchNode", "AsyncParallelBatchNode",
    "MetricsNode", "ValidatedNode", "Config", "Step", "Event", "Store", "Cache", "Interrupt",
    "CachePolicy",
    "Graph", "BatchGraph", "AsyncGraph", "AsyncBatchGraph", "AsyncParallelBatchGraph",
    "Flow", "AsyncFlow", "BatchFlow", "AsyncBatchFlow", "AsyncParallelBatchFlow",
]

Shared = dict[str, Any]
Action = str | None
PrepRes = TypeVar("PrepRes")  # what prep returns and exec takes
ExecRes = TypeVar("ExecRes")  # what exec returns and post takes
Item = TypeVar("Item")  # one item of a batch node
_N = TypeVar("_N", bound="BaseNode[Any, Any]")  # what >> returns: its right side
Result = TypeVar("Result")  # what exec returns for one item

# The library never configures logging; users opt in with logging.basicConfig or handlers.
logging.getLogger("kaygraph").addHandler(logging.NullHandler())


# --------------------------------------------------------------------------- helpers

def _fresh(node: Any) -> Any:
    """Return a shallow copy of ``node``: a new instance sharing the attribute values.

    Cheaper than ``copy.copy`` (no ``__reduce_ex__`` round trip); it runs once per graph
    step and once per parallel item, so per-run state set on the copy stays on the copy.
    """
    twin = object.__new__(node.__class__)
    twin.__dict__ = node.__dict__.copy()  # cheaper than __dict__.update on 3.11
    return twin


def _drain(steps: Generator[Any, None, Any]) -> Any:
    """Run a generator to its end and return its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _own_copy(node: Any) -> Any:
    """A shallow copy for ``node.run``: slower to make than :func:`_fresh` (about 1 µs), but
    its attributes stay as fast to read as the original's (3.11+ keeps them inline), which a
    batch of many items run by one ``node.run`` call pays back."""
    twin = object.__new__(node.__class__)
    for name, value in node.__dict__.items():
        object.__setattr__(twin, name, value)
    return twin


def _note(exc: BaseException, text: str) -> None:
    """Add ``text`` as a note to ``exc`` (3.11+), once: the innermost kaygraph note wins."""
    if hasattr(exc, "add_note") and not any(
        str(n).startswith("kaygraph:") for n in getattr(exc, "__notes__", ())
    ):
        exc.add_note(text)


_INTERNAL = (__file__, os.path.dirname(asyncio.__file__) + os.sep)  # frames a warning skips


def _warn(text: str, category: type[Warning] = UserWarning) -> None:
    """Warn at the first caller outside this file and asyncio: the user's ``run`` call."""
    frame, level = sys._getframe(), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    warnings.warn(text, category, stacklevel=level)


def _check(name: str, value: Any, low: float, kind: type = int, optional: bool = False,
           above: bool = False) -> None:
    """Raise TypeError/ValueError naming ``name`` and ``value`` unless ``value`` is a
    ``kind`` (int, or float: any finite real number) >= ``low`` (> ``low`` when ``above``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(f"{name} must be {'an int' if kind is int else 'a number'}, "
                        f"got {value!r} ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or (above and value == low):
        raise ValueError(f"{name} must be {'>' if above else '>='} {low}, got {value!r}")


def _check_retry_on(retry_on: Any) -> None:
    """TypeError unless ``retry_on`` is an exception class, a tuple of them or a callable."""
    if isinstance(retry_on, (type, tuple)):
        classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, BaseException))]
        if bad or not classes:
            raise TypeError(f"retry_on must be an exception class, a tuple of them or a "
                            f"predicate, got {retry_on!r}" + (f": {bad[0]!r} is not an "
                                                              f"exception class" if bad else ""))
    elif not callable(retry_on):
        raise TypeError(f"retry_on must be an exception class, a tuple of them or a "
                        f"predicate, got {retry_on!r}")


def _items(node: BaseNode[Any, Any], items: Any) -> Iterable[Any]:
    """The items of a batch ``prep`` result (None: none); TypeError for a str, bytes or dict,
    which would run one item per character or key."""
    if items is None:
        return ()
    if isinstance(items, (str, bytes, bytearray, dict)):
        kind, is_dict = type(items).__name__, isinstance(items, dict)
        raise TypeError(f"batch node {node.node_id!r}: prep returned a {kind}, which would run "
                        f"one item per {'key' if is_dict else 'character'}; return a list: "
                        + ("list(d.items()) for its pairs, or [d] for one item" if is_dict
                           else "[value] for one item"))
    return items  # type: ignore[no-any-return]


class _InOrder:
    """Results put in any order, read in input order: only the early ones wait in a dict."""

    __slots__ = ("done", "early")

    def __init__(self) -> None:
        self.done: list[Any] = []
        self.early: dict[int, Any] = {}  # finished before an earlier item

    def put(self, index: int, result: Any) -> None:
        done, early = self.done, self.early
        if index != len(done):
            early[index] = result
            return
        done.append(result)
        while len(done) in early:
            done.append(early.pop(len(done)))


def _run_item(node: Node[Any, Any], item: Any) -> Any:
    """Run one item's retry loop on its own copy of ``node``: its own ``cur_retry``.

    Module-level, so that process executors pickle it by reference.
    """
    return _fresh(node)._retry(item)


def _run_remote(node: Node[Any, Any], pair: tuple[int, Any]) -> tuple[Any, bool]:
    """``_run_item`` for an item of a planned batch on another process or machine: the
    result and whether the fallback gave it (the caller's cache must not keep that)."""
    twin = _fresh(node)
    return twin._retry(pair[1]), twin._fell_back


def _run_pair(node: Node[Any, Any], pair: tuple[int, Any]) -> Any:
    """``_run_item`` for an item of a planned batch in this process (see :class:`_Items`)."""
    return _item(_fresh(node), *pair)


def _map_threads(node: Node[Any, Any], items: Iterable[Any], executor: cf.Executor,
                 window: int, fn: Callable[[Any, Any], Any] = _run_item,
                 results: Any = None, in_context: bool = False) -> list[Any]:
    """Run ``fn(node, item)`` for each item on ``executor``; results in input order.

    At most ``window`` items are submitted and not yet finished at any time, so a huge
    generator is never materialised. The first failure cancels the futures not yet started,
    waits for the running ones and re-raises: nothing is left running. ``results`` gets
    each result with its position (default: an :class:`_InOrder`); ``in_context`` runs
    each item in a copy of the caller's ``contextvars`` (tracing spans keep their parent).
    """
    results = _InOrder() if results is None else results
    pending: dict[cf.Future[Any], int] = {}

    def collect(when: str) -> None:
        done, _ = cf.wait(pending, return_when=when)
        for fut in done:
            results.put(pending.pop(fut), fut.result())  # re-raises the item's error

    try:
        for i, item in enumerate(items):
            if in_context:
                fut = executor.submit(contextvars.copy_context().run, fn, node, item)
            else:
                fut = executor.submit(fn, node, item)
            pending[fut] = i
            if len(pending) >= window:
                collect(cf.FIRST_COMPLETED)
        while pending:
            collect(cf.FIRST_EXCEPTION)
    except BaseException:
        # Wait only for what could not be cancelled: a cancelled future may never be
        # marked done by an executor that is busy with other work.
        cf.wait([fut for fut in pending if not fut.cancel()])
        raise
    return results.done  # type: ignore[no-any-return]


async def _map_tasks(fn: Callable[[Any], Awaitable[Any]], items: Iterable[Any],
                     limit: int | None, results: Any = None) -> list[Any]:
    """Await ``fn(item)`` for each item concurrently, at most ``limit`` at a time (None: all).

    Results come back in input order (``results`` as in :func:`_map_threads`). ``limit``
    workers pull from one iterator, so a bounded run never materialises its input. The
    first failure cancels every unfinished item, stops the pulling at once (also when an
    item absorbs its cancellation) and re-raises once they have all stopped: no task is
    left running. ``limit`` is checked here, where it is used.
    """
    _check("max_concurrency", limit, 1, optional=True)
    stopped = False
    results = _InOrder() if results is None else results

    def pull() -> Iterator[tuple[int, Any]]:
        for pair in enumerate(items):
            if stopped:
                return
            yield pair

    source = pull()

    async def one(i: int, item: Any) -> None:
        results.put(i, await fn(item))

    async def worker() -> None:
        for i, item in source:
            results.put(i, await fn(item))

    tasks: list[asyncio.Future[Any]] = []
    try:  # the source may raise while tasks are being made: they are cleaned up too
        if limit is None:  # one task per item
            tasks.extend(asyncio.ensure_future(one(i, item)) for i, item in source)
        else:  # `limit` workers share the source, so a huge input is never materialised
            tasks.extend(asyncio.ensure_future(worker()) for _ in range(limit))
        await asyncio.gather(*tasks)
    except BaseException:
        stopped = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return results.done  # type: ignore[no-any-return]


class _Items:
    """The items of one batch step that is observed, durable or cached: which items run,
    and where their results go. With ``checkpoint_items`` in a durable run, the results
    recorded by an earlier run of the step are taken instead of run again, and new ones
    are recorded in a few writes a second. For an executor in other processes
    (``remote``) the cache is consulted here, in the calling process, and the item events
    are reported here. ``items`` yields ``(index, item)`` for the items to run."""

    FLUSH = 0.2  # seconds between two writes of item results

    def __init__(self, node: Node[Any, Any], items: Iterable[Any], remote: bool) -> None:
        frame = node._frame
        self.node, self.frame, self.remote = node, frame, remote
        self.record = bool(frame is not None and frame.run.store is not None
                           and not frame.detached and node.checkpoint_items)
        self.key = f"{node._step_key}#items"
        self.known: dict[int, Any] = frame.run.recall_all(self.key) if self.record else {}  # type: ignore[union-attr]
        self.new: dict[int, Any] = {}
        self.todo: list[int] = []  # the index of each item run, in the order pulled
        self.buffer: dict[int, Any] = {}
        self.keys: dict[int, str] = {}  # remote: the cache key of each item run
        self.total, self.flushed = 0, time.monotonic()
        self.items = self._pull(items)
        self.done: list[Any] = []  # what a map returns: unused, result() merges

    def _pull(self, items: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        node = self.node
        policy = node.cache_policy if self.remote else None
        for i, item in enumerate(items):
            self.total = i + 1
            if i in self.known:
                continue
            if policy is not None:
                key = policy.key_for(node, item)
                found = policy.lookup(node, key)
                if found:
                    self.known[i] = found[0]
                    continue
                self.keys[i] = key
            self.todo.append(i)
            yield i, item

    def put(self, j: int, result: Any) -> None:
        i = self.todo[j]
        if self.remote:
            result, fell_back = result
            key = self.keys.pop(i, None)
            if key is not None and not fell_back:
                self.node.cache_policy.store(self.node, key, result)  # type: ignore[union-attr]
            if self.frame is not None:
                self.frame.run.emit("item_end", self.frame, self.node.node_id, item_index=i)
        self.new[i] = result
        if self.record:
            self.buffer[i] = result
            if time.monotonic() - self.flushed >= self.FLUSH:
                self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.frame.run.items(self.key, self.buffer)  # type: ignore[union-attr]
            self.buffer = {}
        self.flushed = time.monotonic()

    def result(self) -> list[Any]:
        self.flush()
        known, new = self.known, self.new
        return [known[i] if i in known else new[i] for i in range(self.total)]


class _ItemEvents:
    """``with _ItemEvents(node, index):`` reports item_start and item_end (with its error)
    around one item of an observed batch, in the context that runs it, so its events and
    spans nest under the step's: one mechanism for the sync and async item runners."""

    __slots__ = ("node", "index", "start")

    def __init__(self, node: Node[Any, Any], index: int) -> None:
        self.node, self.index = node, index

    def __enter__(self) -> None:
        node, frame = self.node, self.node._frame
        if frame is not None:
            node._index, self.start = self.index, time.perf_counter()
            frame.run.emit("item_start", frame, node.node_id, item_index=self.index)

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        frame = self.node._frame
        if frame is not None:
            frame.run.emit("item_end", frame, self.node.node_id, item_index=self.index,
                           error=exc, seconds=time.perf_counter() - self.start)


def _item(node: Node[Any, Any], index: int, item: Any) -> Any:
    """Run one item of a planned batch on ``node`` (its copy, for parallel items)."""
    policy = node.cache_policy
    with _ItemEvents(node, index):
        return node._retry(item) if policy is None else policy.call(node, item)


async def _item_async(node: AsyncNode[Any, Any], index: int, item: Any) -> Any:
    """The async twin of :func:`_item`."""
    policy = node.cache_policy
    with _ItemEvents(node, index):
        return await (node._retry_async(item) if policy is None
                      else policy.call_async(node, item))


# --------------------------------------------------------------------------- Config

class Config:
    """A small dict of settings (model names, limits, paths) attached to a node or graph.

    ``Config(data=None, **kwargs)`` copies ``data`` (a mapping) and ``kwargs``. A graph
    hands its config to every node it runs whose own config is empty (falsy), as
    KayGraph does. Raises TypeError when ``data`` is not a mapping.
    """

    def __init__(self, data: dict[str, Any] | Config | None = None, **kwargs: Any) -> None:
        if isinstance(data, Config):
            data = data.to_dict()
        if data is not None and not isinstance(data, dict):
            raise TypeError(f"Config data must be a dict, got {data!r} ({type(data).__name__})")
        self._data: dict[str, Any] = {**(data or {}), **kwargs}

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value for ``key``, or ``default`` when it is missing."""
        return self._data.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Set ``key`` to ``value`` in place."""
        self._data[key] = value

    def update(self, other: dict[str, Any] | Config | None = None, **kwargs: Any) -> None:
        """Update in place from a dict or Config and/or keyword arguments."""
        self._data.update(Config(other, **kwargs)._data)

    def merge(self, other: dict[str, Any] | Config) -> Config:
        """Return a new Config: this one's values overridden by ``other``'s."""
        return Config({**self._data, **Config(other)._data})

    def to_dict(self) -> dict[str, Any]:
        """Return a shallow copy of the settings as a plain dict."""
        return dict(self._data)

    def __bool__(self) -> bool:
        return bool(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]  # mutable, like dict

    def __repr__(self) -> str:
        return f"Config({self._data!r})"


# ------------------------------------------------------------------ store and cache protocols

@runtime_checkable
class Store(Protocol):
    """Where a durable run keeps its checkpoints: what ``run(..., run_id=, store=)`` needs.

    ``kaygraph.stores`` has ``MemoryStore`` and ``SQLiteStore``; ``kaygraph.postgres`` has
    ``PostgresStore``. A checkpoint is a dict with the keys ``run_id`` (str), ``step`` (int,
    the checkpoint's number in its run, from 1), ``status`` (``"running"``,
    ``"interrupted"``, ``"done"`` or ``"failed"``), ``node_id``, ``position``, ``shared``,
    ``params``, ``action``, ``error``, ``interrupt``, ``fingerprint`` and ``time`` (seconds
    since the epoch).
    """

    def save(self, checkpoint: dict[str, Any], expected_step: int | None) -> None:
        """Add ``checkpoint`` as the run's latest, if the latest is still ``expected_step``
        (None: the run has none); RuntimeError naming the run otherwise (another writer
        won). TypeError naming the key when a value cannot be serialised; nothing written."""

    def load(self, run_id: str) -> dict[str, Any] | None:
        """Return the latest checkpoint of ``run_id`` (fresh objects), or None if unknown."""

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """Return ``{"step", "node_id", "status", "time"}`` per checkpoint, oldest first,
        without decoding the shared stores; KeyError naming an unknown run."""

    def save_items(self, run_id: str, position: str, items: dict[int, Any]) -> None:
        """Record results by index under ``position`` (a str the core makes); upsert."""

    def load_items(self, run_id: str, position: str) -> dict[int, Any]:
        """Return every result recorded under ``position`` ({} when none)."""

    def fork(self, run_id: str, step: int, new_run_id: str) -> None:
        """Copy the checkpoints of ``run_id`` up to ``step``, and its item results, under
        ``new_run_id``. KeyError for an unknown run or step; ValueError if ``new_run_id``
        exists."""

    def delete(self, run_id: str) -> None:
        """Remove everything kept for ``run_id``; nothing happens for an unknown run."""

    def list_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Return ``{"run_id", "step", "status", "node_id", "time"}`` per run (its latest
        checkpoint), oldest update first; only runs with ``status`` when it is given."""


@runtime_checkable
class Cache(Protocol):
    """Where a ``CachePolicy`` keeps node results: ``kaygraph.stores`` has
    ``MemoryCache`` and ``SQLiteCache``, ``kaygraph.redis`` ``RedisCache``,
    ``kaygraph.postgres`` ``PostgresCache``. Keys are str; values are stored as JSON (never
    pickled). ``hits`` and ``misses`` count the ``get`` calls of this object."""

    hits: int
    misses: int

    def get(self, key: str) -> Any:
        """Return a fresh copy of the value stored for ``key``; KeyError on a miss."""

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` for ``key``, expiring after ``ttl`` seconds (None: never)."""

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is missing."""

    def clear(self) -> None:
        """Remove every entry of this cache."""


class Interrupt(BaseException):
    """Raised by ``BaseNode.interrupt`` to pause a durable run for a person.

    A ``BaseException`` (like ``asyncio.CancelledError``), so retries, ``retry_on``,
    ``exec_fallback``, ``on_error`` and ``except Exception`` never swallow it. Attributes:
    ``run_id``, ``node_id`` and ``payload`` (what the node asked, JSON-serialisable).
    """

    def __init__(self, run_id: str, node_id: str, payload: Any) -> None:
        super().__init__(f"run {run_id!r} interrupted at node {node_id!r}: {payload!r}")
        self.run_id, self.node_id, self.payload = run_id, node_id, payload
        self.place = "/"  # who in the step asked (see _Frame.place)


# ----------------------------------------------------------------- runs: checkpoints and events

class Event(NamedTuple):
    """What a listener gets, from every kind of run (sync, async, nested, batch, durable).

    ``kind``: ``"run_start"``, ``"run_end"``, ``"step_start"``, ``"step_end"``,
    ``"item_start"``, ``"item_end"``, ``"attempt_failed"``, ``"interrupt"`` or ``"error"``.
    ``run_id`` (None for a run without a store); ``path``: the node ids from the top graph
    down to ``node_id`` (a tuple of str); ``action`` (step_end, run_end); ``seconds``
    (wall time of the step, item or run); ``item_index`` (the item's index in its batch);
    ``attempt`` (1-based, attempt_failed) and ``delay`` (seconds before the next attempt;
    None: no more attempts); ``error`` (the exception, when one ended the step, item,
    attempt or run); ``payload`` (interrupt).
    """

    kind: str
    run_id: str | None
    path: tuple[str, ...]
    node_id: str
    action: Action = None
    seconds: float | None = None
    item_index: int | None = None
    attempt: int | None = None
    delay: float | None = None
    error: BaseException | None = None
    payload: Any = None


_log = logging.getLogger("kaygraph")


class _Sentinel:
    """A marker default with a stable repr (for ``help()`` and the API reference)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_NO_VALUE: Any = _Sentinel("<no value>")  # resume(value=...) not given
_FRESH: Any = _Sentinel("<fresh run>")  # a run, not a resume


def _graphs(graph: Graph) -> Iterator[tuple[Graph, dict[str, BaseNode[Any, Any]]]]:
    """Each graph reachable from ``graph`` (itself first) with its nodes by id; ValueError
    naming the ids that two nodes of one graph share (a durable run finds nodes by id)."""
    nodes: dict[str, BaseNode[Any, Any]] = {}
    queue = deque([graph.start_node] if graph.start_node is not None else [])
    while queue:
        node = queue.popleft()
        if nodes.get(node.node_id) is node:
            continue
        if node.node_id in nodes:
            raise ValueError(f"graph {graph.node_id!r} has two nodes with the id "
                             f"{node.node_id!r} ({nodes[node.node_id]!r} and {node!r}); a "
                             f"durable run needs unique ids: pass node_id='...' to tell them "
                             f"apart")
        nodes[node.node_id] = node
        queue.extend(s for s in node.successors.values() if s is not None)
    yield graph, nodes
    for node in nodes.values():
        if isinstance(node, Graph):
            yield from _graphs(node)


def _fingerprint(graph: Graph) -> str:
    """The node ids and edges of every graph in ``graph``, one sorted line each."""
    lines = set()
    for g, nodes in _graphs(graph):
        for node_id, node in nodes.items():
            lines.add(f"{g.node_id}: node {node_id}")
            lines.update(f"{g.node_id}: {node_id} -{a}-> {s and s.node_id}"
                         for a, s in node.successors.items())
    return "\n".join(sorted(lines))


class _Frame:
    """One level of a run: the walk of one graph (``graph`` id, batch ``index``), with the
    steps it has ``done`` and the id of the node it runs ``next``. ``parent`` is the frame
    that runs this graph as a step (the root frame for the top graph). A ``detached`` frame
    is a run of a concurrent batch graph: it reports events but makes no checkpoints."""

    __slots__ = ("run", "parent", "graph", "index", "done", "next", "detached", "at", "t0",
                 "busy")

    def __init__(self, run: _Run, parent: _Frame | None, graph: str, index: int | None,
                 detached: bool = False) -> None:
        self.run, self.parent, self.graph, self.index = run, parent, graph, index
        self.done, self.detached = 0, detached
        self.next: str | None = None
        self.at: tuple[int, str | None] | None = None  # (done, next) to resume at
        self.t0, self.busy = 0.0, False  # busy: a step started and has not ended

    def chain(self) -> list[_Frame]:
        frames, f = [], self
        while f.parent is not None:
            frames.append(f)
            f = f.parent
        return frames[::-1]

    def position(self) -> list[list[Any]]:
        return [[f.graph, f.index, f.done, f.next] for f in self.chain()]

    def path(self, node_id: str) -> tuple[str, ...]:
        return (*(f.graph for f in self.chain()), node_id)

    def place(self, item: int | None) -> str:
        """Names who asks an interrupt: the run of a concurrent batch graph (the index of
        the outermost detached frame) and the batch item, if any."""
        run_index, f = "", self
        while f.detached:
            run_index, f = str(f.index), f.parent  # type: ignore[assignment]
        return f"{run_index}/{'' if item is None else item}"

    def key(self) -> str:
        """Names the step running now, the same on a re-run: journal and items go there."""
        return "/".join(f"{f.graph}[{f.index}]{f.done}" for f in self.chain()) + f"/{self.next}"

    def open(self, graph: Graph, index: int | None, detached: bool) -> _Frame:
        """The frame of ``graph``'s walk run by a step of this frame; it takes the saved
        position when the run resumes there."""
        run = self.run
        frame = _Frame(run, self, graph.node_id, index, detached or self.detached)
        if run.resume and not frame.detached and run.resume[0][:2] == [graph.node_id, index]:
            _, _, done, nxt = run.resume.pop(0)
            frame.at = (done, nxt)
            if not run.resume:
                run.resumed = True
        return frame

    def before(self, node: BaseNode[Any, Any]) -> None:
        run = self.run
        node._frame, self.next, self.t0 = self, node.node_id, time.perf_counter()
        self.busy = True
        if not self.detached:
            run.last, run.asked = self, {}
            if run.store is not None:
                node._step_key, node._key = self.key(), f"{run.run_id}:{run.completed + 1}"
                if run.resumed:  # the first step after a resume may find its own results
                    run.resumed, run.resumed_key = False, node._step_key
                if not isinstance(node, Graph) and not getattr(node, "checkpoint_items", 0):
                    _journal(node)
        run.emit("step_start", self, node.node_id)

    def after(self, node: BaseNode[Any, Any], action: Action, nxt: BaseNode[Any, Any] | None,
              shared: Shared) -> None:
        run = self.run
        self.done += 1
        self.next = None if nxt is None else nxt.node_id
        if not self.detached:
            run.answers, run.last_node = {}, node.node_id  # the answers were for this step
            run.completed, run.held = run.completed + 1, None
            if run.resumed_key and node.__dict__.get("_step_key") == run.resumed_key:
                run.resumed_key = ""  # the resumed step is done: no more look-ups
            run.checkpoint("running", shared, node.node_id, action, self.position())
        self.busy = False
        run.emit("step_end", self, node.node_id, action=action,
                 seconds=time.perf_counter() - self.t0)

    def failed(self, node: BaseNode[Any, Any], exc: BaseException) -> None:
        """The step running now ended with ``exc`` (an error, an interrupt, a cancellation):
        its step_end carries it, in the thread or task that ran the step."""
        if self.busy:
            self.busy = False
            self.run.emit("step_end", self, node.node_id, error=exc,
                          seconds=time.perf_counter() - self.t0)

    def batch(self, graph: Graph, items: Iterable[Any], concurrent: bool = False
              ) -> Iterator[tuple[int, Any]]:
        """The (index, params) a batch graph run by this frame walks. A durable run keeps
        the params list, so a resume walks the same one from its saved index; the runs
        of a concurrent batch graph that completed are not walked again."""
        run = self.run
        if run.store is None or self.detached:
            return enumerate(items)
        key = f"{graph._step_key}#batch"
        inside = bool(run.resume) and run.resume[0][0] == graph.node_id  # resumes in a run
        saved = run.load(key) if inside else run.recall_all(key, own=False)
        if 0 in saved:
            params = saved[0]
        else:
            params = list(items)
            run.items(key, {0: params})
        done = run.recall_all(f"{graph._step_key}#runs", own=False) if concurrent else {}
        start = (run.resume[0][1] or 0) if inside else 0
        return ((i, p) for i, p in islice(enumerate(params), start, None) if i not in done)

    def ran(self, graph: Graph, index: int, shared: Shared) -> None:
        """A run of a concurrent batch graph completed: checkpoint the shared store, then
        mark the run done (in that order: a crash between re-runs it, never loses it)."""
        run = self.run
        if run.store is not None and not self.detached:
            run.completed += 1
            run.checkpoint("running", shared, graph.node_id, None, self.position())
            run.items(f"{graph._step_key}#runs", {index: True})


JOURNAL_AFTER = 0.001  # seconds: an exec at least this long is journaled before post


def _journal(node: Any) -> None:
    """Record ``exec``'s result as soon as it returns, before ``post``: a re-run of this
    step (an error or a crash in ``post``, an interrupt) takes it instead of running
    ``exec`` again. An ``exec`` that ran for less than ``JOURNAL_AFTER`` seconds costs
    less to run again than the write would: its result is written only if the step does
    not complete (an error, an interrupt, a stop), so only a hard crash inside ``post``
    runs it again. Set on the step's copy only, so a plain run pays nothing for it."""
    run, key = node._frame.run, f"{node._step_key}#exec"
    if node._is_async:
        inner_async = node._exec_async

        async def exec_async(prep_res: Any) -> Any:
            found, asked, start = run.recall(key), {**run.asked}, time.perf_counter()
            return found[0] if found else run.journal(
                key, await inner_async(prep_res), asked, time.perf_counter() - start)
        node._exec_async = exec_async
    else:
        inner = node._exec

        def exec_(prep_res: Any) -> Any:
            found, asked, start = run.recall(key), {**run.asked}, time.perf_counter()
            return found[0] if found else run.journal(
                key, inner(prep_res), asked, time.perf_counter() - start)
        node._exec = exec_


class _Run:
    """What every level of one durable and/or observed run shares: the store and its
    compare-and-set step, the listeners, the position that the run is at, and the
    answers to an interrupt. A plain run has none (``node._frame`` stays None)."""

    def __init__(self, graph: Graph, run_id: str | None, store: Store | None,
                 durability: str, listeners: Iterable[Callable[[Event], Any]]) -> None:
        if (run_id is None) != (store is None):
            raise TypeError(f"a durable run needs both run_id and store, got run_id={run_id!r} "
                            f"and store={store!r}")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise TypeError(f"run_id must be a non-empty str, got {run_id!r}")
        if store is not None and not isinstance(store, Store):
            raise TypeError(f"store must be a Store (e.g. kaygraph.stores.SQLiteStore), got "
                            f"{store!r} ({type(store).__name__})")
        if durability not in ("sync", "exit"):
            raise ValueError(f"durability must be 'sync' or 'exit', got {durability!r}")
        self.listeners = (*graph.listeners, *listeners)
        for listener in self.listeners:
            if not callable(listener):
                raise TypeError(f"a listener must be callable with an Event, got {listener!r}")
        self.run_id, self.store, self.sync = run_id, store, durability == "sync"
        self.fingerprint = "" if store is None else _fingerprint(graph)
        self.step = 0  # the number of the last checkpoint made (with "exit", maybe unwritten)
        self.saved: int | None = None  # the last checkpoint in the store: compare-and-set
        self.root = _Frame(self, None, "", None)
        self.last = self.root  # the frame whose step runs now: where a failure is recorded
        self.resume: list[list[Any]] = []  # the saved position still to reach
        self.resumed, self.resumed_key = False, ""
        # Interrupt answers for the step being resumed, by the place that asks (the step, a
        # batch item, a run of a concurrent batch graph), matched in order; how many used.
        self.answers: dict[str, list[Any]] = {}
        self.asked: dict[str, int] = {}
        self.pending: dict[str, dict[int, Any]] = {}  # "exit": item writes kept for the end
        self.held: tuple[str, Any, dict[str, int]] | None = None  # a journal not yet written
        self.params: dict[str, Any] = {}
        self.last_node: str | None = None  # the node of the last completed step
        self.completed = 0  # steps completed in the run: what idempotency keys count
        self.done_action: Action = None  # what a resumed run that was done ended with
        self.quiet: set[int] = set()  # listeners that raised once (logged once)
        self.top = graph.node_id
        self.t0 = time.perf_counter()

    def emit(self, kind: str, frame: _Frame, node_id: str, **fields: Any) -> None:
        """Hand an Event to every listener; a listener's error is logged once (per listener)
        and the run goes on, unless the listener has ``strict = True``."""
        if not self.listeners:
            return
        event = Event(kind, self.run_id, frame.path(node_id), node_id, **fields)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                if getattr(listener, "strict", False):
                    raise
                if id(listener) not in self.quiet:
                    self.quiet.add(id(listener))
                    _log.exception("listener %r raised on %s; the run goes on (further errors "
                                   "of this listener are not logged)", listener, kind)

    # -- the store
    def checkpoint(self, status: str, shared: Shared, node_id: str | None, action: Action,
                   position: list[list[Any]], final: bool = False, **extra: Any) -> None:
        self.step += 1  # final: the run stops here, so "exit" writes it too
        if self.store is None or (status == "running" and not self.sync and not final):
            return
        for key, items in self.pending.items():  # "exit": the item writes kept until now
            self.store.save_items(self.run_id, key, items)  # type: ignore[arg-type]
        self.pending = {}
        self.store.save({
            "run_id": self.run_id, "step": self.step, "status": status, "node_id": node_id,
            "position": position, "shared": shared, "params": self.params, "action": action,
            "error": extra.get("error"), "interrupt": extra.get("interrupt"),
            "fingerprint": self.fingerprint, "time": time.time()}, self.saved)
        self.saved = self.step

    def items(self, key: str, results: dict[int, Any]) -> None:
        """Record results under ``key``, each tagged with the number of the step that makes
        them (completed steps + 1), so that a resume knows whose they are (see load)."""
        tagged = {i: [self.completed + 1, result] for i, result in results.items()}
        if self.sync:
            self.store.save_items(self.run_id, key, tagged)  # type: ignore[union-attr,arg-type]
        else:
            self.pending.setdefault(key, {}).update(tagged)

    def load(self, key: str, own: bool = False) -> dict[int, Any]:
        """The results recorded under ``key`` by the steps up to the one being resumed (with
        ``own``: by that step itself). Others are stale: made after a fork's step, or
        before its checkpoint was edited."""
        found = self.store.load_items(self.run_id, key)  # type: ignore[union-attr,arg-type]
        mine = self.completed + 1
        return {i: result for i, (step, result) in found.items()
                if (step == mine if own else step <= mine)}

    def recall_all(self, key: str, own: bool = True) -> dict[int, Any]:
        """What an earlier run of the step being resumed recorded under ``key`` ({} when
        none); only that step looks, so a run without a crash never reads."""
        if not self.resumed_key or not key.startswith(self.resumed_key):
            return {}
        return self.load(key, own)

    def recall(self, key: str) -> list[Any]:
        """``[result]`` journaled under ``key`` by an earlier run of this step, or ``[]``."""
        found = self.recall_all(key)
        return [found[0]] if 0 in found else []

    def journal(self, key: str, result: Any, asked: dict[str, int], seconds: float,
                now: bool = False) -> Any:
        """Journal exec's ``result`` (now, or held until the step ends without completing:
        see :func:`_journal`); the interrupt answers exec used (beyond ``asked``, the counts
        before it) are then spent: a re-run takes the result and asks exec no more."""
        if not now and self.sync and seconds < JOURNAL_AFTER:
            self.held = (key, result, asked)
            return result
        try:
            self.items(key, {0: result})
        except TypeError:  # a result JSON cannot hold: not journaled, post still gets it
            _log.debug("exec result under %r not journaled: not serialisable", key)
        else:
            for place, used in self.asked.items():
                del self.answers.get(place, [])[asked.get(place, 0):used]
            self.asked = asked
        return result

    # -- start and end
    def begin(self, graph: Graph, shared: Shared, value: Any = _FRESH) -> str | None:
        """Set up ``graph`` (the run's copy of the top graph); for a resume (``value`` not
        ``_FRESH``), load the last checkpoint into ``shared`` and return its status."""
        graph._frame, graph._step_key, self.top = self.root, "", graph.node_id
        status: str | None = None
        resume = value is not _FRESH
        if self.store is not None:
            cp = self.store.load(self.run_id)  # type: ignore[arg-type]
            if not resume and cp is not None:
                raise ValueError(f"run {self.run_id!r} already has checkpoints (status "
                                 f"{cp['status']!r}): resume it, or store.delete it first")
            if resume:
                status = self._restore(cp, shared, value)
                graph.params = self.params
            self.params = graph.params
        elif resume:
            raise TypeError("resume needs run_id and store")
        self.emit("run_start", self.root, graph.node_id)
        if status == "done":  # runs nothing: the run ends at once, with the saved action
            self.emit("run_end", self.root, graph.node_id, action=self.done_action,
                      seconds=time.perf_counter() - self.t0)
        return status

    def _restore(self, cp: dict[str, Any] | None, shared: Shared, value: Any) -> str:
        if cp is None:
            raise KeyError(f"no run {self.run_id!r} in {self.store!r}")
        status = cp["status"]
        if cp["fingerprint"] != self.fingerprint:
            saved, now = set(cp["fingerprint"].split("\n")), set(self.fingerprint.split("\n"))
            first = min(saved ^ now)
            raise ValueError(f"run {self.run_id!r} was checkpointed with a different graph: "
                             f"{first!r} is only in the {'saved' if first in saved else 'new'} "
                             f"graph")
        if status == "interrupted":
            if value is _NO_VALUE:
                raise ValueError(f"run {self.run_id!r} is interrupted at node "
                                 f"{cp['node_id']!r}: resume it with value=<the answer>")
            asked = cp["interrupt"]
            self.answers = {place: list(used) for place, used in asked["answers"]}
            self.answers.setdefault(asked["place"], []).append(value)
        elif value is not _NO_VALUE:
            raise ValueError(f"run {self.run_id!r} is {status}, not interrupted: there is no "
                             f"question to answer with value={value!r}")
        shared.clear()
        shared.update(cp["shared"])
        self.step = self.saved = cp["step"]
        # Every checkpoint but the failed and interrupted ones marks a completed step.
        self.completed = cp["step"] - sum(h["status"] != "running" for h in
                                          self.store.history(self.run_id))  # type: ignore[union-attr,arg-type]
        self.resume, self.resumed = cp["position"], not cp["position"]
        self.last_node = cp["node_id"]
        if not cp["position"]:  # resumed at the top: its batch list and completed runs
            self.resumed_key = "#"
        self.params, self.done_action = cp["params"], cp["action"]
        return str(status)

    def end(self, shared: Shared, action: Action) -> None:
        self.checkpoint("done", shared, self.last_node, action, [])
        self.emit("run_end", self.root, self.top, action=action,
                  seconds=time.perf_counter() - self.t0)

    def fail(self, shared: Shared, exc: BaseException) -> None:
        """Record why the run stopped, at the step that was running: ``interrupted`` or
        ``failed`` (``running`` for an early exit under ``"exit"``)."""
        last = self.last
        node_id, position = last.next, last.position()
        try:
            if self.held is not None:  # the step did not complete: keep exec's result
                (key, result, asked), self.held = self.held, None
                self.journal(key, result, asked, 0.0, now=True)
            if isinstance(exc, Interrupt):
                self.emit("interrupt", last, exc.node_id, payload=exc.payload)
                self.checkpoint("interrupted", shared, exc.node_id, None, position, interrupt={
                    "payload": exc.payload, "place": exc.place, "answers": [
                        [place, self.answers.get(place, [])[:used]]
                        for place, used in sorted(self.asked.items()) if used]})
            elif isinstance(exc, Exception):
                self.emit("error", last, node_id or "", error=exc)
                self.checkpoint("failed", shared, node_id, None, position, error={
                    "type": type(exc).__name__, "message": str(exc)})
            elif not self.sync:
                self.checkpoint("running", shared, node_id, None, position, final=True)
        except Exception as save_error:  # keep the run's own error; say why nothing was saved
            _note(exc, f"kaygraph: run {self.run_id!r} could not record it: {save_error}")
        self.emit("run_end", self.root, self.top, error=exc,
                  seconds=time.perf_counter() - self.t0)


# --------------------------------------------------------------------------- the node result cache

class _Abandoned(Exception):
    """The call a waiter waited for was cancelled or interrupted: the waiter runs its own."""


_flights: dict[tuple[int, str], cf.Future[Any]] = {}  # (id(cache), key) -> the call in flight
_flights_lock = threading.Lock()


class CachePolicy:
    """Cache a node's ``exec`` results (per item for batch types): a hit skips ``exec`` and
    its retries.

    ``CachePolicy(cache, *, ttl=None, key=None, version="", on_error="raise")``, as a class
    attribute ``cache_policy = CachePolicy(...)`` or the node keyword ``cache_policy=``.
    ``cache``: a :class:`Cache` (``kaygraph.stores.MemoryCache``, ``SQLiteCache``, ...);
    ``ttl``: seconds (> 0) an entry lives, None: no expiry. The key is the SHA-256 of the
    canonical JSON (sorted keys, no spaces) of the node class's qualified name, ``version``
    and ``prep_res`` (the item for batch types), or of what ``key(prep_res)`` returns (a
    str) instead of ``prep_res``; so a new ``version`` misses every old entry. Values are
    stored as JSON, never pickled. A miss runs ``exec`` and stores its result; a fallback
    result is not stored. Concurrent calls with one key (threads or tasks) run ``exec``
    once and share its result or error (single flight). A backend that fails (down) raises
    its error, unless ``on_error="miss"``: then it counts as a miss, logged once. Raises
    TypeError / ValueError naming the argument for bad arguments, and TypeError naming the
    node for a ``prep_res`` JSON cannot hold (pass ``key=``), a key function that does not
    return a str, or a result JSON cannot hold.
    """

    def __init__(self, cache: Cache, *, ttl: float | None = None,
                 key: Callable[[Any], str] | None = None, version: str = "",
                 on_error: str = "raise") -> None:
        if not isinstance(cache, Cache):
            raise TypeError(f"cache must be a Cache (e.g. kaygraph.stores.MemoryCache), got "
                            f"{cache!r} ({type(cache).__name__})")
        _check("ttl", ttl, 0, float, optional=True, above=True)
        if key is not None and not callable(key):
            raise TypeError(f"key must be a callable prep_res -> str, got {key!r}")
        if not isinstance(version, str):
            raise TypeError(f"version must be a str, got {version!r}")
        if on_error not in ("raise", "miss"):
            raise ValueError(f"on_error must be 'raise' or 'miss', got {on_error!r}")
        self.cache, self.ttl, self.key, self.version = cache, ttl, key, version
        self.on_error, self._warned = on_error, False

    def __repr__(self) -> str:
        return f"CachePolicy({self.cache!r}, ttl={self.ttl!r}, version={self.version!r})"

    def key_for(self, node: BaseNode[Any, Any], prep_res: Any) -> str:
        """The cache key (64 hex digits) of ``prep_res`` for ``node``."""
        part = prep_res
        if self.key is not None:
            part = self.key(prep_res)
            if not isinstance(part, str):
                raise TypeError(f"node {node.node_id!r}: the cache key function returned "
                                f"{part!r} ({type(part).__name__}); it must return a str")
        try:
            text = json.dumps([type(node).__qualname__, self.version, part], sort_keys=True,
                              separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"node {node.node_id!r}: its cache key needs prep_res as JSON, "
                            f"which cannot hold {type(part).__name__} ({exc}); pass "
                            f"CachePolicy(key=...) to make the key yourself") from exc
        return hashlib.sha256(text.encode()).hexdigest()

    def _backend(self, exc: Exception, what: str) -> None:
        if self.on_error == "raise" or isinstance(exc, TypeError):
            raise exc
        if not self._warned:
            self._warned = True
            _log.warning("cache %r failed on %s (%r); on_error='miss': counted as misses "
                         "(logged once)", self.cache, what, exc)

    def lookup(self, node: Node[Any, Any], key: str, count: bool = True) -> list[Any]:
        """``[value]`` on a hit, ``[]`` on a miss (counted in a MetricsNode's stats)."""
        try:
            found = [self.cache.get(key)]
        except KeyError:
            found = []
        except Exception as exc:
            self._backend(exc, "get")
            found = []
        if count and isinstance(node, MetricsNode) and node.collect_metrics:
            with _metrics_lock:
                node.metrics["cache_hits" if found else "cache_misses"] += 1
        return found

    def store(self, node: Node[Any, Any], key: str, value: Any) -> None:
        """Keep ``value`` for ``key`` (for ``ttl`` seconds)."""
        try:
            self.cache.set(key, value, self.ttl)
        except TypeError as exc:
            raise TypeError(f"node {node.node_id!r}: its result cannot be cached: {exc}") from exc
        except Exception as exc:
            self._backend(exc, "set")

    def call(self, node: Node[Any, Any], item: Any,
             compute: Callable[[Any], Any] | None = None) -> Any:
        """Run ``compute(item)`` (default: ``node``'s retry loop) through the cache."""
        key = self.key_for(node, item)
        while True:
            found = self.lookup(node, key)
            if found:
                return found[0]
            flight, mine = self._take_off(node, key)
            if mine:
                break
            try:
                return flight.result()
            except _Abandoned:
                continue
        try:
            result = (compute or node._retry)(item)
        except BaseException as exc:
            self._land(node, key, flight, exc=exc)
            raise
        return self._land(node, key, flight, result)

    async def call_async(self, node: AsyncNode[Any, Any], item: Any,
                         compute: Callable[[Any], Awaitable[Any]] | None = None) -> Any:
        """The async twin of :meth:`CachePolicy.call`; a waiter awaits the call in flight."""
        key = self.key_for(node, item)
        while True:
            found = self.lookup(node, key)
            if found:
                return found[0]
            flight, mine = self._take_off(node, key)
            if mine:
                break
            try:
                return await asyncio.wrap_future(flight)
            except _Abandoned:
                continue
        try:
            result = await (compute or node._retry_async)(item)
        except BaseException as exc:
            self._land(node, key, flight, exc=exc)
            raise
        return self._land(node, key, flight, result)

    def _take_off(self, node: Node[Any, Any], key: str) -> tuple[cf.Future[Any], bool]:
        with _flights_lock:
            flight = _flights.get((id(self.cache), key))
            if flight is not None:
                return flight, False
            flight = _flights[(id(self.cache), key)] = cf.Future()
        # Checked again (uncounted): the call before ours may have landed in between.
        found = self.lookup(node, key, count=False)
        if found:
            self._land(node, key, flight, found[0], keep=False)
            return flight, False
        node._fell_back = False
        return flight, True

    def _land(self, node: Node[Any, Any], key: str, flight: cf.Future[Any],
              result: Any = None, exc: BaseException | None = None, keep: bool = True) -> Any:
        try:
            if exc is None and keep and not node._fell_back:
                self.store(node, key, result)
        except BaseException as store_error:
            exc = store_error
            raise
        finally:
            with _flights_lock:
                del _flights[(id(self.cache), key)]
            if exc is None:
                flight.set_result(result)
            else:
                flight.set_exception(exc if isinstance(exc, Exception) else _Abandoned())
        return result


# --------------------------------------------------------------------------- BaseNode

_PHASES = ("prep", "exec", "post", "exec_fallback")


def _check_class(cls: type[BaseNode[Any, Any]]) -> None:
    """TypeError at class creation for what would silently go wrong at run time."""
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names = [n for n in ((slots,) if isinstance(slots, str) else slots)
                 if n not in ("__dict__", "__weakref__")]
        if names:  # each step and item runs a copy made from __dict__ alone
            raise TypeError(f"{cls.__qualname__}: {klass.__qualname__} declares __slots__ "
                            f"{tuple(names)!r}; kaygraph copies a node for every step and item "
                            f"from its __dict__, so slot values would be lost: drop __slots__")
    policy = getattr(cls, "cache_policy", None)
    if policy is not None and not isinstance(policy, CachePolicy):
        raise TypeError(f"{cls.__qualname__}.cache_policy must be a CachePolicy, got "
                        f"{policy!r} ({type(policy).__name__})")
    for name in _PHASES:
        if inspect.iscoroutinefunction(getattr(cls, name, None)):
            how = "" if cls._is_async else "subclass AsyncNode and "
            raise TypeError(f"{cls.__qualname__}.{name} is 'async def' but would be called "
                            f"without await: {how}name it {name}_async")
        if not cls._is_async and hasattr(cls, f"{name}_async"):
            raise TypeError(f"{cls.__qualname__} defines {name}_async, which a sync node never "
                            f"calls: subclass AsyncNode (or AsyncBatchNode, ...) instead")


def _checked_init(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a subclass's ``__init__``: one clear error when it forgot ``super().__init__()``
    (a check at construction, so running a node costs nothing more)."""
    @functools.wraps(init)
    def __init__(self: BaseNode[Any, Any], *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if "successors" not in self.__dict__:
            raise TypeError(f"{init.__qualname__} did not call super().__init__(...): call it "
                            f"first, so that the node gets its node_id, params and successors")
    return __init__


class BaseNode(Generic[PrepRes, ExecRes]):
    """The three-phase unit of work: ``prep`` -> ``exec`` -> ``post`` -> action.

    ``BaseNode(node_id=None, config=None)``: ``node_id`` (str) names the node in errors,
    warnings and drawings (default: the class name); ``config`` is a :class:`Config` or dict.
    Generic in what ``prep`` returns and ``exec`` returns, as in KayGraph:
    ``class Summarise(Node[str, Summary])`` lets ``mypy`` check the three phases.

    Attributes: ``node_id``, ``params`` (dict set by the graph for each run),
    ``successors`` (action -> node), ``config``, ``logger`` (a ``logging.Logger`` under
    ``"kaygraph"``). Override ``prep``, ``exec`` and ``post``; optionally the hooks
    ``before_prep``, ``after_exec`` and ``on_error`` (override them in a subclass: they are
    looked up on the class, once), and ``setup_resources`` / ``cleanup_resources`` (called
    by ``with node:``). A class that would misbehave at run time is a TypeError when it is
    defined: ``async def`` phases on a node, ``exec_async`` on a sync node, or ``__slots__``.
    """

    _is_async = False
    _hooked = False  # True when a class overrides before_prep or after_exec, or caches
    # Set on a step's copy in an observed or durable run only (class defaults otherwise).
    _frame: _Frame | None = None  # the level of the run this copy runs in
    _step_key = ""  # where the step's journal and item results go in the store
    _key: str | None = None  # its idempotency key
    _index: int | None = None  # the item's index, on the copy that runs one item

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Skipping the two no-op hook calls saves a measurable part of each graph step.
        cls._hooked = (cls.before_prep is not BaseNode.before_prep
                       or cls.after_exec is not BaseNode.after_exec
                       or getattr(cls, "cache_policy", None) is not None)
        _check_class(cls)
        init = cls.__dict__.get("__init__")
        if init is not None and cls.__module__ != __name__:
            cls.__init__ = _checked_init(init)  # type: ignore[method-assign]

    def __init__(self, node_id: str | None = None, config: Config | dict[str, Any] | None = None
                 ) -> None:
        if node_id is not None and not isinstance(node_id, str):
            raise TypeError(f"node_id must be a str, got {node_id!r} ({type(node_id).__name__})")
        self.node_id: str = node_id or type(self).__name__
        self.params: dict[str, Any] = {}
        self.successors: dict[str, BaseNode[Any, Any] | None] = {}
        self.config: Config = config if isinstance(config, Config) else Config(config)
        self.logger = logging.getLogger(f"kaygraph.{type(self).__name__}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node_id!r}>"

    # -- wiring
    def set_params(self, params: dict[str, Any]) -> None:
        """Set the params dict of this node. Raises TypeError when ``params`` is not a dict."""
        if not isinstance(params, dict):
            raise TypeError(f"set_params(params=...) needs a dict, got {params!r} "
                            f"({type(params).__name__})")
        self.params = params

    def next(self, node: _N, action: str = "default") -> _N:
        """Register ``node`` as the successor for ``action`` and return ``node``.

        ``None`` marks ``action`` as an explicit end of the walk (no warning when a node
        returns it), as in PocketFlow. Re-registering an action warns (``UserWarning``) and
        replaces it. Raises TypeError when ``node`` is not a BaseNode or None, or ``action``
        is not a str.
        """
        if node is not None and not isinstance(node, BaseNode):
            raise TypeError(f"next(node=...) needs a BaseNode, got {node!r} "
                            f"({type(node).__name__}) for action {action!r} of {self!r}")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {action!r} ({type(action).__name__})")
        if action in self.successors:
            _warn(f"Overwriting successor for action '{action}' of node '{self.node_id}'")
        self.successors[action] = node
        return node

    def __rshift__(self, other: _N) -> _N:
        """``a >> b`` registers ``b`` for the ``"default"`` action and returns ``b``."""
        return self.next(other)

    def __sub__(self, action: str) -> _Transition:
        """``a - "x" >> b`` registers ``b`` for action ``"x"``. Raises TypeError for a non-str."""
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {action!r} ({type(action).__name__})")
        return _Transition(self, action)

    # -- the three phases
    def prep(self, shared: Shared) -> PrepRes:
        """Read what ``exec`` needs from the shared store. Default: None."""
        return None  # type: ignore[return-value]

    def exec(self, prep_res: PrepRes) -> ExecRes:
        """Do the work on ``prep_res``; never touch the shared store. Default: None."""
        return None  # type: ignore[return-value]

    def post(self, shared: Shared, prep_res: PrepRes, exec_res: ExecRes) -> Action:
        """Write results to the shared store and return the action. Default: None."""
        return None

    # -- hooks
    def before_prep(self, shared: Shared) -> None:
        """Hook called before ``prep`` on every run of the node. Default: nothing."""

    def after_exec(self, shared: Shared, prep_res: PrepRes, exec_res: ExecRes) -> None:
        """Hook called after ``exec`` (with its retries, or ``exec_fallback``) returned."""

    def on_error(self, shared: Shared, exc: Exception) -> bool:
        """Hook called when any phase raises ``exc``; return True to suppress it.

        A suppressed error ends the node with action None. Default: False (re-raise).
        """
        return False

    def setup_resources(self) -> None:
        """Open resources (clients, files) for the node; called by ``with node:``."""

    def cleanup_resources(self) -> None:
        """Close what ``setup_resources`` opened; called when the ``with`` block exits."""

    def __enter__(self) -> BaseNode[PrepRes, ExecRes]:
        self.setup_resources()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup_resources()

    # -- running
    def _exec(self, prep_res: Any) -> Any:
        return self.exec(prep_res)

    def _exec_hooked(self, prep_res: Any) -> Any:
        # The exec of a step that takes the slower path (hooks, a cache): here, not in
        # _exec, so that a plain step never even looks for a cache policy.
        return self._exec(prep_res)

    def _run(self, shared: Shared) -> Action:
        hooked = self._hooked
        try:
            if hooked:
                self.before_prep(shared)
            prep_res = self.prep(shared)
            exec_res = self._exec_hooked(prep_res) if hooked else self._exec(prep_res)
            if hooked:
                self.after_exec(shared, prep_res, exec_res)
            return self.post(shared, prep_res, exec_res)
        except Exception as exc:
            if self.on_error(shared, exc):
                return None
            raise

    async def _run_async(self, shared: Shared) -> Action:
        return self._run(shared)  # a sync node in an AsyncGraph runs inline

    def run(self, shared: Shared) -> Action:
        """Run this node alone on ``shared`` and return its action, exactly as ``post`` did.

        Runs on a copy of the node, as a graph step does, so concurrent runs of one node
        never share per-run state (``cur_retry``). Warns (``UserWarning``) when the node has
        successors: it does not run them; use a Graph. Raises what the node raises;
        RuntimeError for an async node.
        """
        self._warn_alone("a Graph")
        return _own_copy(self)._run(shared)  # type: ignore[no-any-return]

    # -- durable runs
    def interrupt(self, payload: Any) -> Any:
        """Pause the durable run for a person: raise :class:`Interrupt` with ``payload``
        (JSON-serialisable); after ``graph.resume(..., value=answer)`` the node runs again
        from ``prep`` and this call returns ``answer`` (several calls in one step are
        answered in order). Any phase may call it, also for one item of a batch or in one run
        of a concurrent batch graph: each asks and is answered on its own, so one resume
        answers one question. RuntimeError outside a durable run."""
        frame = self._frame
        if frame is None or frame.run.store is None:
            raise RuntimeError(f"node {self.node_id!r}: interrupt needs a durable run: pass "
                               f"run_id= and store= to the graph's run")
        run, place = frame.run, frame.place(self._index)
        used, answers = run.asked.get(place, 0), run.answers.get(place, ())
        if used < len(answers):
            run.asked[place] = used + 1
            return answers[used]
        run.asked[place] = used  # its consumed answers are kept with the checkpoint
        exc = Interrupt(run.run_id, self.node_id, payload)  # type: ignore[arg-type]
        exc.place = place
        raise exc

    @property
    def idempotency_key(self) -> str:
        """``"RUN_ID:STEP"`` while a step of a durable run runs, the same when the step runs
        again after a crash: hand it to an API that deduplicates. RuntimeError otherwise."""
        if self._key is None:
            raise RuntimeError(f"node {self.node_id!r}: idempotency_key exists only while a "
                               f"durable run (run_id= and store=) runs the node")
        return self._key

    def run_async(self, shared: Shared) -> Awaitable[Action]:
        """Only async nodes and graphs have it: TypeError naming the class to use instead."""
        kind = "AsyncGraph" if isinstance(self, Graph) else "AsyncNode"
        raise TypeError(f"{type(self).__name__} {self.node_id!r} is sync and has no "
                        f"run_async: call run(shared), or build it as an {kind} to run async "
                        f"nodes")

    def _warn_alone(self, graph: str) -> None:
        if self.successors:
            _warn(f"Node '{self.node_id}' won't run its successors {list(self.successors)}; "
                  f"use {graph}")


class _Transition:
    """The ``node - "action"`` half of ``node - "action" >> other``."""

    __slots__ = ("src", "action")

    def __init__(self, src: BaseNode[Any, Any], action: str) -> None:
        self.src, self.action = src, action

    def __rshift__(self, other: _N) -> _N:
        return self.src.next(other, self.action)


# --------------------------------------------------------------------------- Node

_CORO = types.CoroutineType

class Node(BaseNode[PrepRes, ExecRes]):
    """A node whose ``exec`` is retried: the retry loop that every node type shares.

    ``Node(max_retries=1, wait=0, node_id=None, config=None, *, backoff=1.0, max_wait=None,
    jitter=0.0, retry_on=Exception, timeout=None, cache_policy=None, checkpoint_items=None)``:

    - ``max_retries`` (int >= 1): attempts in all, the first included.
    - ``wait`` (seconds >= 0): the wait before the second attempt; before attempt k+1 it is
      ``min(wait * backoff**(k-1), max_wait)`` plus a uniform random ``[0, jitter]`` seconds.
    - ``retry_on``: an exception class, a tuple of them, or a predicate ``exc -> bool``. An
      error it does not accept skips the remaining attempts. An error raised by the
      predicate itself propagates, chained to the error it was judging.
    - ``timeout`` (seconds, async nodes only; see :class:`AsyncNode`).
    - ``cache_policy``: a :class:`CachePolicy` (or set it on the class): a cached result
      skips ``exec`` and its retries. Set it on the class or here, not on the node later.
    - ``checkpoint_items`` (batch nodes; or the class attribute): in a durable run, each
      item's result is recorded, so a resumed step runs only the items without one.

    When every attempt failed, ``exec_fallback(prep_res, exc)`` decides: its return value
    is the result; by default it re-raises ``exc``. ``cur_retry`` is the 0-based attempt
    while ``exec`` runs; each batch item has its own. Sync nodes wait with ``time.sleep``.
    Raises TypeError/ValueError naming the argument for a bad argument (numbers must be
    finite), and TypeError for ``timeout`` on a sync node (it could not be cancelled
    in-process). A sync ``exec`` that returns a coroutine is a TypeError naming the node.
    """

    # Class-level defaults keep instances small, so the per-step copy stays cheap.
    cur_retry = 0
    timeout: float | None = None
    cache_policy: CachePolicy | None = None
    checkpoint_items = False
    _fell_back = False  # True once exec_fallback gave the result (never cached)

    def __init__(self, max_retries: int = 1, wait: float = 0, node_id: str | None = None,
                 config: Config | dict[str, Any] | None = None, *, backoff: float = 1.0,
                 max_wait: float | None = None, jitter: float = 0.0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...]
                 | Callable[[BaseException], bool] = Exception,
                 timeout: float | None = None, cache_policy: CachePolicy | None = None,
                 checkpoint_items: bool | None = None) -> None:
        super().__init__(node_id=node_id, config=config)
        if cache_policy is not None:
            if not isinstance(cache_policy, CachePolicy):
                raise TypeError(f"cache_policy must be a CachePolicy, got {cache_policy!r} "
                                f"({type(cache_policy).__name__})")
            self.cache_policy, self._hooked = cache_policy, True
        if checkpoint_items is not None:
            if not isinstance(self, BatchNode):
                raise TypeError(f"checkpoint_items records the items of a batch node; node "
                                f"{self.node_id!r} is a {type(self).__name__}")
            self.checkpoint_items = bool(checkpoint_items)
        _check("max_retries", max_retries, 1)
        _check("wait", wait, 0, float)
        _check("max_wait", max_wait, 0, float, optional=True)
        _check("jitter", jitter, 0, float)
        _check("backoff", backoff, 0, float, above=True)
        _check_retry_on(retry_on)
        if timeout is not None:
            if not self._is_async:
                raise TypeError(f"timeout={timeout!r} needs an AsyncNode: a sync exec cannot be "
                                f"cancelled in-process (node {self.node_id!r})")
            _check("timeout", timeout, 0, float, above=True)
            self.timeout = timeout
        self.max_retries, self.wait, self.backoff = max_retries, wait, backoff
        self.max_wait, self.jitter, self.retry_on = max_wait, jitter, retry_on

    def exec_fallback(self, prep_res: PrepRes, exc: Exception) -> ExecRes:
        """Called with the last error when every attempt failed. Default: re-raise ``exc``."""
        raise exc

    def _retry_delay(self, exc: Exception) -> float | None:
        """Seconds to wait before the next attempt, or None to give up on this error."""
        k, on = self.cur_retry, self.retry_on
        if isinstance(on, (type, tuple)):
            accepted = isinstance(exc, on)
        else:
            try:
                accepted = on(exc)
            except Exception as err:
                _note(err, f"kaygraph: the retry_on predicate of node {self.node_id!r} raised "
                           f"while judging {exc!r}")
                raise err from exc
        if not accepted or k + 1 >= self.max_retries:
            _note(exc, f"kaygraph: node {self.node_id!r} exec failed on attempt "
                       f"{k + 1} of {self.max_retries}")
            if self._frame is not None:
                self._frame.run.emit("attempt_failed", self._frame, self.node_id, error=exc,
                                     attempt=k + 1, item_index=self._index)
            return None
        try:
            delay = self.wait * self.backoff ** k if self.wait else 0.0
        except OverflowError:  # backoff**k beyond a float: only max_wait can bound it
            delay = math.inf
        if self.max_wait is not None:
            delay = min(delay, self.max_wait)
        if self.jitter:
            delay += random.uniform(0, self.jitter)
        self.logger.info("node %r attempt %d of %d failed (%r); retrying in %.3f s",
                         self.node_id, k + 1, self.max_retries, exc, delay)
        if self._frame is not None:
            self._frame.run.emit("attempt_failed", self._frame, self.node_id, error=exc,
                                 attempt=k + 1, delay=delay, item_index=self._index)
        return delay

    def _retry(self, item: Any) -> Any:
        self.cur_retry = 0
        while True:
            try:
                return self.exec(item)
            except Exception as exc:
                delay = self._retry_delay(exc)
                if delay is None:
                    self._fell_back = True
                    return self.exec_fallback(item, exc)
                if delay:
                    time.sleep(delay)
            self.cur_retry += 1

    def _awaited(self, results: list[Any]) -> list[Any]:
        """TypeError when ``exec`` returned coroutines (an async client called without
        await). The first result tells: checking one keeps the per-item cost flat."""
        if results and results[0].__class__ is _CORO:
            for coro in results:
                if coro.__class__ is _CORO:
                    coro.close()  # no "never awaited" warning at exit on top of this error
            raise TypeError(f"node {self.node_id!r}: exec returned a coroutine, which a sync "
                            f"node never awaits; make it an AsyncNode with 'async def "
                            f"exec_async' and await the call there")
        return results

    def _exec(self, prep_res: Any) -> Any:
        result = self._retry(prep_res)
        if result.__class__ is _CORO:
            self._awaited([result])
        return result

    def _exec_hooked(self, prep_res: Any) -> Any:
        policy = self.cache_policy  # a batch node consults it per item, in its own _exec
        if policy is None or isinstance(self, BatchNode):
            return self._exec(prep_res)
        return policy.call(self, prep_res, self._exec)


# --------------------------------------------------------------------------- batch nodes

class BatchNode(Node[Any, Any], Generic[Item, Result]):
    """A node whose ``prep`` returns an iterable of items; ``exec(item)`` runs per item.

    ``prep`` may return a list, a generator or None (no items); a str, bytes or dict is a
    TypeError naming the node (it would run one item per character or key). Each item gets
    its own retries; ``post`` receives the list of results in input order. Items run one
    after another in the calling thread. Generic in the item and result types:
    ``class Parse(BatchNode[Path, Stats])``. With ``checkpoint_items`` in a durable run, item
    results are written in groups, at most every 0.2 s and when the batch ends or fails.
    """

    def prep(self, shared: Shared) -> Iterable[Item] | None:
        """Return the items (any iterable; None: none). Default: None."""
        return None

    def exec(self, item: Item) -> Result:
        """Do the work on one item; never touch the shared store. Default: None."""
        return None  # type: ignore[return-value]

    def exec_fallback(self, item: Item, exc: Exception) -> Result:
        """Called with an item's last error when its attempts failed. Default: re-raise."""
        raise exc

    def post(self, shared: Shared, prep_res: Iterable[Item] | None,
             exec_res: list[Result]) -> Action:
        """Write the results (in input order) to the shared store; return the action."""
        return None

    def _exec(self, items: Any) -> list[Any]:
        items = _items(self, items)
        if self._frame is None and self.cache_policy is None:
            return self._awaited([self._retry(item) for item in items])
        plan = _Items(self, items, remote=False)
        try:
            for j, (i, item) in enumerate(plan.items):
                plan.put(j, _item(self, i, item))
        finally:
            plan.flush()
        return self._awaited(plan.result())


class ParallelBatchNode(BatchNode[Item, Result]):
    """A batch node whose items run on an executor (a thread pool by default).

    ``max_workers`` (int >= 1, None: the thread pool's default) sizes the pool created for
    each run; ``executor`` is any ``concurrent.futures.Executor`` (a process pool, a Dask or
    Ray executor), used as given and never shut down by the node. The other arguments are
    :class:`Node`'s. At most 2 x workers items are submitted ahead of the workers, so a
    generator of millions of items is never materialised. Results come back in input order.
    Each item runs on its own shallow copy of the node (own ``cur_retry``). The first item
    that still fails after its retries and fallback cancels the items not yet started and
    its exception propagates; no item is left running. What is shipped for an item is this
    node without its successors, plus the item. Raises TypeError naming the node when a
    process pool cannot pickle it.
    """

    def __init__(self, max_workers: int | None = None, max_retries: int = 1, wait: float = 0,
                 node_id: str | None = None, config: Config | dict[str, Any] | None = None, *,
                 executor: cf.Executor | None = None, backoff: float = 1.0,
                 max_wait: float | None = None, jitter: float = 0.0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...]
                 | Callable[[BaseException], bool] = Exception,
                 cache_policy: CachePolicy | None = None,
                 checkpoint_items: bool | None = None) -> None:
        super().__init__(max_retries, wait, node_id, config, backoff=backoff,
                         max_wait=max_wait, jitter=jitter, retry_on=retry_on,
                         cache_policy=cache_policy, checkpoint_items=checkpoint_items)
        _check("max_workers", max_workers, 1, optional=True)
        if executor is not None and not isinstance(executor, cf.Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {executor!r}")
        self.max_workers, self.executor = max_workers, executor

    def _exec(self, items: Any) -> list[Any]:
        items, executor = _items(self, items), self.executor
        remote = executor is not None and not isinstance(executor, cf.ThreadPoolExecutor)
        shipped = _fresh(self)
        # Ship neither the rest of the graph nor the executor (a process pool won't pickle).
        shipped.successors, shipped.executor = {}, None
        shipped.__dict__.pop("_exec", None)  # the step's journal stays with the step
        if remote:  # the run and the cache stay in this process
            shipped._frame = shipped.cache_policy = None
        plan = None
        if self._frame is not None or self.cache_policy is not None:
            plan = _Items(self, items, remote)
            items = plan.items
        fn = _run_item if plan is None else _run_remote if remote else _run_pair
        in_context = self._frame is not None and not remote
        try:
            if executor is None:
                with cf.ThreadPoolExecutor(self.max_workers,
                                           thread_name_prefix="kaygraph") as pool:
                    results = _map_threads(shipped, items, pool, 2 * pool._max_workers, fn,
                                           plan, in_context)
            else:
                if isinstance(executor, cf.ProcessPoolExecutor):
                    self._check_pickles(shipped, executor)
                workers = (self.max_workers or getattr(executor, "_max_workers", None)
                           or os.cpu_count() or 1)
                results = _map_threads(shipped, items, executor, 2 * workers, fn, plan,
                                       in_context)
        finally:
            if plan is not None:
                plan.flush()
        return self._awaited(results if plan is None else plan.result())

    def _check_pickles(self, shipped: Node[Any, Any], executor: cf.Executor) -> None:
        try:
            pickle.dumps(shipped)
        except Exception as exc:
            raise TypeError(
                f"node {self.node_id!r} cannot be pickled for {type(executor).__name__} "
                f"({exc}); keep only picklable attributes (no lambdas, locks or open "
                f"clients) or use threads") from exc


# --------------------------------------------------------------------------- async nodes

_warned_blocking: set[tuple[type, str]] = set()  # (class, node_id): warn once per node


class AsyncNode(Node[PrepRes, ExecRes]):
    """A node with async phases, run by ``await node.run_async(shared)`` or an AsyncGraph.

    Override ``exec_async`` (and, if needed, ``prep_async`` / ``post_async``, whose
    defaults call the sync ``prep`` / ``post``). Takes Node's arguments plus ``timeout``
    (seconds > 0 or None): each attempt of ``exec_async`` is cancelled after ``timeout``
    seconds and counts as a failed attempt raising the built-in ``TimeoutError`` (retried
    when ``retry_on`` accepts it); a ``TimeoutError`` that ``exec_async`` raises itself keeps
    its own message. An attempt that ends more than ``timeout`` seconds past its deadline
    blocked the event loop (``time.sleep``, a sync client), so the timer could not fire:
    that warns once per node (``RuntimeWarning``). Waits between attempts use
    ``asyncio.sleep``. ``async with node:`` calls ``setup_resources_async`` /
    ``cleanup_resources_async``. A sync ``run`` raises RuntimeError naming the node.
    """

    _is_async = True

    async def prep_async(self, shared: Shared) -> PrepRes:
        """Async ``prep``. Default: calls ``prep``."""
        return self.prep(shared)

    async def exec_async(self, prep_res: PrepRes) -> ExecRes:
        """Async ``exec``. Default: calls ``exec``."""
        return self.exec(prep_res)

    async def exec_fallback_async(self, prep_res: PrepRes, exc: Exception) -> ExecRes:
        """Async ``exec_fallback``. Default: calls ``exec_fallback`` (which re-raises)."""
        return self.exec_fallback(prep_res, exc)

    async def post_async(self, shared: Shared, prep_res: PrepRes, exec_res: ExecRes) -> Action:
        """Async ``post``. Default: calls ``post``."""
        return self.post(shared, prep_res, exec_res)

    async def setup_resources_async(self) -> None:
        """Open async resources (e.g. an HTTP session). Default: calls ``setup_resources``."""
        self.setup_resources()

    async def cleanup_resources_async(self) -> None:
        """Close async resources. Default: calls ``cleanup_resources``."""
        self.cleanup_resources()

    async def __aenter__(self) -> AsyncNode[PrepRes, ExecRes]:
        await self.setup_resources_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cleanup_resources_async()

    async def _attempt(self, item: Any) -> Any:
        """One attempt under the timeout. Our own timer (as ``asyncio.timeout`` does, also
        on 3.10) tells our expiry from a TimeoutError that ``exec_async`` raised itself."""
        loop, task, timeout = asyncio.get_running_loop(), asyncio.current_task(), self.timeout
        assert task is not None and timeout is not None
        cancelling = 0
        if sys.version_info >= (3, 11):
            cancelling = task.cancelling()
        fired = []
        handle = loop.call_later(timeout, lambda: fired.append(task.cancel()))
        start = loop.time()
        try:
            return await self.exec_async(item)
        except asyncio.CancelledError:
            if fired:  # our timer fired; unless a cancellation from outside came too:
                fired.clear()
                if sys.version_info < (3, 11) or task.uncancel() <= cancelling:
                    raise TimeoutError(f"node {self.node_id!r} attempt {self.cur_retry + 1} "
                                       f"timed out after {timeout} s") from None
            raise
        finally:
            handle.cancel()
            if fired and sys.version_info >= (3, 11):
                task.uncancel()  # exec_async absorbed our cancellation
            late = loop.time() - start - timeout
            if late > max(timeout, 0.1):
                self._warn_blocked(late + timeout)

    def _warn_blocked(self, seconds: float) -> None:
        key = (type(self), self.node_id)
        if key not in _warned_blocking:
            _warned_blocking.add(key)
            _warn(f"node {self.node_id!r}: an attempt of exec_async took {seconds:.2f} s "
                  f"against its timeout of {self.timeout} s, so it blocked the event loop "
                  f"and the timeout could not fire; blocking work (time.sleep, a sync HTTP "
                  f"client) belongs in asyncio.to_thread or a ParallelBatchNode",
                  RuntimeWarning)

    async def _retry_async(self, item: Any) -> Any:
        # The async twin of Node._retry: same policy (_retry_delay), awaited.
        self.cur_retry = 0
        while True:
            try:
                if self.timeout is None:
                    return await self.exec_async(item)
                return await self._attempt(item)
            except Exception as exc:
                delay = self._retry_delay(exc)
                if delay is None:
                    self._fell_back = True
                    return await self.exec_fallback_async(item, exc)
                if delay:
                    await asyncio.sleep(delay)
            self.cur_retry += 1

    async def _exec_async(self, prep_res: Any) -> Any:
        return await self._retry_async(prep_res)

    async def _exec_hooked_async(self, prep_res: Any) -> Any:
        # The async twin of Node._exec_hooked.
        policy = self.cache_policy
        if policy is None or isinstance(self, BatchNode):
            return await self._exec_async(prep_res)
        return await policy.call_async(self, prep_res, self._exec_async)

    async def _run_async(self, shared: Shared) -> Action:
        # The async twin of BaseNode._run.
        hooked = self._hooked
        try:
            if hooked:
                self.before_prep(shared)
            prep_res = await self.prep_async(shared)
            exec_res = await (self._exec_hooked_async(prep_res) if hooked
                              else self._exec_async(prep_res))
            if hooked:
                self.after_exec(shared, prep_res, exec_res)
            return await self.post_async(shared, prep_res, exec_res)
        except Exception as exc:
            if self.on_error(shared, exc):
                return None
            raise

    def _run(self, shared: Shared) -> Action:
        raise RuntimeError(f"{type(self).__name__} {self.node_id!r} is async: run it with "
                           f"'await node.run_async(shared)' or inside an AsyncGraph")

    async def run_async(self, shared: Shared) -> Action:
        """Run this node alone (on a copy, as :meth:`BaseNode.run`) and return its action.
        Warns when it has successors."""
        self._warn_alone("an AsyncGraph")
        return await _own_copy(self)._run_async(shared)  # type: ignore[no-any-return]


class AsyncBatchNode(AsyncNode[Any, Any], BatchNode[Item, Result]):
    """An async batch node: ``exec_async(item)`` per item, one after another, awaited.

    Each item has its own retries, ``cur_retry`` and ``timeout`` (per attempt of each item);
    results in input order.
    """

    max_concurrency: int | None = 1

    async def _exec_async(self, items: Any) -> list[Any]:
        # One batch loop for sequential and concurrent nodes: only the limit differs. Items
        # in flight together each run on their own copy; one at a time, on the node, as in
        # BatchNode.
        one, items = self.max_concurrency == 1, _items(self, items)
        if self._frame is None and self.cache_policy is None:
            return await _map_tasks(self._retry_async if one else
                                    lambda item: _fresh(self)._retry_async(item),
                                    items, self.max_concurrency)
        plan = _Items(self, items, remote=False)
        try:
            await _map_tasks((lambda pair: _item_async(self, *pair)) if one else
                             lambda pair: _item_async(_fresh(self), *pair),
                             plan.items, self.max_concurrency, plan)
        finally:
            plan.flush()
        return plan.result()


class AsyncParallelBatchNode(AsyncBatchNode[Item, Result]):
    """An async batch node whose items run concurrently on the event loop (a subclass of
    AsyncBatchNode, whose limit is 1).

    ``max_concurrency`` (int >= 1; None: the class attribute, which is None here: no
    limit): never more than that many items in flight; a bounded run pulls items from
    ``prep``'s iterable as slots free up. A subclass may set ``max_concurrency = n`` on the
    class; a value set on the node later is checked when the node runs. The other
    arguments are :class:`AsyncNode`'s. Results in input order; each item has its own
    ``cur_retry`` and timeout. The first item that still fails after its retries and
    fallback cancels every unfinished item, no further item starts, and its exception
    propagates.
    """

    max_concurrency: int | None = None

    def __init__(self, max_retries: int = 1, wait: float = 0, node_id: str | None = None,
                 config: Config | dict[str, Any] | None = None, *, backoff: float = 1.0,
                 max_wait: float | None = None, jitter: float = 0.0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...]
                 | Callable[[BaseException], bool] = Exception,
                 timeout: float | None = None, max_concurrency: int | None = None,
                 cache_policy: CachePolicy | None = None,
                 checkpoint_items: bool | None = None) -> None:
        super().__init__(max_retries, wait, node_id, config, backoff=backoff,
                         max_wait=max_wait, jitter=jitter, retry_on=retry_on, timeout=timeout,
                         cache_policy=cache_policy, checkpoint_items=checkpoint_items)
        _check("max_concurrency", max_concurrency, 1, optional=True)
        if max_concurrency is not None:
            self.max_concurrency = max_concurrency


# --------------------------------------------------------------------------- metrics, validation

_METRICS_WINDOW = 10_000  # executions kept for the percentiles


class _Timing:
    """Times one execution of a MetricsNode; an execution that was cancelled (or
    interrupted) is not counted. One mechanism for the sync and async retry loops."""

    __slots__ = ("node", "start")

    def __init__(self, node: MetricsNode[Any, Any]) -> None:
        self.node, self.start = node, time.perf_counter()

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None or issubclass(kind, Exception):
            self.node._record(time.perf_counter() - self.start, kind is None)


class MetricsNode(Node[PrepRes, ExecRes]):
    """A node that times every execution of ``exec`` (per item, retries included).

    ``MetricsNode(collect_metrics=True, *args, **kwargs)``; mix it in first to measure
    batch, parallel or async nodes, e.g. ``class N(MetricsNode, AsyncParallelBatchNode)``.
    ``metrics`` is a dict shared by the node and the per-step copies a graph runs. Counts
    are exact under threads and tasks; percentiles use the last 10,000 executions. Items
    cancelled by fail-fast are not executions; items run in other processes are not counted.
    """

    def __init__(self, collect_metrics: bool = True, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collect_metrics = collect_metrics
        self.metrics: dict[str, Any] = {
            "executions": 0, "successes": 0, "retries": 0, "total_time": 0.0,
            "min_time": float("inf"), "max_time": 0.0, "times": deque(maxlen=_METRICS_WINDOW),
            "cache_hits": 0, "cache_misses": 0,
        }

    def _record(self, seconds: float, ok: bool) -> None:
        with _metrics_lock:
            m = self.metrics
            m["executions"] += 1
            m["successes"] += ok
            m["retries"] += self.cur_retry
            m["total_time"] += seconds
            m["min_time"] = min(m["min_time"], seconds)
            m["max_time"] = max(m["max_time"], seconds)
            m["times"].append(seconds)

    def _retry(self, item: Any) -> Any:
        if not self.collect_metrics:
            return super()._retry(item)
        with _Timing(self):
            return super()._retry(item)

    async def _retry_async(self, item: Any) -> Any:
        # super() is the AsyncNode this class is mixed into.
        if not self.collect_metrics:
            return await super()._retry_async(item)  # type: ignore[misc]
        with _Timing(self):
            return await super()._retry_async(item)  # type: ignore[misc]

    def get_stats(self) -> dict[str, Any]:
        """Return the statistics (times in seconds), or ``{"status": "no_executions"}``.

        Keys, as in KayGraph: ``total_executions``, ``success_rate`` (0..1),
        ``avg_execution_time``, ``min_execution_time``, ``max_execution_time``,
        ``total_retries``; plus ``p50_execution_time`` and ``p95_execution_time``
        (nearest rank); plus ``cache_hits`` and ``cache_misses`` when the node has a
        ``cache_policy`` (a hit is not an execution).
        """
        with _metrics_lock:
            m = dict(self.metrics)
            times = sorted(m["times"])
        n = m["executions"]
        cache = ({"cache_hits": m["cache_hits"], "cache_misses": m["cache_misses"]}
                 if self.cache_policy is not None else {})
        if not n:
            return {"status": "no_executions", **cache}

        def rank(q: float) -> float:
            return float(times[max(0, math.ceil(q * len(times)) - 1)])

        return {
            "total_executions": n, "success_rate": m["successes"] / n,
            "avg_execution_time": m["total_time"] / n, "min_execution_time": m["min_time"],
            "max_execution_time": m["max_time"], "total_retries": m["retries"],
            "p50_execution_time": rank(0.50), "p95_execution_time": rank(0.95), **cache,
        }


_metrics_lock = threading.Lock()  # one lock for all nodes: a lock attribute would not pickle


class ValidatedNode(Node[PrepRes, ExecRes]):
    """A node that checks its input and output around ``exec`` (and its retries).

    ``validate_input(prep_res)`` and ``validate_output(exec_res)`` return the (possibly
    converted) value or raise, typically ValueError; a validation error is not retried.
    Works mixed into async nodes too.
    """

    def validate_input(self, prep_res: Any) -> Any:
        """Check ``prep_res`` before ``exec``; return it (or a converted value). Default: as is."""
        return prep_res

    def validate_output(self, exec_res: Any) -> Any:
        """Check ``exec_res`` after ``exec``; return it (or a converted value). Default: as is."""
        return exec_res

    def _exec(self, prep_res: Any) -> Any:
        return self.validate_output(super()._exec(self.validate_input(prep_res)))

    async def _exec_async(self, prep_res: Any) -> Any:
        inner = super()._exec_async(self.validate_input(prep_res))  # type: ignore[misc]
        return self.validate_output(await inner)


# --------------------------------------------------------------------------- graphs

class Step(NamedTuple):
    """What ``Graph.stream`` yields after each top-level step.

    ``node``: the per-step copy of the node that ran (its ``params`` as used);
    ``action``: what its ``post`` returned (None stays None); ``seconds``: the step's wall
    time (float, seconds).
    """

    node: BaseNode[Any, Any]
    action: Action
    seconds: float


_Pair = tuple[BaseNode[Any, Any], Action]  # what a walk yields per step: (node copy, action)
MAX_STEPS = 10_000  # the default loop guard of every graph: top-level steps of one walk


class Graph(BaseNode[Any, Any]):
    """A graph of nodes, itself a node: it walks from ``start`` along the actions.

    Each step runs a shallow copy of the node with the run's params set on the copy, so
    per-run state never leaks between runs (also concurrent ones). The walk ends at an
    action with no successor (with a ``UserWarning`` if the node had other successors).
    ``run`` returns the last action (the default ``post`` returns it), so an outer graph can
    route on it. ``max_steps`` (int >= 1; default 10,000; None: no limit) bounds the
    top-level steps of one walk: RuntimeError naming the limit and the node about to run.
    ValueError when run with no start node. The node hooks (``before_prep``, ``after_exec``,
    ``on_error``) apply to the nodes a graph runs, not to the graph itself.
    """

    def __init__(self, start: BaseNode[Any, Any] | None = None,
                 config: Config | dict[str, Any] | None = None, *,
                 max_steps: int | None = MAX_STEPS, node_id: str | None = None) -> None:
        super().__init__(node_id=node_id, config=config)
        _check("max_steps", max_steps, 1, optional=True)
        if start is not None and not isinstance(start, BaseNode):
            raise TypeError(f"start must be a BaseNode, got {start!r} ({type(start).__name__})")
        self.start_node, self.max_steps = start, max_steps

    def start(self, node: BaseNode[Any, Any]) -> BaseNode[Any, Any]:
        """Set ``node`` as the start node and return it (so ``g.start(a) >> b`` chains)."""
        if not isinstance(node, BaseNode):
            raise TypeError(f"start(node=...) needs a BaseNode, got {node!r}")
        self.start_node = node
        return node

    def get_next_node(self, curr: BaseNode[Any, Any], action: Action
                      ) -> BaseNode[Any, Any] | None:
        """Return the successor of ``curr`` for ``action`` (None: ``"default"``), or None.

        Warns ``Graph ends: 'ACTION' not found in [...]`` at the caller of ``run`` /
        ``stream`` when ``curr`` has other successors (saying so when ``post`` returned no
        action). Raises TypeError naming the node when ``action`` is not a str or None.
        """
        # The exact-type test first: this runs once per step, and most actions are plain str.
        if action.__class__ is not str and action is not None and not isinstance(action, str):
            raise TypeError(f"node {curr.node_id!r} returned action {action!r} "
                            f"({type(action).__name__}); an action must be a str or None")
        nxt = curr.successors.get(action or "default")
        if nxt is None and curr.successors and (action or "default") not in curr.successors:
            _warn(f"Graph ends: '{action}' not found in {list(curr.successors)}" + (
                f" (node {curr.node_id!r} returned no action: its post returned None)"
                if action is None else ""))
        return nxt

    def post(self, shared: Shared, prep_res: Any, exec_res: Any) -> Action:
        """Return ``exec_res``, the last action of the walk, so outer graphs can route on it."""
        return exec_res  # type: ignore[no-any-return]

    # -- the orchestration loop (sync and async twins) and what runs it
    def _first(self) -> tuple[BaseNode[Any, Any], Config | None]:
        if self.start_node is None:
            raise ValueError(f"graph {self.node_id!r} has no start node: pass "
                             f"Graph(start=node) or call graph.start(node)")
        return self.start_node, (self.config or None)

    def _too_many_steps(self, curr: BaseNode[Any, Any], done: int) -> RuntimeError:
        exc = RuntimeError(f"graph {self.node_id!r} reached max_steps={self.max_steps}; "
                           f"step {done + 1} would run node {curr.node_id!r}")
        _note(exc, f"kaygraph: raised by graph {self.node_id!r} at max_steps")
        return exc

    def _start_at(self, frame: _Frame | None) -> tuple[BaseNode[Any, Any] | None, int]:
        """The node a walk starts at and the steps it has done: the start node, or the
        saved position of a resumed durable run."""
        start, _ = self._first()
        if frame is None or frame.at is None:
            return start, 0
        done, node_id = frame.at
        frame.done = done
        nodes = next(_graphs(self))[1]
        return (None if node_id is None else nodes[node_id]), done

    def _walk(self, shared: Shared, params: dict[str, Any], index: int | None = None,
              detached: bool = False) -> Iterator[_Pair]:
        """Run the nodes from the start node; yield (node copy, action) per step. In an
        observed or durable run (``self._frame`` set) each step reports to its frame."""
        outer = self._frame
        frame = None if outer is None else outer.open(self, index, detached)
        curr, done = self._start_at(frame)
        node: Any = curr
        limit, cfg = self.max_steps, self.config or None
        new, next_node = object.__new__, self.get_next_node  # looked up once, not per step
        try:
            while curr is not None:
                if done == limit:
                    raise self._too_many_steps(curr, done)
                # The per-step shallow copy (_fresh, inlined: this loop is the hot path).
                node = new(curr.__class__)
                node.__dict__ = curr.__dict__.copy()
                node.params = params
                if cfg is not None and not node.config:
                    node.config = cfg
                done += 1
                if frame is not None:
                    frame.before(node)
                action = node._run(shared)
                curr = next_node(curr, action)
                if frame is not None:
                    frame.after(node, action, curr, shared)
                yield node, action
        except Exception as exc:
            _note(exc, f"kaygraph: raised in node {node.node_id!r} (step {done})")
            if frame is not None:
                frame.failed(node, exc)
            raise
        except BaseException as exc:  # an interrupt or a cancellation ends the step too
            if frame is not None:
                frame.failed(node, exc)
            raise

    async def _walk_async(self, shared: Shared, params: dict[str, Any],
                          index: int | None = None, detached: bool = False
                          ) -> AsyncIterator[_Pair]:
        # The async twin of _walk.
        outer = self._frame
        frame = None if outer is None else outer.open(self, index, detached)
        curr, done = self._start_at(frame)
        node: Any = curr
        limit, cfg = self.max_steps, self.config or None
        new, next_node = object.__new__, self.get_next_node  # looked up once, not per step
        try:
            while curr is not None:
                if done == limit:
                    raise self._too_many_steps(curr, done)
                # The per-step shallow copy (_fresh, inlined: this loop is the hot path).
                node = new(curr.__class__)
                node.__dict__ = curr.__dict__.copy()
                node.params = params
                if cfg is not None and not node.config:
                    node.config = cfg
                done += 1
                if frame is not None:
                    frame.before(node)
                action = await node._run_async(shared)
                curr = next_node(curr, action)
                if frame is not None:
                    frame.after(node, action, curr, shared)
                yield node, action
        except Exception as exc:
            _note(exc, f"kaygraph: raised in node {node.node_id!r} (step {done})")
            if frame is not None:
                frame.failed(node, exc)
            raise
        except BaseException as exc:  # an interrupt or a cancellation ends the step too
            if frame is not None:
                frame.failed(node, exc)
            raise

    # What one run walks, between the graph's own prep and post: the one place that says
    # it, so run and stream run the same thing. A batch graph walks once per params dict.
    _batch = False  # a batch graph's post gets exec_res=None, not the last action
    listeners: tuple[Callable[[Event], Any], ...] = ()  # called on every run of this graph

    def _walks(self, shared: Shared, prep_res: Any) -> Iterator[_Pair]:
        return self._walk(shared, {**self.params})

    def _run(self, shared: Shared) -> Action:
        prep_res = self.prep(shared)
        last = deque(self._walks(shared, prep_res), 1)  # drains the walk in C, keeps the last
        return self.post(shared, prep_res, None if self._batch or not last else last[0][1])

    def _steps(self, shared: Shared, run: _Run | None, value: Any = _FRESH
               ) -> Generator[Step, None, Action]:
        """A whole run of this graph (on a copy) as Steps; returns post's action. With
        ``run``, the run is observed and/or durable; with ``value``, a resume."""
        graph: Graph = _fresh(self)
        if run is not None and run.begin(graph, shared, value) == "done":
            return run.done_action
        try:
            prep_res, action = graph.prep(shared), None
            start = time.perf_counter()
            for node, action in graph._walks(shared, prep_res):
                yield Step(node, action, time.perf_counter() - start)
                start = time.perf_counter()
            action = graph.post(shared, prep_res, None if graph._batch else action)
        except BaseException as exc:
            if run is not None:
                run.fail(shared, exc)
            raise
        if run is not None:
            run.end(shared, action)
        return action

    def run(self, shared: Shared, *, run_id: str | None = None, store: Store | None = None,
            durability: str = "sync",
            listeners: Iterable[Callable[[Event], Any]] = ()) -> Action:
        """Run the graph on ``shared`` and return its last action (what ``post`` returned).

        Durable (``run_id`` and ``store``, both or neither: TypeError otherwise): a
        checkpoint after every completed step at every nesting level (``durability="sync"``:
        committed before the next step starts; ``"exit"``: only when the run ends, fails
        or is interrupted), so :meth:`Graph.resume` goes on after a crash; ValueError when the run
        id already has checkpoints or two nodes of one graph share an id. ``listeners``
        (callables taking an :class:`Event`, added to the graph's ``listeners``) see every
        step. Without any of these, the run costs what a plain run costs. Raises what the
        nodes raise; :class:`Interrupt` when a node asks a person.
        """
        if run_id is None and store is None and not listeners and not self.listeners:
            return _fresh(self)._run(shared)  # type: ignore[no-any-return]
        return _drain(self._steps(shared,  # type: ignore[no-any-return]
                                  _Run(self, run_id, store, durability, listeners)))

    def stream(self, shared: Shared, *, run_id: str | None = None, store: Store | None = None,
               durability: str = "sync", listeners: Iterable[Callable[[Event], Any]] = ()
               ) -> Generator[Step, None, Action]:
        """Run the graph on ``shared``, yielding a :class:`Step` after each top-level step.

        Runs exactly what ``run`` runs (a batch graph: every batch run), with the same
        keywords; a nested graph is one step. Calls the graph's own ``prep`` first and
        ``post`` last; the generator's return value (``StopIteration.value``) is what
        ``post`` returned. Raises what ``run`` raises, at the step that raised. A consumer
        that stops early stops the run after the current step, and ``post`` is not called.
        """
        run = None
        if run_id is not None or store is not None or listeners or self.listeners:
            run = _Run(self, run_id, store, durability, listeners)
        return self._steps(shared, run)

    def stream_resume(self, shared: Shared, *, run_id: str, store: Store,
                      value: Any = _NO_VALUE, durability: str = "sync",
                      listeners: Iterable[Callable[[Event], Any]] = ()
                      ) -> Generator[Step, None, Action]:
        """:meth:`Graph.resume`, yielding a :class:`Step` after each top-level step (as
        :meth:`Graph.stream`)."""
        return self._steps(shared, _Run(self, run_id, store, durability, listeners), value)

    def resume(self, shared: Shared, *, run_id: str, store: Store, value: Any = _NO_VALUE,
               durability: str = "sync",
               listeners: Iterable[Callable[[Event], Any]] = ()) -> Action:
        """Go on with durable run ``run_id`` from its last checkpoint in ``store``.

        Clears ``shared`` and fills it from the checkpoint, then runs from the saved
        position (a completed step never runs again; the step that was running runs again
        from ``prep``, with ``exec``'s journaled result when it had one) and returns the
        last action, like :meth:`Graph.run`. ``value`` answers an interrupted run: the
        interrupted node runs again and its ``interrupt`` call returns ``value``. A ``done``
        run returns its action and runs nothing. KeyError for an unknown run id;
        ValueError for a graph whose node ids or edges differ from the checkpoint's,
        for an interrupted run without ``value`` or a ``value`` for a run that is not
        interrupted; RuntimeError when another process resumed the run first.
        """
        return _drain(self._steps(shared,  # type: ignore[no-any-return]
                                  _Run(self, run_id, store, durability, listeners), value))

    def to_mermaid(self, visited: Iterable[Any] | None = None) -> str:
        """Return Mermaid flowchart text of the graph, the same in every process.

        One box per node (``node_id (Class)``), one arrow per successor labelled with its
        action (unlabelled for ``"default"``), nested graphs as subgraphs, loops drawn once.
        ``visited`` highlights the nodes a run went through (class ``visited``): node ids,
        paths (tuples of ids from this graph down), :class:`Event` objects (their paths)
        or a durable run's ``store.history(run_id)`` entries (their ``node_id``).
        """
        ids: dict[int, str] = {}
        lines, edges, hit = ["flowchart TD"], [], []
        ids_seen, paths_seen = set(), set()
        for v in visited or ():
            if isinstance(v, Event):
                paths_seen.add(v.path)
            elif isinstance(v, tuple):
                paths_seen.add((self.node_id, *v) if v[:1] != (self.node_id,) else v)
            else:
                ids_seen.add(v["node_id"] if isinstance(v, dict) else v)

        def draw(graph: Graph, indent: str, path: tuple[str, ...]) -> None:
            queue = deque([graph.start_node] if graph.start_node is not None else [])
            while queue:
                node = queue.popleft()
                if id(node) in ids:
                    continue
                ids[id(node)] = name = f"n{len(ids)}"
                if node.node_id in ids_seen or (*path, node.node_id) in paths_seen:
                    hit.append(name)
                label = f"{node.node_id} ({type(node).__name__})".replace('"', "#quot;")
                if isinstance(node, Graph):
                    lines.append(f'{indent}subgraph {name}["{label}"]')
                    draw(node, indent + "    ", (*path, node.node_id))
                    lines.append(f"{indent}end")
                else:
                    lines.append(f'{indent}{name}["{label}"]')
                for action, succ in node.successors.items():
                    if succ is not None:  # an explicit end draws no arrow
                        edges.append((node, action, succ))
                        queue.append(succ)

        draw(self, "    ", (self.node_id,))
        for src, action, dst in edges:
            label = action.replace('"', "#quot;")
            arrow = "-->" if action == "default" else f'-->|"{label}"|'
            lines.append(f"    {ids[id(src)]} {arrow} {ids[id(dst)]}")
        if hit:
            lines += ["    classDef visited fill:#ffd866,stroke:#a07800,stroke-width:2px",
                      f"    class {','.join(hit)} visited"]
        return "\n".join(lines) + "\n"


class BatchGraph(Graph):
    """A graph whose ``prep`` returns an iterable of params dicts (None: none).

    The sub-graph runs once per dict, one after another, with params
    ``{**graph.params, **item}``; ``stream`` yields the steps of every run. ``post``
    receives ``exec_res=None``. TypeError naming the graph when an item is not a dict (or
    ``prep`` returned a str or a dict).
    """

    def _merge(self, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise TypeError(f"batch graph {self.node_id!r}: prep must give params dicts, got "
                            f"{params!r} ({type(params).__name__})")
        return {**self.params, **params}

    _batch = True

    def _walks(self, shared: Shared, prep_res: Any) -> Iterator[_Pair]:
        items, outer = _items(self, prep_res), self._frame
        pairs = enumerate(items) if outer is None else outer.batch(self, items)
        return chain.from_iterable(self._walk(shared, self._merge(params), i)
                                   for i, params in pairs)


class AsyncGraph(Graph, AsyncNode[Any, Any]):
    """A graph that runs async and sync nodes: ``await graph.run_async(shared)``.

    Same arguments and behaviour as :class:`Graph`; sync nodes run inline on the event
    loop. ``stream_async`` is the async twin of ``stream``.
    """

    _run = AsyncNode._run  # a sync run of an async graph is an error

    def _walks_async(self, shared: Shared, prep_res: Any) -> AsyncIterator[_Pair]:
        return self._walk_async(shared, {**self.params})

    async def _run_async(self, shared: Shared) -> Action:
        # The async twin of Graph._run.
        prep_res, action = await self.prep_async(shared), None
        async for _node, action in self._walks_async(shared, prep_res):  # noqa: B007
            pass
        return await self.post_async(shared, prep_res, None if self._batch else action)

    async def _steps_async(self, shared: Shared, run: _Run | None, value: Any = _FRESH,
                           box: list[Action] | None = None) -> AsyncIterator[Step]:
        # The async twin of Graph._steps; an async generator cannot return: post's action
        # goes in ``box``.
        graph: AsyncGraph = _fresh(self)
        if run is not None and run.begin(graph, shared, value) == "done":
            if box is not None:
                box.append(run.done_action)
            return
        try:
            prep_res, action = await graph.prep_async(shared), None
            start = time.perf_counter()
            async for node, action in graph._walks_async(shared, prep_res):
                yield Step(node, action, time.perf_counter() - start)
                start = time.perf_counter()
            action = await graph.post_async(shared, prep_res, None if graph._batch else action)
        except BaseException as exc:
            if run is not None:
                run.fail(shared, exc)
            raise
        if run is not None:
            run.end(shared, action)
        if box is not None:
            box.append(action)

    async def run_async(self, shared: Shared, *, run_id: str | None = None,
                        store: Store | None = None, durability: str = "sync",
                        listeners: Iterable[Callable[[Event], Any]] = ()) -> Action:
        """Run the graph and return its last action: the async twin of :meth:`Graph.run`,
        with the same keywords. Warns when the graph has successors of its own."""
        self._warn_alone("an outer AsyncGraph")
        if run_id is None and store is None and not listeners and not self.listeners:
            return await _fresh(self)._run_async(shared)  # type: ignore[no-any-return]
        box: list[Action] = []
        async for _ in self._steps_async(
                shared, _Run(self, run_id, store, durability, listeners), box=box):
            pass
        return box[0]

    def stream_async(self, shared: Shared, *, run_id: str | None = None,
                     store: Store | None = None, durability: str = "sync",
                     listeners: Iterable[Callable[[Event], Any]] = ()) -> AsyncIterator[Step]:
        """Run the graph, yielding a :class:`Step` after each top-level step.

        The async twin of :meth:`Graph.stream` (async generators cannot return a value:
        ``post_async`` is called at the end and its action is dropped). A concurrent batch
        graph yields the steps of its runs as they come.
        """
        run = None
        if run_id is not None or store is not None or listeners or self.listeners:
            run = _Run(self, run_id, store, durability, listeners)
        return self._steps_async(shared, run)

    async def resume_async(self, shared: Shared, *, run_id: str, store: Store,
                           value: Any = _NO_VALUE, durability: str = "sync",
                           listeners: Iterable[Callable[[Event], Any]] = ()) -> Action:
        """The async twin of :meth:`Graph.resume`."""
        box: list[Action] = []
        async for _ in self._steps_async(
                shared, _Run(self, run_id, store, durability, listeners), value, box):
            pass
        return box[0]

    def stream_resume_async(self, shared: Shared, *, run_id: str, store: Store,
                            value: Any = _NO_VALUE, durability: str = "sync",
                            listeners: Iterable[Callable[[Event], Any]] = ()
                            ) -> AsyncIterator[Step]:
        """:meth:`AsyncGraph.resume_async`, yielding a :class:`Step` after each top-level step."""
        return self._steps_async(shared, _Run(self, run_id, store, durability, listeners),
                                 value)


class AsyncBatchGraph(AsyncGraph, BatchGraph):
    """An async batch graph: the sub-graph runs once per params dict, one after another."""

    max_concurrency: int | None = 1

    async def _walks_async(self, shared: Shared, batch: Any) -> AsyncIterator[_Pair]:
        # The batch runs go on in a task of their own and hand their steps over through a
        # queue, so that runs in flight together stream as one sequence. Runs in flight
        # together are detached from a durable run's position: each is recorded when done.
        items, outer = _items(self, batch), self._frame
        concurrent = self.max_concurrency != 1
        pairs = enumerate(items) if outer is None else outer.batch(self, items, concurrent)
        queue: asyncio.Queue[_Pair | None] = asyncio.Queue()

        async def one(pair: tuple[int, Any]) -> None:
            i, params = pair
            async for step in self._walk_async(shared, self._merge(params), i, concurrent):
                queue.put_nowait(step)
            if outer is not None and concurrent:
                outer.ran(self, i, shared)

        async def every() -> None:
            try:
                await _map_tasks(one, pairs, self.max_concurrency)
            finally:
                queue.put_nowait(None)

        runs = asyncio.ensure_future(every())
        try:
            while (step := await queue.get()) is not None:
                yield step
            await runs  # re-raises the error of a failed run
        finally:
            if not runs.done():  # the consumer stopped early
                runs.cancel()
                await asyncio.gather(runs, return_exceptions=True)


class AsyncParallelBatchGraph(AsyncBatchGraph):
    """An async batch graph whose sub-graph runs concurrently, once per params dict (a
    subclass of AsyncBatchGraph, whose limit is 1).

    ``max_concurrency`` (int >= 1; None: the class attribute, which is None here: no
    limit): never more than that many runs in flight; a subclass may set it on the class,
    and a value set later is checked when the graph runs. The other arguments are
    :class:`Graph`'s. The first run that fails cancels the unfinished ones, no further run
    starts, and its exception propagates.
    """

    max_concurrency: int | None = None

    def __init__(self, start: BaseNode[Any, Any] | None = None,
                 config: Config | dict[str, Any] | None = None, *,
                 max_steps: int | None = MAX_STEPS, node_id: str | None = None,
                 max_concurrency: int | None = None) -> None:
        super().__init__(start, config, max_steps=max_steps, node_id=node_id)
        _check("max_concurrency", max_concurrency, 1, optional=True)
        if max_concurrency is not None:
            self.max_concurrency = max_concurrency


# --------------------------------------------------------------------------- aliases

# PocketFlow's names, so its code runs by changing the import.
Flow = Graph
AsyncFlow = AsyncGraph
BatchFlow = BatchGraph
AsyncBatchFlow = AsyncBatchGraph
AsyncParallelBatchFlow = AsyncParallelBatchGraph
