"""kaygraph: nodes, actions and graphs for LLM, agent and data workflows, in one file.

A node runs in three phases: ``prep(shared)`` reads the shared store (a plain ``dict``),
``exec(prep_res)`` does the work without touching the store, and
``post(shared, prep_res, exec_res)`` writes results back and returns an action (a ``str``, or
``None`` for ``"default"``). Wire nodes with ``a >> b`` and ``a - "action" >> b`` into a
:class:`Graph` and call ``graph.run(shared)``.

The public names and their behaviour follow the core of KayGraph 0.3.1, and the ``Flow``
aliases let PocketFlow code run by changing its import. This file uses the standard library
only (Python 3.10 to 3.13), so it can be copied into another project as it is. MIT licence.

Sections, in order: helpers; Config; store and cache protocols; BaseNode; Node and its retry
loop; batch and parallel nodes; async nodes; MetricsNode and ValidatedNode; Step and the
graphs; aliases.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import inspect
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
from itertools import chain
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, runtime_checkable

__version__ = "0.1.0"
__all__ = [
    "BaseNode", "Node", "BatchNode", "ParallelBatchNode",
    "AsyncNode", "AsyncBatchNode", "AsyncParallelBatchNode",
    "MetricsNode", "ValidatedNode", "Config", "Step", "Store", "Cache", "Interrupt",
    "Graph", "BatchGraph", "AsyncGraph", "AsyncBatchGraph", "AsyncParallelBatchGraph",
    "Flow", "AsyncFlow", "BatchFlow", "AsyncBatchFlow", "AsyncParallelBatchFlow",
]

Shared = dict[str, Any]
Action = str | None
PrepRes = TypeVar("PrepRes")  # what prep returns and exec takes
ExecRes = TypeVar("ExecRes")  # what exec returns and post takes
Item = TypeVar("Item")  # one item of a batch node
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


def _map_threads(node: Node[Any, Any], items: Iterable[Any], executor: cf.Executor,
                 window: int) -> list[Any]:
    """Run ``_run_item(node, item)`` for each item on ``executor``; results in input order.

    At most ``window`` items are submitted and not yet finished at any time, so a huge
    generator is never materialised. The first failure cancels the futures not yet started,
    waits for the running ones and re-raises: nothing is left running.
    """
    results = _InOrder()
    pending: dict[cf.Future[Any], int] = {}

    def collect(when: str) -> None:
        done, _ = cf.wait(pending, return_when=when)
        for fut in done:
            results.put(pending.pop(fut), fut.result())  # re-raises the item's error

    try:
        for i, item in enumerate(items):
            pending[executor.submit(_run_item, node, item)] = i
            if len(pending) >= window:
                collect(cf.FIRST_COMPLETED)
        while pending:
            collect(cf.FIRST_EXCEPTION)
    except BaseException:
        # Wait only for what could not be cancelled: a cancelled future may never be
        # marked done by an executor that is busy with other work.
        cf.wait([fut for fut in pending if not fut.cancel()])
        raise
    return results.done


async def _map_tasks(fn: Callable[[Any], Awaitable[Any]], items: Iterable[Any],
                     limit: int | None) -> list[Any]:
    """Await ``fn(item)`` for each item concurrently, at most ``limit`` at a time (None: all).

    Results come back in input order. ``limit`` workers pull from one iterator, so a bounded
    run never materialises its input. The first failure cancels every unfinished item, stops
    the pulling at once (also when an item absorbs its cancellation) and re-raises once they
    have all stopped: no task is left running. ``limit`` is checked here, where it is used.
    """
    _check("max_concurrency", limit, 1, optional=True)
    stopped = False
    results = _InOrder()

    def pull() -> Iterator[tuple[int, Any]]:
        for pair in enumerate(items):
            if stopped:
                return
            yield pair

    source = pull()

    async def worker() -> None:
        for i, item in source:
            results.put(i, await fn(item))

    tasks: list[asyncio.Future[Any]] = []
    try:  # the source may raise while tasks are being made: they are cleaned up too
        if limit is None:  # one task per item; gather keeps the order
            tasks.extend(asyncio.ensure_future(fn(item)) for _, item in source)
        else:  # `limit` workers share the source, so a huge input is never materialised
            tasks.extend(asyncio.ensure_future(worker()) for _ in range(limit))
        done = await asyncio.gather(*tasks)
    except BaseException:
        stopped = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return done if limit is None else results.done


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
        """Copy the checkpoints of ``run_id`` up to ``step`` under ``new_run_id`` (no item
        results). KeyError for an unknown run or step; ValueError if ``new_run_id`` exists."""

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
    _hooked = False  # True when a class overrides before_prep or after_exec

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Skipping the two no-op hook calls saves a measurable part of each graph step.
        cls._hooked = (cls.before_prep is not BaseNode.before_prep
                       or cls.after_exec is not BaseNode.after_exec)
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
        self.successors: dict[str, BaseNode[Any, Any]] = {}
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

    def next(self, node: BaseNode[Any, Any], action: str = "default") -> BaseNode[Any, Any]:
        """Register ``node`` as the successor for ``action`` and return ``node``.

        Re-registering an action warns (``UserWarning``) and replaces it. Raises TypeError
        when ``node`` is not a BaseNode or ``action`` is not a str.
        """
        if not isinstance(node, BaseNode):
            raise TypeError(f"next(node=...) needs a BaseNode, got {node!r} "
                            f"({type(node).__name__}) for action {action!r} of {self!r}")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {action!r} ({type(action).__name__})")
        if action in self.successors:
            _warn(f"Overwriting successor for action '{action}' of node '{self.node_id}'")
        self.successors[action] = node
        return node

    def __rshift__(self, other: BaseNode[Any, Any]) -> BaseNode[Any, Any]:
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

    def _run(self, shared: Shared) -> Action:
        hooked = self._hooked
        try:
            if hooked:
                self.before_prep(shared)
            prep_res = self.prep(shared)
            exec_res = self._exec(prep_res)
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

    def __rshift__(self, other: BaseNode[Any, Any]) -> BaseNode[Any, Any]:
        return self.src.next(other, self.action)


# --------------------------------------------------------------------------- Node

_CORO = types.CoroutineType

class Node(BaseNode[PrepRes, ExecRes]):
    """A node whose ``exec`` is retried: the retry loop that every node type shares.

    ``Node(max_retries=1, wait=0, node_id=None, config=None, *, backoff=1.0, max_wait=None,
    jitter=0.0, retry_on=Exception)``:

    - ``max_retries`` (int >= 1): attempts in all, the first included.
    - ``wait`` (seconds >= 0): the wait before the second attempt; before attempt k+1 it is
      ``min(wait * backoff**(k-1), max_wait)`` plus a uniform random ``[0, jitter]`` seconds.
    - ``retry_on``: an exception class, a tuple of them, or a predicate ``exc -> bool``. An
      error it does not accept skips the remaining attempts. An error raised by the
      predicate itself propagates, chained to the error it was judging.
    - ``timeout`` (seconds, async nodes only; see :class:`AsyncNode`).

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

    def __init__(self, max_retries: int = 1, wait: float = 0, node_id: str | None = None,
                 config: Config | dict[str, Any] | None = None, *, backoff: float = 1.0,
                 max_wait: float | None = None, jitter: float = 0.0,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...]
                 | Callable[[BaseException], bool] = Exception,
                 timeout: float | None = None) -> None:
        super().__init__(node_id=node_id, config=config)
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
        return delay

    def _retry(self, item: Any) -> Any:
        self.cur_retry = 0
        while True:
            try:
                return self.exec(item)
            except Exception as exc:
                delay = self._retry_delay(exc)
                if delay is None:
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
        return self._awaited([result])[0] if result.__class__ is _CORO else result


