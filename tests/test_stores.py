"""The store conformance suite: every backend (fixture `store`) behaves the same.

Checkpoint contents and round trips, compare-and-set between writers (threads, two store
objects on one database, two real processes), history, fork, delete, list_runs, item
results, serialisation errors that keep the last good checkpoint, custom serializers and
content-addressed dedupe. Backend-specific tests at the end: only what one backend has.
"""

from __future__ import annotations

import json
import math
import os
import pwd
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from conftest import free_port, server

from kaygraph import Store
from kaygraph.stores import STATUSES, MemoryStore, SQLiteStore

FINGERPRINT = "nodes=A,B;edges=A-default->B"
ROOT = Path(__file__).resolve().parents[1]


def checkpoint(run_id, step, **fields):
    """A checkpoint as the core makes it; `fields` override (shared, status, ...)."""
    cp = {
        "run_id": run_id, "step": step, "status": "running", "node_id": "A",
        "position": [["outer", 0], ["A", None]], "shared": {"n": step},
        "params": {"city": "Lyon"}, "action": "default", "error": None, "interrupt": None,
        "fingerprint": FINGERPRINT, "time": 1_700_000_000.0 + step,
    }
    cp.update(fields)
    return cp


def new_run():
    return f"run-{uuid.uuid4().hex[:10]}"


def save_steps(store, run_id, count, **fields):
    for step in range(1, count + 1):
        store.save(checkpoint(run_id, step, **fields), None if step == 1 else step - 1)


# ---------------------------------------------------------------- contents and round trips

def test_every_backend_is_a_store(store):
    assert isinstance(store, Store)


def test_load_returns_every_field_of_the_checkpoint_for_every_status(store):
    run = new_run()
    shared = {"text": "héllo ✓", "big": "x" * 10_000, "nested": {"a": [1, 2.5, None, True]},
              "pair": (1, ("a", None)), "empty": {}, "zero": 0, "none": None}
    fields = {
        "running": {},
        "interrupted": {"interrupt": {"payload": {"question": "ship it?"}, "answers": ["no"]}},
        "failed": {"error": {"type": "ValueError", "message": "bad city"}, "action": None},
        "done": {"node_id": None, "action": "finish", "position": []},
    }
    for step, status in enumerate(STATUSES, start=1):
        cp = checkpoint(run, step, status=status, shared=shared, **fields[status])
        store.save(cp, None if step == 1 else step - 1)
        got = store.load(run)
        want = json.loads(json.dumps(cp))  # JSON's view: tuples come back as lists
        assert got == want
        assert list(got["shared"]) == list(shared)  # key order kept
        assert got["shared"]["pair"] == [1, ["a", None]]
        assert type(got["time"]) is float and got["time"] == cp["time"]


def test_load_gives_fresh_objects_every_time(store):
    run = new_run()
    shared = {"items": [1, 2], "small": {"k": "v"}, "big": {"k": "v" * 500}}
    store.save(checkpoint(run, 1, shared=shared), None)
    first = store.load(run)
    first["shared"]["items"].append(3)
    for key in ("small", "big"):
        assert first["shared"][key] is not shared[key]
        first["shared"][key]["mutated"] = True
    first["params"]["city"] = "Paris"
    again = store.load(run)
    assert again["shared"] == shared and again["params"] == {"city": "Lyon"}


def test_two_keys_holding_equal_values_load_as_separate_objects(store):
    run = new_run()
    value = {"k": "v" * 200}
    store.save(checkpoint(run, 1, shared={"a": value, "b": dict(value)}), None)
    got = store.load(run)["shared"]
    assert got["a"] == got["b"] == value and got["a"] is not got["b"]


def test_load_of_an_unknown_run_is_none(store):
    assert store.load(new_run()) is None


# ---------------------------------------------------------------- compare-and-set

def test_first_save_needs_a_run_without_checkpoints(store):
    run = new_run()
    store.save(checkpoint(run, 1), None)
    with pytest.raises(RuntimeError) as info:
        store.save(checkpoint(run, 2, shared={"n": "other"}), None)
    msg = str(info.value)
    assert "another writer" in msg and repr(run) in msg
    assert "expected its latest checkpoint to be no checkpoint, found step 1" in msg
    assert store.load(run)["shared"] == {"n": 1} and len(store.history(run)) == 1


