"""pagination: write results in pages on disk and walk them one page at a time.

A producer node writes N order records as JSON pages in a temp dir and stores only the page
file names; a reader node loops over the pages (one graph step per page, a cursor in the
shared store) and keeps running totals. The same graph runs twice: with pages of
--page-size records, and with one page holding everything (no pagination). Peak memory of
each run is measured with tracemalloc and printed.

Run: python examples/pagination/main.py [--records N] [--page-size N]
"""

import argparse
import json
import tempfile
import tracemalloc
from collections import Counter
from pathlib import Path

from kaygraph import Graph, Node


def make_record(i: int) -> dict:
    """Order number i: deterministic, so both runs see the same data."""
    return {"id": i, "customer": f"customer-{i * 7919 % 1000:03d}", "cents": i * 104729 % 10000}


class Produce(Node):
    """Writes records as pages of params["page_size"]; stores the page paths, not the records."""

    def prep(self, shared: dict) -> tuple[int, int, str]:
        return shared["records"], self.params["page_size"], shared["out_dir"]

    def exec(self, prep_res: tuple[int, int, str]) -> list[str]:
        total, page_size, out_dir = prep_res
        pages = []
        for number, start in enumerate(range(0, total, page_size)):
            # Build one page, write it, drop it: never more than one page in memory.
            page = [make_record(i) for i in range(start, min(start + page_size, total))]
            path = Path(out_dir) / f"page-{number:05d}.json"
            path.write_text(json.dumps(page), encoding="utf-8")
            pages.append(str(path))
        return pages

    def post(self, shared: dict, prep_res: object, exec_res: list[str]) -> None:
        shared["pages"] = exec_res
        shared["cursor"] = 0
        shared["totals"] = {"orders": 0, "cents": 0, "by_customer": Counter()}


class ReadPage(Node):
    """Reads the page at shared["cursor"]; returns "more" until the last page is read."""

    def prep(self, shared: dict) -> str:
        return shared["pages"][shared["cursor"]]

    def exec(self, path: str) -> tuple[int, int, Counter]:
        with open(path, encoding="utf-8") as f:
            page = json.load(f)
        by_customer = Counter()
        for record in page:
            by_customer[record["customer"]] += record["cents"]
        return len(page), sum(record["cents"] for record in page), by_customer

    def post(self, shared: dict, prep_res: str, exec_res: tuple[int, int, Counter]) -> str:
        orders, cents, by_customer = exec_res
        totals = shared["totals"]
        totals["orders"] += orders
        totals["cents"] += cents
        totals["by_customer"].update(by_customer)
        shared["cursor"] += 1
        return "more" if shared["cursor"] < len(shared["pages"]) else "done"


class Summarise(Node):
    """Turns the running totals into a short summary."""

    def prep(self, shared: dict) -> dict:
        return shared["totals"]

    def exec(self, totals: dict) -> dict:
        customer, cents = totals["by_customer"].most_common(1)[0]
        return {"orders": totals["orders"], "cents": totals["cents"], "top": customer}

    def post(self, shared: dict, prep_res: object, exec_res: dict) -> None:
        shared["summary"] = exec_res


def build_graph() -> Graph:
    produce, read_page, summarise = Produce(), ReadPage(), Summarise()
    produce >> read_page
    read_page - "more" >> read_page  # the loop that walks the pages
    read_page - "done" >> summarise
    return Graph(produce)


def run(records: int, page_size: int) -> tuple[dict, int, int]:
    """Runs the graph; returns (summary, number of pages, peak traced memory in bytes)."""
    with tempfile.TemporaryDirectory(prefix="kaygraph-pagination-") as out_dir:
        graph = build_graph()
        graph.set_params({"page_size": page_size})
        shared = {"records": records, "out_dir": out_dir}
        tracemalloc.start()
        try:
            graph.run(shared)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return shared["summary"], len(shared["pages"]), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000, help="records (default 100000)")
    parser.add_argument("--page-size", type=int, default=1000, help="records per page")
    args = parser.parse_args()
    for name in ("records", "page_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    peaks = {}
    for mode, page_size in (("paged", args.page_size), ("single", args.records)):
        summary, pages, peaks[mode] = run(args.records, page_size)
        print(
            f"mode={mode} page_size={page_size} pages={pages} orders={summary['orders']} "
            f"cents={summary['cents']} top={summary['top']} peak_bytes={peaks[mode]}"
        )
    print(f"paged peak is {peaks['single'] / peaks['paged']:.0f}x lower than one big page")


if __name__ == "__main__":
    main()
