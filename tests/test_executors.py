"""ParallelBatchNode(executor=...) on a real process pool.

The pools use the "spawn" start method: a worker inherits nothing from the test process, so
everything an item needs must really be pickled and shipped (as on macOS, Windows or a cluster).
"""

import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor

import pytest

from kaygraph import Graph, Node, ParallelBatchNode

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module")
def pool():
    """One 2-process pool for the module: starting a spawn pool costs ~0.1-1 s."""
    with ProcessPoolExecutor(2, mp_context=SPAWN) as pool:
        yield pool


class Recording(Executor):
    """Forwards submit() to `inner` and records what a process executor would be sent.

    `sizes` holds the pickled size in bytes of each submitted (fn, args, kwargs); `futures`
    the futures handed back; `shutdowns` counts shutdown() calls (never forwarded).
    """

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.sizes: list[int] = []
        self.futures: list[Future] = []
        self.shutdowns = 0

    def submit(self, fn, /, *args, **kwargs):
        self.sizes.append(len(pickle.dumps((fn, args, kwargs))))
        future = self.inner.submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.shutdowns += 1


class Scale(ParallelBatchNode):
    """Multiplies each item by params["factor"]; returns (product, worker pid)."""

    def prep(self, shared):
        return shared["items"]

    def exec(self, item):
        # Earlier items take longer, so items finish out of input order.
        busy_until = len(range(item, 12)) * 50_000
        sum(range(busy_until))
        return item * self.params["factor"], os.getpid()

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


class FailFirst(ParallelBatchNode):
    """Item 0 raises at once; every other item works 50 ms and leaves a marker file."""

    def prep(self, shared):
        return range(shared["n"])

    def exec(self, item):
        if item == 0:
            raise ValueError("item 0 is bad")
        time.sleep(0.05)  # the work: later items are still queued when item 0 fails
        with open(os.path.join(self.params["marker_dir"], f"{item}.ran"), "w"):
            pass
        return item


class Store(Node):
    """Writes a marker into the shared store, to show earlier writes survive an error."""

    def post(self, shared, prep_res, exec_res):
        shared["before"] = "kept"


class HoldsLock(Scale):
    """A node holding something no pickler can ship: a lock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()


class HoldsLambda(Scale):
    """A node holding a lambda: the standard pickle cannot ship it (cloudpickle could)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key = lambda x: x


class Big(Node):
    """A downstream node holding `size` bytes: it must never be shipped with an item."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.blob = b"x" * size


def test_items_run_in_worker_processes_and_come_back_in_input_order(pool):
    node = Scale(executor=pool)
    graph = Graph(start=node)
    graph.set_params({"factor": 3})
    shared = {"items": list(range(12))}

    graph.run(shared)

    assert [product for product, _ in shared["out"]] == [i * 3 for i in range(12)]
    pids = {pid for _, pid in shared["out"]}
    assert os.getpid() not in pids


def test_node_never_shuts_down_an_executor_it_was_given(pool):
    recording = Recording(pool)
    ok = Scale(executor=recording)
    ok.set_params({"factor": 2})
    ok.run({"items": [1, 2]})
    failing = FailFirst(executor=recording)
    with pytest.raises(ValueError, match="item 0 is bad"):
        failing.run({"n": 1})

    assert recording.shutdowns == 0
    # The pool itself still takes work after the node ran and after it failed.
    ok_direct = Scale(executor=pool)
    ok_direct.set_params({"factor": 1})
    ok_direct.run({"items": [5]})
    assert pool.submit(pow, 2, 5).result(timeout=60) == 32


def test_first_failure_cancels_what_has_not_started_and_leaves_nothing_running(tmp_path):
    n = 40
    with ProcessPoolExecutor(1, mp_context=SPAWN) as one_worker:
        recording = Recording(one_worker)
        # max_workers=8 sizes the window of submitted items (16): more than the one worker
        # process has taken, so some futures are still waiting when item 0 fails.
        node = FailFirst(8, executor=recording)
        node.set_params({"marker_dir": str(tmp_path)})
        with pytest.raises(ValueError, match="item 0 is bad"):
            node.run({"n": n})

        # Nothing is left running or queued once the node has raised ...
        assert all(f.done() for f in recording.futures)
        ran = len(list(tmp_path.iterdir()))
        cancelled = sum(f.cancelled() for f in recording.futures)
        # ... every submitted item either ran (item 0 or a marker) or was cancelled ...
        assert ran + 1 + cancelled == len(recording.futures)
        # ... and the failure stopped the batch: waiting items were cancelled, most never ran.
        assert cancelled > 0
        assert ran < n - 1


@pytest.mark.parametrize("cls", [HoldsLock, HoldsLambda])
def test_node_that_cannot_be_pickled_gets_an_error_naming_it(pool, cls):
    node = cls(executor=pool, node_id="unshippable")
    node.set_params({"factor": 1})
    first = Store()
    first >> node
    shared = {"items": [1, 2, 3]}

    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)) as info:
        Graph(start=first).run(shared)

    message = str(info.value)
    assert "unshippable" in message
    assert "pickl" in message.lower()
    assert shared["before"] == "kept"


def test_threads_do_not_need_a_picklable_node():
    node = HoldsLock(2, node_id="threads-only")
    node.set_params({"factor": 2})
    shared = {"items": [1, 2, 3]}
    node.run(shared)
    assert [product for product, _ in shared["out"]] == [2, 4, 6]


def shipped_sizes(pool, blob_size: int) -> list[int]:
    """Bytes pickled per item for a batch node whose graph holds `blob_size` bytes elsewhere.

    The batch node sits in an inner graph with one big successor; the inner graph has another
    big successor in the outer graph.
    """
    recording = Recording(pool)
    batch = Scale(executor=recording)
    batch >> Big(blob_size)
    inner = Graph(start=batch)
    inner >> Big(blob_size)
    outer = Graph(start=inner)
    outer.set_params({"factor": 1})
    shared = {"items": [1, 2, 3]}
    outer.run(shared)
    assert [product for product, _ in shared["out"]] == [1, 2, 3]
    return recording.sizes


def test_bytes_shipped_per_item_are_small_and_do_not_grow_with_the_graph(pool):
    small = shipped_sizes(pool, 1)
    large = shipped_sizes(pool, 10_000_000)

    assert len(large) == 3
    assert max(large) < 20_000, large
    assert max(large) - max(small) < 100, (small, large)
