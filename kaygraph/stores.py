"""Stores for durable runs and caches for node results, in memory and in SQLite.

Standard library only. :class:`MemoryStore` and :class:`SQLiteStore` implement the core's
``Store`` protocol; :class:`MemoryCache` and :class:`SQLiteCache` its ``Cache`` protocol.
:class:`BaseStore` and :class:`BaseCache` hold what every backend shares (argument checks,
serialisation, content-addressed dedupe, compare-and-set, error messages); a backend fills in
a few primitive operations. ``kaygraph.postgres`` and ``kaygraph.redis`` build on them.

Values are serialised with JSON unless a ``serializer`` is given: any object with
``dumps(obj) -> bytes | str`` and ``loads(data)`` (``loads`` gets back what ``dumps`` gave).
Nothing here ever unpickles, so a store or cache file is safe to open.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["BaseStore", "MemoryStore", "SQLiteStore", "BaseCache", "MemoryCache", "SQLiteCache",
           "STATUSES"]

STATUSES = ("running", "interrupted", "done", "failed")
_CHECKPOINT_KEYS = frozenset({
    "run_id", "step", "status", "node_id", "position", "shared", "params", "action", "error",
    "interrupt", "fingerprint", "time",
})
_ATOMS = frozenset({str, bytes, int, float, bool, type(None)})
_NOTHING: frozenset[str] = frozenset()


def _compact_json() -> Callable[[Any], str]:
    """``json.dumps(obj, separators=(",", ":"), ensure_ascii=False)``, with its C encoder
    made once: ``JSONEncoder.encode`` makes a new one per call, which costs more than
    encoding a small checkpoint. Where ``json`` has no C encoder (its internal
    ``c_make_encoder``), ``JSONEncoder.encode``. No check for circular references: one
    fails as RecursionError, which the callers turn into the same TypeError."""
    base = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    probe = {"a": [1.5, None, True, "é\n"], "b": {}}
    try:
        c_encode = make(None, base.default, json.encoder.encode_basestring, None, ":", ",",
                        False, False, True)  # type: ignore[misc]
        if "".join(c_encode(probe, 0)) != base.encode(probe):
            raise TypeError("not the same JSON")
    except TypeError:  # no C encoder, or one that takes other arguments
        return base.encode
    join = "".join
    return lambda obj: join(c_encode(obj, 0))


_encode = _compact_json()
_NUMBERS = frozenset({int, float, bool, type(None)})
_HUGE = 10**60  # ints below this in size are under _INLINE bytes of JSON
# A shared value serialised to at most this many bytes is kept in its checkpoint's row
# rather than as a blob: it costs no more there than its hash would, and saves a write.
_INLINE = 64

# The fields of a checkpoint row's meta, serialised as a list in this order: smaller than
# an object with these keys (as rows were written before; load reads both), so more rows
# fit a page and a run's appends split fewer.
_META = ("position", "params", "action", "error", "interrupt", "inline")

# A checkpoint row, as every backend keeps it: (step, nonce, status, node_id, time,
# fingerprint hash, shared index as JSON {key: hash, or "" when the value is inline},
# the other fields and the inline values serialised).
Row = tuple[int, int, str, "str | None", float, str, str, bytes]


# --------------------------------------------------------------------------- helpers

class _Codec:
    """Turns values into bytes and back with one serializer (json when it is None).

    ``name`` is what error messages call it. Raises TypeError naming ``serializer`` when it
    lacks ``dumps``/``loads`` or its ``dumps(None)`` is neither bytes nor str.
    """

    __slots__ = ("name", "dumps", "loads", "json")

    def __init__(self, serializer: Any) -> None:
        self.json = serializer is None  # the default: small numbers need no dumps to size
        if serializer is None:
            self.name = "json"
            self.dumps: Any = _json_dumps
            self.loads: Any = json.loads  # takes bytes
            return
        dumps, loads = getattr(serializer, "dumps", None), getattr(serializer, "loads", None)
        if not callable(dumps) or not callable(loads):
            raise TypeError("serializer must have dumps(obj) -> bytes | str and loads(data), "
                            f"got {serializer!r}")
        self.name = getattr(serializer, "__name__", None) or type(serializer).__name__
        # Every checkpoint holds None values, so dumps(None) must work; its type tells
        # whether loads wants str or bytes back.
        probe = dumps(None)
        if isinstance(probe, str):
            self.dumps = lambda obj: dumps(obj).encode()
            self.loads = lambda data: loads(bytes(data).decode())
        elif isinstance(probe, (bytes, bytearray, memoryview)):
            self.dumps = lambda obj: bytes(dumps(obj))
            self.loads = loads
        else:
            raise TypeError(f"serializer {self.name}: dumps must return bytes or str, "
                            f"got {type(probe).__name__}")


def _json_dumps(obj: Any) -> bytes:
    """Compact JSON as UTF-8 bytes. An int, None or a bool is written directly: the
    encoder's set-up per call costs more than the value (a step's result is often one)."""
    kind = type(obj)
    if kind is int:
        return int.__repr__(obj).encode()  # what json writes for an int
    if obj is None:
        return b"null"
    if kind is bool:
        return b"true" if obj else b"false"
    return _encode(obj).encode()


def _immutable(value: Any) -> bool:
    """True for str, bytes, numbers, bool, None and tuples of these (recursively)."""
    kind = type(value)
    return kind in _ATOMS or (kind is tuple and all(_immutable(v) for v in value))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _nonce() -> int:
    # Tells one checkpoint row from another with the same step (after a delete).
    return random.getrandbits(62)


def _check_str(name: str, value: Any) -> None:
    if type(value) is not str or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r} ({type(value).__name__})")


def _check_step(name: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    if type(value) is not int:
        raise TypeError(f"{name} must be an int{' or None' if optional else ''}, "
                        f"got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")


def _check_status(status: Any) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(map(repr, STATUSES))}, "
                         f"got {status!r}")


def _check_checkpoint(cp: Any, expected_step: Any) -> None:
    """Raise TypeError/ValueError naming the field when ``cp`` is not a checkpoint dict."""
    if type(cp) is not dict:
        raise TypeError(f"checkpoint must be a dict, got {type(cp).__name__}")
    if cp.keys() != _CHECKPOINT_KEYS:
        missing, extra = sorted(_CHECKPOINT_KEYS - cp.keys()), sorted(cp.keys() - _CHECKPOINT_KEYS)
        raise ValueError(f"checkpoint keys: missing {missing}, unexpected {extra}")
    _check_str("checkpoint['run_id']", cp["run_id"])
    _check_step("step", cp["step"])
    _check_step("expected_step", expected_step, optional=True)
    if expected_step is not None and cp["step"] <= expected_step:
        raise ValueError(f"checkpoint['step'] must be > expected_step, got step {cp['step']} "
                         f"and expected_step {expected_step}")
    _check_status(cp["status"])
    if cp["node_id"] is not None and type(cp["node_id"]) is not str:
        raise TypeError(f"checkpoint['node_id'] must be a str or None, got {cp['node_id']!r}")
    for key in ("shared", "params"):
        if type(cp[key]) is not dict:
            raise TypeError(f"checkpoint[{key!r}] must be a dict, got {type(cp[key]).__name__}")
    if type(cp["fingerprint"]) is not str:
        raise TypeError(f"checkpoint['fingerprint'] must be a str, got {cp['fingerprint']!r}")
    at = cp["time"]
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not math.isfinite(at):
        raise TypeError(f"checkpoint['time'] must be a finite number (seconds), got {at!r}")


class _Conflict(Exception):
    """A backend's commit found another latest step (``found``; None: no checkpoint)."""

    def __init__(self, found: int | None) -> None:
        self.found = found