def test_save_with_a_stale_expected_step_names_run_expected_and_found_and_writes_nothing(store):
    run = new_run()
    save_steps(store, run, 3)
    with pytest.raises(RuntimeError) as info:
        store.save(checkpoint(run, 3, shared={"n": "lost"}), 2)
    assert f"run {run!r}" in str(info.value)
    assert "to be step 2, found step 3" in str(info.value)
    with pytest.raises(RuntimeError, match="to be step 7, found no checkpoint"):
        store.save(checkpoint(new_run(), 8), 7)
    assert [h["step"] for h in store.history(run)] == [1, 2, 3]
    assert store.load(run)["shared"] == {"n": 3}
    store.save(checkpoint(run, 4), 3)  # the right expected step still works
    assert store.load(run)["step"] == 4


def test_step_must_be_greater_than_expected_step(store):
    run = new_run()
    save_steps(store, run, 2)
    with pytest.raises(ValueError, match="must be > expected_step, got step 2 and expected_step 2"):
        store.save(checkpoint(run, 2), 2)


def test_two_writers_racing_on_one_run_exactly_one_wins_each_round(store_backend):
    first = store_backend.new()
    second = store_backend.reopen(first)  # a second object on the same database
    run = new_run()
    first.save(checkpoint(run, 1), None)
    winners = []
    for step in range(2, 12):
        barrier = threading.Barrier(2)
        results = {}

        def write(name, store, step=step, barrier=barrier, results=results):
            cp = checkpoint(run, step, shared={"by": name})
            barrier.wait()
            try:
                store.save(cp, step - 1)
                results[name] = "won"
            except RuntimeError as exc:
                results[name] = str(exc)

        threads = [threading.Thread(target=write, args=(name, s))
                   for name, s in (("first", first), ("second", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        won = [name for name, r in results.items() if r == "won"]
        assert len(won) == 1, results
        lost = next(r for r in results.values() if r != "won")
        assert f"found step {step}" in lost and repr(run) in lost
        winners.append(won[0])
        assert first.load(run)["shared"] == {"by": won[0]}
    assert [h["step"] for h in second.history(run)] == list(range(1, 12))


CHILD = """
import sys
{open_store}
from test_stores import checkpoint
run, name = sys.argv[1], sys.argv[2]
latest = store.load(run)
print("ready", flush=True)
sys.stdin.readline()  # go
try:
    store.save(checkpoint(run, latest["step"] + 1, shared={{"by": name}}), latest["step"])
    print("won", flush=True)
except RuntimeError as exc:
    print("lost", exc, flush=True)
"""


@pytest.mark.parametrize("store_backend", ["sqlite", "postgres"], indirect=True)
def test_two_processes_resuming_one_run_cannot_both_write(store_backend):
    store = store_backend.new()
    run = new_run()
    save_steps(store, run, 2)
    code = CHILD.format(open_store=store_backend.child_code(store))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    children = [subprocess.Popen([sys.executable, "-c", code, run, name], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                for name in ("one", "two")]
    for child in children:  # both have loaded step 2 before either writes
        assert child.stdout.readline().strip() == "ready"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    outputs = {}
    for name, child in zip(("one", "two"), children, strict=True):
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0, out
        outputs[name] = out.strip()
    won = [name for name, out in outputs.items() if out == "won"]
    assert len(won) == 1, outputs
    lost = next(out for out in outputs.values() if out != "won")
    assert lost.startswith("lost another writer") and "to be step 2, found step 3" in lost
    assert store.load(run)["shared"] == {"by": won[0]}
    assert [h["step"] for h in store.history(run)] == [1, 2, 3]


def test_different_runs_never_conflict(store_backend):
    first = store_backend.new()
    second = store_backend.reopen(first)
    runs = [new_run(), new_run()]
    for step in range(1, 6):
        for run, store in zip(runs, (first, second), strict=True):
            store.save(checkpoint(run, step), None if step == 1 else step - 1)
    for run in runs:
        assert [h["step"] for h in first.history(run)] == [1, 2, 3, 4, 5]


def test_threads_saving_their_own_runs_on_one_store_object(store):
    runs = [new_run() for _ in range(6)]
    barrier = threading.Barrier(len(runs))
    errors = []

    def work(run):
        barrier.wait()
        try:
            save_steps(store, run, 30, shared={"run": run, "data": list(range(20))})
            store.save_items(run, "p", {i: run for i in range(5)})
        except Exception as exc:  # reported below, with the thread's run
            errors.append((run, exc))

    threads = [threading.Thread(target=work, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for run in runs:
        assert store.load(run)["shared"]["run"] == run
        assert len(store.history(run)) == 30
        assert store.load_items(run, "p") == {i: run for i in range(5)}


# ---------------------------------------------------------------- history

def test_history_lists_every_checkpoint_oldest_first_from_columns(store):
    run = new_run()
    statuses = ["running", "running", "interrupted", "running", "failed", "running", "done"]
    for step, status in enumerate(statuses, start=1):
        store.save(checkpoint(run, step, status=status, node_id=f"N{step}"),
                   None if step == 1 else step - 1)
    assert store.history(run) == [
        {"step": s, "node_id": f"N{s}", "status": st, "time": 1_700_000_000.0 + s}
        for s, st in enumerate(statuses, start=1)]


def test_history_of_an_unknown_run_is_a_key_error_naming_it(store):
    with pytest.raises(KeyError, match="unknown run 'nope'"):
        store.history("nope")


def test_unchanged_1mb_value_is_stored_once_and_history_reads_no_values(store_backend):
    """1,000 saves of a run whose shared holds one 1 MB str that no step changes."""
    store = store_backend.new()
    run = new_run()
    rng = random.Random(7)
    big = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000))
    before = store_backend.size(store)
    save_steps(store, run, 1000, shared={"big": big, "note": "same"})
    grown = store_backend.size(store) - before
    assert grown < 2_000_000, f"grew by {grown} bytes over 1,000 saves"
    start = time.perf_counter()
    history = store.history(run)
    took = time.perf_counter() - start
    assert [h["step"] for h in history] == list(range(1, 1001))
    # 50 ms is the target; the bound is generous for noisy machines yet far below the
    # seconds that decoding 1,000 copies of 1 MB would take.
    assert took < 0.5, f"history of 1,000 took {took:.3f} s"
    assert store.load(run)["shared"]["big"] == big


class CountingJSON:
    """A serializer (json) that counts the bytes it produced."""

    def __init__(self):
        self.bytes = 0

    def dumps(self, obj):
        data = json.dumps(obj).encode()
        self.bytes += len(data)
        return data

    def loads(self, data):
        return json.loads(data)


def test_the_same_immutable_object_is_not_serialised_again(store_backend):
    counting = CountingJSON()
    store = store_backend.new(serializer=counting)
    run = new_run()
    big = "y" * 1_000_000
    save_steps(store, run, 200, shared={"big": big, "step_note": "tiny"})
    assert counting.bytes < 1_500_000, f"serialised {counting.bytes} bytes in 200 saves"
    # An equal but new str object must be serialised (identity, not equality, skips).
    counting.bytes = 0
    store.save(checkpoint(run, 201, shared={"big": "y" * 1_000_000}), 200)
    assert counting.bytes > 1_000_000


def test_a_mutable_value_is_serialised_each_save_but_written_once(store_backend):
    counting = CountingJSON()
    store = store_backend.new(serializer=counting)
    run = new_run()
    rng = random.Random(3)  # not compressible, so PostgreSQL's TOAST cannot hide copies
    doc = {"text": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(200_000))}
    before = store_backend.size(store)
    save_steps(store, run, 30, shared={"doc": doc})
    assert counting.bytes > 30 * 200_000  # it may have changed in place: checked each time
    assert store_backend.size(store) - before < 1_500_000
    doc["text"] = "changed"
    store.save(checkpoint(run, 31, shared={"doc": doc}), 30)
    assert store.load(run)["shared"]["doc"] == {"text": "changed"}


def test_a_run_deleted_and_remade_by_another_writer_does_not_fool_the_dedupe(store_backend):
    first = store_backend.new()
    second = store_backend.reopen(first)
    run = new_run()
    big = "q" * 100_000
    save_steps(first, run, 2, shared={"big": big})  # first remembers: big is stored
    second.delete(run)
    save_steps(second, run, 2, shared={"other": "o" * 100_000})  # same steps, new values
    # first's memory says big is stored at step 2; it is gone: the save must write it.
    first.save(checkpoint(run, 3, shared={"big": big}), 2)
    assert second.load(run)["shared"] == {"big": big}


def test_a_lost_race_leaves_this_store_object_correct(store_backend):
    first = store_backend.new()
    second = store_backend.reopen(first)
    run = new_run()
    big = ("r" * 100_000,)
    save_steps(first, run, 2, shared={"big": big})
    loaded = second.load(run)
    second.save(checkpoint(run, 3, shared={"big": loaded["shared"]["big"], "n": 3}), 2)
    with pytest.raises(RuntimeError):
        first.save(checkpoint(run, 3, shared={"big": big}), 2)
    got = first.load(run)
    assert got["step"] == 3 and got["shared"] == {"big": list(big), "n": 3}
    first.save(checkpoint(run, 4, shared={"big": big}), 3)
    assert second.load(run)["shared"] == {"big": list(big)}


# ---------------------------------------------------------------- items

def test_items_round_trip_upsert_and_stay_under_their_run_and_position(store):
    run, other = new_run(), new_run()
    assert store.load_items(run, "p") == {}
    store.save_items(run, "p", {0: {"answer": 1}, 2: [1, "two"], 5: None})
    store.save_items(run, "p", {2: "replaced", 7: (1, 2)})
    store.save_items(run, "q", {0: "elsewhere"})
    store.save_items(other, "p", {0: "other run"})
    got = store.load_items(run, "p")
    assert got == {0: {"answer": 1}, 2: "replaced", 5: None, 7: [1, 2]}
    assert all(type(k) is int for k in got)
    assert store.load_items(run, "q") == {0: "elsewhere"}
    store.save_items(run, "p", {})  # nothing to record: no error
    assert store.load_items(run, "p") == got


def test_an_item_that_cannot_be_serialised_names_it_and_nothing_is_recorded(store):
    run = new_run()
    with pytest.raises(TypeError) as info:
        store.save_items(run, "p", {0: "fine", 1: {1, 2}})
    msg = str(info.value)
    assert "item 1 under 'p'" in msg and repr(run) in msg and "serialised by json" in msg
    assert store.load_items(run, "p") == {}


# ---------------------------------------------------------------- fork

def test_fork_copies_the_run_up_to_a_step_with_its_values(store):
    run, copy = new_run(), new_run()
    for step in range(1, 6):
        shared = {"n": step, "big": f"{step}" * 5_000, "same": "s" * 5_000}
        store.save(checkpoint(run, step, shared=shared, node_id=f"N{step}"),
                   None if step == 1 else step - 1)
    at_three = json.loads(json.dumps(checkpoint(
        copy, 3, shared={"n": 3, "big": "3" * 5_000, "same": "s" * 5_000}, node_id="N3")))
    store.save_items(run, "p", {0: "item"})
    store.fork(run, 3, copy)
    assert store.history(copy) == store.history(run)[:3]
    assert store.load(copy) == at_three
    assert store.load_items(copy, "p") == {0: "item"}  # item results are copied too
    assert store.load(run)["step"] == 5  # the original is untouched
    store.delete(run)  # the fork holds its own copies of the values
    assert store.load(copy) == at_three
    store.save(checkpoint(copy, 4, shared={"n": "forked"}), 3)  # and goes on from step 3
    assert [h["step"] for h in store.history(copy)] == [1, 2, 3, 4]


def test_fork_errors(store):
    run, other = new_run(), new_run()
    save_steps(store, run, 3)
    save_steps(store, other, 1)
    with pytest.raises(KeyError, match="unknown run 'nope'"):
        store.fork("nope", 1, new_run())
    with pytest.raises(KeyError, match="has no checkpoint at step 4"):
        store.fork(run, 4, new_run())
    with pytest.raises(ValueError, match=f"new_run_id {other!r} already exists"):
        store.fork(run, 2, other)
    with pytest.raises(ValueError, match="already exists"):
        store.fork(run, 2, run)
    assert [h["step"] for h in store.history(other)] == [1]
    assert [h["step"] for h in store.history(run)] == [1, 2, 3]


# ---------------------------------------------------------------- delete and list_runs

def test_delete_removes_checkpoints_values_and_items(store):
    run, kept = new_run(), new_run()
    save_steps(store, run, 3, shared={"big": "b" * 10_000})
    save_steps(store, kept, 1)
    store.save_items(run, "p", {0: 1})
    store.delete(run)
    assert store.load(run) is None
    with pytest.raises(KeyError):
        store.history(run)
    assert store.load_items(run, "p") == {}
    assert [r["run_id"] for r in store.list_runs()] == [kept]
    store.delete(run)  # unknown now: no error
    store.save(checkpoint(run, 1, shared={"fresh": True}), None)  # a new run of that id
    assert store.load(run)["shared"] == {"fresh": True}


def test_list_runs_gives_each_runs_latest_checkpoint_oldest_update_first(store):
    assert store.list_runs() == []
    plan = [("b", 1, "done", 30.0), ("a", 2, "failed", 10.0), ("c", 3, "running", 20.0),
            ("d", 1, "running", 20.0)]
    for run, steps, status, at in plan:
        for step in range(1, steps + 1):
            last = step == steps
            store.save(checkpoint(run, step, status=status if last else "running",
                                  node_id=f"{run}{step}", time=at if last else 0.0),
                       None if step == 1 else step - 1)
    assert store.list_runs() == [
        {"run_id": "a", "step": 2, "status": "failed", "node_id": "a2", "time": 10.0},
        {"run_id": "c", "step": 3, "status": "running", "node_id": "c3", "time": 20.0},
        {"run_id": "d", "step": 1, "status": "running", "node_id": "d1", "time": 20.0},
        {"run_id": "b", "step": 1, "status": "done", "node_id": "b1", "time": 30.0},
    ]
    assert [r["run_id"] for r in store.list_runs("running")] == ["c", "d"]
    assert [r["run_id"] for r in store.list_runs(status="done")] == ["b"]
    assert store.list_runs("interrupted") == []
    with pytest.raises(ValueError, match="status must be one of .* got 'paused'"):
        store.list_runs("paused")


# ---------------------------------------------------------------- serialisation

BAD_VALUE = {1, 2}  # a set: JSON cannot hold it


@pytest.mark.parametrize(("fields", "message"), [
    ({"shared": {"ok": 1, "bad": BAD_VALUE}},
     "shared['bad'] written by node 'A' cannot be serialised by json: "),
    ({"shared": {"bad": object()}, "node_id": "Writer"},
     "shared['bad'] written by node 'Writer' cannot be serialised by json: "),
    ({"params": {"city": "Lyon", "when": BAD_VALUE}},
     "params['when'] of node 'A' cannot be serialised by json: "),
    ({"status": "interrupted", "interrupt": {"payload": BAD_VALUE, "answers": []}},
     "interrupt payload of node 'A' cannot be serialised by json: "),
    ({"action": BAD_VALUE}, "checkpoint['action'] of node 'A' cannot be serialised by json: "),
])
def test_a_value_that_cannot_be_serialised_keeps_the_last_good_checkpoint(store, fields, message):
    run = new_run()
    good = {"big": "g" * 5_000, "n": 1}
    store.save(checkpoint(run, 1, shared=good), None)
    with pytest.raises(TypeError) as info:
        store.save(checkpoint(run, 2, **{"shared": dict(good), **fields}), 1)
    assert str(info.value).startswith(message), str(info.value)
    assert store.load(run)["shared"] == good
    assert [h["step"] for h in store.history(run)] == [1]
    store.save(checkpoint(run, 2, shared=good), 1)  # the run goes on from the good one
    assert store.load(run)["step"] == 2


class SetJSON:
    """A serializer returning bytes that keeps sets (as the tagged {"__set__": [...]})."""

    @staticmethod
    def dumps(obj):
        def tag(o):
            if isinstance(o, (set, frozenset)):
                return {"__set__": sorted(o)}
            raise TypeError(f"{type(o).__name__} is not supported")
        return json.dumps(obj, default=tag).encode()

    @staticmethod
    def loads(data):
        assert isinstance(data, bytes)
        return json.loads(data, object_hook=lambda d: set(d["__set__"]) if "__set__" in d else d)


class TextJSON:
    """A serializer whose dumps returns str; loads must get str back."""

    seen = []

    @staticmethod
    def dumps(obj):
        return json.dumps(obj, sort_keys=True)

    @classmethod
    def loads(cls, data):
        cls.seen.append(type(data))
        return json.loads(data)


def test_a_custom_serializer_is_used_for_shared_params_and_items(store_backend):
    store = store_backend.new(serializer=SetJSON())
    run = new_run()
    store.save(checkpoint(run, 1, shared={"tags": {"a", "b"}, "big": {"x" * 500}},
                          params={"ids": {3, 1}}), None)
    store.save_items(run, "p", {0: {"z"}})
    got = store.load(run)
    assert got["shared"] == {"tags": {"a", "b"}, "big": {"x" * 500}}
    assert got["params"] == {"ids": {1, 3}}
    assert store.load_items(run, "p") == {0: {"z"}}
    with pytest.raises(TypeError, match="shared\\['f'\\] .* serialised by SetJSON: "
                                        "builtin_function_or_method is not supported"):
        store.save(checkpoint(run, 2, shared={"f": len}), 1)


def test_a_serializer_returning_str_gets_str_back(store_backend):
    TextJSON.seen.clear()
    store = store_backend.new(serializer=TextJSON)
    run = new_run()
    store.save(checkpoint(run, 1, shared={"big": "é" * 300, "n": 1}), None)
    store.save_items(run, "p", {1: "r"})
    assert store.load(run)["shared"] == {"big": "é" * 300, "n": 1}
    assert store.load_items(run, "p") == {1: "r"}
    assert TextJSON.seen and set(TextJSON.seen) == {str}


@pytest.mark.parametrize("serializer", [object(), json.JSONEncoder(), "json"])
def test_a_serializer_without_dumps_and_loads_is_a_type_error(store_backend, serializer):
    with pytest.raises(TypeError, match="serializer must have dumps"):
        store_backend.new(serializer=serializer)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize(("call", "error", "needle"), [
    (lambda s: s.save([("run_id", "r")], None), TypeError, "checkpoint must be a dict"),
    (lambda s: s.save({"run_id": "r"}, None), ValueError, "missing ['action'"),
    (lambda s: s.save({**checkpoint("r", 1), "x": 1}, None), ValueError, "unexpected ['x']"),
    (lambda s: s.save(checkpoint(7, 1), None), TypeError, "checkpoint['run_id'] must be"),
    (lambda s: s.save(checkpoint("", 1), None), TypeError, "non-empty str"),
    (lambda s: s.save(checkpoint("r", 0), None), ValueError, "step must be >= 1, got 0"),
    (lambda s: s.save(checkpoint("r", True), None), TypeError, "step must be an int"),
    (lambda s: s.save(checkpoint("r", 2), "1"), TypeError, "expected_step must be an int or None"),
    (lambda s: s.save(checkpoint("r", 1, status="paused"), None), ValueError, "got 'paused'"),
    (lambda s: s.save(checkpoint("r", 1, node_id=3), None), TypeError, "node_id"),
    (lambda s: s.save(checkpoint("r", 1, shared=[1]), None), TypeError, "checkpoint['shared']"),
    (lambda s: s.save(checkpoint("r", 1, params=None), None), TypeError, "checkpoint['params']"),
    (lambda s: s.save(checkpoint("r", 1, fingerprint=b"x"), None), TypeError, "fingerprint"),
    (lambda s: s.save(checkpoint("r", 1, time="now"), None), TypeError, "checkpoint['time']"),
    (lambda s: s.save(checkpoint("r", 1, time=math.nan), None), TypeError, "checkpoint['time']"),
    (lambda s: s.save(checkpoint("r", 1, shared={1: "x"}), None), TypeError, "shared key 1"),
    (lambda s: s.load(None), TypeError, "run_id must be a non-empty str, got None"),
    (lambda s: s.history(b"r"), TypeError, "run_id must be"),
    (lambda s: s.save_items("r", ["p"], {0: 1}), TypeError, "position must be a str"),
    (lambda s: s.save_items("r", "p", [1]), TypeError, "items must be a dict"),
    (lambda s: s.save_items("r", "p", {"0": 1}), TypeError, "index must be an int, got '0'"),
    (lambda s: s.load_items("r", 3), TypeError, "position must be a str, got 3"),
    (lambda s: s.fork("r", "1", "s"), TypeError, "step must be an int, got '1'"),
    (lambda s: s.fork("r", 1, None), TypeError, "new_run_id must be"),
    (lambda s: s.delete(5), TypeError, "run_id must be"),
])
def test_bad_arguments_are_clear_errors_and_write_nothing(store, call, error, needle):
    with pytest.raises(error) as info:
        call(store)
    assert needle in str(info.value), str(info.value)
    assert store.list_runs() == [] and store.load_items("r", "p") == {}


# ---------------------------------------------------------------- SQLite only

def test_sqlite_file_is_created_on_first_use_in_wal_mode(tmp_path):
    path = tmp_path / "runs.sqlite3"
    store = SQLiteStore(path)
    assert not path.exists()
    assert store.load("r") is None
    assert path.exists()
    with SQLiteStore(str(path)) as again:  # a str path works as a Path does
        again.save(checkpoint("r", 1), None)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.load("r")["step"] == 1
    store.close()


def test_sqlite_close_and_with_close_the_connection_and_a_later_call_reopens(tmp_path):
    path = tmp_path / "runs.sqlite3"
    wal = Path(f"{path}-wal")
    with SQLiteStore(path) as store:
        store.save(checkpoint("r", 1), None)
        assert wal.exists()
    assert not wal.exists()  # SQLite removes the WAL when its last connection closes
    assert store.load("r")["step"] == 1
    store.close()


def test_sqlite_path_that_is_not_a_database_is_a_value_error_naming_it(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, not a database\n" * 200)
    with pytest.raises(ValueError, match=f"{str(path)!r} is not an SQLite database"):
        SQLiteStore(path).load("r")
    assert path.read_text().startswith("hello")  # left as it was
    with pytest.raises(ValueError, match="is a folder"):
        SQLiteStore(tmp_path).load("r")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "runs.sqlite3").load("r")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got 42"):
        SQLiteStore(42)


def run_unprivileged(fn):
    """Run `fn()` where file permissions apply: as is, or, as root, in a forked child that
    has become `nobody` (root may write read-only files). Returns (type name, message)."""
    if os.geteuid() != 0:
        try:
            fn()
        except Exception as exc:
            return type(exc).__name__, str(exc)
        return None, ""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                fn()
                out = ["", ""]
            except Exception as exc:
                out = [type(exc).__name__, str(exc)]
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        out = json.loads(pipe.read() or '["died", ""]')
    os.waitpid(pid, 0)
    return out[0] or None, out[1]


# The forked child makes a store and hits the permission checks: it takes only locks it
# made itself, so other threads of pytest cannot leave it one held.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_sqlite_read_only_file_or_folder_is_a_permission_error_naming_it():
    folder = Path(tempfile.mkdtemp(prefix="kaygraph-ro-"))
    path = folder / "runs.sqlite3"
    try:
        with SQLiteStore(path) as store:
            store.save(checkpoint("r", 1), None)
        os.chmod(folder, 0o555)
        os.chmod(path, 0o444)
        kind, msg = run_unprivileged(lambda: SQLiteStore(path).save(checkpoint("r", 2), 1))
        assert kind == "PermissionError" and f"{str(path)!r} is not writable" in msg, (kind, msg)
        os.chmod(path, 0o666)  # a writable file in a read-only folder: no room for the WAL
        kind, msg = run_unprivileged(lambda: SQLiteStore(path).save(checkpoint("r", 2), 1))
        assert kind == "PermissionError" and f"folder {str(folder)!r} is not writable" in msg
        kind, msg = run_unprivileged(lambda: SQLiteStore(folder / "new.sqlite3").load("r"))
        assert kind == "PermissionError" and "new.sqlite3" in msg, (kind, msg)
    finally:
        os.chmod(folder, 0o755)
    with SQLiteStore(path) as store:  # nothing was lost
        assert [h["step"] for h in store.history("r")] == [1]
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


# ---------------------------------------------------------------- PostgreSQL only

def test_postgres_down_is_a_connection_error_naming_host_and_port_not_the_password():
    server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
    from kaygraph.postgres import PostgresStore

    port = free_port()
    store = PostgresStore(f"postgresql://kg:s3cret-pw@127.0.0.1:{port}/kg")  # lazy: no error
    for call in (lambda: store.load("r"), lambda: store.save(checkpoint("r", 1), None),
                 lambda: store.history("r")):
        with pytest.raises(ConnectionError) as info:
            call()
        assert f"127.0.0.1:{port}" in str(info.value) and "PostgreSQL" in str(info.value)
        assert "s3cret-pw" not in str(info.value) and "s3cret-pw" not in repr(store)
    store.close()


def test_postgres_store_on_a_connection_of_the_callers():
    dsn = server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
    import psycopg

    from kaygraph.postgres import PostgresStore

    schema = f"kgtest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            with PostgresStore(conn, schema=schema) as store:
                save_steps(store, "r", 2)
                assert store.load("r")["step"] == 2
            assert not conn.closed  # the caller's connection stays open
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        with psycopg.connect(dsn) as not_autocommit:
            with pytest.raises(ValueError, match="autocommit=True"):
                PostgresStore(not_autocommit)
    with pytest.raises(TypeError, match="dsn_or_connection must be"):
        PostgresStore(5432)
    with pytest.raises(ValueError, match="not a PostgreSQL connection string"):
        PostgresStore("host=127.0.0.1 port")


def test_postgres_reconnects_after_its_connection_is_killed():
    dsn = server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
    import psycopg

    from kaygraph.postgres import PostgresStore

    name = f"kgtest_{uuid.uuid4().hex[:12]}"
    with PostgresStore(f"{dsn}?application_name={name}", schema=name) as store, \
            psycopg.connect(dsn, autocommit=True) as admin:
        try:
            save_steps(store, "r", 1)
            killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM"
                                   " pg_stat_activity WHERE application_name = %s",
                                   (name,)).fetchone()
            assert killed == (1,)
            with pytest.raises(ConnectionError, match="PostgreSQL at 127.0.0.1:"):
                store.load("r")
            save_steps(store, "s", 2)  # a new connection
            assert store.load("r")["step"] == 1 and store.load("s")["step"] == 2
        finally:
            admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_postgres_store_on_a_closed_connection_of_the_callers():
    dsn = server("KAYGRAPH_TEST_POSTGRES_DSN", "psycopg")
    import psycopg

    from kaygraph.postgres import PostgresStore

    conn = psycopg.connect(dsn, autocommit=True)
    store = PostgresStore(conn)
    conn.close()
    with pytest.raises(ConnectionError, match="the connection given is closed"):
        store.list_runs()


def test_a_value_missing_from_the_database_is_a_clear_error(tmp_path):
    with SQLiteStore(tmp_path / "runs.sqlite3") as store:
        store.save(checkpoint("r", 1, shared={"big": "b" * 1_000}), None)
        with closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute("DELETE FROM kaygraph_blobs")
        with pytest.raises(RuntimeError, match="run 'r' step 1: the store lacks the values"):
            store.load("r")


def test_a_row_whose_meta_is_an_object_as_rows_were_once_written_still_loads(tmp_path):
    with SQLiteStore(tmp_path / "runs.sqlite3") as store:
        cp = checkpoint("r", 1, shared={"n": 1, "note": "kept"}, action="go")
        store.save(cp, None)
        old = json.dumps({"position": cp["position"], "params": cp["params"], "action": "go",
                          "error": None, "interrupt": None, "inline": {"n": 1, "note": "kept"}})
        with closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute("UPDATE kaygraph_checkpoints SET meta = ?", (old.encode(),))
        got = SQLiteStore(store.path).load("r")
        assert got["shared"] == {"n": 1, "note": "kept"} and got["action"] == "go"
        assert got["position"] == cp["position"] and got["params"] == {"city": "Lyon"}


def test_memory_store_is_a_fresh_database_per_object():
    first, second = MemoryStore(), MemoryStore()
    first.save(checkpoint("r", 1), None)
    assert second.load("r") is None and first.load("r")["step"] == 1
