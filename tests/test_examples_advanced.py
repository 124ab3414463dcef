"""Run the advanced cookbook recipes (node_types, async_http, profiling, early_exit) as users do.

Each test starts `python examples/<name>/main.py` in a subprocess and checks what it printed.
Timing checks use only lower bounds that physics guarantees (N sequential 20 ms calls take at
least N * 20 ms) or generous ratios, since the test machines are small and noisy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    """Run examples/<name>/main.py with `args`; return its stdout, failing on a non-zero exit."""
    # the repository's own kaygraph first, whatever else is installed
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name / "main.py"), *args],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def numbers(pattern: str, text: str) -> tuple[float, ...]:
    """The groups of the one line of `text` matching `pattern`, as floats."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matches {pattern!r} in:\n{text}"
    return tuple(float(group) for group in match.groups())


def test_node_types_table_orders_the_four_node_types():
    calls, latency = 40, 0.02
    out = run_example("node_types", "--calls", str(calls))
    row = r"\s+([\d.]+)\s+([\d.]+)x$"
    loop, loop_up = numbers(r"^Node \(a loop in one exec\)" + row, out)
    batch, _ = numbers(r"^BatchNode" + row, out)
    threads, threads_up = numbers(r"^ParallelBatchNode\(max_workers=10\)" + row, out)
    tasks, tasks_up = numbers(r"^AsyncParallelBatchNode\(max_concurrency=50\)" + row, out)
    # one at a time can never beat calls * latency; overlapping must beat it by far
    assert loop >= calls * latency * 0.95 and batch >= calls * latency * 0.95
    assert loop_up == 1.0
    assert threads_up >= 2 and loop / threads >= 2
    assert tasks_up >= 2 and loop / tasks >= 2
    assert "all four returned the same, correct results" in out


def test_async_http_counts_match_what_the_server_did():
    pytest.importorskip(
        "aiohttp", reason='needs aiohttp, the `examples` extra: pip install -e ".[examples]"')
    out = run_example("async_http")
    # 30 files: 5 flaky (503 twice, then served), 2 down (503 x 3 attempts), 3 slow (timeout)
    assert re.search(r"^fetched   25 files, \d+ bytes; sha256 of every body matches", out, re.M)
    assert "retried   14 requests after a 503 (5 files recovered)" in out
    assert re.search(r"^timed out 3 files after 0.5 s", out, re.M)
    assert re.search(r"^gave up   2 files after 3 attempts of 503", out, re.M)
    (at_once,) = numbers(
        r"^server    44 requests: 25 x 200, 16 x 503, 3 slow; at most (\d+) at once", out)
    assert 2 <= at_once <= 8  # overlapping, and never more than max_concurrency
    first, second = numbers(r"before attempt 2: ([\d.]+) s, before attempt 3: ([\d.]+) s", out)
    assert first >= 0.05 * 0.9 and second >= 0.1 * 0.9  # backoff: wait, then wait * 2
    # the pitfall: 15 blocking 100 ms calls run one after another and freeze the loop
    row = r"\s+([\d.]+)\s+([\d.]+) s$"
    blocking, blocking_stall = numbers(r"^urllib urlopen \(blocking\): WRONG" + row, out)
    threaded, threaded_stall = numbers(r"^asyncio.to_thread\(urlopen\)" + row, out)
    aio, aio_stall = numbers(r"^aiohttp session.get" + row, out)
    assert blocking >= 15 * 0.1 * 0.95 and blocking_stall >= 0.1 * 0.9
    assert threaded < blocking / 2 and aio < blocking / 2
    assert threaded_stall < blocking_stall / 2 and aio_stall < blocking_stall / 2


def test_profiling_names_the_compress_node_as_bottleneck():
    out = run_example("profiling", "--files", "40")
    steps = re.findall(r"^step (\d): (\w+)", out, re.M)
    assert [name for _, name in steps] == [
        "list_files", "count_lines", "hash_files", "compress", "summarize"]
    assert re.search(r"^40 files, \d+ lines, \d+ bytes -> \d+ bytes with lzma", out, re.M)
    assert re.search(r"^bottleneck: compress \(\d+% of", out, re.M)
    (share,) = numbers(r"^compress\s+[\d.]+\s+([\d.]+)%", out)
    assert share > 50
    # MetricsNode counts each item of a batch node, once per node for the others
    calls = dict(re.findall(r"^(\w+)\s+[\d.]+\s+[\d.]+%\s+(\d+)\s", out, re.M))
    assert calls == {"list_files": "1", "count_lines": "40", "hash_files": "40",
                     "compress": "40", "summarize": "1"}


def test_early_exit_stops_after_the_error_limit_and_bounds_the_store():
    out = run_example("early_exit")
    assert "finished: opened all 500 files, 3 errors (limit 10)" in out
    assert ("stopped early: 11 errors (limit 10) after opening 170 of 500 files; "
            "330 files never opened") in out
    assert out.count("keeps the last 20 (maxlen 20)") == 2


def test_early_exit_with_a_tight_budget():
    out = run_example("early_exit", "--files", "200", "--max-errors", "2", "--keep", "3")
    run2 = out.split("run 2:")[1]
    errors, opened, total, never = numbers(
        r"^stopped early: (\d+) errors \(limit 2\) after opening (\d+) of (\d+) files; "
        r"(\d+) files never opened", run2)
    assert (errors, total) == (3, 200) and opened + never == total
    assert run2.count("  bad file ") == 3
    (parsed,) = numbers(r"^parsed (\d+) readings; the store keeps the last 3 \(maxlen 3\)", run2)
    assert parsed == opened - errors