class _Stale(Exception):
    """A backend's commit found the expected step, written by another writer than we knew."""


class _Seen:
    """What this store object knows is committed for one run: what a save may skip."""

    __slots__ = ("step", "nonce", "hashes", "objs", "fp", "index")

    def __init__(self, step: int, nonce: int, hashes: set[str],
                 objs: dict[str, tuple[Any, str]], fp: tuple[Any, str],
                 index: tuple[dict[str, str], str]) -> None:
        self.step, self.nonce, self.hashes, self.objs, self.fp = step, nonce, hashes, objs, fp
        self.index = index  # the shared index of that checkpoint, and its JSON


def _unknown_run(run_id: str) -> KeyError:
    return KeyError(f"unknown run {run_id!r}: the store has no checkpoint for it")


def _refs(rows: list[Row]) -> set[str]:
    """The blob hashes that checkpoint rows reference (fingerprint and shared values)."""
    hashes: set[str] = set()
    for row in rows:
        hashes.add(row[5])
        hashes.update(json.loads(row[6]).values())
    hashes.discard("")  # a small value kept in the row itself
    return hashes


# --------------------------------------------------------------------------- BaseStore

class BaseStore:
    """The logic of every store: checks, serialisation, dedupe, compare-and-set.

    ``BaseStore(serializer=None)``: ``serializer`` as in the module docstring (json when
    None). A backend subclass implements the primitives ``_commit``, ``_latest``,
    ``_history``, ``_runs``, ``_put_items``, ``_get_items``, ``_copy`` and ``_remove``; the
    public methods (the core's ``Store`` protocol) are here.

    Each top-level value of ``shared`` is serialised on its own. One of more than 64 bytes
    is a blob addressed by the SHA-256 of those bytes, written once per run however many
    checkpoints hold it; a smaller one goes in the checkpoint's row (where it costs no more
    than its hash). A value that is the very same immutable object (str, bytes, numbers,
    None, tuples of them) as at this object's last save of the run is not even serialised
    again. That memory of the last save lives in this object
    only, is updated after a commit succeeds, and is checked against the database on each
    commit, so another writer (a conflict, a delete, a fork) can never make a save skip a
    blob that is missing.
    """

    _SEEN_RUNS = 64  # runs whose last save this object remembers (least recent dropped)
    _SEEN_HASHES = 10_000  # value hashes it remembers per run

    def __init__(self, serializer: Any = None) -> None:
        self._codec = _Codec(serializer)
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self._seen_lock = threading.Lock()

    # -- the Store protocol

    def save(self, checkpoint: dict[str, Any], expected_step: int | None) -> None:
        """Add ``checkpoint`` (a dict with exactly the keys of the ``Store`` protocol) as
        the latest of its run, atomically, if the run's latest step is ``expected_step``
        (None: the run must have no checkpoint yet).

        Raises RuntimeError naming the run, the expected and the found step when another
        writer got there first; TypeError naming the key and the node when a value cannot
        be serialised; TypeError/ValueError for a malformed checkpoint. On any error nothing
        is written, so the last good checkpoint stays.
        """
        _check_checkpoint(checkpoint, expected_step)
        run_id = checkpoint["run_id"]
        with self._seen_lock:
            seen = self._seen.get(run_id)
        if seen is not None and seen.step != expected_step:
            seen = None
        try:
            self._save(checkpoint, expected_step, seen)
        except _Stale:  # another writer replaced the run since: write everything
            self._forget(run_id)
            self._save(checkpoint, expected_step, None)

    def load(self, run_id: str) -> dict[str, Any] | None:
        """Return the latest checkpoint of ``run_id`` as a dict of fresh, decoded objects
        (the keys ``save`` takes; JSON turns tuples into lists), or None for an unknown run.
        """
        _check_str("run_id", run_id)
        got = self._latest(run_id)
        if got is None:
            return None
        row, blobs = got
        step, nonce, status, node_id, at, fp_hash, index_json, meta = row
        loads = self._codec.loads
        index: dict[str, str] = json.loads(index_json)
        missing = _refs([row]) - blobs.keys()
        if missing:
            raise RuntimeError(f"run {run_id!r} step {step}: the store lacks the values "
                               f"{sorted(missing)}; it was changed outside kaygraph")
        fields = loads(meta)
        if isinstance(fields, dict):  # a row written while meta was an object with _META keys
            fields = [fields[name] for name in _META]
        position, params, action, error, interrupt, inline = fields
        shared = {key: loads(blobs[digest]) if digest else inline[key]
                  for key, digest in index.items()}
        fingerprint = loads(blobs[fp_hash])
        objs = {k: (v, index[k]) for k, v in shared.items() if _immutable(v)}
        self._remember(run_id, _Seen(step, nonce, set(blobs), objs, (fingerprint, fp_hash),
                                     (index, index_json)))
        return {
            "run_id": run_id, "step": step, "status": status, "node_id": node_id,
            "position": position, "shared": shared, "params": params, "action": action,
            "error": error, "interrupt": interrupt, "fingerprint": fingerprint, "time": at,
        }

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """Return ``{"step", "node_id", "status", "time"}`` per checkpoint of ``run_id``,
        oldest first, read without decoding any value. KeyError naming an unknown run."""
        _check_str("run_id", run_id)
        rows = self._history(run_id)
        if not rows:
            raise _unknown_run(run_id)
        return [{"step": s, "node_id": n, "status": st, "time": t} for s, n, st, t in rows]

    def save_items(self, run_id: str, position: str, items: dict[int, Any]) -> None:
        """Record ``items`` (``{index: result}``) under ``position`` of ``run_id``, in one
        transaction, replacing results already recorded at those indexes.

        TypeError naming the index when a result cannot be serialised (nothing written),
        or for arguments of the wrong type."""
        _check_str("run_id", run_id)
        if type(position) is not str:
            raise TypeError(f"position must be a str, got {position!r} ({type(position).__name__})")
        if not isinstance(items, dict):
            raise TypeError(f"items must be a dict of index -> result, got {type(items).__name__}")
        dumps, rows = self._codec.dumps, []
        for index, value in items.items():
            if type(index) is not int:
                raise TypeError(f"items: index must be an int, got {index!r}")
            try:
                rows.append((index, dumps(value)))
            except Exception as exc:
                raise TypeError(f"item {index} under {position!r} of run {run_id!r} cannot be "
                                f"serialised by {self._codec.name}: {exc}") from exc
        if rows:
            self._put_items(run_id, position, rows)

    def load_items(self, run_id: str, position: str) -> dict[int, Any]:
        """Return every result recorded under ``position`` of ``run_id`` as
        ``{int index: value}`` (fresh objects; {} when none)."""
        _check_str("run_id", run_id)
        if type(position) is not str:
            raise TypeError(f"position must be a str, got {position!r} ({type(position).__name__})")
        loads = self._codec.loads
        return {index: loads(data) for index, data in self._get_items(run_id, position)}

    def fork(self, run_id: str, step: int, new_run_id: str) -> None:
        """Copy the checkpoints of ``run_id`` up to and including ``step`` (and the values
        they hold) under ``new_run_id``, which then goes on from ``step``; item results are
        copied too (the core tags each with the step that wrote it and ignores, when it
        resumes the fork, those written after ``step``). KeyError when ``run_id`` is
        unknown or has no checkpoint ``step``; ValueError when ``new_run_id`` already has
        checkpoints."""
        _check_str("run_id", run_id)
        _check_step("step", step)
        _check_str("new_run_id", new_run_id)
        self._copy(run_id, step, new_run_id)
        self._forget(new_run_id)

    def delete(self, run_id: str) -> None:
        """Remove the checkpoints, values and item results of ``run_id``; an unknown run
        is no error."""
        _check_str("run_id", run_id)
        self._remove(run_id)
        self._forget(run_id)

    def list_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """Return ``{"run_id", "step", "status", "node_id", "time"}`` per run, from its
        latest checkpoint, oldest update (``time``) first; only runs whose latest status is
        ``status`` when given (ValueError unless it is one of the four statuses)."""
        if status is not None:
            _check_status(status)
        return [{"run_id": r, "step": s, "status": st, "node_id": n, "time": t}
                for r, s, st, n, t in self._runs(status)]

    # -- shared logic

    def _save(self, cp: dict[str, Any], expected_step: int | None, seen: _Seen | None) -> None:
        codec = self._codec
        dumps, sized = codec.dumps, codec.json
        node_id = cp["node_id"]
        known = seen.hashes if seen is not None else _NOTHING
        last = seen.objs if seen is not None else {}
        index: dict[str, str] = {}
        objs: dict[str, tuple[Any, str]] = {}
        blobs: dict[str, bytes] = {}
        inline: dict[str, Any] = {}
        for key, value in cp["shared"].items():
            hit = last.get(key)
            if hit is not None and hit[0] is value:  # same immutable object: nothing to do
                digest = index[key] = hit[1]
                if not digest:
                    inline[key] = value
                objs[key] = hit
                continue
            if type(key) is not str:
                raise TypeError(f"shared key {key!r} written by node {node_id!r} is not a str")
            kind = type(value)
            # JSON holds a number, None, a bool or a str of up to 10 characters in at most
            # _INLINE bytes: inline, and serialised once, with the row's other fields.
            if sized and ((kind in _NUMBERS and (kind is not int or -_HUGE < value < _HUGE))
                          or (kind is str and len(value) <= 10)):
                index[key] = ""
                inline[key] = value
                objs[key] = (value, "")
                continue
            try:
                data = dumps(value)
            except Exception as exc:
                raise TypeError(f"shared[{key!r}] written by node {node_id!r} cannot be "
                                f"serialised by {codec.name}: {exc}") from exc
            if len(data) <= _INLINE:
                digest = index[key] = ""
                inline[key] = value
            else:
                digest = index[key] = _sha(data)
                if digest not in known:
                    blobs[digest] = data
            if _immutable(value):
                objs[key] = (value, digest)
        fingerprint = cp["fingerprint"]
        if seen is not None and seen.fp[0] is fingerprint:
            fp_hash = seen.fp[1]
        else:
            data = dumps(fingerprint)
            fp_hash = _sha(data)
            if fp_hash not in known:
                blobs[fp_hash] = data
        meta = self._meta(cp, inline)
        # The index is most often the last one again (the same keys in the same order,
        # values unchanged or inline): its JSON too, then.
        if seen is not None and seen.index[0] == index and list(seen.index[0]) == list(index):
            index_json = seen.index[1]
        else:
            index_json = _encode(index)
        step, status, run_id, nonce = cp["step"], cp["status"], cp["run_id"], _nonce()
        row: Row = (step, nonce, status, node_id, float(cp["time"]), fp_hash, index_json,
                    meta)
        try:
            self._commit(run_id, expected_step, None if seen is None else seen.nonce, row,
                         list(blobs.items()))
        except _Conflict as lost:
            self._forget(run_id)
            expected = "no checkpoint" if expected_step is None else f"step {expected_step}"
            found = "no checkpoint" if lost.found is None else f"step {lost.found}"
            raise RuntimeError(
                f"another writer saved run {run_id!r} first: expected its latest checkpoint "
                f"to be {expected}, found {found}; nothing was written") from None
        if status != "running":  # the run stopped: keep no values of it alive
            self._forget(run_id)
            return
        # The run's known hashes grow in place (copying would cost O(steps) per save),
        # restarted from this checkpoint's when they get many.
        hashes = seen.hashes if seen is not None and len(known) < self._SEEN_HASHES else set()
        hashes.update(index.values())
        hashes.add(fp_hash)
        self._remember(run_id, _Seen(step, nonce, hashes, objs, (fingerprint, fp_hash),
                                     (index, index_json)))

    def _meta(self, cp: dict[str, Any], inline: dict[str, Any]) -> bytes:
        """Serialise the fields other than fingerprint, and the small values of shared,
        into one blob; on failure a TypeError naming the first field (or params key) that
        cannot be serialised."""
        fields = [cp["position"], cp["params"], cp["action"], cp["error"], cp["interrupt"],
                  inline]
        dumps = self._codec.dumps
        try:
            return dumps(fields)  # type: ignore[no-any-return]
        except Exception as exc:
            node = cp["node_id"]
            parts: list[tuple[str, Any]] = [
                (f"params[{k!r}] of node {node!r}", v) for k, v in cp["params"].items()]
            if isinstance(cp["interrupt"], dict) and "payload" in cp["interrupt"]:
                parts.append((f"interrupt payload of node {node!r}", cp["interrupt"]["payload"]))
            # small values of shared are first serialised here (a lone surrogate in a str)
            parts += [(f"shared[{k!r}] written by node {node!r}", v) for k, v in inline.items()]
            parts += [(f"checkpoint[{k!r}] of node {node!r}", v)
                      for k, v in zip(_META, fields, strict=True)]
            what, error = f"the checkpoint of node {node!r}", exc
            for part, value in parts:
                try:
                    dumps(value)
                except Exception as inner:
                    what, error = part, inner
                    break
            raise TypeError(f"{what} cannot be serialised by {self._codec.name}: "
                            f"{error}") from error

    def _remember(self, run_id: str, seen: _Seen) -> None:
        with self._seen_lock:
            self._seen[run_id] = seen
            self._seen.move_to_end(run_id)
            if len(self._seen) > self._SEEN_RUNS:
                self._seen.popitem(last=False)

    def _forget(self, run_id: str) -> None:
        with self._seen_lock:
            self._seen.pop(run_id, None)

    # -- primitives: a backend implements these (each one atomic)

    def _commit(self, run_id: str, expected_step: int | None, expected_nonce: int | None,
                row: Row, blobs: list[tuple[str, bytes]]) -> None:
        """Atomically: unless the run's latest step is ``expected_step`` raise
        ``_Conflict(found step)``; when ``expected_nonce`` is given and the latest row's
        nonce differs raise ``_Stale``; else add ``blobs`` ((hash, bytes), keeping those
        already there) and ``row`` as the run's latest checkpoint."""
        raise NotImplementedError

    def _latest(self, run_id: str) -> tuple[Row, dict[str, bytes]] | None:
        """The latest row of the run and the blobs it references (one snapshot), or None."""
        raise NotImplementedError

    def _history(self, run_id: str) -> list[tuple[int, str | None, str, float]]:
        """(step, node_id, status, time) per checkpoint, oldest first."""
        raise NotImplementedError

    def _runs(self, status: str | None) -> list[tuple[str, int, str, str | None, float]]:
        """(run_id, step, status, node_id, time) of each run's latest checkpoint, ordered
        by time then run_id; only those with ``status`` unless it is None."""
        raise NotImplementedError

    def _put_items(self, run_id: str, position: str, rows: list[tuple[int, bytes]]) -> None:
        """Upsert (index, bytes) rows under the run's position."""
        raise NotImplementedError

    def _get_items(self, run_id: str, position: str) -> list[tuple[int, bytes]]:
        """Every (index, bytes) row under the run's position."""
        raise NotImplementedError

    def _copy(self, run_id: str, step: int, new_run_id: str) -> None:
        """Atomically copy rows with step <= ``step`` and the blobs they reference (see
        ``_refs``); raise ``_unknown_run`` / KeyError / ValueError as ``fork`` says."""
        raise NotImplementedError

    def _remove(self, run_id: str) -> None:
        """Delete the run's rows, blobs and items."""
        raise NotImplementedError


