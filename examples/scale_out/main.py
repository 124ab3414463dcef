"""Scale out: one CPU-bound batch on threads, on a process pool and on a Dask cluster.

The batch parses every Python file of the standard library tree with `ast` and counts what
it finds. The three runs use the same graph and the same node classes; only the `executor`
handed to the ParallelBatchNode changes:

1. threads: `ParallelBatchNode`'s own thread pool (the GIL keeps this near one core);
2. a `concurrent.futures.ProcessPoolExecutor` (one interpreter per core);
3. a real Dask `distributed.LocalCluster` on 127.0.0.1, through `Client.get_executor`.

It prints the timings and exits with status 1 unless the results are identical. Without Dask
(the `examples` extra) it says so in the Dask row and runs the other two.

    python examples/scale_out/main.py              # the whole stdlib tree (~1800 files)
    python examples/scale_out/main.py --limit 40   # the first 40 files: a quick run
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import multiprocessing
import os
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from kaygraph import Graph, Node, ParallelBatchNode

# One result per file: (relative path, lines, functions, classes, AST nodes, sha256 hex,
# error). Plain tuples compare equal whichever process built them.
FileStats = tuple[str, int, int, int, int, str, str]


class FindFiles(Node):
    """Lists the `.py` files under `shared["root"]`, sorted, at most `shared["limit"]`."""

    def prep(self, shared: dict) -> tuple[str, int | None]:
        return shared["root"], shared.get("limit")

    def exec(self, prep_res: tuple[str, int | None]) -> list[str]:
        root, limit = prep_res
        files = sorted(
            str(path.relative_to(root))
            for path in Path(root).rglob("*.py")
            if "site-packages" not in path.parts  # installed packages, not the stdlib
        )
        return files[:limit] if limit is not None else files

    def post(self, shared: dict, prep_res: object, exec_res: list[str]) -> None:
        shared["files"] = exec_res


def parse_file(root: str, rel: str) -> FileStats:
    """Reads and parses one file; the counts come from walking its syntax tree."""
    source = (Path(root) / rel).read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    try:
        tree = ast.parse(source, filename=rel)
    except (SyntaxError, ValueError) as exc:
        # The stdlib ships a few files that are meant not to parse (test data).
        return (rel, source.count(b"\n"), 0, 0, 0, digest, type(exc).__name__)
    functions = classes = nodes = 0
    for node in ast.walk(tree):
        nodes += 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions += 1
        elif isinstance(node, ast.ClassDef):
            classes += 1
    return (rel, source.count(b"\n"), functions, classes, nodes, digest, "")


class ParseFiles(ParallelBatchNode):
    """Parses files in chunks: an item is `(root, [relative paths])`, its result their stats.

    `exec` only reads its item and the files it names, so it can run in any process. An item
    is a chunk of files, not one file, because shipping an item to another process costs about
    a millisecond (more on a cluster): each item should carry much more work than that.
    """

    def prep(self, shared: dict) -> list[tuple[str, list[str]]]:
        files, size = shared["files"], shared["chunk"]
        return [(shared["root"], files[i : i + size]) for i in range(0, len(files), size)]

    def exec(self, item: tuple[str, list[str]]) -> list[FileStats]:
        root, rels = item
        return [parse_file(root, rel) for rel in rels]

    def post(self, shared: dict, prep_res: object, exec_res: list[list[FileStats]]) -> None:
        shared["stats"] = [stats for chunk in exec_res for stats in chunk]


class Summarize(Node):
    """Adds up the per-file stats into `shared["summary"]`."""

    def prep(self, shared: dict) -> list[FileStats]:
        return shared["stats"]

    def exec(self, stats: list[FileStats]) -> dict[str, int]:
        return {
            "files": len(stats),
            "lines": sum(s[1] for s in stats),
            "functions": sum(s[2] for s in stats),
            "classes": sum(s[3] for s in stats),
            "ast_nodes": sum(s[4] for s in stats),
            "unparsable": sum(1 for s in stats if s[6]),
        }

    def post(self, shared: dict, prep_res: object, exec_res: dict[str, int]) -> None:
        shared["summary"] = exec_res


def build_graph(workers: int, executor: Executor | None) -> Graph:
    """The same three nodes every time; `executor=None` means the node's own thread pool."""
    find = FindFiles()
    parse = ParseFiles(workers, executor=executor)
    find >> parse >> Summarize()
    return Graph(start=find)


@contextmanager
def process_pool(workers: int) -> Iterator[Executor]:
    """A process pool started with "spawn", as on macOS and Windows (no state is inherited)."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@contextmanager
def dask_cluster(workers: int) -> Iterator[Executor]:
    """A real Dask cluster on this machine, listening on loopback only, as an Executor.

    `pure=False`: by default Dask treats two calls with equal arguments as one task and runs it
    once, so duplicate items would silently share one result.
    """
    from dask.distributed import Client, LocalCluster  # optional: see dask_missing

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client.get_executor(pure=False)


def dask_missing() -> str:
    """Why Dask's distributed scheduler cannot be imported, or "" when it can."""
    try:
        importlib.import_module("dask.distributed")
    except ImportError as exc:
        return str(exc).partition("\n")[0] or type(exc).__name__  # dask's own spans lines
    return ""


@contextmanager
def thread_pool(workers: int) -> Iterator[Executor | None]:
    """No executor: ParallelBatchNode runs its items on its own thread pool."""
    yield None


def timed_run(
    name: str,
    start: Callable[[int], AbstractContextManager[Executor | None]],
    workers: int,
    shared: dict,
) -> tuple[float, float, list[FileStats], dict[str, int]]:
    """Starts the executor, warms it up, runs the graph on a copy of `shared`.

    Returns (seconds to start, seconds to run, per-file stats, summary).
    """
    t0 = time.perf_counter()
    with start(workers) as executor:
        if executor is not None:
            # Start every worker before timing, so the run time is the work alone.
            list(executor.map(abs, range(4 * workers)))
        t1 = time.perf_counter()
        run_shared = dict(shared)
        build_graph(workers, executor).run(run_shared)
        t2 = time.perf_counter()
    print(f"{name:<14} {t2 - t1:7.2f} s   (+{t1 - t0:.2f} s to start)", flush=True)
    return t1 - t0, t2 - t1, run_shared["stats"], run_shared["summary"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="parse only the first N files")
    parser.add_argument("--chunk", type=int, default=20, help="files per item (default: 20)")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 2,
        help="threads or processes (default: cores)",
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.chunk < 1:
        parser.error(f"--chunk must be at least 1, got {args.chunk}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")

    shared = {"root": sysconfig.get_paths()["stdlib"], "limit": args.limit, "chunk": args.chunk}
    print(f"parsing the .py files under {shared['root']} with {args.workers} workers", flush=True)
    runs = [
        ("threads", thread_pool),
        ("process pool", process_pool),
        ("dask cluster", dask_cluster),
    ]
    results = {}
    for name, start in runs:
        if start is dask_cluster and (why := dask_missing()):
            print(f"{name:<14} skipped: needs the `examples` extra, "
                  f'pip install -e ".[examples]" ({why})', flush=True)
            continue
        results[name] = timed_run(name, start, args.workers, shared)

    stats = [r[2] for r in results.values()]
    summary = results["threads"][3]
    print("summary:", ", ".join(f"{k}={v}" for k, v in summary.items()))
    if not all(s == stats[0] for s in stats):
        print(f"results differ between the runs on {', '.join(results)}", file=sys.stderr)
        return 1
    print(f"results identical: {len(stats[0])} files, same stats on {', '.join(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
