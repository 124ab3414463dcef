"""Find the slow node: MetricsNode stats plus a per-node timing report from Graph.stream.

A real pipeline over Python standard-library sources: list the files, count their lines,
hash them (sha256), compress them (lzma, the real bottleneck) and sum up. Graph.stream yields
one Step(node, action, seconds) per node, which gives a live progress line and the timing
table; MetricsNode adds per-call statistics (count, mean, p50, p95, max) for every node.

Run: python examples/profiling/main.py [--files 200] [--root DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import sysconfig
from pathlib import Path

from kaygraph import BatchNode, Graph, MetricsNode


class ListFiles(MetricsNode):
    """Put the paths of the first `limit` .py files under `root` (sorted) in the store."""

    def prep(self, shared):
        return Path(self.params["root"]), self.params["limit"]

    def exec(self, prep_res):
        root, limit = prep_res
        return [str(path) for path in sorted(root.glob("*.py"))[:limit]]

    def post(self, shared, prep_res, exec_res):
        shared["paths"] = exec_res  # references, not contents: each node reads what it needs


class CountLines(MetricsNode, BatchNode):
    """Lines of every file, streamed."""

    def prep(self, shared):
        return shared["paths"]

    def exec(self, path):
        with open(path, "rb") as f:
            return sum(1 for _ in f)

    def post(self, shared, prep_res, exec_res):
        shared["lines"] = sum(exec_res)


class HashFiles(MetricsNode, BatchNode):
    """sha256 of every file."""

    def prep(self, shared):
        return shared["paths"]

    def exec(self, path):
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def post(self, shared, prep_res, exec_res):
        shared["sha256"] = dict(zip(prep_res, exec_res, strict=True))


class CompressFiles(MetricsNode, BatchNode):
    """lzma-compress every file (preset 6, xz's default) and keep the sizes."""

    def prep(self, shared):
        return shared["paths"]

    def exec(self, path):
        data = Path(path).read_bytes()
        return len(data), len(lzma.compress(data))

    def post(self, shared, prep_res, exec_res):
        shared["bytes_in"] = sum(raw for raw, _ in exec_res)
        shared["bytes_out"] = sum(packed for _, packed in exec_res)


class Summarize(MetricsNode):
    """One line of totals."""

    def prep(self, shared):
        return shared

    def exec(self, s):
        return (f"{len(s['paths'])} files, {s['lines']} lines, {s['bytes_in']} bytes -> "
                f"{s['bytes_out']} bytes with lzma ({s['bytes_out'] / s['bytes_in']:.1%})")

    def post(self, shared, prep_res, exec_res):
        shared["summary"] = exec_res


def build_graph() -> Graph:
    start = ListFiles(node_id="list_files")
    (start >> CountLines(node_id="count_lines") >> HashFiles(node_id="hash_files")
     >> CompressFiles(node_id="compress") >> Summarize(node_id="summarize"))
    return Graph(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"],
                        help="directory of .py files (default: the standard library)")
    parser.add_argument("--files", type=int, default=200, help="how many files (default 200)")
    args = parser.parse_args()

    graph = build_graph()
    graph.set_params({"root": args.root, "limit": args.files})
    shared: dict = {}
    steps = []
    for number, step in enumerate(graph.stream(shared), 1):
        # step.node is the copy of the node that ran, so its metrics are this run's
        steps.append(step)
        print(f"step {number}: {step.node.node_id:<12} {step.seconds:8.4f} s")
    print(shared["summary"])

    total = sum(step.seconds for step in steps)
    print(f"\n{'node':<12} {'seconds':>8} {'share':>6} {'calls':>6} {'mean ms':>8} "
          f"{'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for step in steps:
        stats = step.node.get_stats()
        print(f"{step.node.node_id:<12} {step.seconds:8.4f} {step.seconds / total:6.1%} "
              f"{stats['total_executions']:>6} {stats['avg_execution_time'] * 1e3:8.2f} "
              f"{stats['p50_execution_time'] * 1e3:8.2f} {stats['p95_execution_time'] * 1e3:8.2f} "
              f"{stats['max_execution_time'] * 1e3:8.2f}")
    ranked = sorted(steps, key=lambda step: step.seconds, reverse=True)
    slowest, runner_up = ranked[0], ranked[1]
    print(f"\nbottleneck: {slowest.node.node_id} ({slowest.seconds / total:.0%} of "
          f"{total:.3f} s; {slowest.seconds / runner_up.seconds:.0f}x the next slowest, "
          f"{runner_up.node.node_id})")


if __name__ == "__main__":
    main()
