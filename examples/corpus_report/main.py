"""corpus_report: facts about every Python file in a source tree, as a Markdown report.

The flagship recipe. By default it reads the Python standard library's own source tree
(``sysconfig.get_paths()["stdlib"]``, well over a thousand files); ``--root DIR`` points it at
any other tree. It shows the patterns a real pipeline needs, used for real:

- the shared store holds references (paths, counters, page and report file names), never
  file contents;
- a ParallelBatchNode reads and analyses one page of files at a time, each file streamed
  line by line through ``tokenize`` (threads do the cache look-ups; a cache miss is parsed
  in a process pool, so both cores work);
- a ``CachePolicy`` on an ``SQLiteCache``, keyed by the hash of each file's bytes, so a
  second run parses only what changed;
- results paginated to JSON pages on disk, and the report built page by page;
- the graph branches on actions: more pages loop back, files over ``--max-bytes`` go to a
  streaming-only node, bad files go to a skip counter, an empty tree goes straight to the
  report;
- progress on stderr from the run's events (a listener): a ``tqdm`` bar of files done on a
  terminal, one plain line per graph step otherwise; a Markdown report in ``--out``
  (totals, top-20 tables, node timings from MetricsNode), and a short summary on stdout.

Run: python examples/corpus_report/main.py [--root DIR] [--out DIR] [--workers N]
         [--page-size N] [--max-bytes N]
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import os
import sys
import sysconfig
import threading
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import facts  # the per-file analysis, next to this file (its folder is on sys.path)

from kaygraph import CachePolicy, Event, Graph, MetricsNode, Node, ParallelBatchNode
from kaygraph.stores import SQLiteCache

SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}  # installed packages aren't the tree
TOP = 20  # rows in each table of the report
SKIP_LOG, TOTALS, REPORT, CACHE = "skipped.jsonl", "totals.json", "report.md", "cache.sqlite3"


class ScanTree(MetricsNode, Node):
    """Walk the root and store the relative paths of its ``.py`` files, split by size.

    Skips ``__pycache__``, ``site-packages``, ``dist-packages`` and hidden folders. Files over
    ``max_bytes`` go to ``shared["oversize"]``, the rest to ``shared["files"]``; a file or
    folder that can't be listed or stat'ed is logged as a skip. Actions: ``"default"`` (there
    are files to parse), ``"oversize"``, ``"skipped"`` or ``"empty"``.
    """

    def prep(self, shared: dict) -> tuple[str, int]:
        return shared["root"], shared["max_bytes"]

    def exec(self, prep_res: tuple[str, int]) -> tuple[list[str], list[str], list[dict], int]:
        root, max_bytes = prep_res
        files: list[str] = []
        oversize: list[str] = []
        bad: list[dict] = []
        total_bytes = 0

        def unlistable(exc: OSError) -> None:
            path = os.path.relpath(exc.filename, root) if exc.filename else root
            bad.append({"path": path, "skip": "unreadable", "detail": str(exc.strerror)})

        for folder, dirs, names in os.walk(root, onerror=unlistable):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(n for n in names if n.endswith(".py")):
                rel = os.path.relpath(os.path.join(folder, name), root)
                try:
                    size = os.stat(os.path.join(folder, name)).st_size
                except OSError as exc:  # e.g. a dangling symlink
                    bad.append({"path": rel, "skip": "unreadable", "detail": str(exc.strerror)})
                    continue
                total_bytes += size
                (oversize if size > max_bytes else files).append(rel)
        return files, oversize, bad, total_bytes

    def post(self, shared: dict, prep_res: Any, exec_res: Any) -> str:
        shared["files"], shared["oversize"], bad, shared["bytes"] = exec_res
        log_skips(shared, bad)
        if shared["files"]:
            return "default"
        if shared["oversize"]:
            return "oversize"
        return "skipped" if bad else "empty"


class Changed(Exception):
    """The file's bytes changed between hashing and analysing: ``result`` is for the new
    bytes, so it must not be cached under the old hash."""

    def __init__(self, result: dict) -> None:
        super().__init__("the file changed while it was analysed")
        self.result = result


def unreadable(exc: OSError) -> dict:
    """The skip for a file that can't be read."""
    return {"skip": "unreadable", "detail": f"{type(exc).__name__}: {exc.strerror or exc}"}


