"""Measuring machinery shared by every workload: interleaved rounds, medians, peak memory, peers.

Every framework of a workload is timed in the same process, round after round, with the order
shuffled each round so that no framework always runs first (cold caches), last (a warm,
fragmented heap) or behind the same neighbour. Before every run the garbage collector is run
to completion; it stays enabled during every run, for every framework alike, because that is
how users run them.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import importlib.metadata
import os
import platform
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# Roles: ratios in a case are taken against the row whose role is "floor" or "pocketflow".
FLOOR, KAYGRAPH, POCKETFLOW, LANGGRAPH = "floor", "kaygraph", "pocketflow", "langgraph"
ROLES = (FLOOR, KAYGRAPH, POCKETFLOW, LANGGRAPH)


@dataclass
class Contender:
    """One framework's version of a job.

    `make()` builds everything the run needs (nodes, graph, a fresh shared store) outside the
    timed region and returns the job: a callable (or an async function when the workload runs
    on an event loop) whose return value is compared with `expect` so a framework can never look
    fast by doing less. `status` other than "ok" ("missing", "n/a") means nothing is run and
    `note` says why. `per` is how many units (steps, items) one run does.
    """

    role: str
    label: str
    make: Callable[[], Callable[[], Any]] | None = None
    expect: Any = None
    status: str = "ok"
    note: str = ""
    per: int = 1  # units of work one run does (steps, items), to normalise a run's seconds


@dataclass
class Row:
    """The measured result of one contender in one case; `value` is the median in `unit`."""

    workload: str
    case: str
    role: str
    label: str
    unit: str
    status: str = "ok"
    value: float | None = None
    samples: list[float] = field(default_factory=list)
    vs_floor: float | None = None
    vs_pocketflow: float | None = None
    vs_langgraph: float | None = None  # set by the workloads that compare with LangGraph
    extra: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _check(contender: Contender, result: Any) -> None:
    if contender.expect is not None and result != contender.expect:
        raise AssertionError(
            f"{contender.label} returned {result!r}, expected {contender.expect!r}"
        )


def _time_sync(job: Callable[[], Any], clock: Callable[[], float]) -> tuple[float, Any]:
    start = clock()
    result = job()
    return clock() - start, result


async def _time_async(job: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await job()
    return time.perf_counter() - start, result


def run_once(
    contender: Contender,
    loop: asyncio.AbstractEventLoop | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, Any]:
    """Build and run one job: returns (seconds, result); the build is not timed.

    `clock` times sync jobs: wall time by default, `time.process_time` to count only this
    process's CPU time (steadier on a shared machine; only right for single-threaded jobs).
    Async jobs are always timed by the wall clock.
    """
    job = contender.make()  # type: ignore[misc]
    gc.collect()
    if loop is None:
        seconds, result = _time_sync(job, clock)
    else:
        seconds, result = loop.run_until_complete(_time_async(job))
    _check(contender, result)
    return seconds, result


def peak_memory(
    contender: Contender, loop: asyncio.AbstractEventLoop | None = None
) -> tuple[int, float]:
    """Run one job under tracemalloc: returns (peak traced bytes during the run, seconds).

    The seconds are only indicative: tracemalloc slows every allocation down.
    """
    job = contender.make()  # type: ignore[misc]
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        if loop is None:
            seconds, result = _time_sync(job, time.perf_counter)
        else:
            seconds, result = loop.run_until_complete(_time_async(job))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    _check(contender, result)
    return peak, seconds


def interleave(
    contenders: list[Contender],
    rounds: int,
    warmup: int = 0,
    loop: asyncio.AbstractEventLoop | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Run every runnable contender once per round, in a new order each round.

    The order is shuffled (with a fixed seed, so a run is repeatable) rather than rotated:
    a rotation keeps each contender behind the same neighbour, whose after-effects (a cold
    cache after LangGraph, say) would then always land on the same contender.
    Returns (seconds per run by label, error message by label). Warm-up rounds are run but
    not recorded. A contender that raises (or returns a wrong result) is dropped from the
    remaining rounds and reported with its error; the others carry on.
    """
    live = [c for c in contenders if c.status == "ok"]
    samples: dict[str, list[float]] = {c.label: [] for c in live}
    errors: dict[str, str] = {}
    rng = random.Random(4)
    for r in range(warmup + rounds):
        order = live[:]
        rng.shuffle(order)
        for c in order:
            if c.label in errors:
                continue
            try:
                seconds, _ = run_once(c, loop, clock)
            except Exception as exc:  # reported in the table, and run.py exits non-zero
                errors[c.label] = f"{exc.__class__.__name__}: {exc}"
                continue
            if r >= warmup:
                samples[c.label].append(seconds)
    return samples, errors


def ratios(rows: list[Row]) -> None:
    """Fill `vs_floor` and `vs_pocketflow` of each row from the same case's reference rows."""
    by_case: dict[str, list[Row]] = {}
    for row in rows:
        by_case.setdefault(row.case, []).append(row)
    for case_rows in by_case.values():
        refs = {r.role: r.value for r in case_rows if r.status == "ok" and r.value}
        for row in case_rows:
            if row.status != "ok" or row.value is None:
                continue
            if row.role not in ROLES:  # a reference row of another size: no ratio
                continue
            if FLOOR in refs and row.role != FLOOR:
                row.vs_floor = row.value / refs[FLOOR]
            if POCKETFLOW in refs and row.role not in (FLOOR, POCKETFLOW):
                row.vs_pocketflow = row.value / refs[POCKETFLOW]


@dataclass
class Peer:
    """An optional framework: `module` is None when it is not installed, `why` says so."""

    name: str
    module: Any = None
    version: str | None = None
    why: str = ""


def find_peer(dist: str, module: str) -> Peer:
    """Import a peer framework if it is installed, without ever substituting anything for it."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return Peer(dist, why='not installed (pip install -e ".[bench]")')
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return Peer(dist, mod, version)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_commit(repo: Path) -> str | None:
    """Short commit of `repo`, with "+changes" when kaygraph/ differs from it; None: no git."""
    commit = _git(repo, "rev-parse", "--short", "HEAD")
    if not commit:
        return None
    return commit + ("+changes" if _git(repo, "status", "--porcelain", "--", "kaygraph") else "")


def machine_info(core: Path, kaygraph_file: str, peers: list[Peer]) -> dict[str, Any]:
    """What a reader needs to judge the numbers: machine, load, interpreter, versions, date.

    `core` is the directory kaygraph was imported from; its git commit is recorded if any.
    """
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "kaygraph_file": kaygraph_file,
        "kaygraph_commit": _git_commit(core),
        "peers": {p.name: (p.version or "installed") if p.module else "missing" for p in peers},
        "argv": sys.argv[1:],
    }