def _fork_errors(run_id: str, step: int, new_run_id: str, new_exists: bool,
                 rows: list[Row], run_exists: bool) -> None:
    """Raise what ``fork`` raises for the state a backend found, in one order for all."""
    if not run_exists:
        raise _unknown_run(run_id)
    if not rows or rows[-1][0] != step:
        raise KeyError(f"run {run_id!r} has no checkpoint at step {step}")
    if new_exists:
        raise ValueError(f"new_run_id {new_run_id!r} already exists; delete it or pick another id")


# --------------------------------------------------------------------------- MemoryStore

class MemoryStore(BaseStore):
    """A store in this process's memory: for tests and runs that need not survive a crash.

    ``MemoryStore(serializer=None)``. Values are serialised as in every store (the same
    TypeErrors, fresh objects on ``load``), so code that works here works on a database.
    Thread-safe; gone when the process ends.
    """

    def __init__(self, serializer: Any = None) -> None:
        super().__init__(serializer)
        self._lock = threading.Lock()
        self._rows: dict[str, list[Row]] = {}
        self._blobs: dict[str, dict[str, bytes]] = {}
        self._items: dict[tuple[str, str], dict[int, bytes]] = {}

    def _commit(self, run_id: str, expected_step: int | None, expected_nonce: int | None,
                row: Row, blobs: list[tuple[str, bytes]]) -> None:
        with self._lock:
            rows = self._rows.get(run_id)
            latest = rows[-1] if rows else None
            if (None if latest is None else latest[0]) != expected_step:
                raise _Conflict(None if latest is None else latest[0])
            if expected_nonce is not None and latest is not None and latest[1] != expected_nonce:
                raise _Stale
            kept = self._blobs.setdefault(run_id, {})
            for digest, data in blobs:
                kept.setdefault(digest, data)
            self._rows.setdefault(run_id, []).append(row)

    def _latest(self, run_id: str) -> tuple[Row, dict[str, bytes]] | None:
        with self._lock:
            rows = self._rows.get(run_id)
            if not rows:
                return None
            kept = self._blobs[run_id]
            return rows[-1], {h: kept[h] for h in _refs(rows[-1:]) if h in kept}

    def _history(self, run_id: str) -> list[tuple[int, str | None, str, float]]:
        with self._lock:
            return [(r[0], r[3], r[2], r[4]) for r in self._rows.get(run_id, ())]

    def _runs(self, status: str | None) -> list[tuple[str, int, str, str | None, float]]:
        with self._lock:
            heads = [(run_id, r[-1]) for run_id, r in self._rows.items()]
        found = [(run_id, r[0], r[2], r[3], r[4]) for run_id, r in heads
                 if status is None or r[2] == status]
        return sorted(found, key=lambda f: (f[4], f[0]))

    def _put_items(self, run_id: str, position: str, rows: list[tuple[int, bytes]]) -> None:
        with self._lock:
            self._items.setdefault((run_id, position), {}).update(rows)

    def _get_items(self, run_id: str, position: str) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self._items.get((run_id, position), {}).items())

    def _copy(self, run_id: str, step: int, new_run_id: str) -> None:
        with self._lock:
            all_rows = self._rows.get(run_id, [])
            rows = [r for r in all_rows if r[0] <= step]
            _fork_errors(run_id, step, new_run_id, new_run_id in self._rows, rows,
                         bool(all_rows))
            kept = self._blobs[run_id]
            self._blobs[new_run_id] = {h: kept[h] for h in _refs(rows)}
            self._rows[new_run_id] = rows
            for (rid, position), items in list(self._items.items()):
                if rid == run_id:
                    self._items[(new_run_id, position)] = dict(items)

    def _remove(self, run_id: str) -> None:
        with self._lock:
            self._rows.pop(run_id, None)
            self._blobs.pop(run_id, None)
            for key in [k for k in self._items if k[0] == run_id]:
                del self._items[key]


