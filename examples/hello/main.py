"""hello: the smallest useful graph.

Three nodes walk the Collatz sequence of a number (halve it if even, else 3n+1, until 1):
a branch on an action ("again" loops, "done" leaves) and a loop guarded by ``max_steps``.

Run: python examples/hello/main.py [--n 27] [--max-steps 20]

The nodes are typed (``Node[PrepRes, ExecRes]``: what ``prep`` returns, what ``exec``
returns), so ``mypy --strict examples/hello/main.py`` checks the three phases of each.
"""

import argparse
from typing import Any

from kaygraph import Graph, Node


class Start(Node[int, int]):
    """Reads the number from the shared store and resets the step counter."""

    def prep(self, shared: dict[str, Any]) -> int:
        n: int = shared["n"]
        return n

    def exec(self, n: int) -> int:
        if n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        return n

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> None:
        shared["path"] = [exec_res]
        shared["steps"] = 0
        return None  # None means "default"


class Step(Node[int, int]):
    """One Collatz step; returns "again" until it reaches 1, then "done"."""

    def prep(self, shared: dict[str, Any]) -> int:
        last: int = shared["path"][-1]
        return last

    def exec(self, n: int) -> int:
        # exec only computes: it never touches the shared store.
        return n // 2 if n % 2 == 0 else 3 * n + 1

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str:
        shared["path"].append(exec_res)
        shared["steps"] += 1
        return "done" if exec_res == 1 else "again"


class Report(Node[tuple[list[int], int], None]):
    """Prints the sequence."""

    def prep(self, shared: dict[str, Any]) -> tuple[list[int], int]:
        return shared["path"], shared["steps"]

    def post(self, shared: dict[str, Any], prep_res: tuple[list[int], int],
             exec_res: None) -> None:
        path, steps = prep_res
        shown = " ".join(map(str, path)) if len(path) <= 12 else f"{path[0]} ... {path[-1]}"
        print(f"collatz n={path[0]} steps={steps}: {shown}")


def build_graph(max_steps: int | None = None) -> Graph:
    """Wires start -> step, step -"again"-> step (the loop), step -"done"-> report."""
    start, step, report = Start(node_id="start"), Step(node_id="step"), Report(node_id="report")
    start >> step
    step - "again" >> step
    step - "done" >> report
    return Graph(start, max_steps=max_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=27, help="number to start from (default 27)")
    parser.add_argument(
        "--max-steps", type=int, default=20, help="limit for the guarded run (default 20)"
    )
    args = parser.parse_args()

    # 1. A small number finishes well inside the limit.
    build_graph(max_steps=1000).run({"n": 6})

    # 2. The same graph with a loop guard: a run that would take step max_steps+1 raises.
    shared = {"n": args.n}
    try:
        build_graph(max_steps=args.max_steps).run(shared)
    except RuntimeError as exc:
        print(f"max_steps={args.max_steps} stopped the loop: RuntimeError: {exc}")
        # The store keeps everything written before the error.
        print(f"store kept: steps={shared['steps']} last={shared['path'][-1]}")
    else:
        print(f"max_steps={args.max_steps} was enough: steps={shared['steps']}")

    # 3. Without a tight limit the same number runs to the end.
    build_graph(max_steps=10_000).run({"n": args.n})


if __name__ == "__main__":
    main()
