"""examples/scale_out, and ParallelBatchNode on a real Dask cluster (loopback only)."""

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kaygraph import ParallelBatchNode

distributed = pytest.importorskip(
    "distributed",
    reason='needs Dask, the `examples` (or `scale`) extra: pip install -e ".[examples]"',
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "scale_out" / "main.py"


def test_example_gives_identical_results_on_threads_processes_and_dask():
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--limit", "20", "--chunk", "4", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("threads", "process pool", "dask cluster"):
        assert re.search(rf"^{name} +\d+\.\d+ s", proc.stdout, re.MULTILINE), proc.stdout
    assert "results identical: 20 files" in proc.stdout


class Tag(ParallelBatchNode):
    """Returns (item, a fresh random tag, worker pid) per item.

    Two results share a tag only if Dask handed one call's result to both.
    """

    def prep(self, shared):
        return shared["items"]

    def exec(self, item):
        return item, uuid.uuid4().hex, os.getpid()

    def post(self, shared, prep_res, exec_res):
        shared["out"] = exec_res


@pytest.fixture(scope="module")
def client():
    """A 2-process Dask cluster on 127.0.0.1, without a dashboard."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


ITEMS = ["same"] * 6 + ["other"] * 2


def test_dask_with_pure_false_runs_every_duplicate_item(client):
    shared = {"items": ITEMS}
    Tag(executor=client.get_executor(pure=False)).run(shared)

    assert [item for item, _, _ in shared["out"]] == ITEMS
    assert len({tag for _, tag, _ in shared["out"]}) == len(ITEMS)
    assert os.getpid() not in {pid for _, _, pid in shared["out"]}


def test_dask_default_pure_executor_runs_duplicates_once(client):
    # Why the example and the docs pass pure=False: with Dask's default, equal calls in
    # flight together are one task, so duplicate items share one result. If a Dask release
    # stops doing this, this test says so and the advice in docs/scaling.md can go.
    shared = {"items": ITEMS}
    Tag(executor=client.get_executor()).run(shared)

    assert [item for item, _, _ in shared["out"]] == ITEMS
    assert len({tag for _, tag, _ in shared["out"]}) < len(ITEMS)