# --------------------------------------------------------------------------- SQL databases

class _Database:
    """One DB-API connection, opened on first use and used under a lock.

    The SQL of the stores and caches is written once, for SQLite: ``?`` placeholders and
    ``{slots}`` for table names and column types, which ``sql`` fills in for a backend. A
    subclass says how to connect (``_open``), how to start a transaction, and which of its
    library's errors mean what (``_convert``).
    """

    types = {"blob": "BLOB", "real": "REAL", "int": "INTEGER", "norowid": " WITHOUT ROWID"}
    placeholder = "?"
    begin_write = "BEGIN IMMEDIATE"
    begin_read = "BEGIN"
    lock_run = ""  # SQL locking one run id for the transaction ("": BEGIN IMMEDIATE did)
    errors: type[BaseException] | tuple[type[BaseException], ...] = sqlite3.Error

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.schema: list[str] = []  # DDL run once, in one transaction, after connecting
        self._conn: Any = None
        self._pid = 0

    def name(self, table: str) -> str:
        """The quoted name of ``table`` in SQL."""
        return self.quote(table)

    @staticmethod
    def quote(identifier: str) -> str:
        """``identifier`` quoted for SQL (a double quote inside is doubled)."""
        return '"' + identifier.replace('"', '""') + '"'

    def sql(self, template: str, **names: str) -> str:
        """``template`` with its slots filled and this backend's placeholders."""
        return template.format(**self.types, **names).replace("?", self.placeholder)

    @contextmanager
    def cursor(self, begin: str | None = None) -> Iterator[Any]:
        """Hold the lock and yield a cursor; inside one transaction started with ``begin``
        (committed at the end, rolled back on any error) unless it is None."""
        with self.lock:
            try:
                cur = self._connection().cursor()
                if begin is None:
                    yield cur
                    return
                cur.execute(begin)
                try:
                    yield cur
                except BaseException:
                    self._rollback(cur)
                    raise
                cur.execute("COMMIT")
            except self.errors as exc:
                raise (self._convert(exc) or exc) from exc

    def run(self, statement: str, params: tuple[Any, ...]) -> int:
        """Execute one statement on its own (in autocommit: atomic, its own transaction),
        under the lock; return the number of rows it changed. For the hot paths: no
        cursor object, no BEGIN and COMMIT round trips. Only for a backend whose library
        commits a lone statement (SQLite with ``isolation_level=None``)."""
        with self.lock:
            try:
                changed: int = self._connection().execute(statement, params).rowcount
                return changed
            except self.errors as exc:
                raise (self._convert(exc) or exc) from exc

    def _connection(self) -> Any:
        # Called under the lock. A new, closed or forked-into connection is (re)opened.
        if self._conn is None or self._pid != os.getpid():
            self._conn = None
            conn = self._open()
            self._run(conn, self.begin_write, self.schema)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def _rollback(self, cur: Any) -> None:
        try:
            cur.execute("ROLLBACK")
        except self.errors:  # the connection broke: the error that broke it is raised
            pass

    @staticmethod
    def _run(conn: Any, begin: str, statements: list[str]) -> None:
        cur = conn.cursor()
        cur.execute(begin)
        for statement in statements:
            cur.execute(statement)
        cur.execute("COMMIT")

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                self._close(conn)

    def _close(self, conn: Any) -> None:
        conn.close()

    def _open(self) -> Any:
        raise NotImplementedError

    def _convert(self, exc: BaseException) -> BaseException | None:
        """The clear error to raise for ``exc`` of the library, or None to raise it as is."""
        raise NotImplementedError