def content_key(item: dict) -> str:
    """The cache key of an item: the SHA-256 of the file's bytes, so a moved file hits and
    an edited one misses (an unreadable file: its path)."""
    return item["sha256"] or f"unreadable:{item['path']}"


class AnalyseFiles(MetricsNode, ParallelBatchNode):
    """Analyse the next page of ``shared[key]`` on threads, then write it as one JSON page.

    ``AnalyseFiles(key, parse, pool, **node_kwargs)``: ``key`` is ``"files"`` or
    ``"oversize"``; ``parse=False`` streams tokens only (no ``ast``, memory stays flat);
    ``pool`` is the process pool that parses cache misses. ``prep`` hashes the page's files;
    the node's ``cache_policy`` (keyed by :func:`content_key`) serves the files seen before,
    and only a miss runs ``exec``, which waits on a thread for ``pool``. Actions:
    ``"next_page"`` while files remain, then ``"oversize"``, ``"skipped"`` or ``"default"``
    (see :func:`route`).
    """

    def __init__(self, key: str, parse: bool, pool: Executor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key, self.parse, self.pool = key, parse, pool

    def prep(self, shared: dict) -> list[dict]:
        start = shared["cursor"][self.key]
        page = shared[self.key][start : start + shared["page_size"]]
        items = []
        for rel in page:  # hashing is cheap (no decoding, 1 MiB blocks): 31 MB in ~0.05 s
            path = os.path.join(shared["root"], rel)
            try:
                items.append({"path": rel, "file": path, "sha256": facts.content_hash(path)})
            except OSError as exc:
                items.append({"path": rel, "file": path, "sha256": None, "skip": unreadable(exc)})
        return items

    def exec(self, item: dict) -> dict:
        # The result holds no path: files with the same bytes share one cache entry.
        if item["sha256"] is None:
            return item["skip"]
        digest, result = self.pool.submit(facts.analyse, item["file"], self.parse).result()
        if digest != item["sha256"]:
            raise Changed(result)
        return result

    def exec_fallback(self, item: dict, exc: Exception) -> dict:
        """A result the cache never stores (a fallback): facts of a file that changed
        since ``prep`` hashed it, or a skip for one that vanished or an unexpected error,
        so one odd file can't stop the run."""
        if isinstance(exc, Changed):
            return exc.result
        if isinstance(exc, OSError):
            return unreadable(exc)
        return {"skip": "error", "detail": f"{type(exc).__name__}: {exc}"}

    def post(self, shared: dict, prep_res: list, exec_res: list[dict]) -> str:
        shared["cursor"][self.key] += len(prep_res)
        stats = self.get_stats()  # the policy's look-ups so far, counted by MetricsNode
        shared["cache"][self.key] = [stats["cache_hits"], stats["cache_misses"]]
        results = [{"path": i["path"], **r} for i, r in zip(prep_res, exec_res, strict=True)]
        write_page(shared, results, "full" if self.parse else "stream")
        return route(shared, self.key)


class CountSkips(MetricsNode, Node):
    """The skip counter: tally the skip log on disk by reason into ``shared["skip_reasons"]``."""

    def prep(self, shared: dict) -> Path:
        return Path(shared["out"], shared["skip_log"])

    def exec(self, log: Path) -> dict[str, int]:
        with log.open(encoding="utf-8") as f:
            reasons = Counter(json.loads(line)["skip"] for line in f)
        return dict(sorted(reasons.items()))

    def post(self, shared: dict, prep_res: Any, exec_res: dict[str, int]) -> None:
        shared["skip_reasons"] = exec_res


class Aggregate(MetricsNode, Node):
    """Read the pages one at a time into totals and top-20 tables; write them to totals.json.

    Memory holds one page, the running top-20 heaps and the corpus-wide identifier counts.
    """

    def prep(self, shared: dict) -> list[Path]:
        return [Path(shared["out"], page) for page in shared["pages"]]

    def exec(self, pages: list[Path]) -> dict:
        totals: Counter[str] = Counter()
        names: Counter[str] = Counter()
        tables: dict[str, list] = {t: [] for t in ("largest", "longest", "most_defs", "undoc")}
        for page in pages:
            for f in json.loads(page.read_text("utf-8"))["files"]:
                path, defs = f["path"], f["functions"] + f["classes"]
                for key in ("lines", "blank", "comments", "functions", "classes"):
                    totals[key] += f[key]
                totals["streamed" if f["documented"] is None else "parsed"] += 1
                names.update(f["identifiers"])
                push(tables["largest"], (f["lines"], path), [path, f["lines"]])
                push(tables["most_defs"], (defs, path), [path, f["functions"], f["classes"]])
                if f["documented"] is None:  # streamed: no ast facts
                    continue
                totals["documented"] += f["documented"]
                totals["parsed_defs"] += defs
                totals["module_docs"] += f["module_doc"]
                if f["longest"]:
                    fn = f["longest"]
                    row = [fn["name"], f"{path}:{fn['line']}", fn["length"]]
                    push(tables["longest"], (fn["length"], path), row)
                undoc = defs - f["documented"]
                push(tables["undoc"], (undoc, path), [path, undoc, pct(f["documented"], defs)])
        result = {k: [row for _, row in sorted(rows, reverse=True)] for k, rows in tables.items()}
        result["identifiers"] = names.most_common(TOP)
        return {**totals, "distinct_identifiers": len(names), "tables": result}

    def post(self, shared: dict, prep_res: Any, exec_res: dict) -> None:
        Path(shared["out"], TOTALS).write_text(json.dumps(exec_res, indent=1), "utf-8")
        shared["totals_file"] = TOTALS


class WriteReport(Node):
    """Render report.md from totals.json, the skip log and the MetricsNode stats of ``timed``.

    ``WriteReport(timed, **node_kwargs)``: ``timed`` are the nodes whose ``get_stats()`` go
    into the timings table (they have all run by now). Stores ``shared["report"]`` (the file
    name) and ``shared["slowest"]`` (``[node_id, seconds of exec time, executions]``).
    """

    def __init__(self, timed: list[MetricsNode], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timed = timed

    def prep(self, shared: dict) -> dict:
        return {
            "shared": {k: v for k, v in shared.items() if k not in ("files", "oversize")},
            "totals": json.loads(Path(shared["out"], shared["totals_file"]).read_text("utf-8")),
            "stats": {n.node_id: n.get_stats() for n in self.timed},
        }

    def exec(self, prep_res: dict) -> tuple[str, list]:
        return render(**prep_res)

    def post(self, shared: dict, prep_res: Any, exec_res: tuple[str, list]) -> None:
        text, shared["slowest"] = exec_res
        Path(shared["out"], REPORT).write_text(text, "utf-8")
        shared["report"] = REPORT


def push(heap: list, key: tuple, row: list) -> None:
    """Keep the ``TOP`` rows with the largest ``key`` in ``heap`` (a min-heap of (key, row))."""
    if len(heap) < TOP:
        heapq.heappush(heap, (key, row))
    elif key > heap[0][0]:
        heapq.heapreplace(heap, (key, row))


def route(shared: dict, key: str) -> str:
    """The action after a page of ``shared[key]``: loop, then oversize files, then skips."""
    if shared["cursor"][key] < len(shared[key]):
        return "next_page"
    if key == "files" and shared["oversize"]:
        return "oversize"
    return "skipped" if shared["counts"]["skipped"] else "default"


def write_page(shared: dict, results: list[dict], mode: str) -> None:
    """Write the analysed files of one page to ``pages/page-NNNN.json``; log the skips.

    Only the page's file name goes into the store (``shared["pages"]``), with the counters.
    """
    counts = shared["counts"]
    done = [r for r in results if "skip" not in r]
    name = f"pages/page-{len(shared['pages']) + 1:04d}.json"
    page = {"page": len(shared["pages"]) + 1, "mode": mode, "files": done}
    Path(shared["out"], name).write_text(json.dumps(page), "utf-8")
    shared["pages"].append(name)
    counts[mode] += len(done)
    log_skips(shared, [r for r in results if "skip" in r])


def log_skips(shared: dict, skips: list[dict]) -> None:
    """Append skip records to the skip log on disk (kept even if a later step fails)."""
    if skips:
        with Path(shared["out"], shared["skip_log"]).open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in skips)
        shared["counts"]["skipped"] += len(skips)


def cache_counts(shared: dict) -> tuple[int, int]:
    """(hits, misses) of the cache so far, over both analysing nodes."""
    pairs = shared["cache"].values()
    return sum(hits for hits, _ in pairs), sum(misses for _, misses in pairs)


def build_graph(pool: Executor, threads: int, cache: SQLiteCache) -> Graph:
    """Wire the nodes; ``pool`` parses cache misses, ``threads`` per page do the rest, and
    ``cache`` keeps the facts (one entry per content hash and mode, for ``FACTS_VERSION``)."""

    def policy(mode: str) -> CachePolicy:
        return CachePolicy(cache, key=content_key, version=f"{mode}-v{facts.FACTS_VERSION}")

    scan = ScanTree(node_id="scan")
    analyse = AnalyseFiles("files", True, pool, max_workers=threads, node_id="analyse",
                           cache_policy=policy("full"))
    stream_big = AnalyseFiles("oversize", False, pool, max_workers=threads,
                              node_id="stream_big", cache_policy=policy("stream"))
    count_skips = CountSkips(node_id="count_skips")
    aggregate = Aggregate(node_id="aggregate")
    report = WriteReport([scan, analyse, stream_big, count_skips, aggregate], node_id="report")

    scan >> analyse
    scan - "oversize" >> stream_big
    scan - "skipped" >> count_skips
    scan - "empty" >> aggregate
    analyse - "next_page" >> analyse
    analyse - "oversize" >> stream_big
    analyse - "skipped" >> count_skips
    analyse >> aggregate
    stream_big - "next_page" >> stream_big
    stream_big - "skipped" >> count_skips
    stream_big >> aggregate
    count_skips >> aggregate >> report
    return Graph(scan)


def render(shared: dict, totals: dict, stats: dict[str, dict]) -> tuple[str, list]:
    """Return the Markdown report and ``[slowest node_id, its exec seconds, executions]``."""
    counts, t = shared["counts"], totals
    reasons = shared.get("skip_reasons", {})
    files = counts["full"] + counts["stream"]
    defs = t.get("parsed_defs", 0)
    lines = [
        f"# Corpus report: `{shared['root']}`",
        "",
        f"{files:,} Python files analysed, {counts['skipped']:,} skipped. "
        "Made by `examples/corpus_report` (kaygraph).",
        "",
        "## Totals",
        "",
        "| | |",
        "|---|---:|",
        f"| files parsed (tokenize + ast) | {t.get('parsed', 0):,} |",
        f"| files streamed (over {shared['max_bytes']:,} bytes: tokens only) "
        f"| {t.get('streamed', 0):,} |",
        f"| files skipped | {counts['skipped']:,} {fmt_reasons(reasons)} |",
        f"| bytes | {shared['bytes']:,} |",
        f"| lines | {t.get('lines', 0):,} |",
        f"| blank lines | {t.get('blank', 0):,} |",
        f"| comments | {t.get('comments', 0):,} |",
        f"| functions (incl. methods) | {t.get('functions', 0):,} |",
        f"| classes | {t.get('classes', 0):,} |",
        f"| docstring coverage (functions and classes, parsed files) "
        f"| {pct(t.get('documented', 0), defs)} ({t.get('documented', 0):,} of {defs:,}) |",
        f"| module docstrings | {t.get('module_docs', 0):,} of {t.get('parsed', 0):,} |",
        f"| distinct identifiers | {t['distinct_identifiers']:,} |",
        "| cache | {:,} hits, {:,} misses |".format(*cache_counts(shared)),
        f"| pages | {len(shared['pages'])} |",
    ]
    tables = t["tables"]
    lines += table("Largest files", ["file", "lines"], tables["largest"])
    lines += table(
        "Longest functions (each file's longest)", ["function", "file:line", "lines"],
        tables["longest"],
    )
    lines += table(
        "Most functions and classes", ["file", "functions", "classes"], tables["most_defs"]
    )
    lines += table(
        "Most functions and classes without a docstring",
        ["file", "without docstring", "coverage"],
        tables["undoc"],
    )
    lines += table("Most common identifiers", ["identifier", "count"], tables["identifiers"])
    if counts["skipped"]:
        with Path(shared["out"], shared["skip_log"]).open(encoding="utf-8") as f:
            first = [json.loads(line) for line in islice(f, TOP)]
        lines += table(
            f"Skipped files (first {len(first)} of {counts['skipped']}, all in {SKIP_LOG})",
            ["file", "reason", "detail"],
            [[s["path"], s["skip"], s["detail"]] for s in first],
            numbered=False,
        )
    ran = {k: s for k, s in stats.items() if "total_executions" in s}
    busy = {k: s["avg_execution_time"] * s["total_executions"] for k, s in ran.items()}
    slowest = max(busy, key=busy.__getitem__)
    rows = [
        [k, s["total_executions"], f"{busy[k]:.2f}", f"{s['avg_execution_time'] * 1e3:.1f}",
         f"{s['p95_execution_time'] * 1e3:.1f}", f"{s['max_execution_time'] * 1e3:.1f}"]
        for k, s in ran.items()
    ]
    lines += table(
        "Node timings (MetricsNode.get_stats: one execution per cache miss for the analysing "
        "nodes)",
        ["node", "executions", "exec s (sum)", "avg ms", "p95 ms", "max ms"],
        rows,
        numbered=False,
    )
    lines += [
        "",
        f"Slowest node: **{slowest}** ({busy[slowest]:.2f} s of exec time over "
        f"{ran[slowest]['total_executions']:,} executions; the analysing nodes run several "
        "files at once, so their sum exceeds wall time).",
        "",
    ]
    return "\n".join(lines), [slowest, busy[slowest], ran[slowest]["total_executions"]]


def table(title: str, header: list[str], rows: list, numbered: bool = True) -> list[str]:
    """Markdown lines for a titled table (``|`` in cells escaped); "(none)" when empty."""
    out = ["", f"## {title}", ""]
    if not rows:
        return [*out, "(none)"]
    if numbered:
        header, rows = ["#", *header], [[i, *r] for i, r in enumerate(rows, 1)]
    out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [f"{c:,}" if isinstance(c, int) else str(c).replace("|", "\\|") for c in row]
        out.append("| " + " | ".join(cells) + " |")
    return out


def pct(part: float, whole: float) -> str:
    """``part / whole`` as a percentage with one decimal, or "n/a" when ``whole`` is 0."""
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def fmt_reasons(reasons: dict[str, int]) -> str:
    """``(encoding 1, syntax 2)`` for a tally of skip reasons, or "" when there are none."""
    return "(" + ", ".join(f"{k} {v}" for k, v in reasons.items()) + ")" if reasons else ""


class Progress:
    """The run's progress on stderr, from its events: ``Graph.run(listeners=[progress])``.

    ``Progress(shared, bar)``: one plain line per ``step_end`` event, as a log wants; with
    ``bar`` (stderr is a terminal) a ``tqdm`` bar of files done instead of the analysing
    nodes' lines, from ``scan``'s end until the last file: one tick per ``item_end`` event
    of those nodes (they come from the nodes' threads, hence the lock).
    """

    ANALYSING = ("analyse", "stream_big")

    def __init__(self, shared: dict, bar: bool) -> None:
        self.shared, self.want_bar, self.bar = shared, bar, None
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        if event.kind == "item_end" and event.node_id in self.ANALYSING:
            with self.lock:
                if self.bar is not None:
                    self.bar.update()
        elif event.kind == "step_end" and event.error is None:
            self.step_done(event.node_id, event.seconds or 0.0)

    def step_done(self, node: str, seconds: float) -> None:
        shared = self.shared
        total = len(shared.get("files", ())) + len(shared.get("oversize", ()))
        done = sum(shared["cursor"].values())
        hits, misses = cache_counts(shared)
        state = f"{hits} hits, {misses} misses, {shared['counts']['skipped']} skipped"
        with self.lock:
            if self.bar is not None and node in self.ANALYSING:
                self.bar.set_postfix_str(state)
                if done == total:
                    self.close()
                return
            if node in self.ANALYSING:
                text = f"{node}: page {len(shared['pages'])}, {done}/{total} files, {state}"
            else:
                text = f"{node}: done in {seconds:.2f} s"
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
            if node == "scan" and self.want_bar and total:
                from tqdm import tqdm  # on a terminal only: the examples extra has it

                self.bar = tqdm(total=total, unit="file", desc="files", file=sys.stderr)

    def close(self) -> None:
        """End the bar (it stays on the screen); later steps print plain lines."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def summary(shared: dict, totals: dict, seconds: float) -> str:
    """The short summary printed on stdout."""
    c, t = shared["counts"], totals
    out = Path(shared["out"])
    node, busy, runs = shared["slowest"]
    return "\n".join([
        f"corpus_report: {shared['root']}",
        f"  files     {c['full'] + c['stream']:,} analysed ({c['full']:,} parsed, "
        f"{c['stream']:,} streamed over {shared['max_bytes']:,} bytes), "
        f"{c['skipped']:,} skipped {fmt_reasons(shared.get('skip_reasons', {}))}".rstrip(),
        f"  lines     {t.get('lines', 0):,} ({t.get('blank', 0):,} blank, "
        f"{t.get('comments', 0):,} comments)",
        f"  defs      {t.get('functions', 0):,} functions, {t.get('classes', 0):,} classes, "
        f"docstrings on {pct(t.get('documented', 0), t.get('parsed_defs', 0))}",
        "  cache     {:,} hits, {:,} misses".format(*cache_counts(shared)),
        f"  slowest   {node} ({busy:.2f} s of exec time over {runs:,} executions)",
        f"  report    {out / shared['report']} ({len(shared['pages'])} pages in {out / 'pages'})",
        f"  time      {seconds:.1f} s",
    ])


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the report; return the exit status (2 for a bad argument, via argparse)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"],
                        help="tree to analyse (default: this Python's standard library)")
    parser.add_argument("--out", default="corpus_report_out",
                        help="folder for the report, pages and cache (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="processes that parse cache misses (default: CPU count)")
    parser.add_argument("--page-size", type=positive_int, default=250,
                        help="files per page (default: %(default)s)")
    parser.add_argument("--max-bytes", type=positive_int, default=256 * 1024,
                        help="larger files are streamed for tokens only (default: %(default)s)")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser().resolve()
    if not root.is_dir():
        problem = "not a directory" if root.exists() else "no such directory"
        parser.error(f"--root {args.root!r}: {problem}")
    out = Path(args.out)
    try:  # a fresh run's pages and skip log; the cache is kept
        (out / "pages").mkdir(parents=True, exist_ok=True)
        for old in (out / "pages").glob("page-*.json"):
            old.unlink()
        (out / SKIP_LOG).write_text("", "utf-8")
    except OSError as exc:
        parser.error(f"--out {args.out!r}: {exc.strerror or exc}")

    shared: dict[str, Any] = {
        "root": str(root), "out": str(out), "cache": {},
        "max_bytes": args.max_bytes, "page_size": args.page_size, "skip_log": SKIP_LOG,
        "cursor": {"files": 0, "oversize": 0}, "pages": [],
        "counts": {"skipped": 0, "full": 0, "stream": 0},
    }
    started = time.perf_counter()
    # Threads are running when the pool starts workers: fork could copy a held lock.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    progress = Progress(shared, bar=sys.stderr.isatty())
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool, \
            SQLiteCache(out / CACHE) as cache:
        # One thread more than processes: the next hit is served while the pool is busy.
        try:
            build_graph(pool, args.workers + 1, cache).run(shared, listeners=[progress])
        finally:
            progress.close()
    totals = json.loads((out / shared["totals_file"]).read_text("utf-8"))
    print(summary(shared, totals, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
