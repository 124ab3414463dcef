"""Durable runs survive a real crash: child processes killed with SIGKILL, resumed in fresh ones.

The graphs are in tests/durable_child.py; each phase appends a line to a side file, so the
parent knows when to kill (it polls the file) and counts what ran in every process. A
killed step runs again (at-least-once); a completed step, or a batch item whose result the
store held, never does. Two processes resuming one run: one wins, the other gets the
compare-and-set's RuntimeError. An interrupt raised in one process is answered in another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import durable_child
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
TIMEOUT = 60  # seconds: generous, for a loaded 2-core box; a passing run takes far less

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def child(scenario, mode, store_code, run_id, side, *value, stdin=None):
    """Start tests/durable_child.py in a fresh interpreter."""
    return subprocess.Popen(
        [sys.executable, str(TESTS / "durable_child.py"), scenario, mode, store_code, run_id,
         str(side), *value], env=ENV, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)


def finish(proc):
    """Wait for `proc`; return (exit status, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def result(proc):
    """What a child that must succeed printed last, decoded: ("shared" | "interrupt", obj)."""
    status, out, err = finish(proc)
    assert status == 0, err
    kind, _, data = out.strip().splitlines()[-1].partition(" ")
    return kind, json.loads(data)


def lines(side):
    return Path(side).read_text().splitlines() if Path(side).exists() else []


def kill_when(proc, side, ready, store=None, run_id=None):
    """SIGKILL `proc` once the side file's lines satisfy `ready` (and, with `store`, once
    it holds some item results of `run_id`). Polls the file: the child is blocked there."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while not ready(lines(side)) or (
                store is not None and not store.load_items(run_id, durable_child.ITEMS_KEY)):
            assert proc.poll() is None, f"the child ended early: {finish(proc)}"
            assert time.monotonic() < deadline, f"the child never got there: {lines(side)}"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(TIMEOUT)
    assert proc.returncode == -signal.SIGKILL


def uninterrupted(scenario, tmp_path):
    """The shared store of the scenario's graph run plainly, to the end, in this process."""
    shared = {}
    durable_child.build(scenario, "resume", tmp_path / "plain.txt").run(shared)
    return shared


def killed_run(store_backend, scenario, tmp_path, ready, wait_for_items=False):
    """A run of `scenario` on a new store, killed once `ready(lines)`; returns
    (store, its child code, run id, side file)."""
    store = store_backend.new()
    code, run_id, side = store_backend.child_code(store), f"run-{uuid.uuid4().hex[:8]}", \
        tmp_path / "side.txt"
    proc = child(scenario, "run", code, run_id, side)
    kill_when(proc, side, ready, store if wait_for_items else None, run_id)
    return store, code, run_id, side


@pytest.mark.parametrize("store_backend", ["sqlite", "postgres"], indirect=True)
def test_a_run_killed_at_a_step_resumes_in_a_fresh_process(store_backend, tmp_path):
    store, code, run_id, side = killed_run(store_backend, "steps", tmp_path,
                                           lambda got: "exec n2" in got)
    assert [h["node_id"] for h in store.history(run_id)] == ["n0", "n1"]
    assert store.load(run_id)["status"] == "running"
    kind, shared = result(child("steps", "resume", code, run_id, side))
    assert kind == "shared" and shared == uninterrupted("steps", tmp_path)
    runs = Counter(lines(side))
    for node in ("n0", "n1", "n3", "n4"):  # completed steps, and the ones after: once
        assert runs[f"prep {node}"] == runs[f"exec {node}"] == runs[f"post {node}"] == 1
    assert runs["exec n2"] == 2 and runs["post n2"] == 1  # the killed step ran again
    assert store.load(run_id)["status"] == "done"
    assert [h["step"] for h in store.history(run_id)] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_a_run_killed_inside_a_parallel_batch_reruns_only_items_the_store_lacked(
        store_backend, tmp_path):
    fast = [f"item {i}" for i in range(durable_child.FAST)]
    store, code, run_id, side = killed_run(
        store_backend, "items", tmp_path, wait_for_items=True,
        ready=lambda got: set(fast) <= set(got) and sum(x.startswith("block") for x in got) == 4)
    held = {i: r for i, (_step, r) in  # read after the kill: exact
            store.load_items(run_id, durable_child.ITEMS_KEY).items()}
    assert held and held == {i: i * i for i in held}
    assert set(held) < set(range(durable_child.FAST))  # no blocked item ever finished
    before = Counter(lines(side))
    kind, shared = result(child("items", "resume", code, run_id, side))
    assert kind == "shared" and shared == uninterrupted("items", tmp_path)
    runs = Counter(lines(side))
    for i in range(durable_child.ITEMS):
        again = runs[f"item {i}"] - before[f"item {i}"]
        assert again == (0 if i in held else 1), (i, sorted(held))  # exactly the others
    assert runs["exec a"] == runs["post a"] == 1  # the step before the batch: once
    assert runs["post squares"] == runs["post c"] == 1


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_two_processes_resuming_one_killed_run_exactly_one_wins(store_backend, tmp_path):
    store, code, run_id, side = killed_run(store_backend, "steps", tmp_path,
                                           lambda got: "exec n2" in got)
    procs = [child("steps", "gated", code, run_id, side, stdin=True) for _ in range(2)]
    try:
        for proc in procs:  # both have loaded the checkpoint of step 2 before either writes
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    outcomes = [finish(proc) for proc in procs]
    won = [o for o in outcomes if o[0] == 0]
    lost = [o for o in outcomes if o[0] != 0]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert f"RuntimeError: another writer saved run {run_id!r} first" in lost[0][2]
    shared = json.loads(won[0][1].strip().splitlines()[-1].partition(" ")[2])
    assert shared == uninterrupted("steps", tmp_path)
    history = store.history(run_id)  # one coherent run: the winner's steps after step 2
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["node_id"] for h in history] == ["n0", "n1", "n2", "n3", "n4", "n4"]
    assert [h["status"] for h in history] == ["running"] * 5 + ["done"]
    assert store.load(run_id)["shared"] == shared
    runs = Counter(lines(side))
    assert runs["post n0"] == runs["post n1"] == 1
    assert runs["prep n3"] == runs["post n4"] == 1  # the loser stopped at its first save


@pytest.mark.parametrize("store_backend", ["sqlite"], indirect=True)
def test_an_interrupt_in_one_process_is_answered_in_another(store_backend, tmp_path):
    store = store_backend.new()
    code, run_id, side = store_backend.child_code(store), "order-42", tmp_path / "side.txt"
    kind, pause = result(child("approve", "run", code, run_id, side))
    assert kind == "interrupt"
    assert pause == {"run_id": run_id, "node_id": "approve",
                     "payload": {"question": "ship it?", "seen": 1}}
    answer = {"ok": True, "by": "ana"}
    kind, shared = result(child("approve", "resume", code, run_id, side, json.dumps(answer)))
    assert kind == "shared" and shared == {"a": 0, "approve": answer, "c": 4}
    runs = Counter(lines(side))
    assert runs["post a"] == 1 and runs["prep approve"] == 2 and runs["post c"] == 1
    assert store.load(run_id)["status"] == "done"
    status, _, err = finish(child("approve", "resume", code, run_id, side, '"again"'))
    assert status != 0 and "is done, not interrupted" in err  # answered once