# Every commit appends each page it changed to the WAL, and the WAL is flushed to disk
# (fsync) when it is copied back into the database (a checkpoint): bytes per commit are what
# a durable step pays for. 2 KiB pages halve them against SQLite's 4 KiB, and still hold
# a checkpoint row of a few hundred bytes without overflow pages. The WAL is checkpointed
# at about 4 MiB (SQLite's default: 1,000 pages of 4 KiB), so a checkpoint's fixed cost is
# spread over as many commits.
_PAGE_SIZE = 2048
_WAL_PAGES = 4 * 2**20 // _PAGE_SIZE


class _SQLite(_Database):
    """An SQLite file in WAL mode, ``synchronous=NORMAL``, a 30 s busy timeout; a new file
    gets 2 KiB pages (see ``_PAGE_SIZE``)."""

    def __init__(self, path: Any) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise TypeError(f"path must be a str or os.PathLike, got {path!r}")
        self.path: str = os.fspath(path)

    def _open(self) -> Any:
        path = self.path
        if path != ":memory:":
            folder = os.path.dirname(os.path.abspath(path))
            if os.path.isdir(path):
                raise ValueError(f"SQLite path {path!r} is a folder, not a database file")
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"SQLite path {path!r}: folder {folder!r} does not exist")
            if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
                raise PermissionError(f"SQLite database {path!r} is not writable")
            if not os.access(folder, os.W_OK | os.X_OK):  # the WAL files are made beside it
                raise PermissionError(f"SQLite path {path!r}: folder {folder!r} is not writable")
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                               check_same_thread=False)
        try:
            # Only a new file takes it (before its first table); see _PAGE_SIZE.
            conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _convert(self, exc: BaseException) -> BaseException | None:
        text = str(exc)
        if "readonly" in text or "read-only" in text:
            return PermissionError(f"SQLite database {self.path!r} is read-only: {text}")
        if "not a database" in text or "malformed" in text:
            return ValueError(f"{self.path!r} is not an SQLite database: {text}")
        return None


