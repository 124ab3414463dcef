"""Benchmarks: kaygraph side by side with the hand-written floor, PocketFlow and LangGraph.

Workloads 1-6 (workloads.py): steps, batches, fan-out, streaming, scaling; 7-10 (durable.py):
durable steps, resume after a crash, node cache hits, listeners.

    python benchmarks/run.py [--quick] [--json FILE] [--markdown-into docs/performance.md]
    python benchmarks/run.py --from-json FILE --markdown-into docs/performance.md

Prints a table of medians and ratios, and the targets (issue 4; the durable design page) as
met / MISSED. Speed never
makes the exit status non-zero; a framework returning a wrong result or raising does (exit 1).
Peers that are not installed (`pip install -e ".[bench]"`) are reported as missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes and fewer rounds: a smoke run of well under a minute")
    p.add_argument("--json", metavar="FILE", type=Path, help="write every number to FILE")
    p.add_argument("--markdown-into", metavar="FILE", type=Path,
                   help="write the Markdown tables between the benchmark-table markers of FILE")
    p.add_argument("--from-json", metavar="FILE", type=Path,
                   help="run nothing: render the results saved in FILE by --json")
    p.add_argument("--note", metavar="TEXT",
                   help="a sentence to print above the Markdown tables (e.g. the machine was "
                        "shared); stored in the JSON")
    p.add_argument("--only", metavar="NAMES",
                   help="comma-separated subset of: step,batch,async,thread,stream,scaling,"
                        "durable,resume,cache,listeners")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time the single-threaded workloads (step, batch, scaling, cache, "
                        "listeners) by wall "
                        "clock or by this process's CPU time (steadier on a busy machine); "
                        "the fan-out workloads always use the wall clock")
    p.add_argument("--core", metavar="DIR", type=Path, default=REPO,
                   help="directory holding the kaygraph package to measure (default: this "
                        "checkout), e.g. a scratch copy with a change to try")
    return p.parse_args(argv)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(args.core.resolve()))
    kg = importlib.import_module("kaygraph")
    import durable
    from harness import find_peer, machine_info
    from workloads import FULL, QUICK, WORKLOADS, Env

    workloads_by_name = {**WORKLOADS, **durable.WORKLOADS}
    names = list(workloads_by_name) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in workloads_by_name]
    if unknown:
        raise SystemExit(f"--only: unknown workload(s) {unknown}; choose from "
                         f"{list(workloads_by_name)}")
    pf = find_peer("pocketflow", "pocketflow")
    lg = find_peer("langgraph", "langgraph.graph")
    others = [find_peer("langgraph-checkpoint-sqlite", "langgraph.checkpoint.sqlite"),
              find_peer("opentelemetry-sdk", "opentelemetry.sdk.trace")]
    settings = QUICK if args.quick else FULL
    env = Env(kg, pf, lg, settings, cpu_clock=args.clock == "cpu",
              peers={p.name: p for p in others}, core=args.core)
    meta = machine_info(args.core, kg.__file__, [pf, lg, *others])
    meta["mode"] = "quick" if args.quick else "full"
    meta["clock"] = args.clock
    meta["settings"] = dataclasses.asdict(settings)
    # Every framework warns once per run when the loop ends on an action with no successor.
    warnings.filterwarnings("ignore", message=r"(Graph|Flow) ends")
    workloads = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        result = workloads_by_name[name](env)
        result["rows"] = [dataclasses.asdict(r) for r in result["rows"]]
        result["seconds"] = time.perf_counter() - t0
        workloads.append(result)
    meta["seconds"] = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"meta": meta, "workloads": workloads}


def main(argv: list[str] | None = None) -> int:
    """Run (or load) the benchmarks, print them, write JSON/Markdown; 1 if a framework erred."""
    args = _parse(argv)
    sys.path.insert(0, str(HERE))
    from report import render_markdown, render_text, write_between_markers

    if args.markdown_into:
        try:  # check the markers before a run of minutes, not after it
            write_between_markers(args.markdown_into, None)
        except ValueError as exc:
            print(f"--markdown-into: {exc}", file=sys.stderr)
            return 2
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = _measure(args)
    if args.note:
        results["meta"]["note"] = args.note
    print(render_text(results))
    if args.json and not args.from_json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    if args.markdown_into:
        write_between_markers(args.markdown_into, render_markdown(results))
    errors = [r for wl in results["workloads"] for r in wl["rows"] if r["status"] == "error"]
    for row in errors:
        print(f"ERROR in {row['workload']} / {row['label']}: {row['note']}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