# --------------------------------------------------------------------------- batch nodes

class BatchNode(Node[Any, Any], Generic[Item, Result]):
    """A node whose ``prep`` returns an iterable of items; ``exec(item)`` runs per item.

    ``prep`` may return a list, a generator or None (no items); a str, bytes or dict is a
    TypeError naming the node (it would run one item per character or key). Each item gets
    its own retries; ``post`` receives the list of results in input order. Items run one
    after another in the calling thread. Generic in the item and result types:
    ``class Parse(BatchNode[Path, Stats])``.
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
        return self._awaited([self._retry(item) for item in _items(self, items)])


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
                 | Callable[[BaseException], bool] = Exception) -> None:
        super().__init__(max_retries, wait, node_id, config, backoff=backoff,
                         max_wait=max_wait, jitter=jitter, retry_on=retry_on)
        _check("max_workers", max_workers, 1, optional=True)
        if executor is not None and not isinstance(executor, cf.Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {executor!r}")
        self.max_workers, self.executor = max_workers, executor

    def _exec(self, items: Any) -> list[Any]:
        items, executor = _items(self, items), self.executor
        shipped = _fresh(self)
        # Ship neither the rest of the graph nor the executor (a process pool won't pickle).
        shipped.successors, shipped.executor = {}, None
        if executor is None:
            with cf.ThreadPoolExecutor(self.max_workers, thread_name_prefix="kaygraph") as pool:
                return self._awaited(_map_threads(shipped, items, pool, 2 * pool._max_workers))
        if isinstance(executor, cf.ProcessPoolExecutor):
            try:
                pickle.dumps(shipped)
            except Exception as exc:
                raise TypeError(
                    f"node {self.node_id!r} cannot be pickled for {type(executor).__name__} "
                    f"({exc}); keep only picklable attributes (no lambdas, locks or open "
                    f"clients) or use threads") from exc
        workers = self.max_workers or getattr(executor, "_max_workers", None) or os.cpu_count()
        return self._awaited(_map_threads(shipped, items, executor, 2 * (workers or 1)))


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
                    return await self.exec_fallback_async(item, exc)
                if delay:
                    await asyncio.sleep(delay)
            self.cur_retry += 1

    async def _exec_async(self, prep_res: Any) -> Any:
        return await self._retry_async(prep_res)

    async def _run_async(self, shared: Shared) -> Action:
        # The async twin of BaseNode._run.
        hooked = self._hooked
        try:
            if hooked:
                self.before_prep(shared)
            prep_res = await self.prep_async(shared)
            exec_res = await self._exec_async(prep_res)
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
        one = self.max_concurrency == 1
        return await _map_tasks(self._retry_async if one else
                                lambda item: _fresh(self)._retry_async(item),
                                _items(self, items), self.max_concurrency)


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
                 timeout: float | None = None, max_concurrency: int | None = None) -> None:
        super().__init__(max_retries, wait, node_id, config, backoff=backoff,
                         max_wait=max_wait, jitter=jitter, retry_on=retry_on, timeout=timeout)
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
        (nearest rank).
        """
        with _metrics_lock:
            m = dict(self.metrics)
            times = sorted(m["times"])
        n = m["executions"]
        if not n:
            return {"status": "no_executions"}

        def rank(q: float) -> float:
            return float(times[max(0, math.ceil(q * len(times)) - 1)])

        return {
            "total_executions": n, "success_rate": m["successes"] / n,
            "avg_execution_time": m["total_time"] / n, "min_execution_time": m["min_time"],
            "max_execution_time": m["max_time"], "total_retries": m["retries"],
            "p50_execution_time": rank(0.50), "p95_execution_time": rank(0.95),
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
        if nxt is None and curr.successors:
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

    def _walk(self, shared: Shared, params: dict[str, Any]) -> Iterator[_Pair]:
        """Run the nodes from the start node; yield (node copy, action) per step."""
        start, cfg = self._first()
        curr: BaseNode[Any, Any] | None = start
        done, node, limit = 0, start, self.max_steps
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
                action = node._run(shared)
                curr = next_node(curr, action)
                yield node, action
        except Exception as exc:
            _note(exc, f"kaygraph: raised in node {node.node_id!r} (step {done})")
            raise

    async def _walk_async(self, shared: Shared, params: dict[str, Any]
                          ) -> AsyncIterator[_Pair]:
        # The async twin of _walk.
        start, cfg = self._first()
        curr: BaseNode[Any, Any] | None = start
        done, node, limit = 0, start, self.max_steps
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
                action = await node._run_async(shared)
                curr = next_node(curr, action)
                yield node, action
        except Exception as exc:
            _note(exc, f"kaygraph: raised in node {node.node_id!r} (step {done})")
            raise

    # What one run walks, between the graph's own prep and post: the one place that says
    # it, so run and stream run the same thing. A batch graph walks once per params dict.
    _batch = False  # a batch graph's post gets exec_res=None, not the last action

    def _walks(self, shared: Shared, prep_res: Any) -> Iterator[_Pair]:
        return self._walk(shared, {**self.params})

    def _run(self, shared: Shared) -> Action:
        prep_res = self.prep(shared)
        last = deque(self._walks(shared, prep_res), 1)  # drains the walk in C, keeps the last
        return self.post(shared, prep_res, None if self._batch or not last else last[0][1])

    def stream(self, shared: Shared) -> Generator[Step, None, Action]:
        """Run the graph on ``shared``, yielding a :class:`Step` after each top-level step.

        Runs exactly what ``run`` runs (a batch graph: every batch run); a nested graph is
        one step. Calls the graph's own ``prep`` first and ``post`` last; the generator's
        return value (``StopIteration.value``) is what ``post`` returned. Raises what
        ``run`` raises, at the step that raised. A consumer that stops early stops the run
        after the current step, and ``post`` is not called.
        """
        graph: Graph = _fresh(self)
        prep_res, action = graph.prep(shared), None
        start = time.perf_counter()
        for node, action in graph._walks(shared, prep_res):
            yield Step(node, action, time.perf_counter() - start)
            start = time.perf_counter()
        return graph.post(shared, prep_res, None if graph._batch else action)

    def to_mermaid(self) -> str:
        """Return Mermaid flowchart text of the graph, the same in every process.

        One box per node (``node_id (Class)``), one arrow per successor labelled with its
        action (unlabelled for ``"default"``), nested graphs as subgraphs, loops drawn once.
        """
        ids: dict[int, str] = {}
        lines, edges = ["flowchart TD"], []

        def draw(graph: Graph, indent: str) -> None:
            queue = deque([graph.start_node] if graph.start_node is not None else [])
            while queue:
                node = queue.popleft()
                if id(node) in ids:
                    continue
                ids[id(node)] = name = f"n{len(ids)}"
                label = f"{node.node_id} ({type(node).__name__})".replace('"', "#quot;")
                if isinstance(node, Graph):
                    lines.append(f'{indent}subgraph {name}["{label}"]')
                    draw(node, indent + "    ")
                    lines.append(f"{indent}end")
                else:
                    lines.append(f'{indent}{name}["{label}"]')
                for action, succ in node.successors.items():
                    edges.append((node, action, succ))
                    queue.append(succ)

        draw(self, "    ")
        for src, action, dst in edges:
            label = action.replace('"', "#quot;")
            arrow = "-->" if action == "default" else f'-->|"{label}"|'
            lines.append(f"    {ids[id(src)]} {arrow} {ids[id(dst)]}")
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
        return chain.from_iterable(self._walk(shared, self._merge(params))
                                   for params in _items(self, prep_res))


class AsyncGraph(Graph, AsyncNode[Any, Any]):
    """A graph that runs async and sync nodes: ``await graph.run_async(shared)``.

    Same arguments and behaviour as :class:`Graph`; sync nodes run inline on the event
    loop. ``stream_async`` is the async twin of ``stream``.
    """

    _run = AsyncNode._run  # a sync run of an async graph is an error

    def _walks_async(self, shared: Shared, prep_res: Any) -> AsyncIterator[_Pair]:
        return self._walk_async(shared, {**self.params})

    async def _run_async(self, shared: Shared) -> Action:
        # The async twin of Graph._run, and stream_async without the steps.
        prep_res, action = await self.prep_async(shared), None
        async for _node, action in self._walks_async(shared, prep_res):  # noqa: B007
            pass
        return await self.post_async(shared, prep_res, None if self._batch else action)

    async def stream_async(self, shared: Shared) -> AsyncIterator[Step]:
        """Run the graph, yielding a :class:`Step` after each top-level step.

        The async twin of :meth:`Graph.stream` (async generators cannot return a value:
        ``post_async`` is called at the end and its action is dropped). A concurrent batch
        graph yields the steps of its runs as they come.
        """
        graph: AsyncGraph = _fresh(self)
        prep_res, action = await graph.prep_async(shared), None
        start = time.perf_counter()
        async for node, action in graph._walks_async(shared, prep_res):
            yield Step(node, action, time.perf_counter() - start)
            start = time.perf_counter()
        await graph.post_async(shared, prep_res, None if graph._batch else action)


class AsyncBatchGraph(AsyncGraph, BatchGraph):
    """An async batch graph: the sub-graph runs once per params dict, one after another."""

    max_concurrency: int | None = 1

    async def _walks_async(self, shared: Shared, batch: Any) -> AsyncIterator[_Pair]:
        # The batch runs go on in a task of their own and hand their steps over through a
        # queue, so that runs in flight together stream as one sequence.
        queue: asyncio.Queue[_Pair | None] = asyncio.Queue()

        async def one(params: Any) -> None:
            async for step in self._walk_async(shared, self._merge(params)):
                queue.put_nowait(step)

        async def every() -> None:
            try:
                await _map_tasks(one, _items(self, batch), self.max_concurrency)
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