class _Closing:
    """``close()`` and ``with`` for the backends on a database connection."""

    _db: _Database

    def close(self) -> None:
        """Close the connection to the database (a later call opens a new one)."""
        self._db.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# The tables of a store, for _Database.sql: one row per checkpoint (the latest one of a run
# is the compare-and-set target), one per distinct large value of a run, one per item.
_STORE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {cps} (run_id TEXT NOT NULL, step {int} NOT NULL,"
    " nonce {int} NOT NULL, status TEXT NOT NULL, node_id TEXT, time {real} NOT NULL,"
    " fingerprint TEXT NOT NULL, shared TEXT NOT NULL, meta {blob} NOT NULL,"
    " PRIMARY KEY (run_id, step)){norowid}",
    "CREATE TABLE IF NOT EXISTS {blobs} (run_id TEXT NOT NULL, hash TEXT NOT NULL,"
    " data {blob} NOT NULL, PRIMARY KEY (run_id, hash))",
    "CREATE TABLE IF NOT EXISTS {items} (run_id TEXT NOT NULL, position TEXT NOT NULL,"
    " idx {int} NOT NULL, data {blob} NOT NULL, PRIMARY KEY (run_id, position, idx))"
    "{norowid}",  # one b-tree: a small item costs one page write, not two
)
_ROW = "step, nonce, status, node_id, time, fingerprint, shared, meta"
# The latest checkpoint of every run, by a loose index scan: one index probe per run,
# not a scan of every checkpoint.
_LATEST_OF_EACH_RUN = (
    "WITH RECURSIVE ids (id) AS (SELECT min(run_id) FROM {cps} UNION ALL"
    " SELECT (SELECT min(run_id) FROM {cps} WHERE run_id > ids.id) FROM ids"
    " WHERE ids.id IS NOT NULL)"
    " SELECT c.run_id, c.step, c.status, c.node_id, c.time FROM ids JOIN {cps} c"
    " ON c.run_id = ids.id AND c.step = (SELECT max(step) FROM {cps} WHERE run_id = ids.id)"
)


