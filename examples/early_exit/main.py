"""Stop a batch early after too many errors, and keep only the last N results in the store.

The input is a folder of JSON readings generated in a temp dir; some files are broken in the
ways real files break (cut off mid-write, not UTF-8, a field of the wrong type). A BatchNode
parses them one by one from a generator. Each bad file is counted (not retried: retry_on only
accepts OSError) and once more than --max-errors files were bad, the generator stops feeding
the batch: the files after it are never opened, and the graph takes the "too_many_errors"
branch. Results go to a collections.deque(maxlen=N) in the shared store, so the store stays
the same size however many files there are.

Run: python examples/early_exit/main.py [--files 500] [--keep 20] [--max-errors 10]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from kaygraph import BatchNode, Graph, Node


def write_readings(folder: Path, count: int, bad_after: int, seed: int = 7) -> list[int]:
    """Write `count` files NNNN.json; return the indexes of the broken ones.

    Files before `bad_after` are broken rarely (1 in 100), files from it on often (3 in 10),
    as when an upstream system starts failing halfway. Seeded, so every run is the same.
    """
    rng = random.Random(seed)
    broken = []
    for i in range(count):
        reading = {"sensor": f"s{i % 7}", "seq": i, "celsius": round(rng.uniform(-5, 35), 2)}
        text = json.dumps(reading)
        path = folder / f"{i:04d}.json"
        rate = 0.01 if i < bad_after else 0.3
        if rng.random() >= rate:
            path.write_text(text, encoding="utf-8")
            continue
        broken.append(i)
        kind = i % 3
        if kind == 0:
            path.write_text(text[: len(text) // 2], encoding="utf-8")  # cut off mid-write
        elif kind == 1:
            path.write_bytes(text.encode("utf-16"))  # not UTF-8
        else:
            path.write_text(text.replace(str(reading["celsius"]), '"n/a"'), encoding="utf-8")
    return broken


class ErrorBudget:
    """The error budget of one batch run: counts bad files, stops the item stream when spent.

    It lives in the node's run, not in the shared store, so exec never touches the store.
    """

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.errors: list[str] = []
        self.opened = 0

    @property
    def spent(self) -> bool:
        return len(self.errors) > self.max_errors

    def feed(self, paths: list[Path]) -> Iterator[Path]:
        """Yield paths until the budget is spent; a BatchNode pulls them one at a time."""
        for path in paths:
            if self.spent:
                return
            self.opened += 1
            yield path


class ParseReadings(BatchNode):
    """Parse every reading file; a bad file is counted, too many bad files stop the batch."""

    def prep(self, shared):
        self.budget = ErrorBudget(self.params["max_errors"])
        return self.budget.feed(sorted(Path(shared["folder"]).glob("*.json")))

    def exec(self, path):
        reading = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(reading.get("celsius"), (int, float)):
            raise ValueError(f"celsius is {reading.get('celsius')!r}, not a number")
        return reading

    def exec_fallback(self, path, exc):
        # A parse error is not worth a retry (retry_on=OSError): count it and skip the file.
        self.budget.errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
        return None

    def post(self, shared, prep_res, exec_res):
        good = [reading for reading in exec_res if reading is not None]
        shared["last_readings"].extend(good)  # a deque(maxlen=N): old ones fall off
        shared["parsed"] += len(good)
        shared["errors"] = self.budget.errors
        shared["opened"] = self.budget.opened
        return "too_many_errors" if self.budget.spent else None


class Report(Node):
    """Say how the batch ended and what the store holds."""

    def prep(self, shared):
        return shared

    def post(self, shared, prep_res, exec_res):
        errors = shared["errors"]
        last = shared["last_readings"]
        if shared.get("stopped_early"):
            print(f"stopped early: {len(errors)} errors (limit {self.params['max_errors']}) "
                  f"after opening {shared['opened']} of {shared['total']} files; "
                  f"{shared['total'] - shared['opened']} files never opened")
        else:
            print(f"finished: opened all {shared['opened']} files, {len(errors)} errors "
                  f"(limit {self.params['max_errors']})")
        for line in errors:
            print(f"  bad file {line}")
        span = f": seq {last[0]['seq']}..{last[-1]['seq']}" if last else ""
        print(f"parsed {shared['parsed']} readings; the store keeps the last {len(last)} "
              f"(maxlen {last.maxlen}){span}")


class StoppedEarly(Node):
    """The "too_many_errors" branch: mark the run, then report."""

    def post(self, shared, prep_res, exec_res):
        shared["stopped_early"] = True


def build_graph(max_errors: int) -> Graph:
    parse = ParseReadings(retry_on=OSError)
    report = Report()
    parse >> report
    parse - "too_many_errors" >> StoppedEarly() >> report
    graph = Graph(parse)
    graph.set_params({"max_errors": max_errors})
    return graph


def run(folder: Path, total: int, keep: int, max_errors: int) -> dict:
    shared = {"folder": str(folder), "total": total, "parsed": 0,
              "last_readings": deque(maxlen=keep)}
    build_graph(max_errors).run(shared)
    return shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500, help="files to generate (default 500)")
    parser.add_argument("--keep", type=int, default=20, help="results kept in the store")
    parser.add_argument("--max-errors", type=int, default=10,
                        help="bad files tolerated (default 10)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        healthy, failing = Path(tmp, "healthy"), Path(tmp, "failing")
        healthy.mkdir()
        failing.mkdir()
        # Same seed: the two folders differ only from the point where "failing" degrades.
        broken = write_readings(healthy, args.files, bad_after=args.files)
        print(f"run 1: {args.files} files, {len(broken)} broken")
        run(healthy, args.files, args.keep, args.max_errors)
        broken = write_readings(failing, args.files, bad_after=args.files // 4)
        print(f"\nrun 2: {args.files} files, {len(broken)} broken, most after file "
              f"{args.files // 4}")
        run(failing, args.files, args.keep, args.max_errors)


if __name__ == "__main__":
    main()