class _SQLStore(_Closing, BaseStore):
    """The store primitives in SQL, on a ``_Database``: SQLite here, PostgreSQL in
    ``kaygraph.postgres``. One transaction per call; the statements are made once. A
    write holds the run's lock (``_Database.lock_run``) from reading its latest step to
    the commit, which makes the compare-and-set atomic."""

    def __init__(self, db: _Database, serializer: Any = None) -> None:
        super().__init__(serializer)
        self._db = db
        names = {"cps": db.name("kaygraph_checkpoints"), "blobs": db.name("kaygraph_blobs"),
                 "items": db.name("kaygraph_items")}

        def q(template: str) -> str:
            return db.sql(template, **names)

        db.schema += [q(s) for s in _STORE_SCHEMA]
        self._lock_run = q(db.lock_run) if db.lock_run else ""
        self._head = q("SELECT step, nonce FROM {cps} WHERE run_id = ?"
                       " ORDER BY step DESC LIMIT 1")
        self._put_blob = q("INSERT INTO {blobs} (run_id, hash, data) VALUES (?, ?, ?)"
                           " ON CONFLICT DO NOTHING")
        self._copy_blob = q("INSERT INTO {blobs} (run_id, hash, data) SELECT ?, hash, data"
                            " FROM {blobs} WHERE run_id = ? AND hash = ?")
        self._get_blob = q("SELECT data FROM {blobs} WHERE run_id = ? AND hash = ?")
        self._put_row = q("INSERT INTO {cps} (run_id, " + _ROW + ")"
                          " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        self._latest_row = q("SELECT " + _ROW + " FROM {cps} WHERE run_id = ?"
                             " ORDER BY step DESC LIMIT 1")
        self._rows_upto = q("SELECT " + _ROW + " FROM {cps} WHERE run_id = ? AND step <= ?"
                            " ORDER BY step")
        self._history_rows = q("SELECT step, node_id, status, time FROM {cps}"
                               " WHERE run_id = ? ORDER BY step")
        self._all_runs = q(_LATEST_OF_EACH_RUN + " ORDER BY c.time, c.run_id")
        self._runs_with = q(_LATEST_OF_EACH_RUN + " WHERE c.status = ? ORDER BY c.time, c.run_id")
        self._put_item = q("INSERT INTO {items} (run_id, position, idx, data)"
                           " VALUES (?, ?, ?, ?) ON CONFLICT (run_id, position, idx)"
                           " DO UPDATE SET data = excluded.data")
        self._items_at = q("SELECT idx, data FROM {items} WHERE run_id = ? AND position = ?")
        self._copy_items = q("INSERT INTO {items} (run_id, position, idx, data)"
                             " SELECT ?, position, idx, data FROM {items} WHERE run_id = ?")
        self._deletes = [q(f"DELETE FROM {{{t}}} WHERE run_id = ?") for t in names]

    def _locked(self, cur: Any, run_id: str) -> tuple[int, int] | None:
        """Lock ``run_id`` for this transaction; return its latest (step, nonce) or None."""
        if self._lock_run:
            cur.execute(self._lock_run, (run_id,))
        cur.execute(self._head, (run_id,))
        head = cur.fetchone()
        return None if head is None else (head[0], head[1])

    def _commit(self, run_id: str, expected_step: int | None, expected_nonce: int | None,
                row: Row, blobs: list[tuple[str, bytes]]) -> None:
        with self._db.cursor(self._db.begin_write) as cur:
            head = self._locked(cur, run_id)
            if (None if head is None else head[0]) != expected_step:
                raise _Conflict(None if head is None else head[0])
            if expected_nonce is not None and head is not None and head[1] != expected_nonce:
                raise _Stale
            if blobs:
                cur.executemany(self._put_blob, [(run_id, h, d) for h, d in blobs])
            cur.execute(self._put_row, (run_id, *row))

    def _latest(self, run_id: str) -> tuple[Row, dict[str, bytes]] | None:
        with self._db.cursor(self._db.begin_read) as cur:
            cur.execute(self._latest_row, (run_id,))
            row = cur.fetchone()
            if row is None:
                return None
            blobs = {}
            for digest in _refs([row]):
                cur.execute(self._get_blob, (run_id, digest))
                found = cur.fetchone()
                if found is not None:
                    blobs[digest] = bytes(found[0])
            return tuple(row), blobs

    def _history(self, run_id: str) -> list[tuple[int, str | None, str, float]]:
        with self._db.cursor() as cur:
            cur.execute(self._history_rows, (run_id,))
            return cur.fetchall()  # type: ignore[no-any-return]

    def _runs(self, status: str | None) -> list[tuple[str, int, str, str | None, float]]:
        with self._db.cursor(self._db.begin_read) as cur:
            if status is None:
                cur.execute(self._all_runs)
            else:
                cur.execute(self._runs_with, (status,))
            return cur.fetchall()  # type: ignore[no-any-return]

    def _put_items(self, run_id: str, position: str, rows: list[tuple[int, bytes]]) -> None:
        with self._db.cursor(self._db.begin_write) as cur:
            cur.executemany(self._put_item, [(run_id, position, i, d) for i, d in rows])

    def _get_items(self, run_id: str, position: str) -> list[tuple[int, bytes]]:
        with self._db.cursor() as cur:
            cur.execute(self._items_at, (run_id, position))
            return [(i, bytes(d)) for i, d in cur.fetchall()]

    def _copy(self, run_id: str, step: int, new_run_id: str) -> None:
        with self._db.cursor(self._db.begin_write) as cur:
            # Both runs locked, in one order (no deadlock with another fork).
            heads = {r: self._locked(cur, r) for r in sorted({run_id, new_run_id})}
            new_exists, run_exists = heads[new_run_id] is not None, heads[run_id] is not None
            cur.execute(self._rows_upto, (run_id, step))
            rows = [tuple(r) for r in cur.fetchall()]
            _fork_errors(run_id, step, new_run_id, new_exists, rows, run_exists)
            cur.executemany(self._put_row, [(new_run_id, *r) for r in rows])
            cur.executemany(self._copy_blob, [(new_run_id, run_id, h) for h in _refs(rows)])
            cur.execute(self._copy_items, (new_run_id, run_id))

    def _remove(self, run_id: str) -> None:
        with self._db.cursor(self._db.begin_write) as cur:
            self._locked(cur, run_id)
            for statement in self._deletes:
                cur.execute(statement, (run_id,))


class SQLiteStore(_SQLStore):
    """The embedded store: checkpoints in one SQLite file, safe from threads and processes.

    ``SQLiteStore(path, serializer=None)``: ``path`` (str or os.PathLike) is created on
    first use, not here; ``serializer`` as in the module docstring. WAL mode,
    ``synchronous=NORMAL`` (a commit survives a crash of the process; a power cut may lose
    the last ones), writers wait up to 30 seconds for each other. A checkpoint that adds
    no new value, and one item result, are each one statement (its own transaction, the
    compare-and-set inside it); the other writes one ``BEGIN IMMEDIATE`` transaction.
    One connection per object, shared by its threads under a lock. ``close()`` or ``with``
    closes it. A store and an ``SQLiteCache`` may share a file.

    On first use: ValueError naming ``path`` when it is not an SQLite database or is a
    folder; PermissionError naming it when the file or its folder is read-only;
    FileNotFoundError when the folder does not exist. TypeError for a ``path`` of the
    wrong type, at once.
    """

    def __init__(self, path: str | os.PathLike[str], serializer: Any = None) -> None:
        self._sqlite = _SQLite(path)
        super().__init__(self._sqlite, serializer)
        # The compare-and-set and the insert in one statement: a lone statement is its
        # own transaction and takes the write lock before it reads, so it is atomic.
        self._put_row_at_head = self._db.sql(
            "INSERT INTO {cps} (run_id, " + _ROW + ") SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?"
            " WHERE (SELECT step = ? AND nonce = ? FROM {cps} WHERE run_id = ?"
            " ORDER BY step DESC LIMIT 1)", cps=self._db.name("kaygraph_checkpoints"))

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._sqlite.path

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # One round trip for the two writes of every durable step (a checkpoint with no new
    # value, one exec result); anything else, or a failed compare-and-set (to tell a
    # conflict from a stale memory), goes the general way.
    def _commit(self, run_id: str, expected_step: int | None, expected_nonce: int | None,
                row: Row, blobs: list[tuple[str, bytes]]) -> None:
        if blobs or expected_nonce is None or not self._db.run(
                self._put_row_at_head, (run_id, *row, expected_step, expected_nonce, run_id)):
            super()._commit(run_id, expected_step, expected_nonce, row, blobs)

    def _put_items(self, run_id: str, position: str, rows: list[tuple[int, bytes]]) -> None:
        if len(rows) == 1:
            self._db.run(self._put_item, (run_id, position, *rows[0]))
        else:
            super()._put_items(run_id, position, rows)


# --------------------------------------------------------------------------- caches

def _check_key(key: Any) -> None:
    if type(key) is not str:
        raise TypeError(f"cache key must be a str, got {key!r} ({type(key).__name__})")


def _check_ttl(ttl: Any) -> None:
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, got {ttl!r} "
                        f"({type(ttl).__name__})")
    if not 0 < ttl < math.inf:  # NaN fails this too
        raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")


class BaseCache:
    """The logic of every cache: key and ttl checks, serialisation, hit and miss counts.

    ``BaseCache(serializer=None)`` (json when None). A backend implements ``_get(key)``
    (the stored bytes, or None on a miss or an expired entry), ``_set(key, data, ttl)``,
    ``_delete(key)`` and ``_clear()``; the public methods (the core's ``Cache`` protocol)
    are here. ``hits`` and ``misses`` count this object's ``get`` calls (thread-safe).
    """

    def __init__(self, serializer: Any = None) -> None:
        self._codec = _Codec(serializer)
        self._count_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any:
        """Return a fresh copy of the value stored for ``key`` (a str). KeyError on a miss
        or an expired entry; ConnectionError when the backend cannot be reached."""
        _check_key(key)
        data = self._get(key)
        with self._count_lock:
            if data is None:
                self.misses += 1
            else:
                self.hits += 1
        if data is None:
            raise KeyError(key)
        return self._codec.loads(data)

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        """Store ``value`` for ``key``, expiring after ``ttl`` seconds (None: never).

        TypeError naming the key when the value cannot be serialised (nothing stored);
        ValueError naming ``ttl`` unless it is a finite number > 0 or None; ConnectionError
        when the backend cannot be reached."""
        _check_key(key)
        _check_ttl(ttl)
        try:
            data = self._codec.dumps(value)
        except Exception as exc:
            raise TypeError(f"cache value for key {key!r} cannot be serialised by "
                            f"{self._codec.name}: {exc}") from exc
        self._set(key, data, None if ttl is None else float(ttl))

    def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens when it is missing."""
        _check_key(key)
        self._delete(key)

    def clear(self) -> None:
        """Remove every entry of this cache (only this cache's, where a backend is shared)."""
        self._clear()

    def _get(self, key: str) -> bytes | None:
        raise NotImplementedError

    def _set(self, key: str, data: bytes, ttl: float | None) -> None:
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError


class MemoryCache(BaseCache):
    """A least-recently-used cache in this process's memory, thread-safe.

    ``MemoryCache(max_entries=1024, serializer=None)``: at most ``max_entries`` entries (an
    int >= 1; the least recently used goes first). Values are kept serialised, so a hit is
    a fresh copy and a value JSON cannot hold fails here as on every backend. ``ttl`` is
    measured on ``time.monotonic``.
    """

    def __init__(self, max_entries: int = 1024, serializer: Any = None) -> None:
        if type(max_entries) is not int:
            raise TypeError(f"max_entries must be an int, got {max_entries!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        super().__init__(serializer)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()

    def _get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            if entry[1] is not None and entry[1] <= time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return entry[0]

    def _set(self, key: str, data: bytes, ttl: float | None) -> None:
        expires = None if ttl is None else time.monotonic() + ttl
        with self._lock:
            self._data[key] = (data, expires)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def _delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def _clear(self) -> None:
        with self._lock:
            self._data.clear()


_CACHE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {cache} (key TEXT PRIMARY KEY, data {blob} NOT NULL,"
    " expires {real})",
    "CREATE INDEX IF NOT EXISTS {index} ON {cache} (expires) WHERE expires IS NOT NULL",
)


class _SQLCache(_Closing, BaseCache):
    """The cache primitives in SQL on a ``_Database`` (SQLite here, PostgreSQL in
    ``kaygraph.postgres``). ``expires`` is seconds since the epoch on the client's clock;
    expired rows read as misses and are deleted every ``_PURGE_EVERY`` sets."""

    _PURGE_EVERY = 1000

    def __init__(self, db: _Database, table: str, serializer: Any = None) -> None:
        _check_str("table", table)
        super().__init__(serializer)
        self._db = db
        names = {"cache": db.name(table), "index": db.name(table + "_expires")}

        def q(template: str) -> str:
            return db.sql(template, **names)

        db.schema += [q(s) for s in _CACHE_SCHEMA]
        self._select = q("SELECT data, expires FROM {cache} WHERE key = ?")
        self._upsert = q("INSERT INTO {cache} (key, data, expires) VALUES (?, ?, ?)"
                         " ON CONFLICT (key) DO UPDATE SET data = excluded.data,"
                         " expires = excluded.expires")
        self._remove = q("DELETE FROM {cache} WHERE key = ?")
        self._remove_all = q("DELETE FROM {cache}")
        self._purge = q("DELETE FROM {cache} WHERE expires <= ?")
        self._sets = 0

    def _get(self, key: str) -> bytes | None:
        with self._db.cursor() as cur:
            cur.execute(self._select, (key,))
            row = cur.fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return bytes(row[0])

    def _set(self, key: str, data: bytes, ttl: float | None) -> None:
        now = time.time()
        with self._db.cursor() as cur:
            cur.execute(self._upsert, (key, data, None if ttl is None else now + ttl))
            self._sets += 1
            if self._sets % self._PURGE_EVERY == 0:
                cur.execute(self._purge, (now,))

    def _delete(self, key: str) -> None:
        with self._db.cursor() as cur:
            cur.execute(self._remove, (key,))

    def _clear(self) -> None:
        with self._db.cursor() as cur:
            cur.execute(self._remove_all)


class SQLiteCache(_SQLCache):
    """A cache in an SQLite file, shared by the threads and processes that open it.

    ``SQLiteCache(path, serializer=None)``: ``path`` as for :class:`SQLiteStore` (created on
    first use, same errors; may be the same file as a store). Rows live in the table
    ``kaygraph_cache``; an expired row is a miss and is purged now and then. ``ttl`` is
    measured on ``time.time``. ``close()`` or ``with`` closes the connection.
    """

    def __init__(self, path: str | os.PathLike[str], serializer: Any = None) -> None:
        self._sqlite = _SQLite(path)
        super().__init__(self._sqlite, "kaygraph_cache", serializer)

    @property
    def path(self) -> str:
        """The database file's path, as given."""
        return self._sqlite.path

    def __repr__(self) -> str:
        return f"SQLiteCache({self.path!r})"
